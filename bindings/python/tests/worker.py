"""A consumer process for the multi-process tests: prints one JSON line per batch and
one when run() returns (Ctrl-C stops it gracefully)."""

import argparse
import json
import sys

from kinesis_butler import Consumer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("app")
    parser.add_argument("stream")
    parser.add_argument("--async", dest="use_async", action="store_true")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--hang", action="store_true", help="once stopping, never finish the batch in hand")
    parser.add_argument("--parallelization-factor", type=int)
    parser.add_argument("--max-records-per-batch", type=int)
    parser.add_argument("--work-ms", type=int, help="each call takes this long; its line is printed after it")
    args = parser.parse_args()

    options = {"reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.5}
    if args.checkpoint_every:
        options["checkpoint_every_records"] = args.checkpoint_every
    if args.max_records_per_batch:
        options["max_records_per_batch"] = args.max_records_per_batch
    if args.parallelization_factor:
        options["parallelization_factor"] = args.parallelization_factor
    consumer = Consumer(args.endpoint, args.app, [args.stream], **options)

    def emit(batch):
        line = {
            "event": "batch",
            "shard": batch.shard_id,
            "seqs": [r.sequence_number for r in batch.records],
            "epoch": batch.lease_epoch,
            "keys": [r.partition_key for r in batch.records],
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def say(event):
        sys.stdout.write(json.dumps({"event": event}) + "\n")
        sys.stdout.flush()

    if args.use_async:
        import asyncio

        async def handle(batch):
            emit(batch)
            if args.hang:
                while not consumer.stopped:
                    await asyncio.sleep(0.01)
                say("stopping")
                await asyncio.sleep(600)

        consumer.run(handle)
    else:
        import time

        def handle(batch):
            if args.work_ms:
                time.sleep(args.work_ms / 1000)
            emit(batch)
            if args.hang:
                while not consumer.stopped:
                    time.sleep(0.01)
                say("stopping")
                time.sleep(600)

        consumer.run(handle)
    sys.stdout.write(json.dumps({"event": "stopped", "stopped": consumer.stopped}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
