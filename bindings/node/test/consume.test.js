'use strict'
// Consuming a real stream through a real server, in one process.
const { test } = require('node:test')
const assert = require('node:assert/strict')

const kb = require('kinesis-butler')
const { Consumer, HandlerError } = kb
const { useServer, Recorder, assertOnceInOrder, runBounded, stopAt, unique } = require('./helpers.js')

const FAST = { retryInitialDelayMs: 20, retryMaxDelayMs: 100, reconnectInitialDelayMs: 50 }
const { server, newStream } = useServer()

for (const style of ['sync', 'async']) {
  test(`every record once, in order per shard (${style} handler)`, async () => {
    const stream = await newStream(4)
    await stream.putRecords(1200)
    const app = unique('app')
    const consumer = new Consumer(server().endpoint, app, [stream.name], { maxRecordsPerBatch: 100, ...FAST })
    const recorder = new Recorder()
    const record = stopAt(consumer, recorder, stream.count)
    const handler =
      style === 'sync'
        ? (batch) => record(batch)
        : async (batch) => {
            await new Promise((r) => setImmediate(r))
            record(batch)
          }
    await runBounded(consumer, handler, 60000)
    assert.equal(consumer.stopped, true)
    assertOnceInOrder(assert, recorder.handled(), stream)

    // Everything was checkpointed: the next consumer of the app gets only new records.
    const before = stream.keys()
    await stream.putRecords(40)
    const again = new Consumer(server().endpoint, app, stream.name, FAST)
    const later = new Recorder()
    await runBounded(again, stopAt(again, later, 40), 60000)
    const fresh = new Set([...stream.keys()].filter((k) => !before.has(k)))
    assert.deepEqual(later.keys(), fresh)
    assert.equal(later.count(), 40)
  })
}

test('records and batches carry the Kinesis fields', async () => {
  const stream = await newStream(1)
  const startedAt = Date.now() - 5000
  // Partition keys beyond ASCII (a surrogate pair too): records cross as columns with offsets.
  await stream.putRecords(5, 64, 'ключ-😀-')
  const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], FAST)
  let seen
  await runBounded(
    consumer,
    (batch) => {
      seen = batch
      consumer.stop()
    },
    60000,
  )
  assert.ok(seen instanceof kb.Batch)
  assert.equal(seen.stream, stream.name)
  assert.equal(seen.shardId, 'shardId-000000000000')
  assert.equal(seen.attempt, 1)
  assert.ok(seen.leaseEpoch >= 1)
  assert.equal(typeof seen.millisBehindLatest, 'number')
  assert.equal(seen.records.length, 5)
  const first = seen.records[0]
  assert.ok(Buffer.isBuffer(first.data))
  assert.deepEqual(first.data, Buffer.from('rec-00000000-'.padEnd(64, '.')))
  assert.equal(first.partitionKey, 'ключ-😀-0')
  assert.deepEqual(
    seen.records.map((r) => [r.partitionKey, r.data.toString()]),
    [0, 1, 2, 3, 4].map((n) => [`ключ-😀-${n}`, `rec-${String(n).padStart(8, '0')}-`.padEnd(64, '.')]),
  )
  assert.deepEqual(
    seen.records.map((r) => r.sequenceNumber),
    stream.put.get('shardId-000000000000').map((r) => r.seq),
  )
  assert.equal(first.sequenceNumber, stream.put.get('shardId-000000000000')[0].seq)
  assert.equal(first.subSequenceNumber, 0)
  assert.ok(first.approximateArrivalTimestamp instanceof Date)
  assert.equal(first.approximateArrivalTimestamp.getTime(), first.approximateArrivalTimestampMs)
  assert.ok(first.approximateArrivalTimestampMs >= startedAt && first.approximateArrivalTimestampMs <= Date.now() + 5000)
})

for (const style of ['throws', 'rejects']) {
  test(`a handler that ${style} is retried and the checkpoint waits for its success`, async () => {
    const stream = await newStream(2)
    await stream.putRecords(200)
    const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], { handlerRetries: 5, ...FAST })
    const recorder = new Recorder()
    const record = stopAt(consumer, recorder, stream.count)
    const failures = []
    const isFirst = (batch) => batch.records[0].sequenceNumber === stream.put.get(batch.shardId)[0].seq
    const handler =
      style === 'throws'
        ? (batch) => {
            if (isFirst(batch) && batch.attempt < 3) {
              failures.push(`${batch.shardId}#${batch.attempt}`)
              throw new Error(`transient failure ${batch.attempt}`)
            }
            record(batch)
          }
        : (batch) => {
            if (isFirst(batch) && batch.attempt < 3) {
              failures.push(`${batch.shardId}#${batch.attempt}`)
              return Promise.reject(new Error(`transient failure ${batch.attempt}`))
            }
            record(batch)
            return Promise.resolve()
          }
    await runBounded(consumer, handler, 60000)
    const expected = [...stream.put.keys()].flatMap((shard) => [`${shard}#1`, `${shard}#2`])
    assert.deepEqual(failures.sort(), expected.sort())
    assertOnceInOrder(assert, recorder.handled(), stream)
    for (const b of recorder.batches) {
      if (b.records[0].seq === stream.put.get(b.shard)[0].seq) assert.equal(b.attempt, 3)
    }
  })
}

