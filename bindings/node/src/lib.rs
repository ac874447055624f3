//! Node.js bindings of the Kinesis Butler client (napi-rs): the native half of the npm
//! package `kinesis-butler`, wrapped by `index.js`.
//!
//! Everything about the protocol, retries and checkpoints lives in
//! `kinesis-butler-client`; this crate only adapts it: a JavaScript function as the
//! handler (called on the JS thread through a threadsafe function; its Promise is awaited
//! without blocking anything), batches as objects with `Buffer` payloads, an options
//! object, and errors as plain `{ kind, message, … }` values that `index.js` turns into
//! `Error` subclasses with a `code`.

#![deny(clippy::all)]

use std::sync::Arc;

use futures::future::BoxFuture;
use kinesis_butler_client as kb;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;

// The client's own allocations (batches of thousands of records a few times a second)
// use mimalloc inside this module; payloads handed to the host runtime are copied or
// freed by this module's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod failure;
pub mod logging;

/// An error of the client, as `index.js` receives it (it throws the matching class).
#[napi(object)]
pub struct ErrorInfo {
    /// `connection`, `lease_lost`, `handler`, `invalid_argument`, `not_found`,
    /// `unauthenticated`, `stopped`, `server`.
    pub kind: String,
    pub message: String,
    pub endpoint: Option<String>,
    pub stream: Option<String>,
    pub shard_id: Option<String>,
    pub lease_epoch: Option<i64>,
    pub attempts: Option<u32>,
    /// The gRPC status code name behind the error (`UNAVAILABLE`…), when there is one.
    pub grpc_code: Option<String>,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

impl From<kb::Error> for ErrorInfo {
    fn from(error: kb::Error) -> Self {
        let mut info = ErrorInfo {
            kind: error.kind().as_str().to_owned(),
            message: error.to_string(),
            endpoint: None,
            stream: None,
            shard_id: None,
            lease_epoch: None,
            attempts: None,
            grpc_code: error.grpc_code().map(str::to_owned),
            retryable: error.is_retryable(),
        };
        match error {
            kb::Error::Connection { endpoint, .. } => info.endpoint = Some(endpoint),
            kb::Error::LeaseLost { stream, shard_id, epoch, .. } => {
                info.stream = Some(stream);
                info.shard_id = Some(shard_id);
                info.lease_epoch = Some(epoch as i64);
            }
            kb::Error::Handler { stream, shard_id, attempts, .. } => {
                info.stream = Some(stream);
                info.shard_id = Some(shard_id);
                info.attempts = Some(attempts);
            }
            _ => {}
        }
        info
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, message.into())
}

/// TLS settings for an `https://` endpoint: each PEM text, a file path (a string
/// without a `-----BEGIN` line) or a `Buffer` of the contents.
#[napi(object)]
pub struct TlsOptions {
    /// The CA that signed the server's certificate (instead of the system roots).
    pub ca_certificate_pem: Option<Either<String, Buffer>>,
    /// The name the server's certificate must carry, when not the endpoint's host.
    pub domain_name: Option<String>,
    /// Certificate chain for servers that require client certificates.
    pub client_certificate_pem: Option<Either<String, Buffer>>,
    /// Private key of `clientCertificatePem`.
    pub client_key_pem: Option<Either<String, Buffer>>,
}

/// TLS material as given, by the client's one rule ([`kb::resolve_pem`]).
fn pem(option: &str, value: Option<Either<String, Buffer>>) -> std::result::Result<Option<String>, kb::Error> {
    value
        .map(|v| {
            let source = match v {
                Either::A(text) => kb::PemSource::Text(text),
                Either::B(bytes) => kb::PemSource::Contents(bytes.to_vec()),
            };
            kb::resolve_pem(option, source)
        })
        .transpose()
}

/// Settings of a consumer, as `index.js` passes them (durations in milliseconds; counts
/// as numbers, which `index.js` checked to be integers). Every rule on the values is the
/// client's (`RawOptions`, options named in camelCase).
#[napi(object)]
pub struct NativeOptions {
    pub client_name: Option<String>,
    pub auth_token: Option<String>,
    pub tls: Option<TlsOptions>,
    /// `trim_horizon` or `latest`.
    #[napi(ts_type = "'trim_horizon' | 'latest'")]
    pub start: Option<String>,
    /// Start at this time (ms since the epoch) instead.
    pub start_timestamp_ms: Option<f64>,
    pub max_records_per_batch: Option<f64>,
    /// `batch` or `manual`.
    #[napi(ts_type = "'batch' | 'manual'")]
    pub checkpoint: Option<String>,
    pub checkpoint_every_records: Option<f64>,
    pub checkpoint_interval_ms: Option<f64>,
    pub max_concurrent_handlers: Option<f64>,
    pub shard_queue_batches: Option<f64>,
    pub handler_retries: Option<f64>,
    pub retry_initial_delay_ms: Option<f64>,
    pub retry_max_delay_ms: Option<f64>,
    /// `stop`, `skip`, `kinesis:STREAM` or `file:PATH` (a function goes separately).
    pub on_failure: Option<String>,
    pub max_attempts: Option<f64>,
    pub max_record_age_ms: Option<f64>,
    pub bisect_on_error: Option<bool>,
    pub parallelization_factor: Option<f64>,
    pub handler_timeout_ms: Option<f64>,
    pub reconnect_initial_delay_ms: Option<f64>,
    pub reconnect_max_delay_ms: Option<f64>,
    pub max_reconnect_attempts: Option<f64>,
    pub max_initial_connect_attempts: Option<f64>,
    pub request_timeout_ms: Option<f64>,
    pub shutdown_timeout_ms: Option<f64>,
}

/// A JavaScript integer as a whole number (saturating beyond 64 bits: out of every range).
fn whole(value: Option<f64>) -> Option<i64> {
    value.map(|n| n as i64)
}

impl NativeOptions {
    fn into_raw(self) -> std::result::Result<kb::RawOptions, kb::Error> {
        let tls = match self.tls {
            None => None,
            Some(t) => Some(kb::TlsOptions {
                ca_certificate_pem: pem("tls.caCertificatePem", t.ca_certificate_pem)?,
                domain_name: t.domain_name,
                client_certificate_pem: pem("tls.clientCertificatePem", t.client_certificate_pem)?,
                client_key_pem: pem("tls.clientKeyPem", t.client_key_pem)?,
            }),
        };
        Ok(kb::RawOptions {
            client_name: self.client_name,
            auth_token: self.auth_token,
            tls,
            start: self.start,
            start_timestamp_ms: self.start_timestamp_ms,
            max_records_per_batch: whole(self.max_records_per_batch),
            checkpoint: self.checkpoint,
            checkpoint_every_records: whole(self.checkpoint_every_records),
            checkpoint_interval: self.checkpoint_interval_ms,
            max_concurrent_handlers: whole(self.max_concurrent_handlers),
            shard_queue_batches: whole(self.shard_queue_batches),
            handler_retries: whole(self.handler_retries),
            retry_initial_delay: self.retry_initial_delay_ms,
            retry_max_delay: self.retry_max_delay_ms,
            on_failure: self.on_failure,
            on_failure_callback: None,
            max_attempts: whole(self.max_attempts),
            max_record_age: self.max_record_age_ms,
            bisect_on_error: self.bisect_on_error,
            parallelization_factor: whole(self.parallelization_factor),
            handler_timeout: self.handler_timeout_ms,
            reconnect_initial_delay: self.reconnect_initial_delay_ms,
            reconnect_max_delay: self.reconnect_max_delay_ms,
            max_reconnect_attempts: whole(self.max_reconnect_attempts),
            max_initial_connect_attempts: whole(self.max_initial_connect_attempts),
            request_timeout: self.request_timeout_ms,
            shutdown_timeout: self.shutdown_timeout_ms,
        })
    }
}

/// A client error thrown at construction: `InvalidArg` (an `InvalidArgumentError` in
/// `index.js`) with the client's message as it is.
fn construction_error(error: kb::Error) -> Error {
    match error {
        kb::Error::InvalidArgument(m) => invalid(m),
        other => Error::new(Status::GenericFailure, other.to_string()),
    }
}

/// The records of a batch in a few columns, so that crossing into JavaScript costs a
/// handful of values per batch instead of several per record; `index.js` slices them
/// into record objects (`data` is a view into one `Buffer` per batch).
#[napi(object)]
pub struct PackedRecords {
    /// Every payload, one after the other.
    pub data: Buffer,
    /// End offset of each payload in `data`.
    pub data_ends: Uint32Array,
    /// Every partition key, one after the other.
    pub partition_keys: String,
    /// End offset of each partition key, in UTF-16 code units.
    pub partition_key_ends: Uint32Array,
    /// Every sequence number, one after the other.
    pub sequence_numbers: String,
    /// End offset of each sequence number (ASCII digits).
    pub sequence_number_ends: Uint32Array,
    pub sub_sequence_numbers: Float64Array,
    pub approximate_arrival_timestamps_ms: Float64Array,
}

/// A batch handed to the handler; `index.js` wraps it as a `Batch`.
#[napi]
pub struct NativeBatch {
    batch: kb::Batch,
    /// Cancelled once the call returned.
    done: kb::CancellationToken,
}

#[napi]
impl NativeBatch {
    #[napi(getter)]
    pub fn stream(&self) -> String {
        self.batch.stream().to_owned()
    }

