'use strict'
// Poison records, dead letters, timeouts that stop (AbortSignal), and stats, through a real server.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')

const { Consumer } = require('kinesis-butler')
const { Server, Stream, runBounded, unique } = require('./helpers.js')

const FAST = { retryInitialDelayMs: 20, retryMaxDelayMs: 100, reconnectInitialDelayMs: 50 }
let server
const streams = []
const newStream = async (shards) => {
  const s = await Stream.create(shards)
  streams.push(s)
  return s
}

before(async () => {
  server = await Server.start()
})
after(async () => {
  await Promise.all(streams.map((s) => s.delete()))
  await server.stop()
})

test('a poison record (error.record) goes to the onFailure function; the others are handled once', async () => {
  const stream = await newStream(1)
  await stream.putRecords(500)
  const [[shard, puts]] = [...stream.put]
  const poison = puts[137].seq
  const dead = []
  const handled = []
  const consumer = new Consumer(server.endpoint, unique('app'), [stream.name], {
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
  const consumer = new Consumer(server.endpoint, unique('app'), [stream.name], { handlerTimeoutMs: 200, ...FAST })
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
