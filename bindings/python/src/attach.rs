//! Python calls from Rust threads, counted so that the interpreter's exit can wait for
//! them, and Rust futures delivered to asyncio futures.
//!
//! A Rust thread that is still inside (or leaving) a Python call when the interpreter
//! finalizes crashes the process ("PyGILState_Release: thread state must be current").
//! The last thing a run does is hand its result to the asyncio loop from such a thread,
//! and the program may exit right after; so every such call goes through [`attached`],
//! and an `atexit` hook ([`quiesce`]) waits until none is in flight.

use std::future::Future;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCFunction;

static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static DONE: Condvar = Condvar::new();

/// Runs `f` attached to the interpreter from a Rust thread; `None` when the interpreter
/// is finalizing (then `f` does not run).
pub(crate) fn attached<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    *IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let result = Python::try_attach(f);
    let mut n = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    *n -= 1;
    if *n == 0 {
        DONE.notify_all();
    }
    result
}

/// Waits (with the GIL released, at most `timeout` seconds) until no Rust thread is in a
/// Python call; registered with `atexit` by the package.
#[pyfunction]
#[pyo3(signature = (timeout=2.0))]
pub(crate) fn quiesce(py: Python<'_>, timeout: f64) -> bool {
    let limit = Duration::from_secs_f64(timeout.clamp(0.0, 60.0));
    py.detach(|| {
        let deadline = Instant::now() + limit;
        let mut n = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = DONE.wait_timeout(n, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    })
}

/// `kinesis_butler._support._resolve(future, ok, value)`: sets the future's result or
/// exception unless it is done (cancelled) already.
fn resolver(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    RESOLVE
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("kinesis_butler._support")?.getattr("_resolve")?.unbind()))
        .map(|f| f.bind(py))
}

/// Runs `work` on the Tokio runtime and returns an asyncio future (of the running loop)
/// resolved with its outcome; cancelling the asyncio future drops `work`.
pub(crate) fn spawn_for_loop<'py, F, T>(py: Python<'py>, work: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Outcome + Send + 'static,
{
    let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
    let future = event_loop.call_method0("create_future")?;
    let (loop_ref, future_ref) = (event_loop.unbind(), future.clone().unbind());
    let task = crate::runtime().spawn(async move {
        let outcome = work.await;
        // Not on a runtime thread: attaching may wait for the GIL.
        let _ = tokio::task::spawn_blocking(move || {
            attached(|py| {
                let (ok, value) = outcome.into_py(py);
                let delivered = resolver(py).and_then(|resolve| {
                    loop_ref.bind(py).call_method1("call_soon_threadsafe", (resolve, future_ref.bind(py), ok, value))
                });
                // A closed loop: nobody waits for the result any more.
                drop(delivered);
                drop((loop_ref, future_ref));
            })
        })
        .await;
    });
    let abort = task.abort_handle();
    let on_done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
        if args.get_item(0)?.call_method0("cancelled")?.is_truthy()? {
            abort.abort();
        }
        Ok(())
    })?;
    future.call_method1("add_done_callback", (on_done,))?;
    Ok(future)
}

/// An outcome turned into `(ok, value)` for `_resolve`: the result, or the exception.
pub(crate) trait Outcome {
    fn into_py(self, py: Python<'_>) -> (bool, Py<PyAny>);
}

impl Outcome for Result<(), kinesis_butler_client::Error> {
    fn into_py(self, py: Python<'_>) -> (bool, Py<PyAny>) {
        match self {
            Ok(()) => (true, py.None()),
            Err(e) => (false, crate::errors::to_py_err(py, e).into_value(py).into_any()),
        }
    }
}
