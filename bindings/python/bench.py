"""Benchmark reader for `make bench`: reads `--expect` records of a stream through a
Kinesis Butler server with a plain batch handler that touches every record's data, and
prints `records_per_sec=<float>` (steady state: records after the first batch over the
time from the first batch to the last) and `first_record_secs=<float>` (start-up).

    python bindings/python/bench.py --endpoint http://127.0.0.1:50051 --app bench --stream s --expect 100000
"""

import argparse
import threading
import time

from kinesis_butler import Consumer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--endpoint", required=True)
parser.add_argument("--app", required=True)
parser.add_argument("--stream", required=True)
parser.add_argument("--expect", type=int, required=True)
parser.add_argument("--timeout", type=float, default=600)
args = parser.parse_args()

consumer = Consumer(args.endpoint, args.app, [args.stream], max_records_per_batch=10_000, shard_queue_batches=8)
lock = threading.Lock()
state = {"count": 0, "bytes": 0, "first": None, "first_n": 0, "last": None}


def handle(batch):
    size = 0
    for record in batch.records:
        data = record.data
        size += len(data)
    with lock:
        now = time.monotonic()
        if state["first"] is None:
            state["first"], state["first_n"] = now, len(batch)
        state["last"] = now
        state["count"] += len(batch)
        state["bytes"] += size
        if state["count"] >= args.expect:
            consumer.stop()


watchdog = threading.Timer(args.timeout, consumer.stop)
watchdog.daemon = True
watchdog.start()
start = time.monotonic()
consumer.run(handle)
watchdog.cancel()
if state["count"] < args.expect:
    raise SystemExit(f"read {state['count']} of {args.expect} records before the timeout")
elapsed = state["last"] - state["first"]
if elapsed <= 0:
    raise SystemExit("every record came in one batch; read more records")
print(f"records={state['count']} bytes={state['bytes']} seconds={elapsed:.3f}")
print(f"records_per_sec={(state['count'] - state['first_n']) / elapsed:.1f}")
print(f"first_record_secs={state['first'] - start:.3f}")
