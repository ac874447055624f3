'use strict'
// Poison records, dead letters, timeouts that stop (AbortSignal), and stats, through a real server.
const { test } = require('node:test')
const assert = require('node:assert/strict')

const { Consumer } = require('kinesis-butler')
const { AWS_ENV, useServer, runBounded, sleep, unique } = require('./helpers.js')

const FAST = { retryInitialDelayMs: 20, retryMaxDelayMs: 100, reconnectInitialDelayMs: 50 }
const { server, newStream } = useServer()

test('a poison record (error.record) goes to the onFailure function; the others are handled once', async () => {
  const stream = await newStream(1)
  await stream.putRecords(500)
  const [[shard, puts]] = [...stream.put]
  const poison = puts[137].seq
  const dead = []
  const handled = []
  const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], {
    maxRecordsPerBatch: 500,
    maxAttempts: 2,
    onFailure: async (entries) => {
      dead.push(...entries)
    },
    ...FAST,
  })
  await runBounded(
    consumer,
    (batch) => {
      for (const record of batch.records) {
        if (record.sequenceNumber === poison) {
          throw Object.assign(new Error('cannot parse'), { record })
        }
        handled.push(record.sequenceNumber)
      }
      if (handled.length >= 499 && dead.length) consumer.stop()
    },
    60_000,
  )
  assert.deepEqual(handled, puts.map((p) => p.seq).filter((s) => s !== poison), 'the other 499 once, in order')
  assert.equal(dead.length, 1)
  assert.equal(dead[0].sequenceNumber, poison)
  assert.equal(dead[0].shardId, shard)
  assert.equal(dead[0].attempts, 2)
  assert.equal(dead[0].reason, 'handler_failed')
  assert.match(dead[0].error, /cannot parse/)
  assert.deepEqual(Buffer.from(dead[0].data), puts[137].data)
  const stats = consumer.stats()
  assert.equal(stats.deadLettered, 1)
  assert.equal(stats.recordsHandled, 499)
})

test('a handler past its timeout gets its signal aborted and never overlaps its retry', async () => {
  const stream = await newStream(1)
  await stream.putRecords(5)
  const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], { handlerTimeoutMs: 200, ...FAST })
  const state = { running: 0, max: 0, calls: 0, aborted: 0, handled: 0 }
  await runBounded(
    consumer,
    async (batch) => {
      state.calls++
      state.running++
      state.max = Math.max(state.max, state.running)
      try {
        if (batch.attempt === 1) {
          // Three times the timeout, unless aborted; then finish a little later still.
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, 600)
            batch.signal.addEventListener('abort', () => {
              state.aborted++
              clearTimeout(timer)
              setTimeout(resolve, 50)
            })
          })
          return
        }
        state.handled += batch.records.length
        consumer.stop()
      } finally {
        state.running--
      }
    },
    30_000,
  )
  assert.equal(state.max, 1, JSON.stringify(state))
  assert.equal(state.aborted, 1, 'the timed-out call saw its signal aborted')
  assert.equal(state.calls, 2)
  assert.equal(state.handled, 5)
  assert.equal(consumer.stats().handlerTimeouts, 1)
})

