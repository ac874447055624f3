'use strict'
// kinesis-butler/testing: build batches and records and run a handler on them the way a
// consumer does, without a server (as aws-sdk-client-mock lets you test AWS SDK code).
//
//   const { makeBatch, runHandler } = require('kinesis-butler/testing')
//   const batch = makeBatch(['one', 'two'])
//   const run = await runHandler(myHandler, batch)
//   assert.deepEqual(run.checkpoints, [batch.records[1].sequenceNumber])

const { Batch, Record, InvalidArgumentError, _toError: toError } = require('./index.js')
const { checkRecordShard } = require('./native.js')

const FIRST_SEQUENCE = 49600000000000000000000000000000000000000000000000000000n

/** A stand-in Shard (what hooks and shard events receive). */
function makeShard({ stream = 'test-stream', shardId = 'shardId-000000000000', leaseEpoch = 1, checkpoint = '' } = {}) {
  return Object.freeze({ stream, shardId, leaseEpoch, checkpoint })
}

/** A Record; `data` is a Buffer, a string (UTF-8) or a Uint8Array. */
function makeRecord(data, options = {}) {
  const {
    sequenceNumber = String(FIRST_SEQUENCE),
    partitionKey = 'key',
    subSequenceNumber = 0,
    arrival = new Date(0),
    stream = 'test-stream',
    shardId = 'shardId-000000000000',
  } = options
  const buffer = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data)
  return new Record(buffer, partitionKey, sequenceNumber, subSequenceNumber, arrival.getTime(), stream, shardId)
}

/** A Batch without a server; `checkpoints` lists the sequence numbers its checkpoint() calls stored. */
class TestBatch extends Batch {
  constructor(records, { stream, shardId, leaseEpoch = 1, attempt = 1, millisBehindLatest = 0, checkpoints = [] }) {
    super(null, { stream, shardId, leaseEpoch, attempt, millisBehindLatest, records })
    Object.defineProperty(this, 'checkpoints', { value: checkpoints, writable: true, enumerable: false })
  }

  async checkpoint(record) {
    const at = record ?? this.records[this.records.length - 1]
    // The client's rule, refused with the error a real batch's checkpoint throws.
    const refused = checkRecordShard(this.stream, this.shardId, at.stream, at.shardId)
    if (refused) throw toError(refused)
    this.checkpoints.push(at.sequenceNumber)
  }
}

/**
 * A Batch of `records`: Records, or payloads (given increasing sequence numbers from
 * `firstSequence`). It is `instanceof Batch`.
 */
function makeBatch(records, options = {}) {
  const { stream = 'test-stream', shardId = 'shardId-000000000000', leaseEpoch = 1, attempt = 1, firstSequence = FIRST_SEQUENCE } = options
  const list = [...records].map((r, i) =>
    r instanceof Record
      ? r
      : makeRecord(r, { sequenceNumber: String(BigInt(firstSequence) + BigInt(i)), partitionKey: `key-${i}`, stream, shardId }),
  )
  if (list.length === 0) throw new InvalidArgumentError('a batch has at least one record')
  return new TestBatch(list, { stream, shardId, leaseEpoch, attempt })
}

/**
 * Runs `handler` (a function, or an object with handle / shardStarted / shardStopped)
 * on `batches` as a consumer does: shardStarted before a shard's first batch, its
 * batches in order, then shardStopped(shard, stopReason); checkpoints each handled batch
 * unless `checkpoint: 'manual'`. Resolves { checkpoints, calls }; a handler error rejects.
 */
async function runHandler(handler, batches, options = {}) {
  const { checkpoint = 'batch', stopReason = 'consumer_stopped' } = options
  if (checkpoint !== 'batch' && checkpoint !== 'manual') {
    throw new InvalidArgumentError(`checkpoint must be 'batch' or 'manual', not ${JSON.stringify(checkpoint)}`)
  }
  const handle = typeof handler === 'function' ? handler : handler && typeof handler.handle === 'function' ? (b) => handler.handle(b) : null
  if (!handle) throw new TypeError('handler must be a function or an object with a handle(batch) method')
  const list = batches instanceof Batch ? [batches] : [...batches]
  const checkpoints = []
  const calls = []
  const shards = new Map()
  for (const batch of list) {
    if (batch instanceof TestBatch) batch.checkpoints = checkpoints
    const key = `${batch.stream}/${batch.shardId}`
    if (!shards.has(key)) {
      const shard = makeShard({ stream: batch.stream, shardId: batch.shardId, leaseEpoch: batch.leaseEpoch })
      shards.set(key, shard)
      calls.push(['started', batch.shardId])
      if (typeof handler.shardStarted === 'function') await handler.shardStarted(shard)
    }
    calls.push(['batch', batch.shardId])
    await handle(batch)
    const last = batch.records[batch.records.length - 1].sequenceNumber
    if (checkpoint === 'batch' && checkpoints[checkpoints.length - 1] !== last) checkpoints.push(last)
  }
  for (const shard of shards.values()) {
    calls.push(['stopped', shard.shardId, stopReason])
    if (typeof handler.shardStopped === 'function') await handler.shardStopped(shard, stopReason)
  }
  return { checkpoints, calls }
}

module.exports = { makeRecord, makeBatch, makeShard, runHandler, TestBatch }
