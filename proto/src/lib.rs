//! Generated code for the Kinesis Butler gRPC protocol (`kinesis_butler.v1`).
//!
//! The contract lives in `proto/kinesis_butler/v1/butler.proto`; this crate is shared by
//! the server and the client so both always speak the same version.
//!
//! Beside the generated code, the few rules both sides must apply alike: [`names`]
//! (what an app or stream name may be) and [`backoff`] (retry delays with jitter).

#![allow(missing_docs)]

pub mod backoff;
pub mod codec;
pub mod names;

/// Messages and the `Butler` service of `kinesis_butler.v1`.
pub mod v1 {
    tonic::include_proto!("kinesis_butler.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("butler_descriptor");
}

pub use v1::*;