    #[napi(getter)]
    pub fn shard_id(&self) -> String {
        self.batch.shard_id().to_owned()
    }

    #[napi(getter)]
    pub fn lease_epoch(&self) -> i64 {
        self.batch.shard().lease_epoch as i64
    }

    #[napi(getter)]
    pub fn millis_behind_latest(&self) -> i64 {
        self.batch.millis_behind_latest()
    }

    #[napi(getter)]
    pub fn attempt(&self) -> u32 {
        self.batch.attempt()
    }

    /// Resolves `true` when the client gives up on this call (handler timeout, shutdown
    /// deadline: `index.js` aborts the batch's `AbortSignal`), `false` once it returned.
    #[napi]
    pub async fn cancelled(&self) -> bool {
        let (cancel, done) = (self.batch.cancellation_token().clone(), self.done.clone());
        tokio::select! {
            _ = cancel.cancelled() => true,
            _ = done.cancelled() => false,
        }
    }

    /// The records, in sequence order, as columns (see [`PackedRecords`]).
    #[napi]
    pub fn packed_records(&self) -> PackedRecords {
        let records = self.batch.records();
        let mut data = Vec::with_capacity(records.iter().map(|r| r.data.len()).sum());
        let mut data_ends = Vec::with_capacity(records.len());
        let (mut keys, mut key_ends, mut key_len) = (String::new(), Vec::with_capacity(records.len()), 0u32);
        let (mut seqs, mut seq_ends) = (String::new(), Vec::with_capacity(records.len()));
        let mut subs = Vec::with_capacity(records.len());
        let mut arrivals = Vec::with_capacity(records.len());
        for r in records {
            data.extend_from_slice(&r.data);
            data_ends.push(data.len() as u32);
            keys.push_str(&r.partition_key);
            key_len += r.partition_key.encode_utf16().count() as u32;
            key_ends.push(key_len);
            seqs.push_str(&r.sequence_number);
            seq_ends.push(seqs.len() as u32);
            subs.push(r.sub_sequence_number as f64);
            arrivals.push(r.approximate_arrival_timestamp_ms as f64);
        }
        PackedRecords {
            data: data.into(),
            data_ends: Uint32Array::new(data_ends),
            partition_keys: keys,
            partition_key_ends: Uint32Array::new(key_ends),
            sequence_numbers: seqs,
            sequence_number_ends: Uint32Array::new(seq_ends),
            sub_sequence_numbers: Float64Array::new(subs),
            approximate_arrival_timestamps_ms: Float64Array::new(arrivals),
        }
    }

