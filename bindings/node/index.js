'use strict'
// kinesis-butler: consume Amazon Kinesis through a Kinesis Butler server.
//
// The protocol, retries and checkpoints are implemented once, in Rust (crate
// kinesis-butler-client, loaded from ./native.js); this file only adapts them to
// JavaScript: argument checks, Batch objects, Error classes with a `code`.

const { NativeConsumer, setLogger: setNativeLogger } = require('./native.js')

/**
 * Sets the function receiving the client's log events ({ level, message }), or null for
 * none. By default warnings and errors (reconnects, lost leases, handler retries) are
 * printed to stderr, and info too with KINESIS_BUTLER_LOG=info; KINESIS_BUTLER_LOG=off
 * silences them.
 */
function setLogger(logger) {
  if (logger !== null && typeof logger !== 'function') {
    throw new TypeError(`the logger must be a function or null, not ${typeOf(logger)}`)
  }
  setNativeLogger(logger)
}

function defaultLogger(event) {
  console.error(`kinesis-butler ${event.level}: ${event.message}`)
}

class ButlerError extends Error {
  constructor(message, details = {}) {
    const { cause, ...rest } = details
    super(message, cause === undefined ? undefined : { cause })
    this.name = new.target.name
    Object.assign(this, rest)
  }
}

function errorClass(name, code, kind, Base = ButlerError) {
  const cls = { [name]: class extends Base {} }[name]
  Object.defineProperty(cls.prototype, 'code', { value: code, writable: true, configurable: true })
  Object.defineProperty(cls.prototype, 'kind', { value: kind, writable: true, configurable: true })
  return cls
}

Object.defineProperty(ButlerError.prototype, 'code', { value: 'ERR_KB', writable: true, configurable: true })
Object.defineProperty(ButlerError.prototype, 'kind', { value: 'butler', writable: true, configurable: true })
const ConnectionError = errorClass('ConnectionError', 'ERR_KB_CONNECTION', 'connection')
const LeaseLostError = errorClass('LeaseLostError', 'ERR_KB_LEASE_LOST', 'lease_lost')
const HandlerError = errorClass('HandlerError', 'ERR_KB_HANDLER', 'handler')
const InvalidArgumentError = errorClass('InvalidArgumentError', 'ERR_KB_INVALID_ARGUMENT', 'invalid_argument')
const NotFoundError = errorClass('NotFoundError', 'ERR_KB_NOT_FOUND', 'not_found')
const UnauthenticatedError = errorClass('UnauthenticatedError', 'ERR_KB_UNAUTHENTICATED', 'unauthenticated')
const StoppedError = errorClass('StoppedError', 'ERR_KB_STOPPED', 'stopped')
const ServerError = errorClass('ServerError', 'ERR_KB_SERVER', 'server')

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
  const details = {}
  for (const key of ['endpoint', 'stream', 'shardId', 'leaseEpoch', 'attempts', 'grpcCode']) {
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

/** One Kinesis record. */
class Record {
  constructor(data, partitionKey, sequenceNumber, subSequenceNumber, approximateArrivalTimestampMs) {
    this.data = data
    this.partitionKey = partitionKey
    this.sequenceNumber = sequenceNumber
    this.subSequenceNumber = subSequenceNumber
    this.approximateArrivalTimestampMs = approximateArrivalTimestampMs
  }

  get approximateArrivalTimestamp() {
    return new Date(this.approximateArrivalTimestampMs)
  }
}

// The native side hands a batch over as columns (one Buffer, two strings, offsets):
// far cheaper than an object per record across the N-API boundary.
function unpack(p) {
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
  constructor(native) {
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
    this.records = unpack(native.packedRecords())
  }

  /**
   * Stores a checkpoint now: up to and including `record` (a record of this shard), or
   * the whole batch. Resolves once the server stored it.
   */
  async checkpoint(record) {
    let seq
    let sub
    if (record !== undefined && record !== null) {
      if (typeof record !== 'object' || typeof record.sequenceNumber !== 'string') {
        throw new TypeError(`checkpoint takes a record of this shard (or nothing), not ${typeOf(record)}`)
      }
      seq = record.sequenceNumber
      sub = typeof record.subSequenceNumber === 'number' ? record.subSequenceNumber : 0
    }
    const error = await this.#native.checkpoint(seq, sub)
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
        if (typeof v !== 'string') throw new TypeError(`options.tls.${k} must be a string (PEM text), not ${typeOf(v)}`)
        tls[k] = v
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

/**
 * Reads `streams` of `app` through the Kinesis Butler server at `endpoint` and hands
 * their records to a handler, checkpointing for it.
 */
class Consumer {
  #native
  #endpoint
  #app
  #streams

  constructor(endpoint, app, streams, options) {
    if (typeof endpoint !== 'string') throw new TypeError(`endpoint must be a string, not ${typeOf(endpoint)}`)
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
      this.#native = new NativeConsumer(endpoint, app, streams, native, deadLetterFunction(options))
    } catch (e) {
      if (e && e.code === 'InvalidArg') throw new InvalidArgumentError(e.message)
      throw e
    }
    this.#endpoint = endpoint
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
   * Runs `handler` (a function taking a Batch; it may return a Promise) on every batch
   * until the consumer stops. Batches of one shard are handled one at a time, in order;
   * shards run concurrently. A handler that throws or rejects is retried; the checkpoint
   * moves only past batches it handled. Resolves after stop() once the batches in hand
   * are handled and checkpointed; rejects with HandlerError (`cause`: what the handler
   * threw last) when it failed every retry, NotFoundError for a missing stream,
   * ConnectionError after `maxReconnectAttempts` failed connections.
   */
  async run(handler) {
    if (typeof handler !== 'function') {
      throw new TypeError(`handler must be a function taking a Batch, not ${typeOf(handler)}`)
    }
    const thrown = new Map()
    const call = async (native) => {
      const batch = new Batch(native)
      try {
        const result = await handler(batch)
        if (result && typeof result === 'object' && result.failedRecord) {
          return failure(`the handler reported record ${result.failedRecord.sequenceNumber} failed`, result.failedRecord)
        }
        return undefined
      } catch (error) {
        thrown.set(`${batch.stream}/${batch.shardId}`, error)
        return failure(describe(error), error && typeof error === 'object' ? error.record : undefined)
      }
    }
    const error = await this.#native.run(call)
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
}

const LOG = (process.env.KINESIS_BUTLER_LOG || 'warn').toLowerCase()
if (LOG !== 'off') {
  setLogger(LOG === 'info' ? defaultLogger : (event) => event.level !== 'info' && defaultLogger(event))
}

module.exports = {
  Consumer,
  setLogger,
  Batch,
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
