"""Poison records, dead letters, timeouts that stop, and stats, through a real server."""

import asyncio
import base64
import json
import threading
import time
from collections import defaultdict

from kinesis_butler import Consumer, RecordFailed
from support import AWS_ENV, Worker, run_bounded, unique

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


def test_bisect_isolates_one_poison_record_among_1000_in_at_most_11_calls_on_the_failing_part(server, make_stream):
    stream = make_stream(1)
    stream.put_records(1000, size=20)
    [(shard, puts)] = stream.put.items()
    poison = puts[737][0]
    lock = threading.Lock()
    failing = []  # sizes of the calls that held the poison record
    handled = []
    dead = []

    def stop_when_done():
        if len(handled) >= 999 and dead:
            consumer.stop()

    def on_failure(entries):
        with lock:
            dead.extend(entries)
            stop_when_done()

    consumer = Consumer(
        server.endpoint,
        unique("app"),
        [stream.name],
        max_records_per_batch=1000,
        max_attempts=1,
        bisect_on_error=True,
        on_failure=on_failure,
        **FAST,
    )

    def handle(batch):
        seqs = [r.sequence_number for r in batch.records]
        with lock:
            if poison in seqs:
                failing.append(len(seqs))
                raise ValueError("something in here is bad")  # which record: not said
            handled.extend(seqs)
            stop_when_done()

    run_bounded(consumer, handle, 60)
    assert failing[0] == 1000, f"the first failing call held all 1,000 records: {failing}"
    assert len(failing) <= 11, f"{len(failing)} calls on the failing part: {failing}"
    assert all(b in (a // 2, (a + 1) // 2) for a, b in zip(failing, failing[1:])), f"halves: {failing}"
    assert failing[-1] == 1, failing
    assert [e["sequence_number"] for e in dead] == [poison]
    assert dead[0]["reason"] == "handler_failed" and dead[0]["attempts"] == 1 and dead[0]["shard_id"] == shard
    assert "something in here is bad" in dead[0]["error"]
    assert sorted(handled, key=int) == [seq for seq, _ in puts if seq != poison], "each of the other 999 once"
    stats = consumer.stats()
    assert stats["bisect_steps"] == len(failing) - 1, stats
    assert stats["dead_lettered"] == 1 and stats["records_handled"] == 999, stats


def test_records_older_than_max_record_age_go_to_on_failure_and_newer_ones_to_the_handler(server, make_stream):
    max_age = 2.0
    stream = make_stream(1)
    stream.put_records(20)
    put_at = time.monotonic()
    [(shard, old)] = [(shard, list(puts)) for shard, puts in stream.put.items()]
    # The records have to age: nothing to await but the clock.
    time.sleep(max(0.0, put_at + max_age + 0.3 - time.monotonic()))
    lock = threading.Lock()
    dead = []
    handled = []
    all_old_dead = threading.Event()

    def on_failure(entries):
        with lock:
            dead.extend(entries)
            if len(dead) >= len(old):
                all_old_dead.set()

    consumer = Consumer(
        server.endpoint,
        unique("app"),
        [stream.name],
        max_record_age=max_age,
        on_failure=on_failure,
        **FAST,
    )

    def put_newer():
        if all_old_dead.wait(30):
            stream.put_records(10)

    putter = threading.Thread(target=put_newer, daemon=True)
    putter.start()

    def handle(batch):
        with lock:
            handled.extend(r.sequence_number for r in batch.records)
            if len(handled) >= 10:
                consumer.stop()

    run_bounded(consumer, handle, 60)
    putter.join(30)
    new = [seq for seq, _ in stream.put[shard][len(old) :]]
    assert len(new) == 10, "the newer records were put once the old ones were given up"
    assert handled == new, "only the newer records, once each, in order"
    assert [e["sequence_number"] for e in dead] == [seq for seq, _ in old], "every record too old, in order"
    for entry, (_, data) in zip(dead, old):
        assert entry["reason"] == "too_old" and entry["attempts"] == 0, entry
        assert "max_record_age" in entry["error"], entry["error"]
        assert entry["data"] == data
    stats = consumer.stats()
    assert stats["dead_lettered"] == 20 and stats["records_handled"] == 10, stats


def test_lanes_of_parallelization_factor_4_keep_each_keys_order_and_handle_every_record_once(server, make_stream):
    stream = make_stream(1)
    stream.put_records(800, size=20, key=lambda n: f"key-{n % 40}")
    [(shard, puts)] = stream.put.items()
    lock = threading.Lock()
    seen = defaultdict(list)  # key -> sequence numbers as handled
    state = {"running": 0, "max": 0, "count": 0}
    consumer = Consumer(
        server.endpoint,
        unique("app"),
        [stream.name],
        max_records_per_batch=200,
        parallelization_factor=4,
        **FAST,
    )

    def handle(batch):
        with lock:
            state["running"] += 1
            state["max"] = max(state["max"], state["running"])
        time.sleep(0.005)
        with lock:
            for r in batch.records:
                seen[r.partition_key].append(int(r.sequence_number))
            state["count"] += len(batch.records)
            state["running"] -= 1
            if state["count"] >= 800:
                consumer.stop()

    run_bounded(consumer, handle, 60)
    assert len(seen) == 40
    for key, seqs in seen.items():
        assert len(seqs) == 20, f"{key}: {len(seqs)} records"
        assert seqs == sorted(seqs), f"{key} in order"
    assert sorted(s for seqs in seen.values() for s in seqs) == [int(seq) for seq, _ in puts], "every record once"
    assert state["max"] > 1, f"lanes ran at once: {state}"
    assert state["max"] <= 4, f"at most one call per lane: {state}"
    leases = server.leases(consumer.app, stream.name)["leases"]
    checkpoint = {lease["shard_id"]: lease["checkpoint"] for lease in leases}
    assert checkpoint[shard] == puts[-1][0], "the checkpoint covers every lane"


def test_lanes_lose_nothing_when_the_consumer_process_is_killed_and_another_takes_over(server, make_stream):
    stream = make_stream(1)
    stream.put_records(800, size=20, key=lambda n: f"key-{n % 40}")
    [(shard, puts)] = stream.put.items()
    everything = {(shard, seq) for seq, _ in puts}
    app = unique("app")
    # A line per call once it is done: what a worker printed, it handled.
    args = ("--parallelization-factor", "4", "--max-records-per-batch", "200", "--work-ms", "20")
    first = Worker(server.endpoint, app, stream.name, *args)
    try:
        first.wait_for(lambda w: len(w.records()) >= 250, 60, "the first worker to handle a third of the records")
    finally:
        first.kill()
    second = Worker(server.endpoint, app, stream.name, *args)
    try:
        second.wait_for(
            lambda w: everything <= set(first.records()) | set(w.records()), 60, "every record handled by one of them"
        )
    finally:
        second.kill()
    assert len(first.records()) < len(everything), "the first worker was killed before the end"
    for worker in (first, second):
        by_key = defaultdict(list)
        for b in worker.batches():
            for key, seq in zip(b["keys"], b["seqs"]):
                by_key[key].append(int(seq))
        for key, seqs in by_key.items():
            assert seqs == sorted(set(seqs)), f"{key}: in order, once, within one worker"


def test_a_poison_record_goes_to_a_kinesis_dead_letter_stream_with_its_metadata(server, make_stream, monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)  # how the client's kinesis: destination finds the emulator
    stream = make_stream(1)
    dlq = make_stream(1)
    stream.put_records(50)
    [(shard, puts)] = stream.put.items()
    poison = puts[17][0]
    app = unique("app")
    handled = []
    consumer = Consumer(
        server.endpoint,
        app,
        [stream.name],
        max_records_per_batch=50,
        max_attempts=1,
        on_failure=f"kinesis:{dlq.name}",
        **FAST,
    )

    def handle(batch):
        for record in batch.records:
            if record.sequence_number == poison:
                raise RecordFailed(record, ValueError("cannot parse record 17"))
            handled.append(record.sequence_number)
        # The shard moves past the poison record only once the destination accepted it.
        if len(handled) >= 49:
            consumer.stop()

    run_bounded(consumer, handle, 60)
    assert handled == [seq for seq, _ in puts if seq != poison], "the other 49 once each, in order"
    [dead] = dlq.read_all()
    entry = json.loads(dead["Data"])
    assert dead["PartitionKey"].startswith("key-17-"), dead["PartitionKey"]
    assert entry["partition_key"] == dead["PartitionKey"]
    assert (entry["app"], entry["stream"], entry["shard_id"]) == (app, stream.name, shard)
    assert entry["sequence_number"] == poison and entry["sub_sequence_number"] == 0
    assert entry["attempts"] == 1 and entry["reason"] == "handler_failed"
    assert "cannot parse record 17" in entry["error"]
    assert entry["approximate_arrival_timestamp_ms"] > 0
    assert base64.b64decode(entry["data"]) == puts[17][1]
    checkpoint = {lease["shard_id"]: lease["checkpoint"] for lease in server.leases(app, stream.name)["leases"]}
    assert checkpoint[shard] == puts[-1][0], "the checkpoint moved past the poison record"
    assert consumer.stats()["dead_lettered"] == 1
