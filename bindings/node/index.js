'use strict'
// kinesis-butler: consume Amazon Kinesis through a Kinesis Butler server.
//
// The protocol, retries and checkpoints are implemented once, in Rust (crate
// kinesis-butler-client, loaded from ./native.js); this file only adapts them to
// JavaScript: argument checks, Batch objects, Error classes with a `code`.

const { EventEmitter } = require('node:events')
const { NativeConsumer, setLogger: setNativeLogger } = require('./native.js')

const LEVELS = ['error', 'warn', 'info', 'debug']

/**
 * Sets where the client's log events go: a function receiving `{ level, message, fields }`,
 * a logger object with `error` / `warn` / `info` / `debug` methods (`console`, pino,
 * winston…), or null for none. A logger object gets `(fields, message)` as pino and
 * bunyan take them, except `console`, which gets `(message, fields)`. `options.level`
 * ('error' | 'warn' | 'info' | 'debug') is the most detailed level forwarded; for a
 * logger object it defaults to the object's own `level` when it is one of those names
 * (pino's is), else 'info'. By default warnings and errors (reconnects, lost leases,
 * handler retries) are printed to stderr, and info too with KINESIS_BUTLER_LOG=info
 * (or debug); KINESIS_BUTLER_LOG=off silences them.
 */
function setLogger(logger, options = {}) {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`setLogger options must be an object, not ${typeOf(options)}`)
  }
  let level = options.level
  if (level !== undefined && !LEVELS.includes(level)) {
    throw new TypeError(`the log level must be one of ${LEVELS.join(', ')}, not ${JSON.stringify(level)}`)
  }
  if (logger === null) {
    setNativeLogger(null, null)
    return
  }
  if (typeof logger === 'function') {
    setNativeLogger(logger, level ?? 'info')
    return
  }
  if (typeof logger !== 'object' || !LEVELS.slice(0, 3).every((l) => typeof logger[l] === 'function')) {
    throw new TypeError(`the logger must be a function, an object with error/warn/info methods (such as console), or null, not ${typeOf(logger)}`)
  }
  if (level === undefined) level = LEVELS.includes(logger.level) ? logger.level : 'info'
  const consoleStyle = logger === console
  setNativeLogger((event) => {
    const method = typeof logger[event.level] === 'function' ? event.level : 'info'
    const fields = { ...event.fields }
    if (consoleStyle) logger[method](`kinesis-butler ${event.level}: ${event.message}`, fields)
    else logger[method](fields, event.message)
  }, level)
}

function defaultLogger(event) {
  const fields = Object.entries(event.fields || {}).map(([k, v]) => ` ${k}=${v}`).join('')
  console.error(`kinesis-butler ${event.level}: ${event.message}${fields}`)
}

/**
 * Base class of every error of the client. The error model is the same in Python and
 * Node: `code` is the client's stable kind ('connection', 'lease_lost', 'handler',
 * 'invalid_argument', 'not_found', 'unauthenticated', 'stopped', 'server'), `grpcCode`
 * the gRPC status name behind it ('UNAVAILABLE'…) or null, `retryable` whether trying
 * again later may succeed.
 */
class ButlerError extends Error {
  constructor(message, details = {}) {
    const { cause, ...rest } = details
    super(message, cause === undefined ? undefined : { cause })
    this.name = new.target.name
    Object.assign(this, rest)
  }

  /** `code` (kept for earlier versions). */
  get kind() {
    return this.code
  }
}

function errorClass(name, code, grpcCode = null, retryable = false) {
  const cls = { [name]: class extends ButlerError {} }[name]
  for (const [key, value] of Object.entries({ code, grpcCode, retryable })) {
    Object.defineProperty(cls.prototype, key, { value, writable: true, configurable: true, enumerable: false })
  }
  return cls
}

