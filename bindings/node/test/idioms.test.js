'use strict'
// The idioms of the package against a real server: handler objects with shard hooks,
// for await, AbortSignal, Symbol.asyncDispose, one error model, cross-shard checkpoints,
// logger objects, environment defaults.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { EventEmitter, once } = require('node:events')

const kb = require('kinesis-butler')
const { Consumer, InvalidArgumentError, StoppedError } = kb
const { useServer, unique, waitUntil, within } = require('./helpers.js')

const FAST = { retryInitialDelayMs: 20, retryMaxDelayMs: 100, reconnectInitialDelayMs: 50 }
const { server, newStream } = useServer()

const lastPerShard = (stream) =>
  Object.fromEntries([...stream.put].map(([shard, records]) => [shard, records[records.length - 1].seq]))
const stored = (app, stream) => {
  const state = server().leases(app, stream.name)
  return [Object.fromEntries(state.leases.map((l) => [l.shard_id, l.checkpoint])), state]
}

/** Every hook of several consumers, in one order; emits 'event'. */
class Timeline extends EventEmitter {
  constructor() {
    super()
    this.events = []
  }

  add(...event) {
    this.events.push(event)
    this.emit('event')
  }

  async until(predicate, ms, what) {
    await within(ms, what, (async () => {
      while (!predicate(this.events)) await once(this, 'event')
    })())
  }
}

function hooked(name, timeline) {
  return {
    pending: new Map(),
    shardStarted(shard) {
      timeline.add(name, 'started', shard.shardId, shard.leaseEpoch)
    },
    handle(batch) {
      this.pending.set(batch.shardId, batch.records.length)
    },
    async shardStopped(shard, reason) {
      await new Promise((r) => setImmediate(r)) // awaited before the final checkpoint and release
      this.pending.delete(shard.shardId)
      timeline.add(name, 'stopped', shard.shardId, shard.leaseEpoch, reason)
    },
  }
}

test('handler object hooks see every assignment and revocation of a rebalance in order', async () => {
  const stream = await newStream(4)
  await stream.putRecords(40)
  const app = unique('app')
  const timeline = new Timeline()
  const first = new Consumer(server().endpoint, app, stream.name, FAST)
  const second = new Consumer(server().endpoint, app, stream.name, FAST)
  const events = []
  first.on('shardStopped', (shard, reason) => events.push([shard.shardId, reason]))
  const runs = [first.run(hooked('first', timeline), { handleSignals: false })]
  try {
    const count = (name, what) => (e) => e.filter((x) => x[0] === name && x[1] === what).length
    await timeline.until((e) => count('first', 'started')(e) === 4, 60000, 'first to start 4 shards')
    runs.push(second.run(hooked('second', timeline), { handleSignals: false }))
    await timeline.until((e) => count('second', 'started')(e) === 2, 60000, 'the rebalance')
  } finally {
    first.stop()
    second.stop()
    await within(30000, 'both runs to end', Promise.all(runs))
  }
  const all = timeline.events
  const revoked = all.filter((e) => e[0] === 'first' && e[1] === 'stopped' && e[4] === 'rebalanced').map((e) => e[2])
  const moved = all.filter((e) => e[0] === 'second' && e[1] === 'started').map((e) => e[2])
  assert.deepEqual([...revoked].sort(), [...moved].sort())
  assert.equal(moved.length, 2)
  const at = (name, what, shard) => all.findIndex((e) => e[0] === name && e[1] === what && e[2] === shard)
  for (const shard of moved) {
    assert.ok(at('first', 'started', shard) < at('first', 'stopped', shard), `${shard}: ${JSON.stringify(all)}`)
    assert.ok(at('first', 'stopped', shard) < at('second', 'started', shard), `${shard}: ${JSON.stringify(all)}`)
  }
  for (const name of ['first', 'second']) {
    const perShard = new Map()
    for (const e of all.filter((x) => x[0] === name)) perShard.set(e[2], [...(perShard.get(e[2]) || []), e[1]])
    for (const [shard, seen] of perShard) {
      assert.deepEqual(seen, seen.map((_, i) => (i % 2 ? 'stopped' : 'started')), `${name} ${shard}`)
      assert.equal(seen.length % 2, 0, `${name} ${shard}: every start has its stop`)
    }
  }
  assert.deepEqual(
    events.filter((e) => e[1] === 'rebalanced').map((e) => e[0]).sort(),
    [...moved].sort(),
    "the 'shardStopped' events match the hooks",
  )
})

