//! Client errors as the Python exception classes of `kinesis_butler._errors`.

use std::fmt;

use kinesis_butler_client::{Error, ErrorKind};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// The module defining the exception classes (plain Python, so that `ConnectionError`
/// can also derive from the built-in `ConnectionError`).
fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE.get_or_try_init(py, || Ok(py.import("kinesis_butler._errors")?.unbind())).map(|m| m.bind(py))
}

/// Makes an exception of class `class` (a name in `kinesis_butler._errors`).
pub(crate) fn new_error(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let exception = errors_module(py)?.getattr(class)?.call1((message.clone(),))?;
        Ok(PyErr::from_value(exception))
    })();
    made.unwrap_or_else(|e| PyRuntimeError::new_err(format!("{message} (and {class} could not be raised: {e})")))
}

/// `InvalidArgumentError` (a `ValueError` too).
pub(crate) fn invalid_argument(py: Python<'_>, message: impl Into<String>) -> PyErr {
    new_error(py, "InvalidArgumentError", message.into())
}

/// The exception for an error of the client's argument checks: `InvalidArgumentError`
/// with the client's message as it is (the same text Node shows), any other error as
/// [`to_py_err`] maps it.
pub(crate) fn invalid_argument_error(py: Python<'_>, error: Error) -> PyErr {
    match error {
        Error::InvalidArgument(message) => invalid_argument(py, message),
        other => to_py_err(py, other),
    }
}

/// A Python exception raised by the user's handler, carried through the client as the
/// source of its `Handler` error so that it can become the `__cause__` of `HandlerError`.
pub(crate) struct HandlerRaised {
    pub error: PyErr,
    text: String,
}

impl HandlerRaised {
    pub(crate) fn new(py: Python<'_>, error: PyErr) -> Self {
        let name = error.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
        let message = error.value(py).str().map(|s| s.to_string()).unwrap_or_default();
        let text = if message.is_empty() { name } else { format!("{name}: {message}") };
        Self { error, text }
    }
}

impl fmt::Display for HandlerRaised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HandlerRaised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for HandlerRaised {}

/// The Python exception for a client error, with its details as attributes.
pub(crate) fn to_py_err(py: Python<'_>, error: Error) -> PyErr {
    let class = match error.kind() {
        ErrorKind::Connection => "ButlerConnectionError",
        ErrorKind::LeaseLost => "LeaseLostError",
        ErrorKind::Handler => "HandlerError",
        ErrorKind::InvalidArgument => "InvalidArgumentError",
        ErrorKind::NotFound => "NotFoundError",
        ErrorKind::Unauthenticated => "UnauthenticatedError",
        ErrorKind::Stopped => "StoppedError",
        ErrorKind::Server => "ServerError",
    };
    let err = new_error(py, class, error.to_string());
    let value = err.value(py);
    let set = |name: &str, v: Bound<'_, PyAny>| {
        let _ = value.setattr(name, v);
    };
    // The one error model of both bindings: `code` (the client's stable kind),
    // `grpc_code` (or None), `retryable`.
    set("code", error.kind().as_str().into_pyobject(py).unwrap().into_any());
    match error.grpc_code() {
        Some(code) => set("grpc_code", code.into_pyobject(py).unwrap().into_any()),
        None => set("grpc_code", py.None().into_bound(py)),
    }
    set("retryable", pyo3::types::PyBool::new(py, error.is_retryable()).to_owned().into_any());
    match &error {
        Error::Connection { endpoint, .. } => set("endpoint", endpoint.into_pyobject(py).unwrap().into_any()),
        Error::LeaseLost { stream, shard_id, epoch, .. } => {
            set("stream", stream.into_pyobject(py).unwrap().into_any());
            set("shard_id", shard_id.into_pyobject(py).unwrap().into_any());
            set("lease_epoch", epoch.into_pyobject(py).unwrap().into_any());
        }
        Error::Handler { stream, shard_id, attempts, source } => {
            set("stream", stream.into_pyobject(py).unwrap().into_any());
            set("shard_id", shard_id.into_pyobject(py).unwrap().into_any());
            set("attempts", attempts.into_pyobject(py).unwrap().into_any());
            if let Some(raised) = source.downcast_ref::<HandlerRaised>() {
                err.set_cause(py, Some(raised.error.clone_ref(py)));
            }
        }
        Error::Server { .. }
        | Error::InvalidArgument(_)
        | Error::NotFound(_)
        | Error::Unauthenticated(_)
        | Error::Stopped => {}
    }
    err
}
