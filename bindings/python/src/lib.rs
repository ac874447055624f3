//! Python bindings of the Kinesis Butler client: the extension module
//! `kinesis_butler._native`, wrapped by the pure-Python package `kinesis_butler`.
//!
//! Everything about the protocol, retries and checkpoints lives in
//! `kinesis-butler-client`; this crate only adapts it to Python: callables as handlers
//! (plain functions on worker threads, `async def` on the caller's asyncio loop),
//! `Batch`/`Record` objects, keyword options, exceptions, Ctrl-C, and the GIL released
//! while Rust waits.

use std::sync::Arc;
use std::time::Duration;

use kinesis_butler_client as kb;
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyString;

// The client's own allocations (batches of thousands of records a few times a second)
// use mimalloc inside this module; payloads handed to the host runtime are copied or
// freed by this module's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod attach;
mod errors;
mod failure;
mod handler;
mod logging;
mod options;
mod types;

use errors::{invalid_argument_error, to_py_err};
use handler::{Callables, PyHandler};
use options::{type_name, Kwargs};

/// The process's Tokio runtime (shared with `pyo3-async-runtimes`).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// How often a blocked `run()` looks for signals (Ctrl-C) while the GIL is released.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Reads streams of an app through a Kinesis Butler server and hands their records to a
/// handler, checkpointing for it.
#[pyclass(frozen, subclass, module = "kinesis_butler", name = "Consumer")]
struct PyConsumer {
    inner: Arc<kb::Consumer>,
    endpoint: String,
    app: String,
    streams: Vec<String>,
}

/// A name or an iterable of names; the rules on them are the client's.
fn stream_names(streams: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(one) = streams.cast::<PyString>() {
        return Ok(vec![one.to_cow()?.into_owned()]);
    }
    let iter = streams.try_iter().map_err(|_| {
        PyTypeError::new_err(format!("streams must be a stream name or a list of names, not {}", type_name(streams)))
    })?;
    let mut names = Vec::new();
    for item in iter {
        let item = item?;
        let name = item
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err(format!("stream names must be str, not {}", type_name(&item))))?;
        names.push(name.to_cow()?.into_owned());
    }
    Ok(names)
}

/// The handler's callables: the object itself when callable (else its `handle`
/// method), and its `shard_started` / `shard_stopped` methods when it has them.
fn callables(handler: &Bound<'_, PyAny>) -> PyResult<Callables> {
    let method = |name: &str| -> PyResult<Option<Py<PyAny>>> {
        match handler.getattr(name) {
            Ok(m) if m.is_callable() => Ok(Some(m.unbind())),
            Ok(m) if !m.is_none() => {
                Err(PyTypeError::new_err(format!("handler.{name} must be callable, not {}", type_name(&m))))
            }
            _ => Ok(None),
        }
    };
    let handle = if handler.is_callable() { Some(handler.clone().unbind()) } else { method("handle")? };
    let Some(handle) = handle else {
        return Err(PyTypeError::new_err(format!(
            "handler must be callable (a function or an async def taking a Batch) or an object with a handle(batch) method, not {}",
            type_name(handler)
        )));
    };
    Ok(Callables { handle, shard_started: method("shard_started")?, shard_stopped: method("shard_stopped")? })
}