test('for await consumes and checkpoints a stream to the end', async () => {
  const stream = await newStream(2)
  await stream.putRecords(300)
  const app = unique('app')
  const consumer = new Consumer(server().endpoint, app, stream.name, { maxRecordsPerBatch: 50, ...FAST })
  const watchdog = setTimeout(() => consumer.stop(), 60000)
  let seen = 0
  for await (const batch of consumer) {
    await new Promise((r) => setImmediate(r))
    seen += batch.records.length
    assert.equal(batch.records[0].shardId, batch.shardId)
    assert.equal(batch.records[0].stream, stream.name)
    if (seen >= stream.count) consumer.stop() // the loop ends once this body is done: it is checkpointed
  }
  clearTimeout(watchdog)
  assert.equal(seen, stream.count)
  const [checkpoints] = stored(app, stream)
  assert.deepEqual(checkpoints, lastPerShard(stream))
  // The server drops the closed session on its own time: only its store shows it.
  await waitUntil(() => stored(app, stream)[1].sessions.length === 0, 10000, 'the session to be closed')
})

test('breaking out of for await stops the consumer; the batch in hand is not checkpointed', async () => {
  const stream = await newStream(1)
  await stream.putRecords(60)
  const app = unique('app')
  const consumer = new Consumer(server().endpoint, app, stream.name, { maxRecordsPerBatch: 10, ...FAST })
  const watchdog = setTimeout(() => consumer.stop(), 60000)
  const seen = []
  for await (const batch of consumer.batches({ handleSignals: false })) {
    seen.push(...batch.records.map((r) => r.sequenceNumber))
    if (seen.length >= 30) break
  }
  clearTimeout(watchdog)
  assert.equal(consumer.stopped, true)
  const [checkpoints] = stored(app, stream)
  assert.deepEqual(Object.values(checkpoints), [seen[seen.length - 11]])
})

test('a cross-shard checkpoint is refused by the client', async () => {
  const stream = await newStream(2)
  await stream.putRecords(40)
  const consumer = new Consumer(server().endpoint, unique('app'), stream.name, { checkpoint: 'manual', ...FAST })
  const kept = new Map()
  let refused
  const watchdog = setTimeout(() => consumer.stop(), 60000)
  await consumer.run(async (batch) => {
    if (!kept.has(batch.shardId)) kept.set(batch.shardId, batch.records[0])
    const other = [...kept].find(([shard]) => shard !== batch.shardId)
    if (other && !refused) {
      refused = await batch.checkpoint(other[1]).then(() => 'stored', (e) => e)
      consumer.stop()
    }
  })
  clearTimeout(watchdog)
  assert.ok(refused instanceof InvalidArgumentError, String(refused))
  assert.deepEqual([refused.code, refused.grpcCode, refused.retryable], ['invalid_argument', 'INVALID_ARGUMENT', false])
  assert.match(refused.message, /a batch checkpoints only records of its own shard/)
})

