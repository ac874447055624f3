//! Keyword arguments of `Consumer(...)` into the client's `ConsumerOptions`.

use std::time::Duration;

use kinesis_butler_client::{
    BackoffSettings, CheckpointPolicy, ConsumerOptions, FailurePolicy, StartPosition, TlsOptions,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyString};

use crate::errors::invalid_argument;

/// The keyword arguments, as given (`None`: the client's default).
#[derive(Default)]
pub(crate) struct Kwargs<'py> {
    pub client_name: Option<String>,
    pub auth_token: Option<String>,
    pub tls_ca_certificate_pem: Option<String>,
    pub tls_domain_name: Option<String>,
    pub tls_client_certificate_pem: Option<String>,
    pub tls_client_key_pem: Option<String>,
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
    pub on_failure: Option<String>,
    pub handler_timeout: Option<Bound<'py, PyAny>>,
    pub reconnect_initial_delay: Option<Bound<'py, PyAny>>,
    pub reconnect_max_delay: Option<Bound<'py, PyAny>>,
    pub max_reconnect_attempts: Option<Bound<'py, PyAny>>,
    pub max_initial_connect_attempts: Option<Bound<'py, PyAny>>,
    pub request_timeout: Option<Bound<'py, PyAny>>,
    pub shutdown_timeout: Option<Bound<'py, PyAny>>,
}

impl<'py> Kwargs<'py> {
    pub(crate) fn into_options(self, py: Python<'py>) -> PyResult<ConsumerOptions> {
        let defaults = ConsumerOptions::default();
        let mut o = ConsumerOptions { client_name: format!("python-{}", std::process::id()), ..defaults.clone() };
        if let Some(name) = self.client_name {
            o.client_name = name;
        }
        o.auth_token = self.auth_token;
        let tls = TlsOptions {
            ca_certificate_pem: self.tls_ca_certificate_pem,
            domain_name: self.tls_domain_name,
            client_certificate_pem: self.tls_client_certificate_pem,
            client_key_pem: self.tls_client_key_pem,
        };
        if tls != TlsOptions::default() {
            o.tls = Some(tls);
        }
        if let Some(start) = &self.start {
            o.start = start_position(py, start)?;
        }
        if let Some(v) = &self.max_records_per_batch {
            o.max_records_per_batch = integer(py, "max_records_per_batch", v, 0, 10_000)? as u32;
        }
        o.checkpoint = match self.checkpoint.as_deref().unwrap_or("batch") {
            "batch" => CheckpointPolicy::EveryBatch,
            "manual" => CheckpointPolicy::Manual,
            other => {
                return Err(invalid_argument(py, format!("checkpoint must be \"batch\" or \"manual\", not {other:?}")))
            }
        };
        match (&self.checkpoint_every_records, &self.checkpoint_interval) {
            (Some(_), Some(_)) => {
                return Err(invalid_argument(py, "give checkpoint_every_records or checkpoint_interval, not both"))
            }
            (Some(_), None) | (None, Some(_)) if o.checkpoint == CheckpointPolicy::Manual => {
                return Err(invalid_argument(
                    py,
                    "checkpoint=\"manual\" cannot be combined with checkpoint_every_records or checkpoint_interval",
                ))
            }
            (Some(n), None) => {
                o.checkpoint =
                    CheckpointPolicy::EveryRecords(integer(py, "checkpoint_every_records", n, 1, i64::MAX)? as u64)
            }
            (None, Some(d)) => {
                o.checkpoint = CheckpointPolicy::Interval(positive_duration(py, "checkpoint_interval", d)?)
            }
            (None, None) => {}
        }
        if let Some(v) = &self.max_concurrent_handlers {
            o.max_concurrent_handlers = integer(py, "max_concurrent_handlers", v, 1, 1 << 20)? as usize;
        }
        if let Some(v) = &self.shard_queue_batches {
            o.shard_queue_batches = integer(py, "shard_queue_batches", v, 1, 1 << 20)? as usize;
        }
        if let Some(v) = &self.handler_retries {
            o.handler_retries = integer(py, "handler_retries", v, 0, u32::MAX as i64)? as u32;
        }
        o.retry_backoff = backoff(
            py,
            defaults.retry_backoff,
            ("retry_initial_delay", &self.retry_initial_delay),
            ("retry_max_delay", &self.retry_max_delay),
        )?;
        o.on_failure = match self.on_failure.as_deref().unwrap_or("stop") {
            "stop" => FailurePolicy::Stop,
            "skip" => FailurePolicy::Skip,
            other => {
                return Err(invalid_argument(py, format!("on_failure must be \"stop\" or \"skip\", not {other:?}")))
            }
        };
        if let Some(v) = &self.handler_timeout {
            o.handler_timeout = Some(positive_duration(py, "handler_timeout", v)?);
        }
        o.reconnect_backoff = backoff(
            py,
            defaults.reconnect_backoff,
            ("reconnect_initial_delay", &self.reconnect_initial_delay),
            ("reconnect_max_delay", &self.reconnect_max_delay),
        )?;
        if let Some(v) = &self.max_reconnect_attempts {
            o.max_reconnect_attempts = Some(integer(py, "max_reconnect_attempts", v, 1, u32::MAX as i64)? as u32);
        }
        if let Some(v) = &self.max_initial_connect_attempts {
            o.max_initial_connect_attempts =
                Some(integer(py, "max_initial_connect_attempts", v, 1, u32::MAX as i64)? as u32);
        }
        if let Some(v) = &self.request_timeout {
            o.request_timeout = positive_duration(py, "request_timeout", v)?;
        }
        if let Some(v) = &self.shutdown_timeout {
            o.shutdown_timeout = duration(py, "shutdown_timeout", v)?;
        }
        Ok(o)
    }
}