#[pymethods]
impl PyConsumer {
    #[new]
    #[pyo3(signature = (
        endpoint, app, streams, *,
        client_name=None, auth_token=None, tls_ca_certificate_pem=None, tls_domain_name=None,
        tls_client_certificate_pem=None, tls_client_key_pem=None, start=None, max_records_per_batch=None,
        checkpoint=None, checkpoint_every_records=None, checkpoint_interval=None,
        max_concurrent_handlers=None, shard_queue_batches=None,
        handler_retries=None, retry_initial_delay=None, retry_max_delay=None, on_failure=None,
        handler_timeout=None, reconnect_initial_delay=None, reconnect_max_delay=None,
        max_reconnect_attempts=None, max_initial_connect_attempts=None, request_timeout=None, shutdown_timeout=None,
        max_attempts=None, max_record_age=None, bisect_on_error=None, parallelization_factor=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new<'py>(
        py: Python<'py>,
        endpoint: Option<String>,
        app: String,
        streams: &Bound<'py, PyAny>,
        client_name: Option<String>,
        auth_token: Option<String>,
        tls_ca_certificate_pem: Option<Bound<'py, PyAny>>,
        tls_domain_name: Option<String>,
        tls_client_certificate_pem: Option<Bound<'py, PyAny>>,
        tls_client_key_pem: Option<Bound<'py, PyAny>>,
        start: Option<Bound<'py, PyAny>>,
        max_records_per_batch: Option<Bound<'py, PyAny>>,
        checkpoint: Option<String>,
        checkpoint_every_records: Option<Bound<'py, PyAny>>,
        checkpoint_interval: Option<Bound<'py, PyAny>>,
        max_concurrent_handlers: Option<Bound<'py, PyAny>>,
        shard_queue_batches: Option<Bound<'py, PyAny>>,
        handler_retries: Option<Bound<'py, PyAny>>,
        retry_initial_delay: Option<Bound<'py, PyAny>>,
        retry_max_delay: Option<Bound<'py, PyAny>>,
        on_failure: Option<Bound<'py, PyAny>>,
        handler_timeout: Option<Bound<'py, PyAny>>,
        reconnect_initial_delay: Option<Bound<'py, PyAny>>,
        reconnect_max_delay: Option<Bound<'py, PyAny>>,
        max_reconnect_attempts: Option<Bound<'py, PyAny>>,
        max_initial_connect_attempts: Option<Bound<'py, PyAny>>,
        request_timeout: Option<Bound<'py, PyAny>>,
        shutdown_timeout: Option<Bound<'py, PyAny>>,
        max_attempts: Option<Bound<'py, PyAny>>,
        max_record_age: Option<Bound<'py, PyAny>>,
        bisect_on_error: Option<bool>,
        parallelization_factor: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let streams = stream_names(streams)?;
        let endpoint = kb::endpoint_or_env(endpoint).map_err(|e| invalid_argument_error(py, e))?;
        let options = Kwargs {
            client_name,
            auth_token,
            tls_ca_certificate_pem,
            tls_domain_name,
            tls_client_certificate_pem,
            tls_client_key_pem,
            start,
            max_records_per_batch,
            checkpoint,
            checkpoint_every_records,
            checkpoint_interval,
            max_concurrent_handlers,
            shard_queue_batches,
            handler_retries,
            retry_initial_delay,
            retry_max_delay,
            on_failure,
            handler_timeout,
            reconnect_initial_delay,
            reconnect_max_delay,
            max_reconnect_attempts,
            max_initial_connect_attempts,
            request_timeout,
            shutdown_timeout,
            max_attempts,
            max_record_age,
            bisect_on_error,
            parallelization_factor,
        }
        .into_options(py)?;
        let inner = kb::Consumer::new(endpoint.clone(), app.clone(), streams.clone(), options)
            .map_err(|e| invalid_argument_error(py, e))?;
        Ok(Self { inner: Arc::new(inner), endpoint, app, streams })
    }

    /// The server's address.
    #[getter]
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The application (consumer group).
    #[getter]
    fn app(&self) -> &str {
        &self.app
    }

    /// The streams read.
    #[getter]
    fn streams(&self) -> Vec<String> {
        self.streams.clone()
    }

    /// Whether `stop()` was called (or Ctrl-C stopped `run()`).
    #[getter]
    fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    /// The counters (since this consumer was made) and the lag of the shards it holds
    /// now, as a dict; see the stubs for its keys.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        failure::stats_dict(py, self.inner.stats())
    }

    /// Stops the consumer gracefully: no new batches are taken, batches in hand finish and
    /// are checkpointed, then the session closes so that its shards move at once. Safe
    /// from any thread and from inside a handler. A stopped consumer stays stopped.
    fn stop(&self) {
        self.inner.stop();
    }

    /// Runs a plain-function handler on worker threads until the consumer stops, with the
    /// GIL released. The first Ctrl-C (or any exception raised by a signal handler) stops
    /// the consumer gracefully; a second one, or one after `stop()`, gives up at once.
    /// Returns normally after a stop by `stop()` or Ctrl-C; re-raises any other exception a
    /// signal handler raised (e.g. `SystemExit`) once stopped.
    fn _run_blocking(&self, py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<()> {
        let handler = Arc::new(PyHandler::new(callables(&handler)?, None));
        logging::follow_python_level(py);
        let run = self.inner.begin(handler);
        let mut task = runtime().spawn(async move { run?.finish().await });
        let mut pending_signal: Option<PyErr> = None;
        loop {
            let joined = py.detach(|| runtime().block_on(async { tokio::time::timeout(SIGNAL_POLL, &mut task).await }));
            match joined {
                Ok(Ok(result)) => {
                    result.map_err(|e| to_py_err(py, e))?;
                    return pending_signal.map_or(Ok(()), Err);
                }
                Ok(Err(join_error)) => {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                        "the consumer's task failed: {join_error}"
                    )))
                }
                Err(_elapsed) => {
                    if let Err(signal) = py.check_signals() {
                        if self.inner.is_stopped() {
                            // Already stopping: give up at once.
                            task.abort();
                            return Err(signal);
                        }
                        self.inner.stop();
                        if !signal.is_instance_of::<PyKeyboardInterrupt>(py) {
                            pending_signal = Some(signal);
                        }
                    }
                }
            }
        }
    }

    /// Starts the consumer with a handler whose coroutines run on the running asyncio
    /// loop; returns an asyncio future of the run. Cancelling that future drops the run
    /// at once (`run_async` stops gracefully first).
    fn _run_async<'py>(&self, py: Python<'py>, handler: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
        let handler = Arc::new(PyHandler::new(callables(&handler)?, Some(locals)));
        logging::follow_python_level(py);
        let run = self.inner.begin(handler);
        attach::spawn_for_loop(py, async move { run?.finish().await })
    }

    fn __repr__(&self) -> String {
        format!("Consumer(endpoint={:?}, app={:?}, streams={:?})", self.endpoint, self.app, self.streams)
    }
}

/// The native half of `kinesis_butler` (use the package, not this module).
#[pymodule(name = "_native")]
mod native {
    #[pymodule_export]
    use super::attach::quiesce;
    #[pymodule_export]
    use super::types::{check_record_shard, PyBatch, PyRecord, PyShard};
    #[pymodule_export]
    use super::PyConsumer;

    #[pymodule_init]
    fn init() {
        super::logging::install();
    }
}
