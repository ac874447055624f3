//! The client's `tracing` events (INFO and above) passed to a JavaScript logger, so that
//! reconnects, lost leases and handler retries are visible (by default `index.js` prints
//! warnings and errors to stderr).

use std::sync::{Arc, Mutex, Once};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tracing::Level;

/// One log event of the client.
#[napi(object)]
pub struct LogEvent {
    /// `error`, `warn` or `info`.
    #[napi(ts_type = "'error' | 'warn' | 'info'")]
    pub level: String,
    pub message: String,
}

/// Weak: a logger never keeps the process alive.
type Logger = ThreadsafeFunction<LogEvent, (), LogEvent, Status, false, true>;

static LOGGER: Mutex<Option<Arc<Logger>>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// Sets the function receiving the client's log events (`null`: none).
#[napi(ts_args_type = "logger: ((event: LogEvent) => void) | null")]
pub fn set_logger(logger: Option<Logger>) {
    INSTALL.call_once(|| {
        kinesis_butler_client::forward_logs(|level, message| {
            let level = match level {
                Level::ERROR => "error",
                Level::WARN => "warn",
                _ => "info",
            };
            if let Some(logger) = LOGGER.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                logger.call(LogEvent { level: level.to_owned(), message }, ThreadsafeFunctionCallMode::NonBlocking);
            }
        });
    });
    *LOGGER.lock().unwrap_or_else(|e| e.into_inner()) = logger.map(Arc::new);
}
