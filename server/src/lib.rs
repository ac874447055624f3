//! Kinesis Butler server: consumes Amazon Kinesis Data Streams on behalf of gRPC clients.
//!
//! A record travels Kinesis → `retrieval::reader` (one task per leased shard) → the
//! session's bounded outbox → `api::service` (the `GetRecords` stream). A checkpoint
//! travels `api::service` → `coordination::butler` → [`store`], fenced by the lease
//! epoch. `coordination::group` workers keep leases, sessions and readers in step, using
//! the pure `coordination::decide` and `coordination::balancer`. The library's public
//! surface is what the binary and the tests use: [`server::serve`], [`cli`], [`store`],
//! [`retrieval::source`] with its in-memory and aws-sdk implementations, [`seqnum`].

#![warn(missing_docs, unreachable_pub)]

pub(crate) mod api;
pub mod cli;
pub mod clock;
pub mod coordination;
pub(crate) mod error;
pub(crate) mod metrics;
pub(crate) mod redact;
pub mod retrieval;
pub mod seqnum;
pub mod server;
pub(crate) mod status;
pub mod store;
