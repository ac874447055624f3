//! Kinesis Butler server: consumes Amazon Kinesis Data Streams on behalf of gRPC clients.
//!
//! A record travels Kinesis → [`retrieval::reader`] (one task per leased shard) → the session's
//! bounded outbox → [`api::service`] (the `GetRecords` stream). A checkpoint travels
//! [`api::service`] → [`coordination::butler::Butler::checkpoint`] → [`store::LeaseStore::checkpoint`],
//! fenced by the lease epoch. [`coordination::group`] workers keep leases, sessions and readers in
//! step, using the [`coordination::balancer`]'s plan.

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod coordination;
pub mod error;
pub mod metrics;
pub mod redact;
pub mod retrieval;
pub mod seqnum;
pub mod server;
pub mod store;
pub mod store2;