test('bisectOnError isolates one poison record among 1,000 in at most 11 calls on the failing part', async () => {
  const stream = await newStream(1)
  await stream.putRecords(1000, 20)
  const [[shard, puts]] = [...stream.put]
  const poison = puts[737].seq
  const failing = [] // sizes of the calls that held the poison record
  const handled = []
  const dead = []
  const stopWhenDone = () => {
    if (handled.length >= 999 && dead.length) consumer.stop()
  }
  const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], {
    maxRecordsPerBatch: 1000,
    maxAttempts: 1,
    bisectOnError: true,
    onFailure: (entries) => {
      dead.push(...entries)
      stopWhenDone()
    },
    ...FAST,
  })
  await runBounded(
    consumer,
    (batch) => {
      const seqs = batch.records.map((r) => r.sequenceNumber)
      if (seqs.includes(poison)) {
        failing.push(seqs.length)
        throw new Error('something in here is bad') // which record: not said
      }
      handled.push(...seqs)
      stopWhenDone()
    },
    60_000,
  )
  assert.equal(failing[0], 1000, `the first failing call held all 1,000 records: ${failing}`)
  assert.ok(failing.length <= 11, `${failing.length} calls on the failing part: ${failing}`)
  for (let i = 1; i < failing.length; i++) {
    assert.ok([Math.floor(failing[i - 1] / 2), Math.ceil(failing[i - 1] / 2)].includes(failing[i]), `halves: ${failing}`)
  }
  assert.equal(failing[failing.length - 1], 1)
  assert.deepEqual(dead.map((e) => e.sequenceNumber), [poison])
  assert.equal(dead[0].reason, 'handler_failed')
  assert.equal(dead[0].attempts, 1)
  assert.equal(dead[0].shardId, shard)
  assert.match(dead[0].error, /something in here is bad/)
  const byNumber = (a, b) => (BigInt(a) < BigInt(b) ? -1 : BigInt(a) > BigInt(b) ? 1 : 0)
  assert.deepEqual([...handled].sort(byNumber), puts.map((p) => p.seq).filter((s) => s !== poison), 'each of the other 999 once')
  const stats = consumer.stats()
  assert.equal(stats.bisectSteps, failing.length - 1)
  assert.equal(stats.deadLettered, 1)
  assert.equal(stats.recordsHandled, 999)
})

test('records older than maxRecordAgeMs go to onFailure without a handler call; newer ones are handled', async () => {
  const maxAgeMs = 2000
  const stream = await newStream(1)
  await stream.putRecords(20)
  const putAt = Date.now()
  const [[shard, puts]] = [...stream.put]
  const old = [...puts]
  // The records have to age: nothing to await but the clock.
  await sleep(Math.max(0, putAt + maxAgeMs + 300 - Date.now()))
  const dead = []
  const handled = []
  let putting
  const consumer = new Consumer(server().endpoint, unique('app'), [stream.name], {
    maxRecordAgeMs: maxAgeMs,
    onFailure: (entries) => {
      dead.push(...entries)
      if (dead.length >= old.length && !putting) putting = stream.putRecords(10)
    },
    ...FAST,
  })
  await runBounded(
    consumer,
    (batch) => {
      handled.push(...batch.records.map((r) => r.sequenceNumber))
      if (handled.length >= 10) consumer.stop()
    },
    60_000,
  )
  await putting
  const newer = stream.put.get(shard).slice(old.length).map((p) => p.seq)
  assert.equal(newer.length, 10, 'the newer records were put once the old ones were given up')
  assert.deepEqual(handled, newer, 'only the newer records, once each, in order')
  assert.deepEqual(dead.map((e) => e.sequenceNumber), old.map((p) => p.seq), 'every record too old, in order')
  dead.forEach((e, i) => {
    assert.equal(e.reason, 'too_old')
    assert.equal(e.attempts, 0)
    assert.match(e.error, /max_record_age|maxRecordAge/)
    assert.deepEqual(Buffer.from(e.data), old[i].data)
  })
  const stats = consumer.stats()
  assert.equal(stats.deadLettered, 20)
  assert.equal(stats.recordsHandled, 10)
})

