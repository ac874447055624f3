//! The library's error type.

/// Why [`crate::run`] could not run or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MultilangError {
    /// The properties file could not be read.
    #[error("cannot read the properties file {path}: {source}")]
    ReadProperties {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The properties file is malformed or misses a required key.
    #[error("properties file: {0}")]
    Properties(String),
    /// A command-line setting is invalid.
    #[error("invalid setting: {0}")]
    InvalidArgument(String),
    /// The Kinesis Butler client failed (server unreachable, stream not found, ...).
    #[error(transparent)]
    Client(#[from] kinesis_butler_client::Error),
}
