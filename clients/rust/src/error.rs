//! The client's errors: one enum with stable kinds, so that bindings can map each kind
//! to an exception class once.

use std::fmt;

/// Any error of the consumer or of a checkpoint call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached, or the connection broke (after the retries
    /// the options allow).
    #[error("cannot reach the Kinesis Butler server at {endpoint}: {message}")]
    Connection {
        /// The endpoint dialed.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The shard's lease is no longer held by this consumer at the epoch it was given
    /// (it moved to another consumer, or the session ended). Its checkpoints fail.
    #[error("shard {shard_id} of stream {stream} is no longer held at lease epoch {epoch}: {message}")]
    LeaseLost {
        /// Stream name.
        stream: String,
        /// Shard id.
        shard_id: String,
        /// The lease epoch the checkpoint carried.
        epoch: u64,
        /// The server's explanation.
        message: String,
    },
    /// A handler failed on a batch after every retry (with [`crate::FailurePolicy::Stop`]).
    #[error("the handler failed on shard {shard_id} of stream {stream} after {attempts} attempt(s): {source}")]
    Handler {
        /// Stream name.
        stream: String,
        /// Shard id.
        shard_id: String,
        /// How many times the batch was handed to the handler.
        attempts: u32,
        /// The handler's last error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A setting or argument is invalid (also the server's `INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A stream (or session, or shard) does not exist (the server's `NOT_FOUND` when
    /// opening a session).
    #[error("not found: {0}")]
    NotFound(String),
    /// The server refused the credentials (bearer token or client certificate).
    #[error("the server refused the credentials: {0}")]
    Unauthenticated(String),
    /// The consumer was stopped while the operation waited.
    #[error("the consumer is stopped (a stopped consumer does not run again: create a new one)")]
    Stopped,
    /// Any other answer of the server.
    #[error("the server answered {code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

/// The stable category of an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`Error::Connection`].
    Connection,
    /// [`Error::LeaseLost`].
    LeaseLost,
    /// [`Error::Handler`].
    Handler,
    /// [`Error::InvalidArgument`].
    InvalidArgument,
    /// [`Error::NotFound`].
    NotFound,
    /// [`Error::Unauthenticated`].
    Unauthenticated,
    /// [`Error::Stopped`].
    Stopped,
    /// [`Error::Server`].
    Server,
}

impl ErrorKind {
    /// A short snake_case name, stable across versions (for bindings and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Handler => "handler",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Stopped => "stopped",
            ErrorKind::Server => "server",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// This error's category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connection { .. } => ErrorKind::Connection,
            Error::LeaseLost { .. } => ErrorKind::LeaseLost,
            Error::Handler { .. } => ErrorKind::Handler,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::Stopped => ErrorKind::Stopped,
            Error::Server { .. } => ErrorKind::Server,
        }
    }

    /// Maps a status of `GetRecords` (opening a session) or any call not about a lease.
    pub(crate) fn from_status(endpoint: &str, status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::InvalidArgument => Error::InvalidArgument(message),
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Error::Unauthenticated(message),
            code if is_transient(code) => {
                Error::Connection { endpoint: endpoint.to_owned(), message: describe(status) }
            }
            code => Error::Server { code, message },
        }
    }

    /// The gRPC status code name behind this error (`"UNAVAILABLE"`, `"NOT_FOUND"`…),
    /// when a status is behind it: for [`Error::Server`] its code; for the kinds that map
    /// one code, that code. `None` for [`Error::Connection`] and [`Error::LeaseLost`]
    /// (several causes), [`Error::Handler`] and [`Error::Stopped`].
    pub fn grpc_code(&self) -> Option<&'static str> {
        Some(match self {
            Error::Server { code, .. } => code_name(*code),
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::Connection { .. } | Error::LeaseLost { .. } | Error::Handler { .. } | Error::Stopped => return None,
        })
    }

    /// Whether trying the same operation again later may succeed (a connection loss, a
    /// transient server answer); bindings expose it as `retryable`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connection { .. } => true,
            Error::Server { code, .. } => is_transient(*code),
            _ => false,
        }
    }

    /// Whether a reconnect cannot help.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidArgument | ErrorKind::NotFound | ErrorKind::Handler | ErrorKind::Unauthenticated
        )
    }
}

/// Codes worth retrying: the server or the path to it is (maybe briefly) unwell.
pub(crate) fn is_transient(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | Unknown | DeadlineExceeded | ResourceExhausted | Aborted | Internal | Cancelled)
}