for (const [key, value] of Object.entries({ code: 'butler', grpcCode: null, retryable: false })) {
  Object.defineProperty(ButlerError.prototype, key, { value, writable: true, configurable: true })
}
const ConnectionError = errorClass('ConnectionError', 'connection', null, true)
const LeaseLostError = errorClass('LeaseLostError', 'lease_lost')
const HandlerError = errorClass('HandlerError', 'handler')
const InvalidArgumentError = errorClass('InvalidArgumentError', 'invalid_argument', 'INVALID_ARGUMENT')
const NotFoundError = errorClass('NotFoundError', 'not_found', 'NOT_FOUND')
const UnauthenticatedError = errorClass('UnauthenticatedError', 'unauthenticated', 'UNAUTHENTICATED')
const StoppedError = errorClass('StoppedError', 'stopped')
const ServerError = errorClass('ServerError', 'server')

const ERRORS = {
  connection: ConnectionError,
  lease_lost: LeaseLostError,
  handler: HandlerError,
  invalid_argument: InvalidArgumentError,
  not_found: NotFoundError,
  unauthenticated: UnauthenticatedError,
  stopped: StoppedError,
  server: ServerError,
}

/** The Error for a native ErrorInfo. */
function toError(info, cause) {
  const Class = ERRORS[info.kind] || ButlerError
  const details = { grpcCode: info.grpcCode ?? null, retryable: Boolean(info.retryable) }
  for (const key of ['endpoint', 'stream', 'shardId', 'leaseEpoch', 'attempts']) {
    if (info[key] !== undefined && info[key] !== null) details[key] = info[key]
  }
  if (cause !== undefined) details.cause = cause
  return new Class(info.message, details)
}

function describe(value) {
  if (value instanceof Error) return `${value.name}: ${value.message}`
  try {
    return `non-Error thrown: ${typeof value === 'string' ? value : JSON.stringify(value)}`
  } catch {
    return `non-Error thrown: ${String(value)}`
  }
}

function typeOf(value) {
  if (value === null || value === undefined) return String(value)
  if (Array.isArray(value)) return 'an array'
  const type = typeof value === 'object' && value.constructor ? value.constructor.name : typeof value
  return /^[aeiou]/i.test(type) ? `an ${type}` : `a ${type}`
}

/** One Kinesis record, with the stream and shard it was read from. */
class Record {
  constructor(data, partitionKey, sequenceNumber, subSequenceNumber, approximateArrivalTimestampMs, stream, shardId) {
    this.data = data
    this.partitionKey = partitionKey
    this.sequenceNumber = sequenceNumber
    this.subSequenceNumber = subSequenceNumber
    this.approximateArrivalTimestampMs = approximateArrivalTimestampMs
    this.stream = stream
    this.shardId = shardId
  }

  get approximateArrivalTimestamp() {
    return new Date(this.approximateArrivalTimestampMs)
  }
}

// The native side hands a batch over as columns (one Buffer, two strings, offsets):
// far cheaper than an object per record across the N-API boundary.
function unpack(p, stream, shardId) {
  const n = p.dataEnds.length
  const records = new Array(n)
  let data = 0
  let key = 0
  let seq = 0
  for (let i = 0; i < n; i++) {
    const dataEnd = p.dataEnds[i]
    const keyEnd = p.partitionKeyEnds[i]
    const seqEnd = p.sequenceNumberEnds[i]
    records[i] = new Record(
      p.data.subarray(data, dataEnd),
      p.partitionKeys.substring(key, keyEnd),
      p.sequenceNumbers.substring(seq, seqEnd),
      p.subSequenceNumbers[i],
      p.approximateArrivalTimestampsMs[i],
      stream,
      shardId,
    )
    data = dataEnd
    key = keyEnd
    seq = seqEnd
  }
  return records
}

/** Records of one shard, in sequence order, following the shard's previous batch. */
class Batch {
  #native
  constructor(native, fields) {
    if (native === null && fields) {
      // A batch of kinesis-butler/testing (no server): its subclass checkpoints.
      Object.assign(this, fields)
      return
    }
    this.#native = native
    // Aborted when the client gives up on this call (handlerTimeoutMs, shutdown).
    const controller = new AbortController()
    this.signal = controller.signal
    native.cancelled().then(
      (cancelled) => cancelled && controller.abort(new Error(`the handler call on ${native.shardId} was cancelled (timeout)`)),
      () => {},
    )
    this.stream = native.stream
    this.shardId = native.shardId
    this.leaseEpoch = native.leaseEpoch
    this.millisBehindLatest = native.millisBehindLatest
    this.attempt = native.attempt
    this.records = unpack(native.packedRecords(), this.stream, this.shardId)
  }

