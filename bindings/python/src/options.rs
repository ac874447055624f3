//! Keyword arguments of `Consumer(...)` into the client's `ConsumerOptions`: host types
//! are converted here, every rule on the values is the client's (`RawOptions`).

use kinesis_butler_client as kb;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyString};

use crate::errors::invalid_argument_error;

/// The keyword arguments, as given (`None`: the client's default).
#[derive(Default)]
pub(crate) struct Kwargs<'py> {
    pub client_name: Option<String>,
    pub auth_token: Option<String>,
    pub tls_ca_certificate_pem: Option<Bound<'py, PyAny>>,
    pub tls_domain_name: Option<String>,
    pub tls_client_certificate_pem: Option<Bound<'py, PyAny>>,
    pub tls_client_key_pem: Option<Bound<'py, PyAny>>,
    pub start: Option<Bound<'py, PyAny>>,
    pub max_records_per_batch: Option<Bound<'py, PyAny>>,
    pub checkpoint: Option<String>,
    pub checkpoint_every_records: Option<Bound<'py, PyAny>>,
    pub checkpoint_interval: Option<Bound<'py, PyAny>>,
    pub max_concurrent_handlers: Option<Bound<'py, PyAny>>,
    pub shard_queue_batches: Option<Bound<'py, PyAny>>,
    pub handler_retries: Option<Bound<'py, PyAny>>,
    pub retry_initial_delay: Option<Bound<'py, PyAny>>,
    pub retry_max_delay: Option<Bound<'py, PyAny>>,
    pub on_failure: Option<Bound<'py, PyAny>>,
    pub max_attempts: Option<Bound<'py, PyAny>>,
    pub max_record_age: Option<Bound<'py, PyAny>>,
    pub bisect_on_error: Option<bool>,
    pub parallelization_factor: Option<Bound<'py, PyAny>>,
    pub handler_timeout: Option<Bound<'py, PyAny>>,
    pub reconnect_initial_delay: Option<Bound<'py, PyAny>>,
    pub reconnect_max_delay: Option<Bound<'py, PyAny>>,
    pub max_reconnect_attempts: Option<Bound<'py, PyAny>>,
    pub max_initial_connect_attempts: Option<Bound<'py, PyAny>>,
    pub request_timeout: Option<Bound<'py, PyAny>>,
    pub shutdown_timeout: Option<Bound<'py, PyAny>>,
}

impl<'py> Kwargs<'py> {
    /// Converts the Python values; every rule on them is the client's
    /// ([`kb::RawOptions::into_options`], options named in snake_case).
    pub(crate) fn into_options(self, py: Python<'py>) -> PyResult<kb::ConsumerOptions> {
        let tls = kb::TlsOptions {
            ca_certificate_pem: pem(py, "tls_ca_certificate_pem", self.tls_ca_certificate_pem)?,
            domain_name: self.tls_domain_name,
            client_certificate_pem: pem(py, "tls_client_certificate_pem", self.tls_client_certificate_pem)?,
            client_key_pem: pem(py, "tls_client_key_pem", self.tls_client_key_pem)?,
        };
        let (start, start_timestamp_ms) = match &self.start {
            Some(value) => start_position(py, value)?,
            None => (None, None),
        };
        let int = |name: &str, value: &Option<Bound<'py, PyAny>>| value.as_ref().map(|v| integer(name, v)).transpose();
        let secs =
            |name: &str, value: &Option<Bound<'py, PyAny>>| value.as_ref().map(|v| seconds(py, name, v)).transpose();
        let raw = kb::RawOptions {
            client_name: Some(self.client_name.unwrap_or_else(|| format!("python-{}", std::process::id()))),
            auth_token: kb::token_or_env(self.auth_token),
            tls: (tls != kb::TlsOptions::default()).then_some(tls),
            start,
            start_timestamp_ms,
            max_records_per_batch: int("max_records_per_batch", &self.max_records_per_batch)?,
            checkpoint: self.checkpoint,
            checkpoint_every_records: int("checkpoint_every_records", &self.checkpoint_every_records)?,
            checkpoint_interval: secs("checkpoint_interval", &self.checkpoint_interval)?,
            max_concurrent_handlers: int("max_concurrent_handlers", &self.max_concurrent_handlers)?,
            shard_queue_batches: int("shard_queue_batches", &self.shard_queue_batches)?,
            handler_retries: int("handler_retries", &self.handler_retries)?,
            retry_initial_delay: secs("retry_initial_delay", &self.retry_initial_delay)?,
            retry_max_delay: secs("retry_max_delay", &self.retry_max_delay)?,
            on_failure: on_failure_name(self.on_failure.as_ref())?,
            on_failure_callback: self
                .on_failure
                .as_ref()
                .filter(|v| v.is_callable())
                .map(|v| crate::failure::PyDeadLetter::callback(v.clone().unbind())),
            max_attempts: int("max_attempts", &self.max_attempts)?,
            max_record_age: secs("max_record_age", &self.max_record_age)?,
            bisect_on_error: self.bisect_on_error,
            parallelization_factor: int("parallelization_factor", &self.parallelization_factor)?,
            handler_timeout: secs("handler_timeout", &self.handler_timeout)?,
            reconnect_initial_delay: secs("reconnect_initial_delay", &self.reconnect_initial_delay)?,
            reconnect_max_delay: secs("reconnect_max_delay", &self.reconnect_max_delay)?,
            max_reconnect_attempts: int("max_reconnect_attempts", &self.max_reconnect_attempts)?,
            max_initial_connect_attempts: int("max_initial_connect_attempts", &self.max_initial_connect_attempts)?,
            request_timeout: secs("request_timeout", &self.request_timeout)?,
            shutdown_timeout: secs("shutdown_timeout", &self.shutdown_timeout)?,
        };
        raw.into_options(kb::Spelling::Snake).map_err(|e| invalid_argument_error(py, e))
    }
}

