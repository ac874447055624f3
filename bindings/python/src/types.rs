//! `Record` and `Batch`: read-only views of the client's values.

use std::sync::Arc;

use kinesis_butler_client as kb;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

use crate::errors::to_py_err;
use crate::runtime;

/// One Kinesis record (a view into its batch: nothing is copied until read).
#[pyclass(frozen, module = "kinesis_butler", name = "Record")]
pub(crate) struct PyRecord {
    records: Arc<[kb::Record]>,
    index: usize,
    stream: Arc<str>,
    shard_id: Arc<str>,
}

impl PyRecord {
    fn get(&self) -> &kb::Record {
        &self.records[self.index]
    }
}

/// `datetime.datetime(1970, 1, 1, tzinfo=timezone.utc)` and `datetime.timedelta`.
fn epoch_and_timedelta(py: Python<'_>) -> PyResult<&(Py<PyAny>, Py<PyAny>)> {
    static CELL: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        let datetime = py.import("datetime")?;
        let utc = datetime.getattr("timezone")?.getattr("utc")?;
        let epoch = datetime.getattr("datetime")?.call((1970, 1, 1), Some(&[("tzinfo", utc)].into_py_dict(py)?))?;
        Ok((epoch.unbind(), datetime.getattr("timedelta")?.unbind()))
    })
}

use pyo3::types::IntoPyDict;

#[pymethods]
impl PyRecord {
    /// The payload.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.get().data)
    }

    /// The partition key the producer gave.
    #[getter]
    fn partition_key(&self) -> &str {
        &self.get().partition_key
    }

    /// The Kinesis sequence number (a decimal string of up to 128 bits).
    #[getter]
    fn sequence_number(&self) -> &str {
        &self.get().sequence_number
    }

    /// Position inside a KPL-aggregated record; 0 otherwise.
    #[getter]
    fn sub_sequence_number(&self) -> u64 {
        self.get().sub_sequence_number
    }

    /// When Kinesis received the record: an aware `datetime` in UTC.
    #[getter]
    fn approximate_arrival_timestamp<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (epoch, timedelta) = epoch_and_timedelta(py)?;
        let ms = self.get().approximate_arrival_timestamp_ms;
        let delta = timedelta.bind(py).call((), Some(&[("milliseconds", ms)].into_py_dict(py)?))?;
        epoch.bind(py).add(delta)
    }

    /// When Kinesis received the record, in milliseconds since the Unix epoch.
    #[getter]
    fn approximate_arrival_timestamp_ms(&self) -> i64 {
        self.get().approximate_arrival_timestamp_ms
    }

    /// The stream the record was read from.
    #[getter]
    fn stream(&self) -> &str {
        &self.stream
    }

    /// The shard the record was read from.
    #[getter]
    fn shard_id(&self) -> &str {
        &self.shard_id
    }

    fn __repr__(&self) -> String {
        let r = self.get();
        format!(
            "Record(shard_id={:?}, sequence_number={:?}, partition_key={:?}, data=<{} bytes>)",
            &*self.shard_id,
            r.sequence_number,
            r.partition_key,
            r.data.len()
        )
    }
}

/// Records of one shard, in sequence order, following the previous batch of the shard.
#[pyclass(frozen, module = "kinesis_butler", name = "Batch")]
pub(crate) struct PyBatch {
    batch: kb::Batch,
    records: Py<PyList>,
}

impl PyBatch {
    pub(crate) fn new(py: Python<'_>, batch: kb::Batch) -> PyResult<Self> {
        let shared = batch.shared_records();
        let stream: Arc<str> = batch.stream().into();
        let shard_id: Arc<str> = batch.shard_id().into();
        let records = (0..shared.len())
            .map(|index| {
                Py::new(
                    py,
                    PyRecord { records: shared.clone(), index, stream: stream.clone(), shard_id: shard_id.clone() },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self { batch, records: PyList::new(py, records)?.unbind() })
    }

    /// Where a checkpoint goes: the record given (of this shard) or the batch's end.
    fn target(&self, record: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Target>> {
        let Some(record) = record.filter(|r| !r.is_none()) else {
            return Ok(None);
        };
        let record = record.cast::<PyRecord>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "checkpoint takes a Record of this batch's shard (or nothing), not {}",
                crate::options::type_name(record)
            ))
        })?;
        let record = record.get();
        let r = record.get();
        Ok(Some(Target {
            stream: record.stream.to_string(),
            shard_id: record.shard_id.to_string(),
            sequence: r.sequence_number.clone(),
            sub_sequence: r.sub_sequence_number,
        }))
    }
}

/// A record to checkpoint at, with the shard it came from (the client refuses a record
/// of another shard, and a position it never delivered).
pub(crate) struct Target {
    stream: String,
    shard_id: String,
    sequence: String,
    sub_sequence: u64,
}