test('an AbortSignal stops run(); Symbol.asyncDispose stops and waits; run() after stop() rejects', async () => {
  const stream = await newStream(1)
  await stream.putRecords(10)
  const controller = new AbortController()
  const consumer = new Consumer(server().endpoint, unique('app'), stream.name, FAST)
  let batches = 0
  await within(60000, 'the aborted run to end', consumer.run(() => {
    batches++
    controller.abort()
  }, { signal: controller.signal }))
  assert.equal(consumer.stopped, true)
  assert.ok(batches >= 1)
  await assert.rejects(consumer.run(() => {}), (e) => e instanceof StoppedError && e.code === 'stopped' && /create a new one/.test(e.message))

  const disposable = new Consumer(server().endpoint, unique('app'), stream.name, FAST)
  let ended = false
  const running = disposable.run(() => {}).then(() => {
    ended = true
  })
  await disposable[Symbol.asyncDispose || Symbol.for('nodejs.asyncDispose')]()
  assert.equal(ended, true, 'disposal waited for run() to end')
  await running
})

test('stop() right after run() ends that run gracefully (the run begins at the call)', async () => {
  const stream = await newStream(1)
  for (let i = 0; i < 5; i++) {
    const consumer = new Consumer(server().endpoint, unique('app'), stream.name, FAST)
    const running = consumer.run(() => {})
    consumer.stop()
    assert.equal(await within(10000, 'the stopped run to end', running), undefined, 'resolved, not a StoppedError')
  }
})

test('one error model: code, grpcCode, retryable', async () => {
  const missing = new Consumer(server().endpoint, unique('app'), unique('no-such-stream'), FAST)
  await assert.rejects(missing.run(() => {}), (e) => {
    assert.ok(e instanceof kb.NotFoundError)
    assert.deepEqual([e.code, e.grpcCode, e.retryable, e.kind], ['not_found', 'NOT_FOUND', false, 'not_found'])
    return true
  })
  const unreachable = new Consumer('http://127.0.0.1:9', 'app', 's', { maxInitialConnectAttempts: 1 })
  await assert.rejects(unreachable.run(() => {}), (e) => e instanceof kb.ConnectionError && e.code === 'connection' && e.retryable === true)
})

test('a logger object gets structured events, DEBUG when it wants them', async () => {
  const seen = []
  const logger = { level: 'debug' }
  for (const level of ['error', 'warn', 'info', 'debug']) logger[level] = (fields, message) => seen.push({ level, fields, message })
  kb.setLogger(logger)
  try {
    const consumer = new Consumer('http://127.0.0.1:9', 'app', 's', { maxInitialConnectAttempts: 2, reconnectInitialDelayMs: 10 })
    await assert.rejects(consumer.run(() => {}), kb.ConnectionError)
    await new Promise((r) => setImmediate(r))
  } finally {
    kb.setLogger(null)
  }
  const warning = seen.find((e) => e.message === 'cannot open a session')
  assert.ok(warning, JSON.stringify(seen))
  assert.equal(warning.level, 'warn')
  assert.equal(warning.fields.attempt, '1')
  assert.equal(warning.fields.app, 'app')
  assert.throws(() => kb.setLogger({ warn() {} }), TypeError)
})

test('the endpoint and token default from the environment; TLS takes a path or a Buffer', () => {
  process.env.KINESIS_BUTLER_ENDPOINT = 'http://127.0.0.1:50999'
  try {
    assert.equal(new Consumer(null, 'app', 's').endpoint, 'http://127.0.0.1:50999')
  } finally {
    delete process.env.KINESIS_BUTLER_ENDPOINT
  }
  assert.throws(() => new Consumer(undefined, 'app', 's'), (e) => e instanceof InvalidArgumentError && /KINESIS_BUTLER_ENDPOINT/.test(e.message))
  assert.throws(
    () => new Consumer('https://x:1', 'app', 's', { tls: { caCertificatePem: '/no/such/ca.pem' } }),
    (e) => e instanceof InvalidArgumentError && /tls.caCertificatePem: cannot read the file/.test(e.message),
  )
  assert.throws(
    () => new Consumer('https://x:1', 'app', 's', { tls: { caCertificatePem: Buffer.from('junk') } }),
    (e) => e instanceof InvalidArgumentError && /not PEM/.test(e.message),
  )
  assert.throws(() => new Consumer('https://x:1', 'app', 's', { tls: { caCertificatePem: 42 } }), TypeError)
})