  /**
   * Stores a checkpoint now: up to and including `record` (a record of this shard), or
   * the whole batch. Resolves once the server stored it. Rejects with
   * InvalidArgumentError for a record of another shard or one never delivered,
   * LeaseLostError when the shard moved on.
   */
  async checkpoint(record) {
    let seq
    let sub
    let stream
    let shardId
    if (record !== undefined && record !== null) {
      if (typeof record !== 'object' || typeof record.sequenceNumber !== 'string') {
        throw new TypeError(`checkpoint takes a record of this shard (or nothing), not ${typeOf(record)}`)
      }
      seq = record.sequenceNumber
      sub = typeof record.subSequenceNumber === 'number' ? record.subSequenceNumber : 0
      stream = typeof record.stream === 'string' ? record.stream : undefined
      shardId = typeof record.shardId === 'string' ? record.shardId : undefined
    }
    const error = await this.#native.checkpoint(seq, sub, stream, shardId)
    if (error) throw toError(error)
  }
}

const DURATIONS = [
  'checkpointIntervalMs',
  'retryInitialDelayMs',
  'retryMaxDelayMs',
  'handlerTimeoutMs',
  'maxRecordAgeMs',
  'reconnectInitialDelayMs',
  'reconnectMaxDelayMs',
  'requestTimeoutMs',
  'shutdownTimeoutMs',
]
const COUNTS = [
  'maxRecordsPerBatch',
  'checkpointEveryRecords',
  'maxConcurrentHandlers',
  'shardQueueBatches',
  'handlerRetries',
  'maxReconnectAttempts',
  'maxInitialConnectAttempts',
  'maxAttempts',
  'parallelizationFactor',
]
const STRINGS = ['clientName', 'authToken', 'checkpoint', 'onFailure']
const TLS = ['caCertificatePem', 'domainName', 'clientCertificatePem', 'clientKeyPem']

/**
 * Checks option types (TypeError) and names the native fields; every rule on the
 * values (ranges, durations, names of modes) is the Rust client's (InvalidArgumentError).
 */
function nativeOptions(options) {
  if (options === undefined || options === null) return undefined
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`options must be an object, not ${typeOf(options)}`)
  }
  const out = {}
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue
    if (DURATIONS.includes(key)) {
      if (typeof value !== 'number') throw new TypeError(`options.${key} must be a number of milliseconds, not ${typeOf(value)}`)
      out[key] = value
    } else if (COUNTS.includes(key)) {
      if (typeof value !== 'number' || !Number.isInteger(value)) {
        throw new TypeError(`options.${key} must be an integer, not ${typeOf(value)}`)
      }
      out[key] = value
    } else if (key === 'onFailure' && typeof value === 'function') {
      continue // passed to the native consumer on its own
    } else if (key === 'bisectOnError') {
      if (typeof value !== 'boolean') throw new TypeError(`options.bisectOnError must be a boolean, not ${typeOf(value)}`)
      out[key] = value
    } else if (STRINGS.includes(key)) {
      if (typeof value !== 'string') throw new TypeError(`options.${key} must be a string, not ${typeOf(value)}`)
      out[key] = value
    } else if (key === 'start') {
      if (value instanceof Date) {
        out.startTimestampMs = value.getTime()
      } else if (typeof value === 'string') {
        out.start = value
      } else {
        throw new TypeError(`options.start must be 'trim_horizon', 'latest' or a Date, not ${typeOf(value)}`)
      }
    } else if (key === 'tls') {
      if (typeof value !== 'object' || value === null) throw new TypeError(`options.tls must be an object, not ${typeOf(value)}`)
      const tls = {}
      for (const [k, v] of Object.entries(value)) {
        if (!TLS.includes(k)) throw new TypeError(`unknown option tls.${k} (known: ${TLS.join(', ')})`)
        if (v === undefined) continue
        if (k === 'domainName') {
          if (typeof v !== 'string') throw new TypeError(`options.tls.${k} must be a string, not ${typeOf(v)}`)
          tls[k] = v
        } else if (typeof v === 'string' || Buffer.isBuffer(v)) {
          tls[k] = v
        } else if (v instanceof Uint8Array) {
          tls[k] = Buffer.from(v.buffer, v.byteOffset, v.byteLength)
        } else {
          throw new TypeError(`options.tls.${k} must be PEM text, a file path or a Buffer, not ${typeOf(v)}`)
        }
      }
      out.tls = tls
    } else {
      throw new TypeError(`unknown option ${key}`)
    }
  }
  return out
}