test('parallelizationFactor 4 with 40 keys: each key in order, every record handled once', async () => {
  const stream = await newStream(1)
  await stream.putRecords(800, 20, (n) => `key-${n % 40}`)
  const [[shard, puts]] = [...stream.put]
  const seen = new Map() // key -> sequence numbers as handled
  const state = { running: 0, max: 0, count: 0 }
  const app = unique('app')
  const consumer = new Consumer(server().endpoint, app, [stream.name], {
    maxRecordsPerBatch: 200,
    parallelizationFactor: 4,
    ...FAST,
  })
  await runBounded(
    consumer,
    async (batch) => {
      state.running++
      state.max = Math.max(state.max, state.running)
      try {
        await sleep(5)
        for (const r of batch.records) {
          if (!seen.has(r.partitionKey)) seen.set(r.partitionKey, [])
          seen.get(r.partitionKey).push(BigInt(r.sequenceNumber))
        }
        state.count += batch.records.length
        if (state.count >= 800) consumer.stop()
      } finally {
        state.running--
      }
    },
    60_000,
  )
  assert.equal(seen.size, 40)
  for (const [key, seqs] of seen) {
    assert.equal(seqs.length, 20, `${key}: ${seqs.length} records`)
    assert.ok(seqs.every((s, i) => i === 0 || seqs[i - 1] < s), `${key} in order`)
  }
  const all = [...seen.values()].flat().sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  assert.deepEqual(all, puts.map((p) => BigInt(p.seq)), 'every record once')
  assert.ok(state.max > 1, `lanes ran at once: ${JSON.stringify(state)}`)
  assert.ok(state.max <= 4, `at most one call per lane: ${JSON.stringify(state)}`)
  const checkpoint = Object.fromEntries(server().leases(app, stream.name).leases.map((l) => [l.shard_id, l.checkpoint]))
  assert.equal(checkpoint[shard], puts[puts.length - 1].seq, 'the checkpoint covers every lane')
})

test('a poison record goes to a kinesis: dead-letter stream with its metadata', async () => {
  // How the client's kinesis: destination finds the emulator.
  const saved = Object.fromEntries(Object.keys(AWS_ENV).map((k) => [k, process.env[k]]))
  Object.assign(process.env, AWS_ENV)
  try {
    const stream = await newStream(1)
    const dlq = await newStream(1)
    await stream.putRecords(50)
    const [[shard, puts]] = [...stream.put]
    const poison = puts[17].seq
    const app = unique('app')
    const handled = []
    const consumer = new Consumer(server().endpoint, app, [stream.name], {
      maxRecordsPerBatch: 50,
      maxAttempts: 1,
      onFailure: `kinesis:${dlq.name}`,
      ...FAST,
    })
    await runBounded(
      consumer,
      (batch) => {
        for (const record of batch.records) {
          if (record.sequenceNumber === poison) throw Object.assign(new Error('cannot parse record 17'), { record })
          handled.push(record.sequenceNumber)
        }
        // The shard moves past the poison record only once the destination accepted it.
        if (handled.length >= 49) consumer.stop()
      },
      60_000,
    )
    assert.deepEqual(handled, puts.map((p) => p.seq).filter((s) => s !== poison), 'the other 49 once, in order')
    const dead = await dlq.readAll()
    assert.equal(dead.length, 1, 'exactly the poison record is in the dead-letter stream')
    assert.equal(dead[0].PartitionKey, 'key-17')
    const entry = JSON.parse(dead[0].Data.toString())
    assert.equal(entry.partition_key, 'key-17')
    assert.deepEqual([entry.app, entry.stream, entry.shard_id], [app, stream.name, shard])
    assert.equal(entry.sequence_number, poison)
    assert.equal(entry.sub_sequence_number, 0)
    assert.equal(entry.attempts, 1)
    assert.equal(entry.reason, 'handler_failed')
    assert.match(entry.error, /cannot parse record 17/)
    assert.ok(entry.approximate_arrival_timestamp_ms > 0)
    assert.deepEqual(Buffer.from(entry.data, 'base64'), puts[17].data)
    const checkpoint = Object.fromEntries(server().leases(app, stream.name).leases.map((l) => [l.shard_id, l.checkpoint]))
    assert.equal(checkpoint[shard], puts[puts.length - 1].seq, 'the checkpoint moved past the poison record')
    assert.equal(consumer.stats().deadLettered, 1)
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
})
