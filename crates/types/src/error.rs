use std::fmt;

/// The closed set of error codes, shared by every interface. Each maps to one
/// gRPC status, one WebSocket error frame code and one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    LimitExceeded,
    RateLimited,
    Unavailable,
    Internal,
    ResyncRequired,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        Self::BadRequest,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::LimitExceeded,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::ResyncRequired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::LimitExceeded => "LIMIT_EXCEEDED",
            Self::RateLimited => "RATE_LIMITED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::ResyncRequired => "RESYNC_REQUIRED",
        }
    }

    /// The HTTP status used where an error is answered over plain HTTP
    /// (e.g. the WebSocket upgrade).
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::LimitExceeded => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
            Self::ResyncRequired => 410,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its code, the request field at fault (if any) and a
/// lowercase explanation that names the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, field: None, message: message.into() }
    }

    /// An error about one request field; the message is prefixed with the field.
    pub fn field(code: ErrorCode, field: &str, message: impl fmt::Display) -> Self {
        Self { code, field: Some(field.to_owned()), message: format!("{field}: {message}") }
    }

    pub fn bad_request(field: &str, message: impl fmt::Display) -> Self {
        Self::field(ErrorCode::BadRequest, field, message)
    }

    pub fn limit(field: &str, message: impl fmt::Display) -> Self {
        Self::field(ErrorCode::LimitExceeded, field, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Prefix the field with the name of the enclosing request, e.g. `to`
    /// becomes `send.to`, so the client sees the full path.
    pub fn within(mut self, parent: &str) -> Self {
        if let Some(field) = &self.field {
            let full = format!("{parent}.{field}");
            if let Some(rest) = self.message.strip_prefix(field.as_str()) {
                self.message = format!("{full}{rest}");
            }
            self.field = Some(full);
        }
        self
    }
}
