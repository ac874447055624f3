//! The Rust client of Kinesis Butler: a handler loop with automatic checkpointing.
//!
//! A Kinesis Butler server owns the hard parts of consuming Amazon Kinesis — shard
//! discovery, leases, balancing, failover, resharding — and streams records over gRPC.
//! This crate is the one implementation of the client side of that protocol (the
//! Python and Node packages wrap it): you write a [`Handler`], a [`Consumer`] runs it.
//!
//! # Example
//!
//! ```no_run
//! use kinesis_butler_client::{Batch, CheckpointPolicy, Consumer, ConsumerOptions, HandlerError};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), kinesis_butler_client::Error> {
//!     let options = ConsumerOptions {
//!         checkpoint: CheckpointPolicy::EveryRecords(500),
//!         ..ConsumerOptions::default()
//!     };
//!     let consumer = Consumer::new("http://127.0.0.1:50051", "my-app", ["orders"], options)?;
//!
//!     // Stop on Ctrl-C: batches in hand finish, progress is checkpointed, the session
//!     // closes and its shards move to other consumers at once.
//!     let stop = consumer.stop_token();
//!     tokio::spawn(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         stop.cancel();
//!     });
//!
//!     consumer
//!         .run(|batch: Batch| async move {
//!             for record in batch.records() {
//!                 let text = std::str::from_utf8(&record.data)?;
//!                 println!("{} {} {text}", batch.shard_id(), record.sequence_number);
//!             }
//!             Ok::<(), HandlerError>(())
//!         })
//!         .await
//! }
//! ```
//!
//! # How it works
//!
//! [`Consumer::run`] opens a `GetRecords` session; the server assigns it shards and
//! streams their batches, all over that one gRPC stream. The consumer reads the stream
//! continuously and routes each event to the worker task of its shard:
//!
//! - **Order and concurrency.** A shard's batches reach the handler one at a time, in
//!   sequence order; different shards run concurrently, at most
//!   [`ConsumerOptions::max_concurrent_handlers`] handler calls at once. A shard given to
//!   this consumer again (new lease) starts only after the previous worker of the same
//!   shard finished its batch in hand.
//! - **Checkpoints.** After the handler returns `Ok`, the consumer checkpoints by
//!   [`CheckpointPolicy`]: every batch (default), every N records, every T seconds, or
//!   never on its own (manual: [`Batch::checkpointer`]). Checkpoints carry the lease
//!   epoch, so a consumer that lost a shard can never move its checkpoint.
//! - **Failures.** A handler error, panic or timeout is retried with backoff
//!   ([`ConsumerOptions::max_attempts`], [`ConsumerOptions::handler_retries`]); the
//!   checkpoint does not move past a record until it was handled or given up. A handler
//!   may name the first failed record ([`HandlerError::at`]): the records before it are
//!   done, the checkpoint moves right before it and the retry starts at it (a manual
//!   checkpoint inside the call shrinks the retry too); [`ConsumerOptions::bisect_on_error`]
//!   splits a failing batch to find the record otherwise. When the attempts run out,
//!   [`FailurePolicy::Stop`] (default) stops the consumer gracefully and `run` returns
//!   [`ErrorKind::Handler`]; [`FailurePolicy::Skip`] logs and goes on;
//!   [`FailurePolicy::DeadLetter`] sends each record to a [`DeadLetterTarget`] and goes
//!   on only once it accepted them. A timed-out call is cancelled
//!   ([`Batch::cancelled`]); a [`Handler::keeps_running_when_dropped`] call is awaited
//!   first, so one shard never has two calls at once. [`Consumer::stats`] counts it all.
//! - **Lanes.** [`ConsumerOptions::parallelization_factor`] splits a shard's records by
//!   partition key into up to 10 lanes handled concurrently, each key in order.
//! - **Revoke.** On `ShardRevoked{REBALANCE|SHUTDOWN}` the worker finishes the batch in
//!   hand, drops its queued batches, checkpoints what was handled and releases the shard
//!   (`Checkpoint{release: true}`); the next owner starts right after that checkpoint, so
//!   no batch is handled by both. On `LEASE_LOST` queued work is dropped and nothing is
//!   checkpointed. On `ShardEnded` the worker handles the remaining batches, then stores
//!   `SHARD_END` (the server then frees the lease and opens the child shards).
//! - **Reconnects.** When the stream breaks (server restart, network), workers finish
//!   their batch in hand without checkpointing, and the consumer reconnects with
//!   exponential backoff and jitter ([`ConsumerOptions::reconnect_backoff`]); the new
//!   session resumes from the server's checkpoints (at-least-once delivery).
//! - **Graceful stop.** [`Consumer::stop`] (or cancelling [`Consumer::stop_token`]): no
//!   new batches are taken, batches in hand finish (bounded by
//!   [`ConsumerOptions::shutdown_timeout`]), handled progress is checkpointed, then the
//!   session is closed so that the server frees its shards at once.
//!
//! # Backpressure
//!
//! The server multiplexes every shard of a session on one stream with a bounded buffer,
//! so the consumer must never stop reading that stream because of one shard: that would
//! stall all the others. Instead each shard has a bounded queue of
//! [`ConsumerOptions::shard_queue_batches`] batches (memory is bounded by shards ×
//! (queue + 1) × batch size). When a batch arrives for a shard whose queue is full, the
//! consumer **sheds** that shard: it drops that batch and every later batch (and
//! `ShardEnded`) of the shard's lease, lets the handler work through the queued ones,
//! then checkpoints them and releases the shard. The server stops reading the shard on
//! release and gives it out again (to this or another consumer), which reads from the
//! checkpoint: the dropped batches are delivered again and nothing is lost. Other shards
//! are never affected.
//!
//! A handler that never returns keeps its shard (handing the shard on while a batch is
//! in hand would break the order guarantee); set [`ConsumerOptions::handler_timeout`] to
//! turn such a call into a failure. This needs no protocol change; the price is that a
//! shard whose handler is persistently slower than the stream is re-read from its
//! checkpoint after each overflow (a larger `shard_queue_batches` makes that rarer). In
//! [`CheckpointPolicy::Manual`] mode redelivery starts at the handler's last checkpoint
//! (or the start position when it made none).
//!
//! # Security
//!
//! An `https://` endpoint uses TLS, verified against the system roots or
//! [`TlsOptions::ca_certificate_pem`]; [`TlsOptions`] also carries a client certificate
//! for servers that require mutual TLS. [`ConsumerOptions::auth_token`] is sent as
//! `authorization: Bearer <token>` on every call. A refused credential ends
//! [`Consumer::run`] with [`ErrorKind::Unauthenticated`] instead of being retried.
//!
//! # Errors
//!
//! Every error has a stable [`ErrorKind`]: `connection` (server unreachable after the
//! allowed retries), `lease_lost` (a checkpoint for a shard that moved on),
//! `handler` (a batch failed every retry), `invalid_argument`, `not_found` (a stream
//! that does not exist), `unauthenticated`, `stopped`, `server` (any other status).
//! `run` retries connection losses itself; the other kinds end it.
//!
//! # For bindings
//!
//! [`Handler`] is object safe and returns boxed futures; a binding implements it on its
//! own type and passes it to [`Consumer::run_shared`]. Settings are the plain struct
//! [`ConsumerOptions`]; a binding fills [`RawOptions`] from its host's values (numbers
//! and names, before any check) and [`RawOptions::into_options`] applies every rule once,
//! with messages that name options in the binding's [`Spelling`]. Every error has a stable [`ErrorKind`] with a snake_case name
//! ([`ErrorKind::as_str`]) to map to an exception class. [`Consumer::stop`] may be called
//! from any thread; `run` then returns `Ok` once the shards are checkpointed.