    /// Checkpoints up to and including the record with this sequence number (of the
    /// shard `stream`/`shardId` it names: the client refuses a record of another shard,
    /// or one never delivered), or the whole batch; resolves `null` once stored, or the
    /// error.
    #[napi]
    pub async fn checkpoint(
        &self,
        sequence_number: Option<String>,
        sub_sequence_number: Option<i64>,
        stream: Option<String>,
        shard_id: Option<String>,
    ) -> Result<Option<ErrorInfo>> {
        let checkpointer = self.batch.checkpointer().clone();
        let result = match sequence_number {
            None => checkpointer.checkpoint().await,
            Some(seq) => {
                let sub = sub_sequence_number.unwrap_or(0).max(0) as u64;
                let stream = stream.unwrap_or_else(|| self.batch.stream().to_owned());
                let shard_id = shard_id.unwrap_or_else(|| self.batch.shard_id().to_owned());
                checkpointer.checkpoint_record_of(&stream, &shard_id, &seq, sub).await
            }
        };
        Ok(result.err().map(ErrorInfo::from))
    }
}

/// The client's rule that a batch checkpoints only records of its own shard
/// (`kb::check_record_shard`), for `testing.js`'s batches: `null` when the record is of
/// the batch's shard, else the refusal a real batch's `checkpoint` resolves (thrown
/// alike, an `InvalidArgumentError`).
#[napi]
pub fn check_record_shard(
    batch_stream: String,
    batch_shard_id: String,
    record_stream: String,
    record_shard_id: String,
) -> Option<ErrorInfo> {
    kb::check_record_shard(&batch_stream, &batch_shard_id, &record_stream, &record_shard_id).err().map(ErrorInfo::from)
}

/// The handler as `index.js` passes it: resolves `undefined` when the batch was handled,
/// or what the user's handler threw, described (`index.js` keeps the error itself).
type JsHandler = ThreadsafeFunction<NativeBatch, Promise<Option<failure::CallFailure>>, NativeBatch, Status, false>;

/// A shard hook call as `index.js` receives it (it calls the handler object's
/// `shardStarted(shard)` / `shardStopped(shard, reason)` and emits events).
#[napi(object)]
pub struct ShardEvent {
    #[napi(ts_type = "'started' | 'stopped'")]
    pub event: String,
    pub stream: String,
    pub shard_id: String,
    pub lease_epoch: i64,
    /// The stored checkpoint reading started after (empty when none).
    pub checkpoint: String,
    /// Why work on the shard ended (`stopped` only): the client's stable names.
    pub reason: Option<String>,
}

/// The hooks as `index.js` passes them: resolves once the user's hook is done (its
/// errors are logged by `index.js`).
type JsHooks = ThreadsafeFunction<ShardEvent, Promise<Option<String>>, ShardEvent, Status, false>;

struct NodeHandler {
    tsfn: Arc<JsHandler>,
    hooks: Option<Arc<JsHooks>>,
}

impl NodeHandler {
    fn hook(&self, shard: &kb::ShardInfo, reason: Option<kb::StopReason>) -> BoxFuture<'static, ()> {
        let Some(hooks) = self.hooks.clone() else {
            return Box::pin(async {});
        };
        let event = ShardEvent {
            event: if reason.is_some() { "stopped" } else { "started" }.to_owned(),
            stream: shard.stream.clone(),
            shard_id: shard.shard_id.clone(),
            lease_epoch: shard.lease_epoch as i64,
            checkpoint: shard.checkpoint.clone(),
            reason: reason.map(|r| r.as_str().to_owned()),
        };
        Box::pin(async move {
            if let Ok(promise) = hooks.call_async_catch(event).await {
                let _ = promise.await;
            }
        })
    }
}