/// `None`, `"trim_horizon"`, `"latest"` or a `datetime` (records at or after it).
fn start_position(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<StartPosition> {
    if let Ok(text) = value.cast::<PyString>() {
        return match text.to_cow()?.as_ref() {
            "trim_horizon" => Ok(StartPosition::TrimHorizon),
            "latest" => Ok(StartPosition::Latest),
            other => Err(invalid_argument(
                py,
                format!("start must be \"trim_horizon\", \"latest\" or a datetime, not {other:?}"),
            )),
        };
    }
    let datetime = py.import("datetime")?.getattr("datetime")?;
    if value.is_instance(&datetime)? {
        let seconds: f64 = value.call_method0("timestamp")?.extract()?;
        let timestamp_ms = (seconds * 1000.0).round() as i64;
        if timestamp_ms <= 0 {
            return Err(invalid_argument(py, "start must be a datetime after 1970-01-01"));
        }
        return Ok(StartPosition::AtTimestamp { timestamp_ms });
    }
    Err(PyTypeError::new_err(format!(
        "start must be \"trim_horizon\", \"latest\" or a datetime.datetime, not {}",
        type_name(value)
    )))
}

/// An `int` within `[min, max]`.
fn integer(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>, min: i64, max: i64) -> PyResult<i64> {
    if !value.is_instance_of::<PyInt>() || value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!("{name} must be an int, not {}", type_name(value))));
    }
    match value.extract::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(invalid_argument(py, format!("{name} must be between {min} and {max}, not {value}"))),
    }
}

/// Seconds (`int` or `float`) or a `datetime.timedelta`, not negative.
pub(crate) fn duration(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let seconds: f64 = if value.is_instance_of::<PyFloat>()
        || (value.is_instance_of::<PyInt>() && !value.is_instance_of::<pyo3::types::PyBool>())
    {
        value.extract()?
    } else if value.is_instance(&py.import("datetime")?.getattr("timedelta")?)? {
        value.call_method0("total_seconds")?.extract()?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be seconds (int or float) or a datetime.timedelta, not {}",
            type_name(value)
        )));
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(invalid_argument(py, format!("{name} must be a duration of 0 seconds or more, not {seconds}")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn positive_duration(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let d = duration(py, name, value)?;
    if d.is_zero() {
        return Err(invalid_argument(py, format!("{name} must be more than 0 seconds")));
    }
    Ok(d)
}

type Arg<'a, 'py> = (&'a str, &'a Option<Bound<'py, PyAny>>);

fn backoff(
    py: Python<'_>,
    default: BackoffSettings,
    initial: Arg<'_, '_>,
    max: Arg<'_, '_>,
) -> PyResult<BackoffSettings> {
    let mut b = default;
    if let Some(v) = initial.1 {
        b.initial = positive_duration(py, initial.0, v)?;
    }
    if let Some(v) = max.1 {
        b.max = positive_duration(py, max.0, v)?;
    }
    if b.max < b.initial {
        if max.1.is_some() {
            return Err(invalid_argument(py, format!("{} must not be less than {}", max.0, initial.0)));
        }
        b.max = b.initial;
    }
    Ok(b)
}

pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