#![warn(missing_docs)]

mod checkpointer;
mod connection;
mod consumer;
mod dead_letter;
mod defaults;
mod error;
mod failure;
mod handler;
mod lanes;
mod log_forward;
mod options;
mod policy;
mod rules;
/// The scripted in-process Butler of the integration tests, for the unit tests too.
#[cfg(test)]
#[path = "../tests/support/butler.rs"]
mod scripted;
mod session;
mod shard_worker;
mod stats;
#[cfg(test)]
mod test_support;

pub use bytes::Bytes;
pub use checkpointer::{check_record_shard, Checkpointer};
pub use consumer::{Consumer, Run};
pub use dead_letter::{DeadLetter, DeadLetterCallback, DeadLetterEntry, DeadLetterTarget, GiveUpReason};
pub use defaults::{endpoint_or_env, resolve_pem, token_or_env, PemSource, ENDPOINT_ENV, TOKEN_ENV};
pub use error::{Error, ErrorKind, HandlerError};
pub use handler::{Batch, Handler, Record, ShardInfo, StopReason};
pub use log_forward::{forward_log_events, forward_logs, set_log_level, LogEvent};
pub use options::{
    BackoffSettings, CheckpointPolicy, ConsumerOptions, FailurePolicy, RawOptions, StartPosition, TlsOptions,
    UnknownValue,
};
pub use rules::Spelling;
pub use stats::{ShardStats, Stats};
pub use tokio_util::sync::CancellationToken;
