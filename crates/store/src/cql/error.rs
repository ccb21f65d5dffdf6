//! Driver errors → the closed error-code set: `UNAVAILABLE` for what a retry
//! may fix (timeouts, unreachable or overloaded nodes, too few replicas),
//! `INTERNAL` for what it will not (schema mismatch, bad statements,
//! undecodable data). Messages are lower case.

use std::fmt::Display;

use natter_types::Error;
use scylla::errors::{
    DbError, ExecutionError, NextPageError, NextRowError, PagerExecutionError, PrepareError, RequestAttemptError,
    RequestError,
};

fn message(context: &str, e: &dyn Display) -> String {
    format!("cql {context}: {e}").to_lowercase()
}

pub(crate) fn unavailable(context: impl Display, e: impl Display) -> Error {
    let msg = format!("{context}: {e}").to_lowercase();
    tracing::warn!(error = %msg, "cql unavailable");
    Error::unavailable(msg)
}

pub(crate) fn decoding(context: &str, e: impl Display) -> Error {
    let msg = message(context, &e);
    tracing::error!(error = %msg, "cql decoding failure");
    Error::internal(msg)
}

fn classified(transient: bool, context: &str, e: &dyn Display) -> Error {
    let msg = message(context, e);
    if transient {
        tracing::warn!(error = %msg, "cql request failed");
        Error::unavailable(msg)
    } else {
        tracing::error!(error = %msg, "cql request failed");
        Error::internal(msg)
    }
}

pub(crate) fn execution(context: &str, e: ExecutionError) -> Error {
    classified(execution_is_transient(&e), context, &e)
}

pub(crate) fn prepare(context: &str, e: PrepareError) -> Error {
    classified(prepare_is_transient(&e), context, &e)
}

pub(crate) fn pager(context: &str, e: PagerExecutionError) -> Error {
    let transient = match &e {
        PagerExecutionError::PrepareError(p) => prepare_is_transient(p),
        PagerExecutionError::SerializationError(_) => false,
        PagerExecutionError::NextPageError(n) => next_page_is_transient(n),
        _ => true,
    };
    classified(transient, context, &e)
}

pub(crate) fn next_row(context: &str, e: NextRowError) -> Error {
    let transient = match &e {
        NextRowError::NextPageError(n) => next_page_is_transient(n),
        _ => false,
    };
    classified(transient, context, &e)
}

fn next_page_is_transient(e: &NextPageError) -> bool {
    match e {
        NextPageError::RequestFailure(r) => match r {
            RequestError::LastAttemptError(a) => attempt_is_transient(a),
            _ => true,
        },
        _ => false,
    }
}

fn execution_is_transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::BadQuery(_) => false,
        ExecutionError::PrepareError(p) => prepare_is_transient(p),
        ExecutionError::LastAttemptError(a) => attempt_is_transient(a),
        // Timeouts, empty plans, pools without connections, schema
        // agreement and metadata fetches: the cluster may answer later.
        _ => true,
    }
}

fn prepare_is_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_transient(first_attempt),
        PrepareError::PreparedStatementIdsMismatch => false,
        _ => true,
    }
}

fn attempt_is_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => db_is_transient(db),
        RequestAttemptError::UnableToAllocStreamId | RequestAttemptError::BrokenConnectionError(_) => true,
        _ => false,
    }
}

fn db_is_transient(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
            | DbError::Unprepared { .. }
    )
}

/// Whether a conditional statement may have been applied although the
/// driver reports an error (a timeout or a connection lost after sending).
pub(crate) fn outcome_unknown(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::BrokenConnectionError(_) => true,
            RequestAttemptError::DbError(db, _) => {
                matches!(db, DbError::WriteTimeout { .. } | DbError::WriteFailure { .. } | DbError::ServerError)
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_types::ErrorCode;
    use scylla::frame::types::Consistency;

    #[test]
    fn timeouts_are_unavailable_and_schema_errors_internal() {
        let timeout = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::ReadTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                data_present: false,
            },
            "Operation timed out".into(),
        ));
        let e = execution("read head", timeout);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.message, e.message.to_lowercase());
        let invalid = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            "unconfigured table user_log".into(),
        ));
        assert_eq!(execution("read", invalid).code, ErrorCode::Internal);
        assert!(outcome_unknown(&ExecutionError::RequestTimeout(std::time::Duration::from_secs(1))));
        assert!(!outcome_unknown(&ExecutionError::EmptyPlan));
        assert_eq!(execution("x", ExecutionError::EmptyPlan).code, ErrorCode::Unavailable);
    }
}
