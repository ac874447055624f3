//! The client's `tracing` events (INFO and above) passed to a JavaScript logger, so that
//! reconnects, lost leases and handler retries are visible (by default `index.js` prints
//! warnings and errors to stderr).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Once};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

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
        let filter = tracing_subscriber::filter::Targets::new().with_target("kinesis_butler_client", Level::INFO);
        let _ = tracing_subscriber::registry().with(ToJavaScript.with_filter(filter)).try_init();
    });
    *LOGGER.lock().unwrap_or_else(|e| e.into_inner()) = logger.map(Arc::new);
}

/// `key=value` pairs of a span, kept in its extensions.
struct SpanFields(String);

#[derive(Default)]
struct Collect {
    message: String,
    fields: String,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

struct ToJavaScript;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ToJavaScript {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        attrs.record(&mut collect);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collect.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            _ => return,
        };
        let Some(logger) = LOGGER.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mut collect = Collect::default();
        event.record(&mut collect);
        let mut message = collect.message;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    message.push_str(&fields.0);
                }
            }
        }
        message.push_str(&collect.fields);
        logger.call(LogEvent { level: level.to_owned(), message }, ThreadsafeFunctionCallMode::NonBlocking);
    }
}
