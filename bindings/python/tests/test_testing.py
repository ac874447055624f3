"""kinesis_butler.testing: a user's test builds batches and runs a handler, no server."""

import pytest

import kinesis_butler
from kinesis_butler.testing import make_batch, make_record, run_handler


class Counter:
    def __init__(self):
        self.counts = {}
        self.flushed = []

    def shard_started(self, shard):
        self.counts[shard.shard_id] = 0

    def handle(self, batch):
        for record in batch:
            assert record.data.startswith(b"event-")
            self.counts[batch.shard_id] += 1

    def shard_stopped(self, shard, reason):
        self.flushed.append((shard.shard_id, self.counts.pop(shard.shard_id), reason))


def test_a_users_test_builds_a_batch_and_runs_a_handler_object_on_it():
    first = make_batch([b"event-1", "event-2"], shard_id="shardId-1")
    second = make_batch([b"event-3"], shard_id="shardId-1", first_sequence=1000)
    handler = Counter()
    run = run_handler(handler, [first, second], stop_reason="rebalanced")
    assert handler.flushed == [("shardId-1", 3, "rebalanced")]
    assert run.checkpoints == [first.records[-1].sequence_number, "1000"]
    assert run.calls == [("started", "shardId-1"), ("batch", "shardId-1"), ("batch", "shardId-1"),
                         ("stopped", "shardId-1", "rebalanced")]
    assert int(first.records[1].sequence_number) == int(first.records[0].sequence_number) + 1


def test_async_handlers_manual_checkpoints_and_errors():
    seen = []

    async def handle(batch):
        seen.append(len(batch))
        await batch.checkpoint_async(batch.records[0])

    batch = make_batch([b"a", b"b"])
    run = run_handler(handle, batch, checkpoint="manual")
    assert seen == [2] and run.checkpoints == [batch.records[0].sequence_number]

    other = make_record(b"x", shard_id="shardId-9")
    with pytest.raises(kinesis_butler.InvalidArgumentError) as raised:
        batch.checkpoint(other)
    assert raised.value.code == "invalid_argument"

    def fails(batch):
        raise RuntimeError("bad record")

    with pytest.raises(RuntimeError, match="bad record"):
        run_handler(fails, batch)
