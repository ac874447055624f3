//! The client's `tracing` events (INFO and above) as records of the Python logger
//! `kinesis_butler`, so that reconnects, lease losses and handler retries show up where
//! Python programs look for them (by default: warnings on stderr).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tracing::Level;

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
    kinesis_butler_client::forward_logs(|level, text| {
        let level = match level {
            Level::ERROR => 40,
            Level::WARN => 30,
            _ => 20,
        };
        // Not while the interpreter shuts down.
        let _ = crate::attach::attached(|py| log(py, level, &text));
    });
}