/// `check_record_shard(batch_stream, batch_shard_id, record_stream, record_shard_id)`:
/// the client's rule that a batch checkpoints only records of its own shard
/// ([`kb::check_record_shard`]), for `kinesis_butler.testing`'s batches; raises the
/// `InvalidArgumentError` a real batch's `checkpoint` raises.
#[pyfunction]
pub(crate) fn check_record_shard(
    py: Python<'_>,
    batch_stream: &str,
    batch_shard_id: &str,
    record_stream: &str,
    record_shard_id: &str,
) -> PyResult<()> {
    kb::check_record_shard(batch_stream, batch_shard_id, record_stream, record_shard_id).map_err(|e| to_py_err(py, e))
}

async fn store(checkpointer: kb::Checkpointer, target: Option<Target>) -> Result<(), kb::Error> {
    match target {
        None => checkpointer.checkpoint().await,
        Some(t) => checkpointer.checkpoint_record_of(&t.stream, &t.shard_id, &t.sequence, t.sub_sequence).await,
    }
}

/// A shard as this consumer holds it (given to the `shard_started` / `shard_stopped`
/// hooks of a handler object).
#[pyclass(frozen, module = "kinesis_butler", name = "Shard")]
pub(crate) struct PyShard {
    shard: kb::ShardInfo,
}

impl From<kb::ShardInfo> for PyShard {
    fn from(shard: kb::ShardInfo) -> Self {
        Self { shard }
    }
}

#[pymethods]
impl PyShard {
    /// Stream name.
    #[getter]
    fn stream(&self) -> &str {
        &self.shard.stream
    }

    /// Shard id.
    #[getter]
    fn shard_id(&self) -> &str {
        &self.shard.shard_id
    }

    /// The lease epoch (fencing token) this consumer holds the shard at.
    #[getter]
    fn lease_epoch(&self) -> u64 {
        self.shard.lease_epoch
    }

    /// The stored checkpoint reading started after (a sequence number, `SHARD_END`, or
    /// empty when there was none).
    #[getter]
    fn checkpoint(&self) -> &str {
        &self.shard.checkpoint
    }

    fn __repr__(&self) -> String {
        format!(
            "Shard(stream={:?}, shard_id={:?}, lease_epoch={})",
            self.shard.stream, self.shard.shard_id, self.shard.lease_epoch
        )
    }
}

#[pymethods]
impl PyBatch {
    /// Stream name.
    #[getter]
    fn stream(&self) -> &str {
        self.batch.stream()
    }

    /// Shard id.
    #[getter]
    fn shard_id(&self) -> &str {
        self.batch.shard_id()
    }

    /// The lease epoch (fencing token) this consumer holds the shard at.
    #[getter]
    fn lease_epoch(&self) -> u64 {
        self.batch.shard().lease_epoch
    }

    /// The records, in sequence order (never empty).
    #[getter]
    fn records(&self, py: Python<'_>) -> Py<PyList> {
        self.records.clone_ref(py)
    }

    /// How far the server's reader is behind the tip of the shard, as Kinesis reports it.
    #[getter]
    fn millis_behind_latest(&self) -> i64 {
        self.batch.millis_behind_latest()
    }

    /// 1 on the first delivery of this batch, then 2, 3… on retries.
    #[getter]
    fn attempt(&self) -> u32 {
        self.batch.attempt()
    }

    /// Stores a checkpoint for this shard now: up to and including `record`, or the
    /// whole batch. Blocks until the server confirmed it (use `checkpoint_async` in
    /// an `async def` handler).
    #[pyo3(signature = (record=None))]
    fn checkpoint(&self, py: Python<'_>, record: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let target = self.target(record)?;
        let checkpointer = self.batch.checkpointer().clone();
        let result = py.detach(|| runtime().block_on(store(checkpointer, target)));
        result.map_err(|e| to_py_err(py, e))
    }

    /// `checkpoint` as an awaitable, for `async def` handlers.
    #[pyo3(signature = (record=None))]
    fn checkpoint_async<'py>(
        &self,
        py: Python<'py>,
        record: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = self.target(record)?;
        let checkpointer = self.batch.checkpointer().clone();
        crate::attach::spawn_for_loop(py, store(checkpointer, target))
    }

    fn __len__(&self) -> usize {
        self.batch.records().len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.records.bind(py).as_any().try_iter().map(|i| i.into_any())
    }

    fn __repr__(&self) -> String {
        let records = self.batch.records();
        format!(
            "Batch(stream={:?}, shard_id={:?}, records={}, first={:?}, last={:?})",
            self.batch.stream(),
            self.batch.shard_id(),
            records.len(),
            records.first().map(|r| r.sequence_number.as_str()).unwrap_or(""),
            records.last().map(|r| r.sequence_number.as_str()).unwrap_or("")
        )
    }
}
