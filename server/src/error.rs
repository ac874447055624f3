//! The core's error type, mapped once to a gRPC status.

use crate::retrieval::kinesis::KinesisError;
use crate::store::StoreError;

/// Why a request failed, in the terms the client acts on.
#[derive(Debug, thiserror::Error)]
pub enum ButlerError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named stream, shard or session does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The lease is not held at the epoch named.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (store, Kinesis) is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl ButlerError {
    /// The gRPC code name, for metrics labels.
    pub fn code_name(&self) -> &'static str {
        match self {
            ButlerError::InvalidArgument(_) => "invalid_argument",
            ButlerError::NotFound(_) => "not_found",
            ButlerError::FailedPrecondition(_) => "failed_precondition",
            ButlerError::Unavailable(_) => "unavailable",
            ButlerError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ButlerError {
    fn from(e: StoreError) -> Self {
        let text = e.to_string();
        match e {
            StoreError::NotFound { .. } => ButlerError::NotFound(text),
            StoreError::LeaseLost { .. } => ButlerError::FailedPrecondition(text),
            StoreError::Regression { .. } => ButlerError::InvalidArgument(text),
            StoreError::Unavailable(_) => ButlerError::Unavailable(text),
            StoreError::Backend(_) => ButlerError::Internal(text),
        }
    }
}

impl From<KinesisError> for ButlerError {
    fn from(e: KinesisError) -> Self {
        let text = e.to_string();
        match e {
            KinesisError::NotFound(_) => ButlerError::NotFound(text),
            KinesisError::Rejected(_) => ButlerError::InvalidArgument(text),
            _ => ButlerError::Unavailable(text),
        }
    }
}

impl From<ButlerError> for tonic::Status {
    fn from(e: ButlerError) -> Self {
        match e {
            ButlerError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ButlerError::NotFound(m) => tonic::Status::not_found(m),
            ButlerError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ButlerError::Unavailable(m) => tonic::Status::unavailable(m),
            ButlerError::Internal(m) => tonic::Status::internal(m),
        }
    }
}