// A failed call as the native side takes it: the text, and the failed record if named.
function failure(message, record) {
  const named = record && typeof record === 'object' && typeof record.sequenceNumber === 'string'
  return {
    message,
    failedSequenceNumber: named ? record.sequenceNumber : undefined,
    failedSubSequenceNumber: named && typeof record.subSequenceNumber === 'number' ? record.subSequenceNumber : undefined,
  }
}

// `onFailure` as a function: called with the given-up entries; resolves null once they
// are stored, or the text of what it threw (the shard waits and calls again).
function deadLetterFunction(options) {
  const fn = options && typeof options === 'object' ? options.onFailure : undefined
  if (typeof fn !== 'function') return undefined
  return async (entries) => {
    try {
      await fn(entries)
      return null
    } catch (error) {
      return describe(error)
    }
  }
}

const asyncDispose = Symbol.asyncDispose || Symbol.for('nodejs.asyncDispose')
const STOP_SIGNALS = ['SIGINT', 'SIGTERM']

/** The callables of a handler: a function, or an object with `handle` and optional hooks. */
function handlerParts(handler) {
  if (typeof handler === 'function') return { handle: handler, target: undefined }
  if (handler !== null && typeof handler === 'object' && typeof handler.handle === 'function') {
    for (const hook of ['shardStarted', 'shardStopped']) {
      if (handler[hook] !== undefined && typeof handler[hook] !== 'function') {
        throw new TypeError(`handler.${hook} must be a function, not ${typeOf(handler[hook])}`)
      }
    }
    return { handle: (batch) => handler.handle(batch), target: handler }
  }
  throw new TypeError(`handler must be a function taking a Batch or an object with a handle(batch) method, not ${typeOf(handler)}`)
}

/** A shard as this consumer holds it (given to the hooks and the shard events). */
function shardOf(event) {
  return Object.freeze({
    stream: event.stream,
    shardId: event.shardId,
    leaseEpoch: event.leaseEpoch,
    checkpoint: event.checkpoint,
  })
}

/**
 * Reads `streams` of `app` through the Kinesis Butler server at `endpoint` (null or
 * undefined: $KINESIS_BUTLER_ENDPOINT) and hands their records to a handler,
 * checkpointing for it. An EventEmitter: 'shardStarted' (shard) and 'shardStopped'
 * (shard, reason) are emitted before a shard's first batch and before its final
 * checkpoint and release.
 */
class Consumer extends EventEmitter {
  #native
  #endpoint
  #app
  #streams
  #running

  constructor(endpoint, app, streams, options) {
    super()
    if (endpoint !== undefined && endpoint !== null && typeof endpoint !== 'string') {
      throw new TypeError(`endpoint must be a string (or null for $KINESIS_BUTLER_ENDPOINT), not ${typeOf(endpoint)}`)
    }
    if (typeof app !== 'string') throw new TypeError(`app must be a string, not ${typeOf(app)}`)
    if (typeof streams === 'string') streams = [streams]
    if (!Array.isArray(streams)) {
      throw new TypeError(`streams must be a stream name or an array of names, not ${typeOf(streams)}`)
    }
    for (const s of streams) {
      if (typeof s !== 'string') throw new TypeError(`stream names must be strings, not ${typeOf(s)}`)
    }
    const native = nativeOptions(options)
    try {
      this.#native = new NativeConsumer(endpoint ?? null, app, streams, native, deadLetterFunction(options))
    } catch (e) {
      if (e && e.code === 'InvalidArg') throw new InvalidArgumentError(e.message)
      throw e
    }
    this.#endpoint = endpoint ?? process.env.KINESIS_BUTLER_ENDPOINT
    this.#app = app
    this.#streams = [...streams]
  }