/// The canonical upper-case name of a gRPC code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status in one line, including its transport cause when there is one.
pub(crate) fn describe(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a handler returns when it could not handle a batch.
///
/// Any `std::error::Error + Send + Sync + 'static` converts into it, so `?` works in a
/// handler; [`HandlerError::msg`] makes one from text. [`HandlerError::at`] also names
/// the first record that failed (a partial failure report): the consumer then counts
/// every record before it as handled, checkpoints right before it and retries from it.
pub struct HandlerError {
    error: Box<dyn std::error::Error + Send + Sync>,
    failed: Option<(String, u64)>,
}

impl HandlerError {
    /// Wraps an error, or anything that converts into a boxed error (`String`, `&str`).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { error: error.into(), failed: None }
    }

    /// An error with only a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new(message.to_string())
    }

    /// A failure at `record` (a record of the batch): the records before it are done.
    pub fn at(record: &crate::Record, error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::at_sequence(&record.sequence_number, record.sub_sequence_number, error)
    }

    /// [`HandlerError::at`] by the record's sequence and sub-sequence number.
    pub fn at_sequence(
        sequence_number: &str,
        sub_sequence_number: u64,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { error: error.into(), failed: Some((sequence_number.to_owned(), sub_sequence_number)) }
    }

    /// The first failed record's sequence and sub-sequence number, when the handler named it.
    pub fn failed_record(&self) -> Option<(&str, u64)> {
        self.failed.as_ref().map(|(s, n)| (s.as_str(), *n))
    }

    /// The wrapped error.
    pub fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync> {
        self.error
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::new(Box::new(error) as Box<dyn std::error::Error + Send + Sync>)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_stable_kinds() {
        let kind = |s: tonic::Status| Error::from_status("http://x", &s).kind();
        assert_eq!(kind(tonic::Status::invalid_argument("bad")), ErrorKind::InvalidArgument);
        assert_eq!(kind(tonic::Status::not_found("no stream")), ErrorKind::NotFound);
        assert_eq!(kind(tonic::Status::unavailable("down")), ErrorKind::Connection);
        assert_eq!(kind(tonic::Status::permission_denied("no")), ErrorKind::Unauthenticated);
        assert_eq!(kind(tonic::Status::unauthenticated("token")), ErrorKind::Unauthenticated);
        assert_eq!(kind(tonic::Status::resource_exhausted("busy")), ErrorKind::Connection);
        assert_eq!(kind(tonic::Status::unimplemented("old server")), ErrorKind::Server);
        assert!(Error::from_status("x", &tonic::Status::unauthenticated("")).is_permanent());
        assert!(Error::from_status("x", &tonic::Status::not_found("")).is_permanent());
        assert!(!Error::from_status("x", &tonic::Status::unavailable("")).is_permanent());
        assert_eq!(ErrorKind::LeaseLost.to_string(), "lease_lost");
    }

    #[test]
    fn errors_name_their_grpc_code_and_whether_a_retry_may_help() {
        let server = |code| Error::Server { code, message: String::new() };
        assert_eq!(server(tonic::Code::Unimplemented).grpc_code(), Some("UNIMPLEMENTED"));
        assert!(!server(tonic::Code::Unimplemented).is_retryable());
        assert!(server(tonic::Code::Unavailable).is_retryable());
        assert_eq!(Error::NotFound("x".into()).grpc_code(), Some("NOT_FOUND"));
        assert!(!Error::NotFound("x".into()).is_retryable());
        let connection = Error::Connection { endpoint: "e".into(), message: "m".into() };
        assert_eq!((connection.grpc_code(), connection.is_retryable()), (None, true));
        assert_eq!((Error::Stopped.grpc_code(), Error::Stopped.is_retryable()), (None, false));
    }

    #[test]
    fn handler_errors_convert_from_errors_and_text() {
        fn io() -> Result<(), HandlerError> {
            Err(std::io::Error::other("disk full"))?;
            Ok(())
        }
        assert_eq!(io().unwrap_err().to_string(), "disk full");
        assert_eq!(HandlerError::msg(format!("bad record {}", 7)).to_string(), "bad record 7");
        assert_eq!(HandlerError::new("plain").into_inner().to_string(), "plain");
        let at = HandlerError::at_sequence("42", 3, "bad");
        assert_eq!((at.failed_record(), at.to_string()), (Some(("42", 3)), "bad".to_owned()));
        assert_eq!(HandlerError::msg("x").failed_record(), None);
    }
}
