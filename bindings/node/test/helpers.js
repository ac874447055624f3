'use strict'
// Test harness: a real Kinesis emulator (kinesalite), a real kinesis-butler server
// process, streams put through the emulator's HTTP API, and worker processes.
// Every wait is bounded; waits are on events except where the only observable is
// external state (a port, the lease store).

const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const crypto = require('node:crypto')
const { EventEmitter, once } = require('node:events')

const ROOT = process.env.KB_ROOT || path.resolve(__dirname, '..', '..', '..')
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target')
const BIN = process.env.KB_BIN_DIR || path.join(TARGET, 'debug')
const KINESIS = process.env.KB_KINESALITE_ENDPOINT || 'http://127.0.0.1:4620'
const AWS_ENV = {
  AWS_ACCESS_KEY_ID: 'test',
  AWS_SECRET_ACCESS_KEY: 'test',
  AWS_REGION: 'us-east-1',
  AWS_ENDPOINT_URL_KINESIS: KINESIS,
}

const unique = (prefix) => `${prefix}-${crypto.randomBytes(5).toString('hex')}`
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Polls an external condition (only where no event can be awaited). */
async function waitUntil(predicate, timeoutMs, what, stepMs = 50) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await predicate()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(stepMs)
  }
}

/** Bounds a promise. */
async function within(ms, what, promise) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

// --- Kinesis (the emulator's JSON API; kinesalite does not check signatures) ---------

async function kinesis(op, body) {
  const response = await fetch(`${KINESIS}/`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: {
      'Content-Type': 'application/x-amz-json-1.1',
      'X-Amz-Target': `Kinesis_20131202.${op}`,
      'X-Amz-Date': '20240101T000000Z',
      Authorization:
        'AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/kinesis/aws4_request, ' +
        'SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=0',
    },
  })
  const text = await response.text()
  if (!response.ok) throw new Error(`Kinesis ${op} failed: HTTP ${response.status} ${text}`)
  return text ? JSON.parse(text) : {}
}

const bySeq = (a, b) => (BigInt(a.seq) < BigInt(b.seq) ? -1 : BigInt(a.seq) > BigInt(b.seq) ? 1 : 0)

/** A fresh stream; remembers what was put, per shard, in sequence order. */
class Stream {
  static async create(shards) {
    const stream = new Stream(unique('node'), shards)
    await kinesis('CreateStream', { StreamName: stream.name, ShardCount: shards })
    await waitUntil(
      async () =>
        (await kinesis('DescribeStreamSummary', { StreamName: stream.name })).StreamDescriptionSummary
          .StreamStatus === 'ACTIVE',
      30000,
      `stream ${stream.name} to become ACTIVE`,
    )
    return stream
  }

  constructor(name, shards) {
    this.name = name
    this.shards = shards
    this.put = new Map() // shard -> [{ seq, data }]
    this.count = 0
  }

  /**
   * Puts `count` records `rec-<n>` (n counts on over calls), padded to `size` bytes, with
   * partition keys `<keyPrefix><n>` (or `keyPrefix(n)` when it is a function).
   */
  async putRecords(count, size = 100, keyPrefix = 'key-') {
    const keyOf = typeof keyPrefix === 'function' ? keyPrefix : (n) => `${keyPrefix}${n}`
    let pending = []
    for (let i = 0; i < count; i++) {
      const data = Buffer.from(`rec-${String(this.count).padStart(8, '0')}-`.padEnd(size, '.'))
      pending.push({ key: keyOf(this.count), data })
      this.count++
    }
    const deadline = Date.now() + 120000
    while (pending.length) {
      if (Date.now() > deadline) throw new Error('putting records took over 120 s')
      const chunk = pending.slice(0, 500)
      pending = pending.slice(500)
      const out = await kinesis('PutRecords', {
        StreamName: this.name,
        Records: chunk.map((r) => ({ Data: r.data.toString('base64'), PartitionKey: r.key })),
      })
      out.Records.forEach((r, i) => {
        if (r.SequenceNumber) {
          if (!this.put.has(r.ShardId)) this.put.set(r.ShardId, [])
          this.put.get(r.ShardId).push({ seq: r.SequenceNumber, data: chunk[i].data })
        } else {
          pending.push(chunk[i])
        }
      })
    }
    for (const records of this.put.values()) records.sort(bySeq)
  }

