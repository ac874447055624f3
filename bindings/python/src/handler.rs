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

/// What calling the callable gave: done, or a coroutine running on the event loop.
type Called = Option<BoxFuture<'static, PyResult<Py<PyAny>>>>;

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

    /// Logs the exception with its traceback and keeps it for the client.
    fn failed(&self, py: Python<'_>, error: PyErr) -> kb::HandlerError {
        let text = format!("the handler raised on {}/{} (attempt {})", self.stream, self.shard_id, self.attempt);
        crate::logging::log_exception(py, &text, &error);
        kb::HandlerError::new(HandlerRaised::new(py, error))
    }
}

fn call(py: Python<'_>, func: &Py<PyAny>, batch: kb::Batch, locals: Option<&TaskLocals>) -> PyResult<Called> {
    let batch = Bound::new(py, PyBatch::new(py, batch)?)?;
    let result = func.bind(py).call1((batch,))?;
    if result.is_none() || !result.hasattr(intern!(py, "__await__"))? {
        return Ok(None);
    }
    match locals {
        Some(locals) => Ok(Some(Box::pin(pyo3_async_runtimes::into_future_with_locals(locals, result)?))),
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
        let at = Arc::new(Where::of(&batch));
        let at2 = at.clone();
        Box::pin(async move {
            let called = tokio::task::spawn_blocking(move || {
                attached(|py| call(py, &func, batch, locals.as_ref()).map_err(|e| at2.failed(py, e)))
                    .unwrap_or_else(|| Err(shutting_down()))
            })
            .await
            .map_err(|e| kb::HandlerError::msg(format!("the handler's thread failed: {e}")))??;
            match called {
                None => Ok(()),
                Some(coroutine) => match coroutine.await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(attached(|py| at.failed(py, e)).unwrap_or_else(shutting_down)),
                },
            }
        })
    }
}
