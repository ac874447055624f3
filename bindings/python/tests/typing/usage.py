"""Type-checked (mypy --strict) against the package's stubs; never run."""

import asyncio
import datetime
from pathlib import Path
from typing import List, Optional

from kinesis_butler import (
    Batch,
    ButlerConnectionError,
    ButlerError,
    Consumer,
    HandlerError,
    Record,
    Shard,
    StopReason,
)
from kinesis_butler.testing import make_batch, make_record, run_handler


def handle(batch: Batch) -> None:
    records: List[Record] = batch.records
    for record in records:
        data: bytes = record.data
        when: datetime.datetime = record.approximate_arrival_timestamp
        print(batch.shard_id, record.sequence_number, data, when, record.partition_key)
    batch.checkpoint(records[-1])


async def handle_async(batch: Batch) -> None:
    await batch.checkpoint_async()


def main() -> None:
    consumer = Consumer(
        "http://127.0.0.1:50051",
        "app",
        ["orders"],
        start="latest",
        checkpoint="manual",
        handler_timeout=datetime.timedelta(seconds=3),
        max_reconnect_attempts=5,
    )
    try:
        consumer.run(handle)
        consumer.run(handle_async)
        asyncio.run(consumer.run_async(handle_async))
    except HandlerError as e:
        print(e.shard_id, e.attempts, e.__cause__)
    except ButlerError as e:
        print(e.kind)
    consumer.stop()
    stopped: bool = consumer.stopped
    print(stopped)


class Hooked:
    """A handler object with shard hooks."""

    def shard_started(self, shard: Shard) -> None:
        print(shard.stream, shard.shard_id, shard.lease_epoch, shard.checkpoint)

    def handle(self, batch: Batch) -> None:
        print(len(batch))

    def shard_stopped(self, shard: Shard, reason: StopReason) -> None:
        print(shard.shard_id, reason)


async def iterate() -> None:
    async with Consumer(None, "app", "orders", tls_ca_certificate_pem=Path("ca.pem")) as consumer:
        async for batch in consumer:
            await batch.checkpoint_async(batch.records[-1])
    with Consumer("http://x", "app", ["s"], tls_ca_certificate_pem=b"-----BEGIN ...") as blocking:
        for each in blocking:
            print(each.shard_id)
        blocking.run(Hooked(), handle_signals=False)


def errors(e: ButlerError) -> None:
    code: str = e.code
    grpc: Optional[str] = e.grpc_code
    retryable: bool = e.retryable
    print(code, grpc, retryable, isinstance(e, ButlerConnectionError))


def test_helpers() -> None:
    batch = make_batch([b"a", "b"], shard_id="shardId-1")
    run = run_handler(Hooked(), batch)
    first: str = run.checkpoints[0]
    record = make_record(b"x")
    print(first, record.sequence_number)
