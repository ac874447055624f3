//! The client's `tracing` events (INFO and above) as records of the Python logger
//! `kinesis_butler`, so that reconnects, lease losses and handler retries show up where
//! Python programs look for them (by default: warnings on stderr).

use std::fmt::Write as _;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

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

struct PythonLogging;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for PythonLogging {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        attrs.record(&mut collect);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collect.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => 40,
            Level::WARN => 30,
            Level::INFO => 20,
            _ => return,
        };
        let mut collect = Collect::default();
        event.record(&mut collect);
        let mut text = collect.message;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    text.push_str(&fields.0);
                }
            }
        }
        text.push_str(&collect.fields);
        // Not while the interpreter shuts down.
        let _ = crate::attach::attached(|py| log(py, level, &text));
    }
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("logging")?.call_method1("getLogger", ("kinesis_butler",))?.unbind())
        })
        .map(|l| l.bind(py))
}

/// Logs `text` at `level` (a `logging` level number) on the `kinesis_butler` logger.
pub(crate) fn log(py: Python<'_>, level: i32, text: &str) -> PyResult<()> {
    let logger = logger(py)?;
    if logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
        logger.call_method1("log", (level, "%s", text))?;
    }
    Ok(())
}

/// Logs `text` with the exception's traceback at WARNING.
pub(crate) fn log_exception(py: Python<'_>, text: &str, error: &PyErr) {
    let _ = (|| -> PyResult<()> {
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("exc_info", error.value(py))?;
        logger(py)?.call_method("warning", ("%s", text), Some(&kwargs))?;
        Ok(())
    })();
}

/// Installs the bridge as the process's `tracing` subscriber (unless one is set).
pub(crate) fn install() {
    let filter = tracing_subscriber::filter::Targets::new().with_target("kinesis_butler_client", Level::INFO);
    let _ = tracing_subscriber::registry().with(PythonLogging.with_filter(filter)).try_init();
}
