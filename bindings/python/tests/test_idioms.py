"""The idioms of the package against a real server: handler objects with shard hooks,
`async for` / `for`, `with` / `async with`, one error model, cross-shard checkpoints,
structured logs, environment defaults."""

import asyncio
import logging
import threading
import time

import pytest

import kinesis_butler
from kinesis_butler import Consumer, InvalidArgumentError, StoppedError
from support import unique, wait_until

FAST = {"retry_initial_delay": 0.02, "retry_max_delay": 0.1, "reconnect_initial_delay": 0.05}


def last_per_shard(stream):
    return {shard: puts[-1][0] for shard, puts in stream.put.items()}


def stored_checkpoints(server, app, stream):
    state = server.leases(app, stream.name)
    return {lease["shard_id"]: lease["checkpoint"] for lease in state["leases"]}, state


class Timeline:
    """What the hooks of several consumers saw, in one order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []
        self.changed = threading.Condition(self.lock)

    def add(self, *event):
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}: {self.events}")
                self.changed.wait(left)


class HookedHandler:
    """A handler object as someone porting kclpy or aiokafka writes it."""

    def __init__(self, name, timeline):
        self.name = name
        self.timeline = timeline
        self.pending = {}

    def shard_started(self, shard):
        assert isinstance(shard, kinesis_butler.Shard)
        self.timeline.add(self.name, "started", shard.shard_id, shard.lease_epoch)

    def handle(self, batch):
        self.pending[batch.shard_id] = len(batch)

    def shard_stopped(self, shard, reason):
        self.pending.pop(shard.shard_id, None)  # "flushed" before the handoff
        self.timeline.add(self.name, "stopped", shard.shard_id, shard.lease_epoch, reason)


def test_handler_object_hooks_see_every_assignment_and_revocation_of_a_rebalance_in_order(server, make_stream):
    stream = make_stream(4)
    stream.put_records(40)
    app = unique("app")
    timeline = Timeline()
    first = Consumer(server.endpoint, app, [stream.name], **FAST)
    second = Consumer(server.endpoint, app, [stream.name], **FAST)
    threads = [
        threading.Thread(target=first.run, args=(HookedHandler("first", timeline),), daemon=True),
        threading.Thread(target=second.run, args=(HookedHandler("second", timeline),), daemon=True),
    ]
    try:
        threads[0].start()
        timeline.wait(lambda e: sum(1 for x in e if x[:2] == ("first", "started")) == 4, 60, "first to start 4 shards")
        threads[1].start()
        timeline.wait(lambda e: sum(1 for x in e if x[:2] == ("second", "started")) == 2, 60, "the rebalance")
    finally:
        first.stop()
        second.stop()
        for t in threads:
            t.join(30)
    events = timeline.events
    revoked = [e for e in events if e[:2] == ("first", "stopped") and e[4] == "rebalanced"]
    moved = {e[2] for e in events if e[:2] == ("second", "started")}
    assert {e[2] for e in revoked} == moved and len(moved) == 2, events
    for shard in moved:
        index = {e[:3]: i for i, e in enumerate(events)}
        assert index[("first", "started", shard)] < index[("first", "stopped", shard)] < index[
            ("second", "started", shard)
        ], f"{shard}: started, then stopped before the next owner started: {events}"
    # Every start has its stop, in order, per consumer and shard.
    for name in ("first", "second"):
        per_shard = {}
        for e in events:
            if e[0] == name:
                per_shard.setdefault(e[2], []).append(e[1])
        for shard, seen in per_shard.items():
            assert seen == ["started", "stopped"] * (len(seen) // 2) and seen, f"{name} {shard}: {seen}"


def test_async_for_consumes_and_checkpoints_a_stream_to_the_end(server, make_stream):
    stream = make_stream(2)
    stream.put_records(300)
    app = unique("app")

    async def main():
        seen = 0
        async with Consumer(server.endpoint, app, [stream.name], max_records_per_batch=50, **FAST) as consumer:
            watchdog = asyncio.get_running_loop().call_later(60, consumer.stop)
            async for batch in consumer:
                await asyncio.sleep(0)
                seen += len(batch)
                if seen >= stream.count:
                    consumer.stop()  # the loop ends once this body is done: it is checkpointed
            watchdog.cancel()
        return seen

    assert asyncio.run(main()) == stream.count
    checkpoints, _ = stored_checkpoints(server, app, stream)
    assert checkpoints == last_per_shard(stream)
    # The server drops the closed session on its own time: only its store shows it.
    wait_until(lambda: stored_checkpoints(server, app, stream)[1]["sessions"] == [], 10, "the session to be closed")


def test_for_loop_consumes_and_checkpoints_and_breaking_out_stops(server, make_stream):
    stream = make_stream(1)
    stream.put_records(60)
    app = unique("app")
    seen = []
    with Consumer(server.endpoint, app, [stream.name], max_records_per_batch=10, **FAST) as consumer:
        watchdog = threading.Timer(60, consumer.stop)
        watchdog.start()
        for batch in consumer:
            seen.extend(r.sequence_number for r in batch)
            if len(seen) >= 30:
                break  # the batch in hand counts as not handled
        watchdog.cancel()
        assert consumer.stopped
    checkpoints, _ = stored_checkpoints(server, app, stream)
    (shard,) = stream.put
    assert checkpoints[shard] == seen[-11], "checkpointed up to the batch before the one in hand"


def test_a_cross_shard_checkpoint_is_refused_by_the_client(server, make_stream):
    stream = make_stream(2)
    stream.put_records(40)
    consumer = Consumer(server.endpoint, unique("app"), [stream.name], checkpoint="manual", **FAST)
    kept = {}
    refused = []

    def handle(batch):
        kept.setdefault(batch.shard_id, batch.records[0])
        others = [r for s, r in kept.items() if s != batch.shard_id]
        if others and not refused:
            with pytest.raises(InvalidArgumentError) as raised:
                batch.checkpoint(others[0])
            refused.append(raised.value)
            consumer.stop()

    watchdog = threading.Timer(60, consumer.stop)
    watchdog.start()
    consumer.run(handle)
    watchdog.cancel()
    (error,) = refused
    assert (error.code, error.grpc_code, error.retryable) == ("invalid_argument", "INVALID_ARGUMENT", False)
    assert "a batch checkpoints only records of its own shard" in str(error)


def test_one_error_model_run_after_stop_and_no_shadowed_builtin(server, make_stream):
    missing = Consumer(server.endpoint, unique("app"), [unique("no-such-stream")], **FAST)
    with pytest.raises(kinesis_butler.NotFoundError) as raised:
        missing.run(lambda batch: None)
    assert (raised.value.code, raised.value.grpc_code, raised.value.retryable) == ("not_found", "NOT_FOUND", False)

    unreachable = Consumer("http://127.0.0.1:9", "app", ["s"], max_initial_connect_attempts=1)
    with pytest.raises(kinesis_butler.ButlerConnectionError) as raised:
        unreachable.run(lambda batch: None)
    assert isinstance(raised.value, ConnectionError)
    assert (raised.value.code, raised.value.retryable) == ("connection", True)

    stopped = Consumer(server.endpoint, unique("app"), ["s"])
    stopped.stop()
    with pytest.raises(StoppedError, match="create a new one") as raised:
        stopped.run(lambda batch: None)
    assert raised.value.code == "stopped"

    namespace = {}
    exec("from kinesis_butler import *", namespace)
    assert "ConnectionError" not in namespace and "ButlerConnectionError" in namespace
    assert kinesis_butler.ConnectionError is kinesis_butler.ButlerConnectionError


def test_logs_carry_their_fields_as_extra_and_debug_when_wanted(caplog):
    logger = logging.getLogger("kinesis_butler")
    consumer = Consumer("http://127.0.0.1:9", "app", ["s"], max_initial_connect_attempts=2, reconnect_initial_delay=0.01)
    with caplog.at_level(logging.DEBUG, logger="kinesis_butler"):
        with pytest.raises(kinesis_butler.ButlerConnectionError):
            consumer.run(lambda batch: None)
    assert logger.isEnabledFor(logging.WARNING)
    warnings = [r for r in caplog.records if r.message == "cannot open a session"]
    assert warnings, [r.getMessage() for r in caplog.records]
    assert warnings[0].attempt == "1" and warnings[0].app == "app" and "cannot reach" in warnings[0].error


def test_endpoint_and_token_default_from_the_environment_and_tls_takes_paths_or_bytes(monkeypatch, tmp_path):
    monkeypatch.setenv("KINESIS_BUTLER_ENDPOINT", "http://127.0.0.1:50999")
    assert Consumer(None, "app", ["s"]).endpoint == "http://127.0.0.1:50999"
    monkeypatch.delenv("KINESIS_BUTLER_ENDPOINT")
    with pytest.raises(InvalidArgumentError, match="KINESIS_BUTLER_ENDPOINT"):
        Consumer(None, "app", ["s"])
    with pytest.raises(InvalidArgumentError, match="tls_ca_certificate_pem: cannot read the file"):
        Consumer("https://x:1", "app", ["s"], tls_ca_certificate_pem=str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidArgumentError, match="tls_ca_certificate_pem: cannot read the file"):
        Consumer("https://x:1", "app", ["s"], tls_ca_certificate_pem=tmp_path / "missing.pem")
    with pytest.raises(InvalidArgumentError, match="not PEM"):
        Consumer("https://x:1", "app", ["s"], tls_ca_certificate_pem=b"junk")
    with pytest.raises(TypeError, match="PEM text, a file path"):
        Consumer("https://x:1", "app", ["s"], tls_ca_certificate_pem=42)
