"""Counts records per shard through a Kinesis Butler server and prints the counts every
second. Ctrl-C or SIGTERM stops cleanly: batches in hand finish, progress is checkpointed and the
session closes, so the shards move to other processors at once.

    pip install ./bindings/python   # from a checkout (needs Rust)
    python examples/python/processor.py --endpoint http://127.0.0.1:50051 --app demo --stream demo
"""

import argparse
import collections
import signal
import threading

from kinesis_butler import Consumer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--endpoint", default="http://127.0.0.1:50051")
parser.add_argument("--app", default="demo")
parser.add_argument("--stream", action="append", required=True)
args = parser.parse_args()

counts = collections.Counter()


def handle(batch):
    # Runs on a worker thread; batches of one shard arrive one at a time, in order.
    counts[f"{batch.stream}/{batch.shard_id}"] += len(batch.records)


def report():
    shards = " ".join(f"{shard}={n}" for shard, n in sorted(counts.items()))
    print(f"total={sum(counts.values())} | {shards}", flush=True)


def report_every_second(stop):
    while not stop.wait(1):
        report()


# Ctrl-C stops gracefully also when a shell started us in the background with SIGINT
# ignored; run() handles SIGTERM like Ctrl-C itself.
signal.signal(signal.SIGINT, signal.default_int_handler)

stop = threading.Event()
threading.Thread(target=report_every_second, args=(stop,), daemon=True).start()
Consumer(args.endpoint, args.app, args.stream).run(handle)  # returns on Ctrl-C or SIGTERM, once checkpointed
stop.set()
report()
print("stopped cleanly")