impl kb::Handler for NodeHandler {
    fn handle(&self, batch: kb::Batch) -> BoxFuture<'static, std::result::Result<(), kb::HandlerError>> {
        let tsfn = self.tsfn.clone();
        Box::pin(async move {
            let done = kb::CancellationToken::new();
            let _returned = done.clone().drop_guard();
            let promise = tsfn
                .call_async_catch(NativeBatch { batch, done })
                .await
                .map_err(|e| kb::HandlerError::msg(format!("calling the handler failed: {}", e.reason)))?;
            match promise.await {
                Ok(None) => Ok(()),
                Ok(Some(thrown)) => Err(thrown.into_error()),
                Err(e) => Err(kb::HandlerError::msg(e.reason)),
            }
        })
    }

    fn shard_started(&self, shard: &kb::ShardInfo) -> BoxFuture<'static, ()> {
        self.hook(shard, None)
    }

    fn shard_stopped(&self, shard: &kb::ShardInfo, reason: kb::StopReason) -> BoxFuture<'static, ()> {
        self.hook(shard, Some(reason))
    }

    /// A Promise keeps running when its future is dropped: the client aborts the
    /// batch's signal and waits for it.
    fn keeps_running_when_dropped(&self) -> bool {
        true
    }
}

/// The native consumer; `index.js` exports the `Consumer` built on it.
#[napi]
pub struct NativeConsumer {
    inner: Arc<kb::Consumer>,
}

