//! A Python callable as the client's `Handler`.
//!
//! The callable is always called on a worker thread of the blocking pool (never on a
//! runtime thread, which must not wait for the GIL): a plain function runs there; an
//! `async def` only creates its coroutine there, which then runs on the caller's asyncio
//! event loop while the Rust side awaits it without holding the GIL.

use std::sync::Arc;

use futures::future::BoxFuture;
use kinesis_butler_client as kb;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;

use crate::attach::attached;
use crate::errors::HandlerRaised;
use crate::types::PyBatch;

pub(crate) struct PyHandler {
    func: Arc<Py<PyAny>>,
    /// The asyncio loop (and context) coroutines run on; `None` for `Consumer.run` with a
    /// plain function.
    locals: Option<TaskLocals>,
}

impl PyHandler {
    pub(crate) fn new(func: Py<PyAny>, locals: Option<TaskLocals>) -> Self {
        Self { func: Arc::new(func), locals }
    }
}

/// What calling the callable gave: its result, or a coroutine running on the event loop
/// and the handle that cancels it.
enum Called {
    Returned(Py<PyAny>),
    Running(BoxFuture<'static, PyResult<Py<PyAny>>>, Py<PyAny>),
}

/// Which batch a failure is about, for the log.
struct Where {
    stream: String,
    shard_id: String,
    attempt: u32,
}

impl Where {
    fn of(batch: &kb::Batch) -> Self {
        Self { stream: batch.stream().to_owned(), shard_id: batch.shard_id().to_owned(), attempt: batch.attempt() }
    }

    /// Logs the exception with its traceback and keeps it for the client; a
    /// `RecordFailed` names the failed record.
    fn failed(&self, py: Python<'_>, error: PyErr) -> kb::HandlerError {
        let text = format!("the handler raised on {}/{} (attempt {})", self.stream, self.shard_id, self.attempt);
        crate::logging::log_exception(py, &text, &error);
        let at = crate::failure::failed_record(py, error.value(py));
        let raised = HandlerRaised::new(py, error);
        match at {
            Some((seq, sub)) => kb::HandlerError::at_sequence(&seq, sub, raised),
            None => kb::HandlerError::new(raised),
        }
    }

    /// What the handler returned: `None`, or a `RecordFailed` it returned instead of raising.
    fn returned(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> Result<(), kb::HandlerError> {
        match crate::failure::failed_record(py, value) {
            None => Ok(()),
            Some((seq, sub)) => {
                let text = value.str().map(|s| s.to_string()).unwrap_or_default();
                Err(kb::HandlerError::at_sequence(&seq, sub, format!("RecordFailed: {text}")))
            }
        }
    }
}

fn call(py: Python<'_>, func: &Py<PyAny>, batch: kb::Batch, locals: Option<&TaskLocals>) -> PyResult<Called> {
    let batch = Bound::new(py, PyBatch::new(py, batch)?)?;
    let result = func.bind(py).call1((batch,))?;
    if result.is_none() || !result.hasattr(intern!(py, "__await__"))? {
        return Ok(Called::Returned(result.unbind()));
    }
    match locals {
        Some(locals) => {
            // Run as a task that a timeout can cancel (`_support.CallHandle`).
            let support = py.import(intern!(py, "kinesis_butler._support"))?;
            let handle = support.getattr(intern!(py, "CallHandle"))?.call0()?;
            let wrapped = support.getattr(intern!(py, "run_cancellable"))?.call1((result, &handle))?;
            let future = pyo3_async_runtimes::into_future_with_locals(locals, wrapped)?;
            Ok(Called::Running(Box::pin(future), handle.unbind()))
        }
        None => {
            // Not awaited: close it so that Python does not warn "never awaited".
            if result.hasattr(intern!(py, "close"))? {
                let _ = result.call_method0(intern!(py, "close"));
            }
            Err(PyTypeError::new_err(
                "the handler returned an awaitable, but Consumer.run() took it for a plain function: \
                 make it an `async def` (or use `await consumer.run_async(handler)`)",
            ))
        }
    }
}

fn shutting_down() -> kb::HandlerError {
    kb::HandlerError::msg("the Python interpreter is shutting down")
}

impl kb::Handler for PyHandler {
    fn handle(&self, batch: kb::Batch) -> BoxFuture<'static, Result<(), kb::HandlerError>> {
        let func = self.func.clone();
        let locals = self.locals.clone();
        let cancel = batch.cancellation_token().clone();
        let at = Arc::new(Where::of(&batch));
        let at2 = at.clone();
        Box::pin(async move {
            let mut thread = tokio::task::spawn_blocking(move || {
                attached(|py| call(py, &func, batch, locals.as_ref()).map_err(|e| at2.failed(py, e)))
                    .unwrap_or_else(|| Err(shutting_down()))
            });
            let called = tokio::select! {
                called = &mut thread => called,
                _ = cancel.cancelled() => {
                    // A plain function cannot be interrupted: wait for it to return.
                    tracing::warn!(stream = %at.stream, shard = %at.shard_id, attempt = at.attempt,
                        "the handler (a plain function) ran out of time and cannot be interrupted; waiting for it to return before the shard goes on");
                    thread.await
                }
            };
            let called = called.map_err(|e| kb::HandlerError::msg(format!("the handler's thread failed: {e}")))??;
            match called {
                Called::Returned(value) => {
                    attached(|py| at.returned(py, value.bind(py))).unwrap_or_else(|| Err(shutting_down()))
                }
                Called::Running(mut coroutine, handle) => {
                    let outcome = tokio::select! {
                        outcome = &mut coroutine => outcome,
                        _ = cancel.cancelled() => {
                            // Cancel the asyncio task, then wait for it to finish.
                            let _ = attached(|py| handle.bind(py).call_method0(intern!(py, "cancel")).map(drop));
                            coroutine.await
                        }
                    };
                    match outcome {
                        Ok(value) => {
                            attached(|py| at.returned(py, value.bind(py))).unwrap_or_else(|| Err(shutting_down()))
                        }
                        Err(e) => Err(attached(|py| at.failed(py, e)).unwrap_or_else(shutting_down)),
                    }
                }
            }
        })
    }

    fn keeps_running_when_dropped(&self) -> bool {
        true
    }
}
