'use strict'
// Bad input gets a clear Error: never a crash, never a hang.
const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')

const kb = require('kinesis-butler')
const { Consumer, InvalidArgumentError, ButlerError } = kb
const { Server, Stream, freePort, runBounded, unique } = require('./helpers.js')

const ENDPOINT = 'http://127.0.0.1:50051'

const cases = [
  [[ENDPOINT, 'app', []], InvalidArgumentError, /name at least one stream/],
  [[ENDPOINT, 'app', ['a', 'a']], InvalidArgumentError, /named twice/],
  [[ENDPOINT, 'app', ['']], InvalidArgumentError, /must not be empty/],
  [[ENDPOINT, '', ['s']], InvalidArgumentError, /app must not be empty/],
  [['not a url', 'app', ['s']], InvalidArgumentError, /invalid endpoint/],
  [['127.0.0.1:50051', 'app', ['s']], InvalidArgumentError, /http:\/\/ or https:\/\//],
  [['http://127.0.0.1:50051', 'app', ['s'], { maxInitialConnectAttempts: 0 }], InvalidArgumentError, /maxInitialConnectAttempts/],
  [[ENDPOINT, 'app', 42], TypeError, /streams must be/],
  [[ENDPOINT, 'app', [1, 2]], TypeError, /stream names must be strings/],
  [[42, 'app', ['s']], TypeError, /endpoint must be a string/],
  [[ENDPOINT, null, ['s']], TypeError, /app must be a string/],
  [[ENDPOINT, 'app', ['s'], 'fast'], TypeError, /options must be an object/],
  [[ENDPOINT, 'app', ['s'], { maxRecordsPerBatch: 10001 }], InvalidArgumentError, /maxRecordsPerBatch/],
  [[ENDPOINT, 'app', ['s'], { maxRecordsPerBatch: '10' }], TypeError, /must be an integer/],
  [[ENDPOINT, 'app', ['s'], { maxConcurrentHandlers: 0 }], InvalidArgumentError, /maxConcurrentHandlers/],
  [[ENDPOINT, 'app', ['s'], { handlerRetries: -1 }], InvalidArgumentError, /handlerRetries/],
  [[ENDPOINT, 'app', ['s'], { handlerTimeoutMs: -1 }], InvalidArgumentError, /handlerTimeoutMs/],
  [[ENDPOINT, 'app', ['s'], { handlerTimeoutMs: '1s' }], TypeError, /milliseconds/],
  [[ENDPOINT, 'app', ['s'], { checkpoint: 'sometimes' }], InvalidArgumentError, /checkpoint/],
  [[ENDPOINT, 'app', ['s'], { checkpointEveryRecords: 0 }], InvalidArgumentError, /checkpointEveryRecords/],
  [[ENDPOINT, 'app', ['s'], { checkpointEveryRecords: 5, checkpointIntervalMs: 100 }], InvalidArgumentError, /not both/],
  [[ENDPOINT, 'app', ['s'], { checkpoint: 'manual', checkpointIntervalMs: 100 }], InvalidArgumentError, /manual/],
  [[ENDPOINT, 'app', ['s'], { onFailure: 'ignore' }], InvalidArgumentError, /onFailure/],
  [[ENDPOINT, 'app', ['s'], { start: 'beginning' }], InvalidArgumentError, /start/],
  [[ENDPOINT, 'app', ['s'], { start: 12 }], TypeError, /start/],
  [[ENDPOINT, 'app', ['s'], { retryInitialDelayMs: 2000, retryMaxDelayMs: 1000 }], InvalidArgumentError, /retry/],
  [[ENDPOINT, 'app', ['s'], { noSuchOption: 1 }], TypeError, /unknown option noSuchOption/],
  [[ENDPOINT, 'app', ['s'], { tls: { ca: 'x' } }], TypeError, /unknown option tls.ca/],
]

for (const [args, ErrorClass, message] of cases) {
  test(`new Consumer(${JSON.stringify(args).slice(1, -1)}) throws ${ErrorClass.name}`, () => {
    assert.throws(() => new Consumer(...args), (e) => {
      assert.ok(e instanceof ErrorClass, `${e.name}: ${e.message}`)
      assert.match(e.message, message)
      if (ErrorClass === InvalidArgumentError) {
        assert.ok(e instanceof ButlerError)
        assert.equal(e.code, 'invalid_argument')
        assert.equal(e.kind, 'invalid_argument')
      }
      return true
    })
  })
}

test('good options are accepted', () => {
  const c = new Consumer(ENDPOINT, 'app', 'one-stream', {
    clientName: 'me',
    start: new Date('2024-01-01T00:00:00Z'),
    maxRecordsPerBatch: 100,
    checkpointIntervalMs: 2000,
    maxConcurrentHandlers: 4,
    shardQueueBatches: 2,
    handlerRetries: 0,
    onFailure: 'skip',
    handlerTimeoutMs: 1500,
    maxReconnectAttempts: 3,
    requestTimeoutMs: 5000,
    shutdownTimeoutMs: 0,
  })
  assert.deepEqual(c.streams, ['one-stream'])
  assert.equal(c.app, 'app')
  assert.equal(c.endpoint, ENDPOINT)
  assert.equal(c.stopped, false)
  c.stop()
  assert.equal(c.stopped, true)
  new Consumer(ENDPOINT, 'app', ['a', 'b'], { start: 'latest', checkpoint: 'manual' })
})

for (const handler of [undefined, null, 42, 'handle', {}]) {
  test(`run(${JSON.stringify(handler)}) rejects with TypeError`, async () => {
    const c = new Consumer(ENDPOINT, 'app', ['s'])
    await assert.rejects(c.run(handler), (e) => e instanceof TypeError && /handler must be a function/.test(e.message))
  })
}

test('an unreachable server rejects with ConnectionError', async () => {
  const c = new Consumer(`http://127.0.0.1:${await freePort()}`, 'app', ['s'], {
    maxReconnectAttempts: 3,
    reconnectInitialDelayMs: 10,
    reconnectMaxDelayMs: 50,
  })
  const started = Date.now()
  await assert.rejects(c.run(() => {}), (e) => {
    assert.ok(e instanceof kb.ConnectionError && e instanceof ButlerError)
    assert.equal(e.code, 'connection')
    assert.match(e.message, /cannot reach/)
    assert.match(e.endpoint, /^http:\/\/127\.0\.0\.1:/)
    return true
  })
  assert.ok(Date.now() - started < 10000)
})

test('a stream that does not exist rejects with NotFoundError', async () => {
  const server = await Server.start()
  try {
    const c = new Consumer(server.endpoint, unique('app'), [unique('missing')], { maxReconnectAttempts: 3 })
    await assert.rejects(runBounded(c, () => {}, 30000), (e) => e instanceof kb.NotFoundError && e.code === 'not_found')
  } finally {
    await server.stop()
  }
})

test('run twice at once is refused', async () => {
  const server = await Server.start()
  const stream = await Stream.create(1)
  try {
    await stream.putRecords(1)
    const c = new Consumer(server.endpoint, unique('app'), [stream.name])
    let second
    await runBounded(
      c,
      async () => {
        second = await c.run(() => {}).then(() => null, (e) => e)
        c.stop()
      },
      30000,
    )
    assert.ok(second instanceof InvalidArgumentError)
    assert.match(second.message, /already running/)
  } finally {
    await stream.delete()
    await server.stop()
  }
})

test('the client logs its warnings through setLogger', async () => {
  const events = []
  kb.setLogger((event) => events.push(event))
  try {
    const c = new Consumer(`http://127.0.0.1:${await freePort()}`, 'app', ['s'], { maxReconnectAttempts: 2, reconnectInitialDelayMs: 10 })
    await assert.rejects(c.run(() => {}), kb.ConnectionError)
    await new Promise((r) => setImmediate(r)) // log calls are queued to this thread
    assert.ok(events.some((e) => e.level === 'warn' && /cannot open a session/.test(e.message)), JSON.stringify(events))
  } finally {
    kb.setLogger(null)
  }
  assert.throws(() => kb.setLogger('console'), TypeError)
})
