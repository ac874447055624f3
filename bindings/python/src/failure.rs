//! Failure handling as Python sees it: `RecordFailed` raised (or returned) by a handler
//! names the failed record; a callable as `on_failure` is a dead-letter destination;
//! `Consumer.stats()` as a dict. Every rule is the client's.

use std::sync::Arc;

use futures::future::BoxFuture;
use kinesis_butler_client as kb;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::attach::attached;

/// The failed record's (sequence number, sub-sequence number) when `value` is a
/// `kinesis_butler.RecordFailed` (raised or returned by the handler).
pub(crate) fn failed_record(py: Python<'_>, value: &Bound<'_, PyAny>) -> Option<(String, u64)> {
    let class = py.import("kinesis_butler._errors").ok()?.getattr("RecordFailed").ok()?;
    if !value.is_instance(&class).ok()? {
        return None;
    }
    let record = value.getattr("record").ok()?;
    let seq: String = record.getattr("sequence_number").ok()?.extract().ok()?;
    let sub: u64 = record.getattr("sub_sequence_number").ok()?.extract().ok()?;
    Some((seq, sub))
}

/// A Python callable taking a list of entry dicts, as a dead-letter destination. It runs
/// on a worker thread; returning means accepted, raising makes the shard wait and retry.
pub(crate) struct PyDeadLetter {
    func: Arc<Py<PyAny>>,
}

impl PyDeadLetter {
    pub(crate) fn callback(func: Py<PyAny>) -> kb::DeadLetterCallback {
        kb::DeadLetterCallback(Arc::new(Self { func: Arc::new(func) }))
    }
}

fn entry_dict<'py>(py: Python<'py>, e: &kb::DeadLetterEntry) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("app", &e.app)?;
    d.set_item("stream", &e.stream)?;
    d.set_item("shard_id", &e.shard_id)?;
    d.set_item("sequence_number", &e.sequence_number)?;
    d.set_item("sub_sequence_number", e.sub_sequence_number)?;
    d.set_item("partition_key", &e.partition_key)?;
    d.set_item("attempts", e.attempts)?;
    d.set_item("error", &e.error)?;
    d.set_item("reason", e.reason.as_str())?;
    d.set_item("approximate_arrival_timestamp_ms", e.approximate_arrival_timestamp_ms)?;
    d.set_item("data", PyBytes::new(py, &e.data))?;
    Ok(d)
}

impl kb::DeadLetter for PyDeadLetter {
    fn send(&self, entries: Vec<kb::DeadLetterEntry>) -> BoxFuture<'static, Result<(), kb::HandlerError>> {
        let func = self.func.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                attached(|py| {
                    let list = PyList::empty(py);
                    for e in &entries {
                        list.append(entry_dict(py, e)?)?;
                    }
                    func.bind(py).call1((list,)).map(drop)
                })
                .unwrap_or(Ok(()))
                .map_err(|e| kb::HandlerError::msg(format!("the on_failure callback raised: {e}")))
            })
            .await
            .map_err(|e| kb::HandlerError::msg(format!("the on_failure callback's thread failed: {e}")))?
        })
    }
}

/// `Consumer.stats()`: the client's snapshot as a dict (`shards` a list of dicts).
pub(crate) fn stats_dict(py: Python<'_>, s: kb::Stats) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("records_handled", s.records_handled)?;
    d.set_item("batches_handled", s.batches_handled)?;
    d.set_item("checkpoints", s.checkpoints)?;
    d.set_item("retries", s.retries)?;
    d.set_item("reconnects", s.reconnects)?;
    d.set_item("dead_lettered", s.dead_lettered)?;
    d.set_item("skipped", s.skipped)?;
    d.set_item("bisect_steps", s.bisect_steps)?;
    d.set_item("handler_timeouts", s.handler_timeouts)?;
    let shards = PyList::empty(py);
    for sh in &s.shards {
        let x = PyDict::new(py);
        x.set_item("stream", &sh.stream)?;
        x.set_item("shard_id", &sh.shard_id)?;
        x.set_item("lease_epoch", sh.lease_epoch)?;
        x.set_item("millis_behind_latest", sh.millis_behind_latest)?;
        x.set_item("records_handled", sh.records_handled)?;
        shards.append(x)?;
    }
    d.set_item("shards", shards)?;
    Ok(d)
}