  get endpoint() {
    return this.#endpoint
  }

  get app() {
    return this.#app
  }

  get streams() {
    return [...this.#streams]
  }

  /** Whether stop() was called. */
  get stopped() {
    return this.#native.stopped
  }

  /**
   * Runs `handler` on every batch until the consumer stops. `handler` is a function
   * taking a Batch (it may return a Promise), or an object with `handle(batch)` and
   * optional `shardStarted(shard)` / `shardStopped(shard, reason)` hooks, awaited
   * before a shard's first batch and before its final checkpoint and release (so that
   * per-shard state can be flushed before the next owner starts).
   *
   * Batches of one shard are handled one at a time, in order; shards run concurrently.
   * A handler that throws or rejects is retried; the checkpoint moves only past batches
   * it handled. Resolves after stop() once the batches in hand are handled and
   * checkpointed; rejects with HandlerError (`cause`: what the handler threw last) when
   * it failed every retry, NotFoundError for a missing stream, ConnectionError after
   * `maxReconnectAttempts` failed connections, StoppedError when stop() came before.
   *
   * Options: `signal` (an AbortSignal: aborting stops gracefully), `handleSignals`
   * (default true: SIGINT and SIGTERM stop gracefully while running; a second one
   * gives up at once).
   */
  run(handler, options = {}) {
    const running = this.#run(handler, options)
    this.#running = running
    return running
  }

  async #run(handler, options) {
    const { handle, target } = handlerParts(handler)
    if (options === null || typeof options !== 'object') {
      throw new TypeError(`run options must be an object, not ${typeOf(options)}`)
    }
    const { signal, handleSignals = true, ...unknown } = options
    const extra = Object.keys(unknown)
    if (extra.length) throw new TypeError(`unknown run option ${extra[0]} (known: signal, handleSignals)`)
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError(`options.signal must be an AbortSignal, not ${typeOf(signal)}`)
    }
    const thrown = new Map()
    const call = async (native) => {
      const batch = new Batch(native)
      try {
        const result = await handle(batch)
        if (result && typeof result === 'object' && result.failedRecord) {
          return failure(`the handler reported record ${result.failedRecord.sequenceNumber} failed`, result.failedRecord)
        }
        return undefined
      } catch (error) {
        thrown.set(`${batch.stream}/${batch.shardId}`, error)
        return failure(describe(error), error && typeof error === 'object' ? error.record : undefined)
      }
    }
    const hooks = async (event) => {
      const shard = shardOf(event)
      const name = event.event === 'started' ? 'shardStarted' : 'shardStopped'
      const args = event.event === 'started' ? [shard] : [shard, event.reason]
      try {
        if (target && typeof target[name] === 'function') await target[name](...args)
        this.emit(name, ...args)
      } catch (error) {
        console.error(`kinesis-butler: the handler's ${name} threw on ${shard.stream}/${shard.shardId}:`, error)
      }
      return undefined
    }
    const cleanup = []
    if (signal) {
      if (signal.aborted) this.stop()
      const onAbort = () => this.stop()
      signal.addEventListener('abort', onAbort, { once: true })
      cleanup.push(() => signal.removeEventListener('abort', onAbort))
    }
    if (handleSignals) {
      let received = 0
      for (const name of STOP_SIGNALS) {
        const onSignal = () => {
          // Counted here, not read from `stopped`: the program's own listener may have
          // called stop() for this very signal.
          if (++received === 1) {
            this.stop()
            return
          }
          // A second signal: give up at once, as if nobody had listened.
          process.removeListener(name, onSignal)
          if (process.listenerCount(name) === 0) process.kill(process.pid, name)
        }
        process.on(name, onSignal)
        cleanup.push(() => process.removeListener(name, onSignal))
      }
    }
    let error
    try {
      error = await this.#native.run(call, hooks)
    } finally {
      for (const undo of cleanup) undo()
    }
    if (error) {
      const cause = error.kind === 'handler' ? thrown.get(`${error.stream}/${error.shardId}`) : undefined
      throw toError(error, cause)
    }
  }

  /** Counters since the consumer was made, and the lag of the shards it holds now. */
  stats() {
    return this.#native.stats()
  }

  /**
   * Stops gracefully: no new batches are taken, batches in hand finish and are
   * checkpointed, then the session closes so that its shards move at once.
   */
  stop() {
    this.#native.stop()
  }

  /**
   * `for await (const batch of consumer)`: each batch is checkpointed (by the
   * checkpoint policy) once the loop body is done with it and asks for the next one.
   * Batches of different shards arrive interleaved, one at a time. Leaving the loop
   * (`break`, `return`, a throw) stops the consumer; the batch in hand then counts as
   * not handled. `consumer.batches({ signal, handleSignals })` takes run()'s options.
   */
  [Symbol.asyncIterator]() {
    return this.batches()
  }

  /** The async iterator of `for await`, with run()'s options. */
  batches(options = {}) {
    const waiting = [] // batches handed over, with the function that releases each
    const readers = [] // next() calls waiting for a batch
    let current
    let finished = false
    let failure
    const settle = () => {
      while (readers.length && (waiting.length || finished)) {
        const reader = readers.shift()
        if (waiting.length) {
          const item = waiting.shift()
          current = item
          reader.resolve({ value: item.batch, done: false })
        } else if (failure !== undefined) {
          reader.reject(failure)
          failure = undefined
        } else {
          reader.resolve({ value: undefined, done: true })
        }
      }
    }
    const handler = (batch) =>
      new Promise((resolve, reject) => {
        waiting.push({ batch, resolve, reject })
        settle()
      })
    const run = this.run(handler, options).then(
      () => {
        finished = true
        settle()
      },
      (error) => {
        finished = true
        failure = error
        settle()
      },
    )
    const release = () => {
      if (current) {
        current.resolve()
        current = undefined
      }
    }
    const abandon = async () => {
      this.stop()
      const stopped = new StoppedError('the loop over the consumer ended before this batch')
      for (const item of [current, ...waiting.splice(0)]) if (item) item.reject(stopped)
      current = undefined
      await run
      failure = undefined
    }
    return {
      next: () => {
        release()
        return new Promise((resolve, reject) => {
          readers.push({ resolve, reject })
          settle()
        })
      },
      return: async () => {
        if (!finished) await abandon()
        return { value: undefined, done: true }
      },
      throw: async (error) => {
        if (!finished) await abandon()
        throw error
      },
      [Symbol.asyncIterator]() {
        return this
      },
    }
  }

  /** `await using consumer = new Consumer(...)`: stops it and waits for run() to end. */
  async [asyncDispose]() {
    this.stop()
    if (this.#running) await this.#running.catch(() => {})
  }
}

const LOG = (process.env.KINESIS_BUTLER_LOG || 'warn').toLowerCase()
if (LOG !== 'off') {
  const level = LEVELS.includes(LOG) ? LOG : 'warn'
  const shown = LEVELS.slice(0, LEVELS.indexOf(level) + 1)
  setNativeLogger((event) => shown.includes(event.level) && defaultLogger(event), level === 'debug' ? 'debug' : 'info')
}

module.exports = {
  Consumer,
  setLogger,
  Batch,
  Record,
  ButlerError,
  ConnectionError,
  LeaseLostError,
  HandlerError,
  InvalidArgumentError,
  NotFoundError,
  UnauthenticatedError,
  StoppedError,
  ServerError,
}
// For testing.js (not part of the API): a native ErrorInfo as the Error it throws.
Object.defineProperty(module.exports, '_toError', { value: toError, enumerable: false })