#[napi]
impl NativeConsumer {
    /// Throws `InvalidArg` errors for bad arguments (`index.js` checks the types first,
    /// the client every value).
    #[napi(
        constructor,
        ts_args_type = "endpoint: string | undefined | null, app: string, streams: Array<string>, options?: NativeOptions | undefined | null, onFailure?: ((entries: Array<DeadLetterInfo>) => Promise<string | undefined | null>) | undefined | null"
    )]
    pub fn new(
        env: napi::Env,
        endpoint: Option<String>,
        app: String,
        streams: Vec<String>,
        options: Option<NativeOptions>,
        on_failure: Option<failure::JsDeadLetter>,
    ) -> Result<Self> {
        // The callback lives as long as the consumer: only a running `run()` may keep the
        // process alive, not a stopped consumer that nobody collected yet.
        let on_failure = on_failure
            .map(|mut tsfn| {
                #[allow(deprecated)]
                tsfn.unref(&env).map(|()| tsfn)
            })
            .transpose()?;
        let endpoint = kb::endpoint_or_env(endpoint).map_err(construction_error)?;
        let mut raw = options.map(NativeOptions::into_raw).transpose().map_err(construction_error)?.unwrap_or_default();
        raw.on_failure_callback =
            on_failure.map(|tsfn| kb::DeadLetterCallback(Arc::new(failure::NodeDeadLetter { tsfn: Arc::new(tsfn) })));
        raw.client_name.get_or_insert_with(|| format!("node-{}", std::process::id()));
        raw.auth_token = kb::token_or_env(raw.auth_token.take());
        let options = raw.into_options(kb::Spelling::Camel).map_err(construction_error)?;
        let inner = kb::Consumer::new(endpoint, app, streams, options).map_err(construction_error)?;
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Runs `handler` until the consumer stops; resolves `null`, or the error that
    /// stopped it. The run begins at this call (a `stop()` right after it ends the run
    /// gracefully), not when the runtime first polls it.
    #[napi(
        ts_args_type = "handler: (batch: NativeBatch) => Promise<string | undefined | null>, hooks?: ((event: ShardEvent) => Promise<string | undefined | null>) | null",
        ts_return_type = "Promise<ErrorInfo | null>"
    )]
    pub fn run<'env>(
        &self,
        env: &'env Env,
        handler: JsHandler,
        hooks: Option<JsHooks>,
    ) -> Result<PromiseRaw<'env, Option<ErrorInfo>>> {
        let handler = Arc::new(NodeHandler { tsfn: Arc::new(handler), hooks: hooks.map(Arc::new) });
        let run = self.inner.begin(handler);
        env.spawn_future(async move {
            let result = match run {
                Ok(run) => run.finish().await,
                Err(e) => Err(e),
            };
            Ok(result.err().map(ErrorInfo::from))
        })
    }

    /// Stops gracefully: batches in hand finish and are checkpointed, then the session
    /// closes so that its shards move at once.
    #[napi]
    pub fn stop(&self) {
        self.inner.stop();
    }

    /// Counters and per-shard lag now.
    #[napi]
    pub fn stats(&self) -> failure::StatsInfo {
        self.inner.stats().into()
    }

    #[napi(getter)]
    pub fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }
}
