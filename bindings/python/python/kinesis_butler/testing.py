"""Helpers for testing your handler without a server (like botocore's ``Stubber``).

Build batches of records, run a handler (a function, an ``async def`` or a handler
object with ``shard_started`` / ``shard_stopped``) on them the way a consumer does, and
look at what it checkpointed::

    from kinesis_butler.testing import make_batch, run_handler

    def test_my_handler():
        batch = make_batch([b"one", b"two"])
        result = run_handler(my_handler, batch)
        assert result.checkpoints == [batch.records[-1].sequence_number]

The objects have the attributes and methods of ``kinesis_butler.Batch`` / ``Record`` /
``Shard`` (they are stand-ins: the real ones only come from a server).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
from typing import Any, Iterable, List, Optional, Sequence, Union

from ._errors import InvalidArgumentError
from ._native import check_record_shard

__all__ = [
    "TestRecord",
    "TestBatch",
    "TestShard",
    "HandlerRun",
    "make_record",
    "make_batch",
    "run_handler",
    "run_handler_async",
]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_FIRST_SEQUENCE = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000


class TestShard:
    """A stand-in for ``kinesis_butler.Shard``."""

    __test__ = False  # not a pytest test class

    def __init__(self, stream: str, shard_id: str, lease_epoch: int = 1, checkpoint: str = "") -> None:
        self.stream = stream
        self.shard_id = shard_id
        self.lease_epoch = lease_epoch
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"TestShard(stream={self.stream!r}, shard_id={self.shard_id!r}, lease_epoch={self.lease_epoch})"


class TestRecord:
    """A stand-in for ``kinesis_butler.Record``."""

    __test__ = False

    def __init__(
        self,
        data: bytes,
        *,
        partition_key: str = "key",
        sequence_number: str,
        sub_sequence_number: int = 0,
        approximate_arrival_timestamp_ms: int = 0,
        stream: str = "test-stream",
        shard_id: str = "shardId-000000000000",
    ) -> None:
        self.data = bytes(data)
        self.partition_key = partition_key
        self.sequence_number = sequence_number
        self.sub_sequence_number = sub_sequence_number
        self.approximate_arrival_timestamp_ms = approximate_arrival_timestamp_ms
        self.stream = stream
        self.shard_id = shard_id

    @property
    def approximate_arrival_timestamp(self) -> datetime.datetime:
        return _EPOCH + datetime.timedelta(milliseconds=self.approximate_arrival_timestamp_ms)

    def __repr__(self) -> str:
        return f"TestRecord(shard_id={self.shard_id!r}, sequence_number={self.sequence_number!r}, data={self.data!r})"


class TestBatch:
    """A stand-in for ``kinesis_butler.Batch``; ``checkpoints`` lists the sequence
    numbers its ``checkpoint`` calls stored, in order."""

    __test__ = False

    def __init__(
        self,
        records: Sequence[TestRecord],
        *,
        stream: str,
        shard_id: str,
        lease_epoch: int = 1,
        attempt: int = 1,
        millis_behind_latest: int = 0,
        checkpoints: Optional[List[str]] = None,
    ) -> None:
        if not records:
            raise InvalidArgumentError("a batch has at least one record")
        self.records = list(records)
        self.stream = stream
        self.shard_id = shard_id
        self.lease_epoch = lease_epoch
        self.attempt = attempt
        self.millis_behind_latest = millis_behind_latest
        self.checkpoints: List[str] = [] if checkpoints is None else checkpoints

    def checkpoint(self, record: Optional[TestRecord] = None) -> None:
        """Records a checkpoint at ``record`` (of this batch's shard) or the batch's end."""
        if record is None:
            record = self.records[-1]
        check_record_shard(self.stream, self.shard_id, record.stream, record.shard_id)
        self.checkpoints.append(record.sequence_number)

    async def checkpoint_async(self, record: Optional[TestRecord] = None) -> None:
        self.checkpoint(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Any:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"TestBatch(stream={self.stream!r}, shard_id={self.shard_id!r}, records={len(self.records)})"


def make_record(
    data: Union[bytes, str],
    *,
    sequence_number: Optional[str] = None,
    partition_key: str = "key",
    sub_sequence_number: int = 0,
    arrival: Optional[datetime.datetime] = None,
    stream: str = "test-stream",
    shard_id: str = "shardId-000000000000",
) -> TestRecord:
    """A record (``str`` data is UTF-8 encoded)."""
    payload = data.encode() if isinstance(data, str) else bytes(data)
    ms = 0 if arrival is None else int((arrival - _EPOCH).total_seconds() * 1000)
    return TestRecord(
        payload,
        partition_key=partition_key,
        sequence_number=sequence_number or str(_FIRST_SEQUENCE),
        sub_sequence_number=sub_sequence_number,
        approximate_arrival_timestamp_ms=ms,
        stream=stream,
        shard_id=shard_id,
    )


def make_batch(
    records: Iterable[Union[TestRecord, bytes, str]],
    *,
    stream: str = "test-stream",
    shard_id: str = "shardId-000000000000",
    lease_epoch: int = 1,
    attempt: int = 1,
    first_sequence: int = _FIRST_SEQUENCE,
) -> TestBatch:
    """A batch of ``records`` (records, or payloads given increasing sequence numbers
    from ``first_sequence``)."""
    made = []
    for i, item in enumerate(records):
        if isinstance(item, TestRecord):
            made.append(item)
        else:
            made.append(
                make_record(
                    item, sequence_number=str(first_sequence + i), partition_key=f"key-{i}", stream=stream, shard_id=shard_id
                )
            )
    return TestBatch(made, stream=stream, shard_id=shard_id, lease_epoch=lease_epoch, attempt=attempt)


class HandlerRun:
    """What :func:`run_handler` saw."""

    def __init__(self) -> None:
        #: Sequence numbers checkpointed, in order: the handler's own ``checkpoint``
        #: calls, and the batch's end after each batch it handled (as the default
        #: checkpoint policy does), unless ``checkpoint="manual"``.
        self.checkpoints: List[str] = []
        #: ``("started", shard_id)`` / ``("batch", shard_id)`` / ``("stopped", shard_id, reason)``.
        self.calls: List[tuple] = []


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def run_handler(
    handler: Any,
    batches: Union[TestBatch, Iterable[TestBatch]],
    *,
    checkpoint: str = "batch",
    stop_reason: str = "consumer_stopped",
) -> HandlerRun:
    """Runs ``handler`` on ``batches`` as a consumer does: ``shard_started`` before a
    shard's first batch, its batches in order, then ``shard_stopped(shard, stop_reason)``;
    checkpoints each handled batch unless ``checkpoint="manual"``. An exception of the
    handler propagates. Works for plain and ``async def`` handlers (from a test without
    a running event loop; use :func:`run_handler_async` inside one)."""
    return asyncio.run(run_handler_async(handler, batches, checkpoint=checkpoint, stop_reason=stop_reason))


async def run_handler_async(
    handler: Any,
    batches: Union[TestBatch, Iterable[TestBatch]],
    *,
    checkpoint: str = "batch",
    stop_reason: str = "consumer_stopped",
) -> HandlerRun:
    """:func:`run_handler` inside a running event loop."""
    if checkpoint not in ("batch", "manual"):
        raise InvalidArgumentError(f"checkpoint must be 'batch' or 'manual', not {checkpoint!r}")
    handle = handler if callable(handler) else getattr(handler, "handle", None)
    if not callable(handle):
        raise TypeError(f"handler must be callable or have a handle(batch) method, not {type(handler).__name__}")
    started = getattr(handler, "shard_started", None)
    stopped = getattr(handler, "shard_stopped", None)
    run = HandlerRun()
    listed = [batches] if isinstance(batches, TestBatch) else list(batches)
    shards: dict = {}
    for batch in listed:
        batch.checkpoints = run.checkpoints
        key = (batch.stream, batch.shard_id)
        if key not in shards:
            shards[key] = TestShard(batch.stream, batch.shard_id, batch.lease_epoch)
            run.calls.append(("started", batch.shard_id))
            if callable(started):
                await _maybe_await(started(shards[key]))
        run.calls.append(("batch", batch.shard_id))
        await _maybe_await(handle(batch))
        if checkpoint == "batch":
            last = batch.records[-1].sequence_number
            if not run.checkpoints or run.checkpoints[-1] != last:
                run.checkpoints.append(last)
    for shard in shards.values():
        run.calls.append(("stopped", shard.shard_id, stop_reason))
        if callable(stopped):
            await _maybe_await(stopped(shard, stop_reason))
    return run