  /** Every record of a one-shard stream from its start (`Data` decoded to a Buffer). */
  async readAll() {
    const { Shards: [shard] } = await kinesis('ListShards', { StreamName: this.name })
    const { ShardIterator } = await kinesis('GetShardIterator', {
      StreamName: this.name,
      ShardId: shard.ShardId,
      ShardIteratorType: 'TRIM_HORIZON',
    })
    const { Records } = await kinesis('GetRecords', { ShardIterator })
    return Records.map((r) => ({ ...r, Data: Buffer.from(r.Data, 'base64') }))
  }

  /** Set of "shard/seq" of every record put. */
  keys() {
    const keys = new Set()
    for (const [shard, records] of this.put) for (const r of records) keys.add(`${shard}/${r.seq}`)
    return keys
  }

  async delete() {
    await kinesis('DeleteStream', { StreamName: this.name }).catch(() => {})
  }
}

// --- the server ----------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

function portOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

async function ensureEmulator() {
  const port = Number(new URL(KINESIS).port)
  if (!(await portOpen(port))) {
    execFileSync(path.join(ROOT, 'scripts', 'emulators.sh'), ['start', 'kinesalite'], { stdio: 'inherit', timeout: 180000 })
  }
  if (!(await portOpen(port))) throw new Error(`no Kinesis emulator at ${KINESIS}`)
}

/** A kinesis-butler process on a free port with its own SQLite store. */
class Server {
  static async start() {
    await ensureEmulator()
    const binary = path.join(BIN, 'kinesis-butler')
    if (!fs.existsSync(binary)) throw new Error(`${binary} is missing: cargo build -p kinesis-butler`)
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kb-node-'))
    const port = await freePort()
    const server = new Server(binary, dir, port)
    await waitUntil(async () => server.exited || (await portOpen(port)), 30000, 'the server to listen')
    if (server.exited) throw new Error(`the server exited: ${fs.readFileSync(server.logPath, 'utf8').slice(-3000)}`)
    return server
  }

  constructor(binary, dir, port) {
    this.binary = binary
    this.port = port
    this.endpoint = `http://127.0.0.1:${port}`
    this.store = `sqlite://${dir}/butler.db`
    this.logPath = path.join(dir, 'server.log')
    const log = fs.openSync(this.logPath, 'w')
    this.process = spawn(
      binary,
      ['--listen', `127.0.0.1:${port}`, '--store', this.store, '--balance-interval', '200ms', '--idle-interval', '100ms', '--handoff-grace', '2s'],
      { stdio: ['ignore', log, log], env: { ...process.env, ...AWS_ENV, RUST_LOG: process.env.RUST_LOG || 'info' } },
    )
    this.exited = false
    this.process.once('exit', () => {
      this.exited = true
    })
  }

  leases(app, stream) {
    const out = execFileSync(this.binary, ['leases', '--store', this.store, '--app', app, '--stream', stream, '--json'], {
      env: { ...process.env, ...AWS_ENV },
      timeout: 30000,
    })
    return JSON.parse(out.toString())
  }

  async stop() {
    if (this.exited) return
    this.process.kill('SIGTERM')
    await within(10000, 'the server to exit', once(this.process, 'exit')).catch(() => this.process.kill('SIGKILL'))
  }
}

/**
 * One server for a test file (started before its tests, stopped after them) and fresh
 * streams deleted after them: `const { server, newStream } = useServer()`, then
 * `server().endpoint` and `await newStream(shards)` inside tests.
 */
function useServer() {
  const { before, after } = require('node:test')
  let server
  const streams = []
  before(async () => {
    server = await Server.start()
  })
  after(async () => {
    await Promise.all(streams.map((s) => s.delete()))
    await server.stop()
  })
  return {
    server: () => server,
    newStream: async (shards) => {
      const s = await Stream.create(shards)
      streams.push(s)
      return s
    },
  }
}

// --- in-process recording and worker processes ---------------------------------------

/** Collects what handlers saw; emits 'batch' on each. */
class Recorder extends EventEmitter {
  constructor() {
    super()
    this.batches = [] // { shard, records: [{ seq, data }], attempt }
  }

  add(batch) {
    this.batches.push({
      shard: batch.shardId,
      records: batch.records.map((r) => ({ seq: r.sequenceNumber, data: r.data })),
      attempt: batch.attempt,
    })
    this.emit('batch')
  }

