"""Type-checked (mypy --strict) against the package's stubs; never run."""

import asyncio
import datetime
from typing import List

from kinesis_butler import Batch, ButlerError, Consumer, HandlerError, Record


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