for (const style of ['throws', 'rejects']) {
  test(`a handler that always ${style} stops the consumer with its error`, async () => {
    const stream = await newStream(2)
    await stream.putRecords(100)
    const app = unique('app')
    const consumer = new Consumer(server().endpoint, app, [stream.name], { handlerRetries: 2, ...FAST })
    const bad = 'shardId-000000000001'
    const handled = new Recorder()
    const attempts = []
    const failure = (batch) => new TypeError(`cannot handle ${batch.records[0].sequenceNumber}`)
    const handler = (batch) => {
      if (batch.shardId !== bad) {
        handled.add(batch)
        return undefined
      }
      attempts.push(batch.attempt)
      if (style === 'throws') throw failure(batch)
      return Promise.reject(failure(batch))
    }
    const error = await runBounded(consumer, handler, 60000).then(
      () => assert.fail('run() resolved'),
      (e) => e,
    )
    assert.ok(error instanceof HandlerError && error instanceof kb.ButlerError && error instanceof Error)
    assert.equal(error.code, 'handler')
    assert.equal(error.kind, 'handler')
    assert.equal(error.name, 'HandlerError')
    assert.equal(error.shardId, bad)
    assert.equal(error.stream, stream.name)
    assert.equal(error.attempts, 3)
    assert.ok(error.cause instanceof TypeError)
    assert.equal(error.cause.message, `cannot handle ${stream.put.get(bad)[0].seq}`)
    assert.match(error.message, /TypeError: cannot handle/)
    assert.deepEqual(attempts, [1, 2, 3])

    // The failed batch was not checkpointed: the next consumer starts with it and gets
    // nothing the first one handled.
    const expected = new Set([...stream.keys()].filter((k) => !handled.keys().has(k)))
    const again = new Consumer(server().endpoint, app, [stream.name], FAST)
    const later = new Recorder()
    await runBounded(again, stopAt(again, later, expected.size), 60000)
    assert.equal(later.handled().get(bad)[0].seq, stream.put.get(bad)[0].seq)
    assert.deepEqual(later.keys(), expected)
    assert.equal(later.count(), expected.size)
  })
}

test('manual checkpoints', async () => {
  const stream = await newStream(2)
  await stream.putRecords(200)
  const app = unique('app')
  const consumer = new Consumer(server().endpoint, app, [stream.name], { checkpoint: 'manual', ...FAST })
  const marks = new Map()
  await runBounded(
    consumer,
    async (batch) => {
      if (!marks.has(batch.shardId)) {
        const middle = batch.records[Math.floor(batch.records.length / 2)]
        await batch.checkpoint(middle) // up to and including `middle`
        marks.set(batch.shardId, middle.sequenceNumber)
      }
      if (marks.size === stream.shards) consumer.stop()
    },
    60000,
  )
  assert.equal(marks.size, 2)

  // Reading resumes right after each manual checkpoint, not after what was handled.
  const again = new Consumer(server().endpoint, app, [stream.name], { checkpoint: 'manual', ...FAST })
  const firsts = new Map()
  await runBounded(
    again,
    async (batch) => {
      if (!firsts.has(batch.shardId)) firsts.set(batch.shardId, batch.records[0].sequenceNumber)
      await batch.checkpoint()
      if (firsts.size === stream.shards) again.stop()
    },
    60000,
  )
  for (const [shard, records] of stream.put) {
    const seqs = records.map((r) => r.seq)
    assert.equal(firsts.get(shard), seqs[seqs.indexOf(marks.get(shard)) + 1])
  }
})

test('checkpoint with something that is not a record is refused', async () => {
  const stream = await newStream(1)
  await stream.putRecords(5)
  const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], { checkpoint: 'manual', ...FAST })
  const outcomes = []
  await runBounded(
    consumer,
    async (batch) => {
      for (const bad of ['not a record', { sequenceNumber: 'abc' }]) {
        await batch.checkpoint(bad).then(
          () => outcomes.push('ok'),
          (e) => outcomes.push(e.name),
        )
      }
      consumer.stop()
    },
    60000,
  )
  assert.deepEqual(outcomes, ['TypeError', 'InvalidArgumentError'])
})