/// `on_failure` by name (`"stop"`, `"skip"`, `"kinesis:STREAM"`, `"file:PATH"`); a
/// callable is the callback instead.
fn on_failure_name(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_callable() => Ok(None),
        Some(v) => match v.cast::<PyString>() {
            Ok(text) => Ok(Some(text.to_cow()?.into_owned())),
            Err(_) => Err(PyTypeError::new_err(format!(
                "on_failure must be \"stop\", \"skip\", \"kinesis:STREAM\", \"file:PATH\" or a callable, not {}",
                type_name(v)
            ))),
        },
    }
}

/// TLS material as given: `str` (PEM text, or else a file path), `bytes` (the contents)
/// or an `os.PathLike` (a file); the rule is the client's (`kb::resolve_pem`).
fn pem(py: Python<'_>, name: &str, value: Option<Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let source = if let Ok(text) = value.cast::<PyString>() {
        kb::PemSource::Text(text.to_cow()?.into_owned())
    } else if let Ok(bytes) = value.cast::<pyo3::types::PyBytes>() {
        kb::PemSource::Contents(bytes.as_bytes().to_vec())
    } else if value.hasattr("__fspath__")? {
        let path = py.import("os")?.call_method1("fspath", (&value,))?;
        match path.cast::<PyString>() {
            Ok(p) => kb::PemSource::Path(p.to_cow()?.into_owned()),
            Err(_) => kb::PemSource::Path(path.str()?.to_cow()?.into_owned()),
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be PEM text, a file path (str or os.PathLike) or bytes, not {}",
            type_name(&value)
        )));
    };
    kb::resolve_pem(name, source).map(Some).map_err(|e| invalid_argument_error(py, e))
}

/// `"trim_horizon"`, `"latest"` (by name) or a `datetime` (in milliseconds since the epoch).
fn start_position(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<(Option<String>, Option<f64>)> {
    if let Ok(text) = value.cast::<PyString>() {
        return Ok((Some(text.to_cow()?.into_owned()), None));
    }
    let datetime = py.import("datetime")?.getattr("datetime")?;
    if value.is_instance(&datetime)? {
        let seconds: f64 = value.call_method0("timestamp")?.extract()?;
        return Ok((None, Some(seconds * 1000.0)));
    }
    Err(PyTypeError::new_err(format!(
        "start must be \"trim_horizon\", \"latest\" or a datetime.datetime, not {}",
        type_name(value)
    )))
}

/// An `int` (not a `bool`); one beyond 64 bits is read as the nearest 64-bit value,
/// which the client's range refuses like any other out-of-range value.
fn integer(name: &str, value: &Bound<'_, PyAny>) -> PyResult<i64> {
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!("{name} must be an int, not {}", type_name(value))));
    }
    match value.extract::<i64>() {
        Ok(v) => Ok(v),
        Err(_) => Ok(if value.gt(0)? { i64::MAX } else { i64::MIN }),
    }
}

/// Seconds (`int` or `float`) or a `datetime.timedelta`, as a number of seconds.
fn seconds(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<f64> {
    if value.is_instance_of::<PyFloat>()
        || (value.is_instance_of::<PyInt>() && !value.is_instance_of::<pyo3::types::PyBool>())
    {
        value.extract()
    } else if value.is_instance(&py.import("datetime")?.getattr("timedelta")?)? {
        value.call_method0("total_seconds")?.extract()
    } else {
        Err(PyTypeError::new_err(format!(
            "{name} must be seconds (int or float) or a datetime.timedelta, not {}",
            type_name(value)
        )))
    }
}

pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
