"""Consuming a real stream through a real server, in one process."""

import asyncio
import datetime
import threading

import pytest

import kinesis_butler
from kinesis_butler import Consumer, HandlerError
from support import Recorder, assert_once_in_order, run_bounded, unique

FAST = {"retry_initial_delay": 0.02, "retry_max_delay": 0.1, "reconnect_initial_delay": 0.05}


def stop_when_all_seen(consumer, recorder, total):
    def check():
        if recorder.count() >= total:
            consumer.stop()

    return check


@pytest.mark.parametrize("style", ["function", "async_def"])
def test_every_record_once_in_order_per_shard(server, make_stream, style):
    stream = make_stream(4)
    stream.put_records(1200)
    app = unique("app")
    consumer = Consumer(server.endpoint, app, [stream.name], max_records_per_batch=100, **FAST)
    recorder = Recorder()
    done = stop_when_all_seen(consumer, recorder, stream.count)
    threads = set()

    if style == "function":

        def handle(batch):
            threads.add(threading.get_ident())
            recorder.add(batch)
            done()

    else:

        async def handle(batch):
            threads.add(threading.get_ident())
            await asyncio.sleep(0)
            recorder.add(batch)
            done()

    run_bounded(consumer, handle, 60)
    assert consumer.stopped
    assert_once_in_order(recorder.handled(), stream)
    if style == "async_def":
        assert threads == {threading.get_ident()}, "coroutines run on the loop of the calling thread"
    else:
        assert threading.get_ident() not in threads, "plain functions run on worker threads"

    # Everything was checkpointed: the next consumer of the app gets only new records.
    stream.put_records(40)
    again = Consumer(server.endpoint, app, [stream.name], **FAST)
    later = Recorder()
    run_bounded(again, lambda b: (later.add(b), stop_when_all_seen(again, later, 40)()), 60)
    new = {seq for puts in stream.put.values() for seq, data in puts if int(data[4:12]) >= 1200}
    assert {seq for records in later.handled().values() for seq, _ in records} == new
    assert later.count() == 40


def test_run_async_inside_a_running_loop(server, make_stream):
    stream = make_stream(2)
    stream.put_records(300)
    consumer = Consumer(server.endpoint, unique("app"), stream.name, **FAST)
    recorder = Recorder()

    async def handle(batch):
        recorder.add(batch)
        if recorder.count() >= stream.count:
            consumer.stop()

    async def main():
        await asyncio.wait_for(consumer.run_async(handle), 60)

    asyncio.run(main())
    assert_once_in_order(recorder.handled(), stream)


def test_cancelling_run_async_stops_gracefully(server, make_stream):
    stream = make_stream(2)
    stream.put_records(100)
    app = unique("app")
    consumer = Consumer(server.endpoint, app, stream.name, checkpoint_every_records=1_000_000, **FAST)
    recorder = Recorder()
    all_seen = asyncio.Event()

    async def handle(batch):
        recorder.add(batch)
        if recorder.count() >= stream.count:
            all_seen.set()

    async def main():
        task = asyncio.ensure_future(consumer.run_async(handle))
        await asyncio.wait_for(all_seen.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)

    asyncio.run(main())
    assert consumer.stopped
    # Only the stop could have stored the checkpoints (every 1 000 000 records otherwise).
    stream.put_records(10)
    again = Consumer(server.endpoint, app, stream.name, **FAST)
    later = Recorder()
    run_bounded(again, lambda b: (later.add(b), stop_when_all_seen(again, later, 10)()), 60)
    assert later.count() == 10


def test_records_and_batches_carry_kinesis_fields(server, make_stream):
    stream = make_stream(1)
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    stream.put_records(5, size=64)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], **FAST)
    seen = []

    def handle(batch):
        seen.append(batch)
        consumer.stop()

    run_bounded(consumer, handle, 60)
    batch = seen[0]
    assert isinstance(batch, kinesis_butler.Batch)
    assert batch.stream == stream.name and batch.shard_id == "shardId-000000000000"
    assert batch.attempt == 1 and batch.lease_epoch >= 1 and isinstance(batch.millis_behind_latest, int)
    assert len(batch) == len(batch.records) == 5 and list(batch) == batch.records
    first = batch.records[0]
    assert isinstance(first, kinesis_butler.Record)
    assert first.data == b"rec-00000000-".ljust(64, b".") and isinstance(first.data, bytes)
    assert first.partition_key.startswith("key-0-")
    assert first.sequence_number == stream.put["shardId-000000000000"][0][0]
    assert first.sub_sequence_number == 0
    ts = first.approximate_arrival_timestamp
    assert ts.tzinfo is not None and ts.utcoffset() == datetime.timedelta(0)
    assert before <= ts <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=5)
    assert first.approximate_arrival_timestamp_ms == int(ts.timestamp() * 1000)
    assert "Record(" in repr(first) and "Batch(" in repr(batch)


