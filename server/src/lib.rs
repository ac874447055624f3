//! Kinesis Butler server: consumes Amazon Kinesis Data Streams on behalf of gRPC clients.
//!
//! A record travels Kinesis → [`reader`] (one task per leased shard) → the session's
//! bounded outbox → [`service`] (the `GetRecords` stream). A checkpoint travels
//! [`service`] → [`butler::Butler::checkpoint`] → [`store::LeaseStore::checkpoint`],
//! fenced by the lease epoch. [`group`] workers keep leases, sessions and readers in
//! step, using the [`balancer`]'s plan.

#![warn(missing_docs)]

pub mod auth;
pub mod balancer;
pub mod butler;
pub mod config;
pub mod config_file;
pub mod error;
pub mod fanout;
pub mod get_records_decoder;
pub mod group;
pub mod health;
pub mod kinesis;
pub mod kpl;
pub mod leases_cli;
pub mod metrics;
pub mod reader;
pub mod redact;
pub mod seqnum;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
