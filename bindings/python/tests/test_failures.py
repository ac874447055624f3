"""Poison records, dead letters, timeouts that stop, and stats, through a real server."""

import asyncio
import threading
import time

from kinesis_butler import Consumer, RecordFailed
from support import run_bounded, unique

FAST = {"retry_initial_delay": 0.02, "retry_max_delay": 0.1, "reconnect_initial_delay": 0.05}


def test_a_poison_record_goes_to_the_callback_and_the_others_are_handled_once(server, make_stream):
    stream = make_stream(1)
    stream.put_records(500)
    [(shard, puts)] = stream.put.items()
    poison = puts[137][0]
    dead = []
    handled = []
    consumer = Consumer(
        server.endpoint,
        unique("app"),
        [stream.name],
        max_records_per_batch=500,
        max_attempts=2,
        on_failure=lambda entries: dead.extend(entries),
        **FAST,
    )

    def handle(batch):
        for record in batch.records:
            if record.sequence_number == poison:
                raise RecordFailed(record, ValueError("cannot parse"))
            handled.append(record.sequence_number)
        if len(handled) >= 499 and dead:
            consumer.stop()

    run_bounded(consumer, handle, 60)
    assert handled == [seq for seq, _ in puts if seq != poison], "the other 499 once each, in order"
    assert len(dead) == 1
    entry = dead[0]
    assert entry["sequence_number"] == poison and entry["shard_id"] == shard
    assert entry["attempts"] == 2 and entry["reason"] == "handler_failed"
    assert "cannot parse" in entry["error"]
    assert entry["data"] == puts[137][1]
    stats = consumer.stats()
    assert stats["dead_lettered"] == 1 and stats["records_handled"] == 499, stats


def test_an_async_handler_past_its_timeout_is_cancelled_and_never_overlaps_its_retry(server, make_stream):
    stream = make_stream(1)
    stream.put_records(5)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], handler_timeout=0.2, **FAST)
    state = {"running": 0, "max": 0, "calls": 0, "cancelled": 0, "handled": 0}

    async def handle(batch):
        state["calls"] += 1
        state["running"] += 1
        state["max"] = max(state["max"], state["running"])
        try:
            if batch.attempt == 1:
                await asyncio.sleep(0.6)  # three times the timeout
            state["handled"] += len(batch.records)
            consumer.stop()
        except asyncio.CancelledError:
            state["cancelled"] += 1
            raise
        finally:
            state["running"] -= 1

    run_bounded(consumer, handle, 30)
    assert state["max"] == 1, state
    assert state["cancelled"] == 1, "the timed-out attempt was cancelled"
    assert state["calls"] == 2 and state["handled"] == 5, state
    assert consumer.stats()["handler_timeouts"] == 1


def test_a_plain_function_past_its_timeout_is_awaited_before_its_retry(server, make_stream):
    stream = make_stream(1)
    stream.put_records(5)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], handler_timeout=0.2, **FAST)
    lock = threading.Lock()
    state = {"running": 0, "max": 0, "calls": 0, "first_returned": None, "second_started": None}

    def handle(batch):
        with lock:
            state["calls"] += 1
            state["running"] += 1
            state["max"] = max(state["max"], state["running"])
            if batch.attempt == 2:
                state["second_started"] = time.monotonic()
        if batch.attempt == 1:
            time.sleep(0.6)
            state["first_returned"] = time.monotonic()
        else:
            consumer.stop()
        with lock:
            state["running"] -= 1

    run_bounded(consumer, handle, 30)
    assert state["max"] == 1, state
    assert state["calls"] == 2
    assert state["second_started"] >= state["first_returned"], "the retry started after the first call returned"