  count() {
    return this.batches.reduce((n, b) => n + b.records.length, 0)
  }

  handled() {
    const perShard = new Map()
    for (const b of this.batches) {
      if (!perShard.has(b.shard)) perShard.set(b.shard, [])
      perShard.get(b.shard).push(...b.records)
    }
    return perShard
  }

  keys() {
    const keys = new Set()
    for (const b of this.batches) for (const r of b.records) keys.add(`${b.shard}/${r.seq}`)
    return keys
  }
}

/** `test/worker.js` in its own process; its JSON lines (one per batch) can be awaited. */
class Worker extends EventEmitter {
  /** `new Worker(endpoint, app, stream, ...args)` runs test/worker.js; `new Worker([script, ...args])` a script. */
  constructor(endpoint, app, stream, ...args) {
    super()
    const argv = Array.isArray(endpoint) ? endpoint : [path.join(__dirname, 'worker.js'), endpoint, app, stream, ...args]
    this.process = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'] })
    this.lines = []
    this.stderr = ''
    this.exitCode = undefined
    let buffered = ''
    this.process.stdout.on('data', (chunk) => {
      buffered += chunk
      let newline
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline)
        let parsed
        try {
          parsed = JSON.parse(line)
        } catch {
          parsed = { event: 'text', text: line }
        }
        this.lines.push(parsed)
        buffered = buffered.slice(newline + 1)
        this.emit('line')
      }
    })
    this.process.stderr.on('data', (chunk) => {
      this.stderr += chunk
    })
    this.exited = new Promise((resolve) => {
      this.process.once('close', (code, signal) => {
        this.exitCode = code ?? signal
        this.emit('line')
        resolve(this.exitCode)
      })
    })
  }

  get pid() {
    return this.process.pid
  }

  batches() {
    return this.lines.filter((l) => l.event === 'batch')
  }

  /** "shard/seq" -> times handled. */
  records() {
    const seen = new Map()
    for (const b of this.batches()) {
      for (const seq of b.seqs) seen.set(`${b.shard}/${seq}`, (seen.get(`${b.shard}/${seq}`) || 0) + 1)
    }
    return seen
  }

  /** Waits for the output to satisfy `predicate`, woken by each line. */
  waitFor(predicate, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = predicate(this)
        if (value) {
          done()
          resolve(value)
        } else if (this.exitCode !== undefined) {
          done()
          reject(new Error(`${what}: the worker exited (${this.exitCode}); stderr: ${this.stderr.slice(-2000)}`))
        }
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; stderr: ${this.stderr.slice(-2000)}`))
      }, timeoutMs)
      const done = () => {
        clearTimeout(timer)
        this.off('line', check)
      }
      this.on('line', check)
      check()
    })
  }

  kill() {
    if (this.exitCode === undefined) this.process.kill('SIGKILL')
    return this.exited
  }
}

/** Every record put was handled exactly once, in sequence order per shard. */
function assertOnceInOrder(assert, handled, stream) {
  assert.deepStrictEqual([...handled.keys()].sort(), [...stream.put.keys()].sort(), 'shards handled differ')
  for (const [shard, records] of stream.put) {
    const got = handled.get(shard).map((r) => `${r.seq}:${r.data.toString()}`)
    const want = records.map((r) => `${r.seq}:${r.data.toString()}`)
    assert.deepStrictEqual(got, want, `shard ${shard}: handled records differ from the records put, in order`)
  }
}

/** consumer.run(handler), stopped by a watchdog after `timeoutMs` (the test then fails on what it expected). */
async function runBounded(consumer, handler, timeoutMs) {
  const watchdog = setTimeout(() => consumer.stop(), timeoutMs)
  try {
    await consumer.run(handler)
  } finally {
    clearTimeout(watchdog)
  }
}

/** A recorder that stops `consumer` once `total` records were seen. */
function stopAt(consumer, recorder, total) {
  return (batch) => {
    recorder.add(batch)
    if (recorder.count() >= total) consumer.stop()
  }
}

module.exports = {
  ROOT,
  BIN,
  AWS_ENV,
  unique,
  sleep,
  waitUntil,
  within,
  kinesis,
  Stream,
  Server,
  useServer,
  Recorder,
  Worker,
  freePort,
  assertOnceInOrder,
  runBounded,
  stopAt,
}
