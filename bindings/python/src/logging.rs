//! The client's `tracing` events as records of the Python logger `kinesis_butler`, with
//! their fields (stream, shard, epoch, error…) as `extra` attributes of the record, so
//! that reconnects, lease losses and handler retries show up where Python programs look
//! for them (by default: warnings on stderr). DEBUG events are forwarded while the
//! logger is enabled for DEBUG when a run starts.

use kinesis_butler_client as kb;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use tracing::Level;

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("logging")?.call_method1("getLogger", ("kinesis_butler",))?.unbind())
        })
        .map(|l| l.bind(py))
}

/// Attributes `logging.LogRecord` sets itself: a field of that name is passed as
/// `kb_<name>` (`extra` may not overwrite them).
const RESERVED: &[&str] = &[
    "name",
    "msg",
    "args",
    "levelname",
    "levelno",
    "pathname",
    "filename",
    "module",
    "exc_info",
    "exc_text",
    "stack_info",
    "lineno",
    "funcName",
    "created",
    "msecs",
    "relativeCreated",
    "thread",
    "threadName",
    "processName",
    "process",
    "message",
    "asctime",
    "taskName",
];

/// Logs one event on the `kinesis_butler` logger, its fields as `extra`.
fn log_event(py: Python<'_>, event: &kb::LogEvent) -> PyResult<()> {
    let level = match event.level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        _ => 10,
    };
    let logger = logger(py)?;
    if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
        return Ok(());
    }
    let extra = PyDict::new(py);
    for (key, value) in &event.fields {
        if RESERVED.contains(&key.as_str()) {
            extra.set_item(format!("kb_{key}"), value)?;
        } else {
            extra.set_item(key, value)?;
        }
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("extra", extra)?;
    logger.call_method("log", (level, "%s", &event.message), Some(&kwargs))?;
    Ok(())
}

/// Logs `text` with the exception's traceback at WARNING.
pub(crate) fn log_exception(py: Python<'_>, text: &str, error: &PyErr) {
    let _ = (|| -> PyResult<()> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", error.value(py))?;
        logger(py)?.call_method("warning", ("%s", text), Some(&kwargs))?;
        Ok(())
    })();
}

/// Forwards DEBUG events while the `kinesis_butler` logger is enabled for DEBUG (checked
/// when a run starts: asking Python on every event would cost the GIL each time).
pub(crate) fn follow_python_level(py: Python<'_>) {
    let debug = logger(py).and_then(|l| l.call_method1("isEnabledFor", (10,))?.is_truthy()).unwrap_or(false);
    kb::set_log_level(if debug { Level::DEBUG } else { Level::INFO });
}

/// Installs the bridge as the process's `tracing` subscriber (unless one is set).
pub(crate) fn install() {
    kb::forward_log_events(|event| {
        // Not while the interpreter shuts down.
        let _ = crate::attach::attached(|py| log_event(py, &event));
    });
}
