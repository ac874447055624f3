"""Test harness: a real Kinesis emulator (kinesalite), a real kinesis-butler server
process, streams put through the emulator's HTTP API, and worker processes.

Every wait is bounded; waits are on events (conditions, process output, an open port)
except where the only observable is external state (a port, the lease store)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
BIN = Path(os.environ.get("KB_BIN_DIR") or TARGET / "debug")
KINESIS = os.environ.get("KB_KINESALITE_ENDPOINT", "http://127.0.0.1:4620")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL_KINESIS": KINESIS,
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05):
    """Polls an external condition (only where no event can be awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def seq_key(sequence_number: str) -> int:
    return int(sequence_number)


# --- Kinesis (the emulator's JSON API; kinesalite does not check signatures) -----------


def kinesis(op: str, body: dict) -> dict:
    request = urllib.request.Request(
        KINESIS + "/",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "Kinesis_20131202." + op,
            "X-Amz-Date": "20240101T000000Z",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/kinesis/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"Kinesis {op} failed: HTTP {e.code} {e.read()!r}") from None


class Stream:
    """A fresh stream; remembers what was put, per shard, in sequence order."""

    def __init__(self, shards: int):
        self.name = unique("py")
        self.shards = shards
        self.put: Dict[str, List[Tuple[str, bytes]]] = defaultdict(list)  # shard -> [(seq, data)]
        self.count = 0
        kinesis("CreateStream", {"StreamName": self.name, "ShardCount": shards})
        wait_until(
            lambda: kinesis("DescribeStreamSummary", {"StreamName": self.name})["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            == "ACTIVE",
            30,
            f"stream {self.name} to become ACTIVE",
        )

    def put_records(self, count: int, size: int = 100, key: Optional[Callable[[int], str]] = None) -> List[bytes]:
        """Puts `count` records `rec-<n>` (n counts on over calls), padded to `size`, with
        partition key `key(n)` (default: a key of their own)."""
        datas = []
        keys = {}
        for _ in range(count):
            data = f"rec-{self.count:08d}-".encode()
            datas.append(data.ljust(size, b"."))
            if key is not None:
                keys[len(datas) - 1] = key(self.count)
            self.count += 1
        pending = list(enumerate(datas))
        deadline = time.monotonic() + 120
        while pending:
            assert time.monotonic() < deadline, "putting records took over 120 s"
            chunk, pending = pending[:500], pending[500:]
            out = kinesis(
                "PutRecords",
                {
                    "StreamName": self.name,
                    "Records": [
                        {
                            "Data": base64.b64encode(d).decode(),
                            "PartitionKey": keys.get(i, f"key-{i}-{d[4:12].decode()}"),
                        }
                        for i, d in chunk
                    ],
                },
            )
            for (i, d), r in zip(chunk, out["Records"]):
                if "SequenceNumber" in r:
                    self.put[r["ShardId"]].append((r["SequenceNumber"], d))
                else:
                    pending.append((i, d))
        for shard in self.put.values():
            shard.sort(key=lambda p: seq_key(p[0]))
        return datas

    def read_all(self) -> List[dict]:
        """Every record of a one-shard stream from its start (`Data` decoded to bytes)."""
        [shard] = kinesis("ListShards", {"StreamName": self.name})["Shards"]
        iterator = kinesis(
            "GetShardIterator",
            {"StreamName": self.name, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"},
        )["ShardIterator"]
        records = kinesis("GetRecords", {"ShardIterator": iterator})["Records"]
        return [{**r, "Data": base64.b64decode(r["Data"])} for r in records]

    def all_records(self) -> Dict[Tuple[str, str], bytes]:
        return {(shard, seq): data for shard, puts in self.put.items() for seq, data in puts}

    def delete(self) -> None:
        try:
            kinesis("DeleteStream", {"StreamName": self.name})
        except AssertionError:
            pass


# --- the server -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Server:
    """A kinesis-butler process on a free port with its own SQLite store."""

    def __init__(self, workdir: Path):
        binary = BIN / "kinesis-butler"
        assert binary.exists(), f"{binary} is missing: cargo build -p kinesis-butler"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite://{workdir}/butler.db"
        self.log_path = workdir / "server.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                str(binary),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--store",
                self.store,
                "--balance-interval",
                "200ms",
                "--idle-interval",
                "100ms",
                "--handoff-grace",
                "2s",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        wait_until(lambda: self.process.poll() is not None or port_open(self.port), 30, "the server to listen")
        assert self.process.poll() is None, f"the server exited: {self.log_path.read_text()[-3000:]}"

    def leases(self, app: str, stream: str) -> dict:
        out = subprocess.run(
            [str(BIN / "kinesis-butler"), "leases", "--store", self.store, "--app", app, "--stream", stream, "--json"],
            capture_output=True,
            timeout=30,
            env={**os.environ, **AWS_ENV},
        )
        assert out.returncode == 0, out.stderr.decode()
        return json.loads(out.stdout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


# --- worker processes ---------------------------------------------------------------------


class Worker:
    """`tests/worker.py` in its own process; its JSON lines (one per batch) are collected
    by a reader thread and can be awaited."""

    def __init__(self, endpoint: str, app: str, stream: str, *args: str, argv: Optional[List[str]] = None):
        argv = argv or [sys.executable, str(Path(__file__).with_name("worker.py")), endpoint, app, stream, *args]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: List[dict] = []
        self.stderr = b""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=self._read_err, daemon=True)
        self.err_reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = {"event": "text", "text": line.decode(errors="replace").rstrip("\n")}
            with self.changed:
                self.lines.append(parsed)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr += line

    def batches(self) -> List[dict]:
        with self.changed:
            return [line for line in self.lines if line.get("event") == "batch"]

    def wait_for(self, predicate: Callable[["Worker"], object], timeout: float, what: str):
        """Waits for the worker's output to satisfy `predicate` (woken by each line)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self.reader.is_alive()):
                    value = predicate(self)
                    if value:
                        return value
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; "
                        f"exit={self.process.poll()} stderr={self.stderr.decode(errors='replace')[-2000:]}"
                    )
                self.changed.wait(min(left, 1.0))

    def records(self) -> Dict[Tuple[str, str], int]:
        """(shard, sequence number) -> times handled."""
        seen: Dict[Tuple[str, str], int] = defaultdict(int)
        for b in self.batches():
            for seq in b["seqs"]:
                seen[(b["shard"], seq)] += 1
        return seen

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def wait_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self.reader.join(timeout)
        self.err_reader.join(timeout)
        return code


class Recorder:
    """Collects what handlers saw, thread-safe, with a condition to await totals."""

    def __init__(self):
        self.lock = threading.Condition()
        self.batches: List[Tuple[str, List[Tuple[str, bytes]], int]] = []  # (shard, [(seq, data)], attempt)

    def add(self, batch) -> None:
        with self.lock:
            self.batches.append(
                (batch.shard_id, [(r.sequence_number, r.data) for r in batch.records], batch.attempt)
            )
            self.lock.notify_all()

    def handled(self) -> Dict[str, List[Tuple[str, bytes]]]:
        per_shard: Dict[str, List[Tuple[str, bytes]]] = defaultdict(list)
        with self.lock:
            for shard, records, _ in self.batches:
                per_shard[shard].extend(records)
        return per_shard

    def count(self) -> int:
        with self.lock:
            return sum(len(r) for _, r, _ in self.batches)


def assert_once_in_order(handled: Dict[str, List[Tuple[str, bytes]]], stream: Stream) -> None:
    """Every record put was handled exactly once, in sequence order per shard."""
    assert sorted(handled) == sorted(stream.put), "shards handled differ from shards put to"
    for shard, puts in stream.put.items():
        assert handled[shard] == puts, f"shard {shard}: handled records differ from the records put, in order"


def run_bounded(consumer, handler, timeout: float) -> None:
    """`consumer.run(handler)`, stopped by a watchdog after `timeout` seconds (the test
    then fails on what it expected to have happened)."""
    watchdog = threading.Timer(timeout, consumer.stop)
    watchdog.start()
    try:
        consumer.run(handler)
    finally:
        watchdog.cancel()


Handler = Callable[..., Optional[object]]
