'use strict'
// kinesis-butler/testing: a user's test builds batches and runs a handler, no server.
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { Batch, InvalidArgumentError } = require('kinesis-butler')
const { makeBatch, makeRecord, runHandler } = require('kinesis-butler/testing')

test("a user's test builds a Batch and runs a handler object on it", async () => {
  const counts = new Map()
  const flushed = []
  const handler = {
    shardStarted: (shard) => counts.set(shard.shardId, 0),
    handle: async (batch) => {
      for (const record of batch.records) {
        assert.ok(record.data.toString().startsWith('event-'))
        counts.set(batch.shardId, counts.get(batch.shardId) + 1)
      }
    },
    shardStopped: (shard, reason) => flushed.push([shard.shardId, counts.get(shard.shardId), reason]),
  }
  const first = makeBatch([Buffer.from('event-1'), 'event-2'], { shardId: 'shardId-1' })
  const second = makeBatch(['event-3'], { shardId: 'shardId-1', firstSequence: 1000n })
  assert.ok(first instanceof Batch)
  const run = await runHandler(handler, [first, second], { stopReason: 'rebalanced' })
  assert.deepEqual(flushed, [['shardId-1', 3, 'rebalanced']])
  assert.deepEqual(run.checkpoints, [first.records[1].sequenceNumber, '1000'])
  assert.deepEqual(run.calls.map((c) => c[0]), ['started', 'batch', 'batch', 'stopped'])
  assert.equal(BigInt(first.records[1].sequenceNumber), BigInt(first.records[0].sequenceNumber) + 1n)
})

test('manual checkpoints, cross-shard refusals and handler errors', async () => {
  const batch = makeBatch(['a', 'b'])
  const run = await runHandler((b) => b.checkpoint(b.records[0]), batch, { checkpoint: 'manual' })
  assert.deepEqual(run.checkpoints, [batch.records[0].sequenceNumber])
  await assert.rejects(batch.checkpoint(makeRecord('x', { shardId: 'shardId-9' })), (e) => e instanceof InvalidArgumentError && e.code === 'invalid_argument')
  await assert.rejects(runHandler(() => { throw new Error('bad record') }, batch), /bad record/)
})
