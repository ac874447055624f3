//! A Python handler as the client's `Handler`: a callable for the batches and, when the
//! handler object has them, its `shard_started(shard)` / `shard_stopped(shard, reason)`
//! methods as the client's hooks (awaited before a shard's final checkpoint and release).
//!
//! Python is always called on a worker thread of the blocking pool (never on a runtime
//! thread, which must not wait for the GIL): a plain function runs there; an `async def`
//! only creates its coroutine there, which then runs on the caller's asyncio event loop
//! while the Rust side awaits it without holding the GIL.

use std::sync::Arc;

use futures::future::BoxFuture;
use kinesis_butler_client as kb;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3_async_runtimes::TaskLocals;

use crate::attach::attached;
use crate::errors::HandlerRaised;
use crate::types::{PyBatch, PyShard};

/// The Python callables of a handler.
pub(crate) struct Callables {
    pub handle: Py<PyAny>,
    pub shard_started: Option<Py<PyAny>>,
    pub shard_stopped: Option<Py<PyAny>>,
}

pub(crate) struct PyHandler {
    callables: Arc<Callables>,
    /// The asyncio loop (and context) coroutines run on; `None` for `Consumer.run` with a
    /// plain function.
    locals: Option<TaskLocals>,
}

impl PyHandler {
    pub(crate) fn new(callables: Callables, locals: Option<TaskLocals>) -> Self {
        Self { callables: Arc::new(callables), locals }
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

/// What calling the batch handler gave: its result, or a coroutine running on the event
/// loop and the handle that cancels it.
enum HandlerCalled {
    Returned(Py<PyAny>),
    Running(BoxFuture<'static, PyResult<Py<PyAny>>>, Py<PyAny>),
}

/// Calls the batch handler; a coroutine runs as a task a timeout can cancel
/// (`_support.CallHandle`).
fn invoke_handler(
    py: Python<'_>,
    func: &Py<PyAny>,
    args: Bound<'_, PyTuple>,
    locals: Option<&TaskLocals>,
) -> PyResult<HandlerCalled> {
    let result = func.bind(py).call1(args)?;
    if result.is_none() || !result.hasattr(intern!(py, "__await__"))? {
        return Ok(HandlerCalled::Returned(result.unbind()));
    }
    let Some(locals) = locals else {
        if result.hasattr(intern!(py, "close"))? {
            let _ = result.call_method0(intern!(py, "close"));
        }
        return Err(PyTypeError::new_err(
            "the handler returned an awaitable, but Consumer.run() took the handler for a plain function: \
             make the handler an `async def` (or use `await consumer.run_async(handler)`)",
        ));
    };
    let support = py.import(intern!(py, "kinesis_butler._support"))?;
    let handle = support.getattr(intern!(py, "CallHandle"))?.call0()?;
    let wrapped = support.getattr(intern!(py, "run_cancellable"))?.call1((result, &handle))?;
    let future = pyo3_async_runtimes::into_future_with_locals(locals, wrapped)?;
    Ok(HandlerCalled::Running(Box::pin(future), handle.unbind()))
}

/// Calls `func(*args)`; an awaitable result runs on the loop of `locals`.
fn invoke(
    py: Python<'_>,
    func: &Py<PyAny>,
    args: Bound<'_, PyTuple>,
    locals: Option<&TaskLocals>,
    what: &str,
) -> PyResult<Called> {
    let result = func.bind(py).call1(args)?;
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
            Err(PyTypeError::new_err(format!(
                "the {what} returned an awaitable, but Consumer.run() took the handler for a plain function: \
                 make the handler an `async def` (or use `await consumer.run_async(handler)`)"
            )))
        }
    }
}

fn shutting_down() -> kb::HandlerError {
    kb::HandlerError::msg("the Python interpreter is shutting down")
}

impl PyHandler {
    /// Runs a hook; an exception is logged (a hook cannot fail the shard).
    fn hook(
        &self,
        pick: fn(&Callables) -> Option<&Py<PyAny>>,
        name: &'static str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>> + Send + 'static,
    ) -> BoxFuture<'static, ()> {
        if pick(&self.callables).is_none() {
            return Box::pin(async {});
        }
        let (callables, locals) = (self.callables.clone(), self.locals.clone());
        Box::pin(async move {
            let log = move |py: Python<'_>, e: PyErr| {
                crate::logging::log_exception(py, &format!("the handler's {name} raised"), &e);
            };
            let called = tokio::task::spawn_blocking(move || {
                attached(|py| {
                    let func = pick(&callables).expect("checked above");
                    args(py).and_then(|a| invoke(py, func, a, locals.as_ref(), name)).map_err(|e| log(py, e)).ok()
                })
                .flatten()
            })
            .await
            .ok()
            .flatten()
            .flatten();
            if let Some(coroutine) = called {
                if let Err(e) = coroutine.await {
                    let _ = attached(|py| log(py, e));
                }
            }
        })
    }
}

impl kb::Handler for PyHandler {
    fn handle(&self, batch: kb::Batch) -> BoxFuture<'static, Result<(), kb::HandlerError>> {
        let callables = self.callables.clone();
        let locals = self.locals.clone();
        let cancel = batch.cancellation_token().clone();
        let at = Arc::new(Where::of(&batch));
        let at2 = at.clone();
        Box::pin(async move {
            let mut thread = tokio::task::spawn_blocking(move || {
                attached(|py| {
                    let result = (|| {
                        let made = Bound::new(py, PyBatch::new(py, batch)?)?;
                        invoke_handler(py, &callables.handle, PyTuple::new(py, [made])?, locals.as_ref())
                    })();
                    result.map_err(|e| at2.failed(py, e))
                })
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
                HandlerCalled::Returned(value) => {
                    attached(|py| at.returned(py, value.bind(py))).unwrap_or_else(|| Err(shutting_down()))
                }
                HandlerCalled::Running(mut coroutine, handle) => {
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

    fn shard_started(&self, shard: &kb::ShardInfo) -> BoxFuture<'static, ()> {
        let shard = shard.clone();
        self.hook(
            |c| c.shard_started.as_ref(),
            "shard_started",
            move |py| PyTuple::new(py, [Bound::new(py, PyShard::from(shard))?]),
        )
    }

    fn shard_stopped(&self, shard: &kb::ShardInfo, reason: kb::StopReason) -> BoxFuture<'static, ()> {
        let shard = shard.clone();
        self.hook(
            |c| c.shard_stopped.as_ref(),
            "shard_stopped",
            move |py| {
                let shard = Bound::new(py, PyShard::from(shard))?.into_any();
                PyTuple::new(py, [shard, reason.as_str().into_pyobject(py)?.into_any()])
            },
        )
    }
}
