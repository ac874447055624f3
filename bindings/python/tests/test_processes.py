"""Consumers in separate processes: sharing shards, failover, Ctrl-C."""

import re
import signal
import sys
from collections import defaultdict

import pytest

from support import ROOT, Worker, unique, wait_until


def holdings(server, app, stream):
    """client name -> shards it holds, once no lease is being handed over; else None."""
    state = server.leases(app, stream.name)
    if any(lease["handoff_to"] or not lease["owner"] for lease in state["leases"]):
        return None
    names = {s["session_id"]: s["client_name"] for s in state["sessions"]}
    held = defaultdict(set)
    for lease in state["leases"]:
        held[names.get(lease["owner"], lease["owner"])].add(lease["shard_id"])
    return dict(held)


def name_of(worker):
    return f"python-{worker.process.pid}"


def assert_ordered_per_lease(worker):
    last = {}
    for b in worker.batches():
        key = (b["shard"], b["epoch"])
        seqs = [int(s) for s in b["seqs"]]
        assert seqs == sorted(seqs)
        assert key not in last or last[key] < seqs[0], f"out of order on {key}"
        last[key] = seqs[-1]


def test_two_processes_split_the_shards_and_one_takes_over_when_the_other_dies(server, make_stream):
    stream = make_stream(4)
    stream.put_records(200)
    app = unique("app")
    first = Worker(server.endpoint, app, stream.name)
    second = None
    try:
        first.wait_for(lambda w: len(w.records()) >= 200, 60, "the first worker to read every record")

        second = Worker(server.endpoint, app, stream.name)
        split = wait_until(
            lambda: (h := holdings(server, app, stream))
            and sorted(len(s) for s in h.values()) == [2, 2]
            and set(h) == {name_of(first), name_of(second)}
            and h,
            60,
            "the shards to be split 2/2 between the two workers",
        )
        mine, theirs = split[name_of(first)], split[name_of(second)]

        round2 = {shard: {seq for seq, _ in puts} for shard, puts in stream.put.items()}
        stream.put_records(200)
        round2 = {shard: {seq for seq, _ in puts} - round2.get(shard, set()) for shard, puts in stream.put.items()}
        everyone = lambda: {**first.records(), **second.records()}  # noqa: E731
        wait_until(lambda: len(everyone()) >= 400, 60, "the two workers to read the second round")
        for shard, seqs in round2.items():
            owner, other = (first, second) if shard in mine else (second, first)
            assert seqs <= {seq for (s, seq) in owner.records() if s == shard}
            assert not seqs & {seq for (s, seq) in other.records() if s == shard}, "a shard was read by both"
        assert theirs and all(shard not in mine for shard in theirs)
        # Graceful handoff: nothing was handled twice.
        for key, times in first.records().items():
            assert times + second.records().get(key, 0) == 1, f"{key} handled {times} times"

        second.kill()
        wait_until(
            lambda: holdings(server, app, stream) == {name_of(first): {*mine, *theirs}},
            60,
            "the first worker to take every shard over",
        )
        before = set(first.records())
        put_before = {(shard, seq) for shard, puts in stream.put.items() for seq, _ in puts}
        stream.put_records(200)
        all_put = {(shard, seq) for shard, puts in stream.put.items() for seq, _ in puts}
        first.wait_for(
            lambda w: all_put <= set(w.records()) | set(second.records()), 60, "the survivor to read every record"
        )
        round3 = all_put - put_before
        taken_over = {key for key in set(first.records()) - before if key[0] in theirs}
        assert taken_over, "the survivor read nothing of the shards it took over"
        assert {key for key in round3 if key[0] in theirs} <= taken_over
        assert_ordered_per_lease(first)
        assert_ordered_per_lease(second)
    finally:
        first.kill()
        if second:
            second.kill()


@pytest.mark.parametrize(
    "style,signum",
    [
        ("function", signal.SIGINT),
        ("async_def", signal.SIGINT),
        ("function", signal.SIGTERM),
        ("async_def", signal.SIGTERM),
    ],
)
def test_ctrl_c_or_sigterm_stops_cleanly_with_a_final_checkpoint(server, make_stream, style, signum):
    stream = make_stream(2)
    stream.put_records(100)
    app = unique("app")
    # Checkpoints only every 10^6 records: only the final checkpoint can store progress.
    args = ["--checkpoint-every", "1000000"] + (["--async"] if style == "async_def" else [])
    worker = Worker(server.endpoint, app, stream.name, *args)
    try:
        worker.wait_for(lambda w: len(w.records()) >= 100, 60, "the worker to read every record")
        worker.process.send_signal(signum)
        assert worker.wait_exit(30) == 0, worker.stderr.decode()
        assert worker.lines[-1] == {"event": "stopped", "stopped": True}
        assert b"Traceback" not in worker.stderr
    finally:
        worker.kill()
    state = server.leases(app, stream.name)
    assert state["sessions"] == []
    assert [lease["owner"] for lease in state["leases"]] == ["", ""], "the leases were released"
    checkpoints = {lease["shard_id"]: lease["checkpoint"] for lease in state["leases"]}
    assert checkpoints == {shard: puts[-1][0] for shard, puts in stream.put.items()}


def test_the_example_processor_counts_every_record_and_stops_on_ctrl_c(server, make_stream):
    stream = make_stream(4)
    stream.put_records(300)
    app = unique("app")
    example = ROOT / "examples" / "python" / "processor.py"
    argv = [sys.executable, str(example), "--endpoint", server.endpoint, "--app", app, "--stream", stream.name]
    processor = Worker("", "", "", argv=argv)

    def total(w):
        totals = [int(m.group(1)) for line in w.lines if (m := re.match(r"total=(\d+)", line.get("text", "")))]
        return totals and totals[-1]

    try:
        processor.wait_for(lambda w: total(w) == 300, 60, "the example to count 300 records")
        processor.process.send_signal(signal.SIGINT)
        assert processor.wait_exit(30) == 0, processor.stderr.decode()
        assert processor.lines[-1]["text"] == "stopped cleanly"
        assert total(processor) == 300
    finally:
        processor.kill()
    assert server.leases(app, stream.name)["sessions"] == []


@pytest.mark.parametrize("style", ["function", "async_def"])
def test_a_second_ctrl_c_gives_up_at_once(server, make_stream, style):
    stream = make_stream(1)
    stream.put_records(5)
    args = ["--hang"] + (["--async"] if style == "async_def" else [])
    worker = Worker(server.endpoint, unique("app"), stream.name, *args)
    try:
        worker.wait_for(lambda w: w.batches(), 60, "the first batch")
        worker.process.send_signal(signal.SIGINT)
        worker.wait_for(lambda w: any(line["event"] == "stopping" for line in w.lines), 30, "the graceful stop")
        worker.process.send_signal(signal.SIGINT)
        code = worker.wait_exit(15)  # the batch in hand would take 600 s
        assert code != 0
        assert b"KeyboardInterrupt" in worker.stderr
    finally:
        worker.kill()