@pytest.mark.parametrize("style", ["function", "async_def"])
def test_a_failing_batch_is_retried_and_checkpointed_only_after_success(server, make_stream, style):
    stream = make_stream(2)
    stream.put_records(200)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], handler_retries=5, **FAST)
    recorder = Recorder()
    failures = []
    done = stop_when_all_seen(consumer, recorder, stream.count)

    def work(batch):
        # The first batch of every shard fails twice, then succeeds.
        if batch.records[0].sequence_number == stream.put[batch.shard_id][0][0] and batch.attempt < 3:
            failures.append((batch.shard_id, batch.attempt, batch.records[0].sequence_number))
            raise RuntimeError(f"transient failure {batch.attempt}")
        recorder.add(batch)
        done()

    if style == "function":
        handle = work
    else:

        async def handle(batch):
            await asyncio.sleep(0)
            work(batch)

    run_bounded(consumer, handle, 60)
    assert sorted(failures) == sorted(
        (shard, attempt, puts[0][0]) for shard, puts in stream.put.items() for attempt in (1, 2)
    )
    assert_once_in_order(recorder.handled(), stream)
    first_batches = {shard: attempt for shard, records, attempt in recorder.batches if records[0][0] == stream.put[shard][0][0]}
    assert first_batches == {shard: 3 for shard in stream.put}


@pytest.mark.parametrize("style", ["function", "async_def"])
def test_a_handler_that_always_raises_stops_the_consumer_with_its_error(server, make_stream, style):
    stream = make_stream(2)
    stream.put_records(100)
    app = unique("app")
    consumer = Consumer(server.endpoint, app, [stream.name], handler_retries=2, **FAST)
    bad_shard = "shardId-000000000001"
    handled = Recorder()
    attempts = []

    def work(batch):
        if batch.shard_id == bad_shard:
            attempts.append(batch.attempt)
            raise ValueError(f"cannot handle {batch.records[0].sequence_number}")
        handled.add(batch)

    if style == "function":
        handle = work
    else:

        async def handle(batch):
            work(batch)

    with pytest.raises(HandlerError) as raised:
        run_bounded(consumer, handle, 60)
    error = raised.value
    assert isinstance(error, kinesis_butler.ButlerError) and error.kind == "handler"
    assert error.shard_id == bad_shard and error.stream == stream.name and error.attempts == 3
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == f"cannot handle {stream.put[bad_shard][0][0]}"
    assert "ValueError: cannot handle" in str(error)
    assert attempts == [1, 2, 3]

    # The failed batch was not checkpointed: the next consumer starts with it, and gets
    # nothing the first one handled.
    again = Consumer(server.endpoint, app, [stream.name], **FAST)
    later = Recorder()
    first_handled = {seq for records in handled.handled().values() for seq, _ in records}
    expected = {seq for puts in stream.put.values() for seq, _ in puts} - first_handled
    run_bounded(again, lambda b: (later.add(b), stop_when_all_seen(again, later, len(expected))()), 60)
    second = later.handled()
    assert second[bad_shard][0][0] == stream.put[bad_shard][0][0]
    assert {seq for records in second.values() for seq, _ in records} == expected
    assert later.count() == len(expected)


def test_manual_checkpoints(server, make_stream):
    stream = make_stream(2)
    stream.put_records(200)
    app = unique("app")
    consumer = Consumer(server.endpoint, app, [stream.name], checkpoint="manual", **FAST)
    marks = {}

    def handle(batch):
        if batch.shard_id not in marks:
            middle = batch.records[len(batch.records) // 2]
            batch.checkpoint(middle)  # up to and including `middle`
            marks[batch.shard_id] = middle.sequence_number
        if len(marks) == stream.shards:
            consumer.stop()

    run_bounded(consumer, handle, 60)
    assert len(marks) == 2

    # Reading resumes right after each shard's manual checkpoint, not after what was handled.
    again = Consumer(server.endpoint, app, [stream.name], checkpoint="manual", **FAST)
    firsts = {}

    async def handle_async(batch):
        firsts.setdefault(batch.shard_id, batch.records[0].sequence_number)
        await batch.checkpoint_async()
        if len(firsts) == stream.shards:
            again.stop()

    run_bounded(again, handle_async, 60)
    for shard, puts in stream.put.items():
        seqs = [seq for seq, _ in puts]
        assert firsts[shard] == seqs[seqs.index(marks[shard]) + 1]


def test_checkpoint_of_a_record_of_another_shard_is_refused(server, make_stream):
    stream = make_stream(2)
    stream.put_records(50)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], checkpoint="manual", **FAST)
    batches = {}
    outcome = []

    def handle(batch):
        batches.setdefault(batch.shard_id, batch)
        if len(batches) == 2 and not outcome:
            a, b = batches.values()
            for bad in (b.records[0], "not a record"):
                try:
                    a.checkpoint(bad)
                except Exception as e:  # noqa: BLE001 - the test looks at the class
                    outcome.append(type(e))
            consumer.stop()

    run_bounded(consumer, handle, 60)
    assert outcome == [kinesis_butler.InvalidArgumentError, TypeError]


@pytest.mark.parametrize("style", ["function", "async_def"])
def test_shards_are_handled_concurrently_while_the_gil_is_free(server, make_stream, style):
    stream = make_stream(4)
    stream.put_records(40)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], **FAST)
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "seen": 0}
    all_in = threading.Barrier(4, timeout=30) if style == "function" else None

    def enter():
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])

    def leave(batch):
        with lock:
            state["now"] -= 1
            state["seen"] += len(batch.records)
            if state["seen"] >= stream.count:
                consumer.stop()

    if style == "function":

        def handle(batch):
            enter()
            all_in.wait()  # only returns once all four shards are in a handler at once
            leave(batch)

    else:
        arrived = asyncio.Event()

        async def handle(batch):
            enter()
            if state["max"] == 4:
                arrived.set()
            await asyncio.wait_for(arrived.wait(), 30)
            leave(batch)

    run_bounded(consumer, handle, 60)
    assert state["max"] == 4 and state["seen"] == stream.count
