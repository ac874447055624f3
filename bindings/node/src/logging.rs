//! The client's `tracing` events passed to a JavaScript logger with their structure
//! (level, message, fields), so that reconnects, lost leases and handler retries are
//! visible (by default `index.js` prints warnings and errors to stderr). `index.js`
//! adapts a `console`- or pino-like logger object to the function this module calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tracing::Level;

/// One log event of the client.
#[napi(object)]
pub struct LogEvent {
    /// `error`, `warn`, `info` or `debug`.
    #[napi(ts_type = "'error' | 'warn' | 'info' | 'debug'")]
    pub level: String,
    /// The message, without the fields.
    pub message: String,
    /// The event's and its spans' fields (stream, shard, epoch, error…), as text.
    pub fields: HashMap<String, String>,
}

/// Weak: a logger never keeps the process alive.
type Logger = ThreadsafeFunction<LogEvent, (), LogEvent, Status, false, true>;

static LOGGER: Mutex<Option<Arc<Logger>>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// Sets the function receiving the client's log events (`null`: none), and the most
/// detailed level forwarded (`info` by default; `debug` adds checkpoints and routing).
#[napi(ts_args_type = "logger: ((event: LogEvent) => void) | null, level?: 'error' | 'warn' | 'info' | 'debug' | null")]
pub fn set_logger(logger: Option<Logger>, level: Option<String>) {
    INSTALL.call_once(|| {
        kinesis_butler_client::forward_log_events(|event| {
            let level = match event.level {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                _ => "debug",
            };
            if let Some(logger) = LOGGER.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                let event = LogEvent {
                    level: level.to_owned(),
                    message: event.message,
                    fields: event.fields.into_iter().collect(),
                };
                logger.call(event, ThreadsafeFunctionCallMode::NonBlocking);
            }
        });
    });
    kinesis_butler_client::set_log_level(match level.as_deref() {
        Some("debug") => Level::DEBUG,
        Some("warn") => Level::WARN,
        Some("error") => Level::ERROR,
        _ => Level::INFO,
    });
    *LOGGER.lock().unwrap_or_else(|e| e.into_inner()) = logger.map(Arc::new);
}
