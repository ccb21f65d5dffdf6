//! The SDK's error type.

use natter_proto::v1;
use tokio_tungstenite::tungstenite;

/// Everything a connect or a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options cannot work (e.g. an unparsable URL); nothing was sent.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The server refused the WebSocket upgrade. `code` and `message` come
    /// from the JSON error body when it has one.
    #[error("connect rejected with http {status}: {message}")]
    Http { status: u16, code: Option<v1::ErrorCode>, message: String },
    /// Transport failure (TCP, TLS, WebSocket framing).
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// The server answered the request with an error of the closed set.
    #[error("server error {}: {message}", code.as_str_name())]
    Server { code: v1::ErrorCode, message: String, field: Option<String> },
    /// The server ended this session for good (kicked, token expired, …).
    #[error("session ended by the server: {} {}", goodbye_reason(.0), .0.message)]
    Kicked(v1::Goodbye),
    /// The server sent something this SDK cannot make sense of.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No response within `request_timeout` (or no hello within
    /// `connect_timeout`). The request may still take effect on the server.
    #[error("timed out")]
    Timeout,
    /// The connection dropped after the request was written; whether the
    /// server applied it is unknown. (Sends are retried instead.)
    #[error("connection lost before the response arrived")]
    Disconnected,
    /// The client was closed or stopped for good.
    #[error("client is closed")]
    Closed,
}

fn goodbye_reason(g: &v1::Goodbye) -> &'static str {
    v1::GoodbyeReason::try_from(g.reason).unwrap_or(v1::GoodbyeReason::Unspecified).as_str_name()
}

impl ClientError {
    /// The error code of the closed set, for server and HTTP errors.
    pub fn code(&self) -> Option<v1::ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::Http { code, .. } => *code,
            _ => None,
        }
    }

    pub(crate) fn from_wire(e: v1::Error) -> Self {
        Self::Server {
            code: v1::ErrorCode::try_from(e.code).unwrap_or(v1::ErrorCode::Unspecified),
            message: e.message,
            field: (!e.field.is_empty()).then_some(e.field),
        }
    }

    /// An HTTP rejection of the upgrade; the body is the server's JSON error
    /// `{"code":"UNAUTHENTICATED","message":"..."}` when it can be read.
    pub(crate) fn from_http(status: u16, body: Option<&[u8]>) -> Self {
        let json = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        let code =
            json.as_ref().and_then(|j| j.get("code")).and_then(|c| c.as_str()).and_then(v1::ErrorCode::from_str_name);
        let message = match json.as_ref().and_then(|j| j.get("message")).and_then(|m| m.as_str()) {
            Some(m) => m.to_owned(),
            None => body.map(|b| String::from_utf8_lossy(b).trim().to_owned()).unwrap_or_default(),
        };
        Self::Http { status, code, message }
    }

    /// Whether reconnecting can help; a rejected token will be rejected again.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            Self::Http { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
            Self::InvalidOptions(_) | Self::Kicked(_) | Self::Closed => true,
            _ => false,
        }
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => Self::from_http(resp.status().as_u16(), resp.body().as_deref()),
            other => Self::WebSocket(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_body_code_and_message_are_parsed() {
        let e = ClientError::from_http(401, Some(br#"{"code":"UNAUTHENTICATED","message":"token expired"}"#));
        match &e {
            ClientError::Http { status, code, message } => {
                assert_eq!(*status, 401);
                assert_eq!(*code, Some(v1::ErrorCode::Unauthenticated));
                assert_eq!(message, "token expired");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.code(), Some(v1::ErrorCode::Unauthenticated));
        assert!(e.is_permanent());
    }

    #[test]
    fn http_body_that_is_not_json_becomes_the_message() {
        let e = ClientError::from_http(503, Some(b"overloaded\n"));
        assert!(matches!(&e, ClientError::Http { code: None, message, .. } if message == "overloaded"));
        assert!(!e.is_permanent(), "503 is worth retrying");
        assert!(!ClientError::from_http(429, None).is_permanent());
    }

    #[test]
    fn wire_error_maps_empty_field_to_none_and_unknown_code_to_unspecified() {
        let e = ClientError::from_wire(v1::Error { code: 999, message: "m".into(), field: String::new() });
        assert!(matches!(e, ClientError::Server { code: v1::ErrorCode::Unspecified, field: None, .. }));
        let e = ClientError::from_wire(v1::Error {
            code: v1::ErrorCode::LimitExceeded as i32,
            message: "send.text: too long".into(),
            field: "send.text".into(),
        });
        assert_eq!(e.code(), Some(v1::ErrorCode::LimitExceeded));
        assert!(matches!(e, ClientError::Server { field: Some(f), .. } if f == "send.text"));
    }
}
