// Type definitions of kinesis-butler. The native types (./native.d.ts) are generated
// by napi-rs from the Rust sources; this file describes the JavaScript layer over them.
import type { EventEmitter } from 'node:events'
import type { LogEvent, NativeBatch, TlsOptions } from './native'

export type { LogEvent, TlsOptions }

export type LogLevel = 'error' | 'warn' | 'info' | 'debug'

/** A console-, pino- or winston-like logger object. */
export interface LoggerObject {
  error(...args: any[]): unknown
  warn(...args: any[]): unknown
  info(...args: any[]): unknown
  debug?(...args: any[]): unknown
  /** pino's level name: used as the forwarded level unless `options.level` is given. */
  level?: string
}

/**
 * Sets where the client's log events go: a function receiving `{ level, message, fields }`,
 * a logger object (`console` gets `(message, fields)`, others `(fields, message)` as
 * pino takes them), or null for none. `options.level` is the most detailed level
 * forwarded (default: the object's `level`, else 'info'). By default warnings and
 * errors are printed to stderr (KINESIS_BUTLER_LOG=debug|info|warn|off).
 */
export declare function setLogger(logger: ((event: LogEvent) => void) | LoggerObject | null, options?: { level?: LogLevel }): void

/** One Kinesis record. */
export declare class Record {
  constructor(
    data: Buffer,
    partitionKey: string,
    sequenceNumber: string,
    subSequenceNumber: number,
    approximateArrivalTimestampMs: number,
    stream: string,
    shardId: string,
  )
  /** The stream the record was read from. */
  stream: string
  /** The shard the record was read from. */
  shardId: string
  /** The payload (a view into one Buffer per batch: copy it to keep it past the batch cheaply). */
  data: Buffer
  partitionKey: string
  /** A decimal string of up to 128 bits; compare as BigInt. */
  sequenceNumber: string
  /** Position inside a KPL-aggregated record; 0 otherwise. */
  subSequenceNumber: number
  /** When Kinesis received the record. */
  readonly approximateArrivalTimestamp: Date
  approximateArrivalTimestampMs: number
}

/** Records of one shard, in sequence order, following the shard's previous batch. */
export declare class Batch {
  protected constructor(native: NativeBatch | null, fields?: object)
  readonly stream: string
  readonly shardId: string
  readonly leaseEpoch: number
  /** Never empty. */
  readonly records: Record[]
  readonly millisBehindLatest: number
  /** 1 on the first delivery of this batch, then 2, 3… on retries. */
  readonly attempt: number
  /**
   * Stores a checkpoint now, up to and including `record` (of this shard) or the whole
   * batch. Rejects with LeaseLostError when the shard moved to another consumer,
   * InvalidArgumentError for a record of another shard or one never delivered.
   */
  checkpoint(record?: Pick<Record, 'sequenceNumber' | 'subSequenceNumber'> & Partial<Pick<Record, 'stream' | 'shardId'>> | null): Promise<void>
  /** Aborted when the client gives up on this call (handlerTimeoutMs, shutdown): stop and return. */
  readonly signal: AbortSignal
}

/** A record given up (onFailure), with its failure metadata. */
export interface DeadLetterEntry {
  app: string
  stream: string
  shardId: string
  sequenceNumber: string
  subSequenceNumber: number
  partitionKey: string
  attempts: number
  error: string
  reason: 'handler_failed' | 'too_old'
  approximateArrivalTimestampMs: number
  data: Buffer
}

/** consumer.stats(): counters since the consumer was made, and its shards now. */
export interface Stats {
  recordsHandled: number
  batchesHandled: number
  checkpoints: number
  retries: number
  reconnects: number
  deadLettered: number
  skipped: number
  bisectSteps: number
  handlerTimeouts: number
  shards: { stream: string; shardId: string; leaseEpoch: number; millisBehindLatest: number; recordsHandled: number }[]
}

/** A shard as this consumer holds it. */
export interface Shard {
  readonly stream: string
  readonly shardId: string
  readonly leaseEpoch: number
  /** The stored checkpoint reading started after ('' when there was none). */
  readonly checkpoint: string
}

/** Why a consumer stopped working on a shard (the client's stable names). */
export type StopReason =
  | 'rebalanced'
  | 'server_shutdown'
  | 'lease_lost'
  | 'ended'
  | 'released'
  | 'consumer_stopped'
  | 'disconnected'
  | 'handler_failed'

/** The error model shared with the Python package: `code` is the client's stable kind. */
export type ErrorCode =
  | 'connection'
  | 'lease_lost'
  | 'handler'
  | 'invalid_argument'
  | 'not_found'
  | 'unauthenticated'
  | 'stopped'
  | 'server'

/** Settings of a Consumer; durations are in milliseconds. Left out: the default. */
export interface ConsumerOptions {
  /** Shown by `kinesis-butler leases` (default `node-<pid>`). */
  clientName?: string
  /** Sent as `authorization: Bearer <token>` (servers started with `--auth-token`); default $KINESIS_BUTLER_TOKEN. */
  authToken?: string
  /** TLS settings for an `https://` endpoint: each PEM text, a file path or a Buffer. */
  tls?: TlsOptions
  /** Where shards without a checkpoint start (default 'trim_horizon'). */
  start?: 'trim_horizon' | 'latest' | Date
  /** 0..10000; 0 or left out: the server's default. */
  maxRecordsPerBatch?: number
  /** 'batch' (after every handled batch, the default) or 'manual' (batch.checkpoint()). */
  checkpoint?: 'batch' | 'manual'
  /** Checkpoint once this many records were handled instead of after every batch. */
  checkpointEveryRecords?: number
  /** Checkpoint at most this long after a batch was handled instead. */
  checkpointIntervalMs?: number
  /** Handler calls at once over all shards (default 64). */
  maxConcurrentHandlers?: number
  /** Batches buffered per shard while its handler is busy (default 4). */
  shardQueueBatches?: number
  /** Retries of a failing batch (default 3). */
  handlerRetries?: number
  retryInitialDelayMs?: number
  retryMaxDelayMs?: number
  /**
   * Records that failed every attempt: 'stop' (default: run() rejects with HandlerError),
   * 'skip', a dead-letter destination 'kinesis:STREAM' or 'file:PATH' (JSON lines), or a
   * function taking the entries (resolve once stored; throw to make the shard wait and retry).
   */
  onFailure?: 'stop' | 'skip' | `kinesis:${string}` | `file:${string}` | ((entries: DeadLetterEntry[]) => unknown)
  /** Calls of a failing record or batch before onFailure (default handlerRetries + 1). */
  maxAttempts?: number
  /** Records older than this go to onFailure instead of the handler ('skip' or a destination). */
  maxRecordAgeMs?: number
  /** Split a failing batch in halves to isolate the failed record (when the handler did not name it). */
  bisectOnError?: boolean
  /** 1..10 lanes per shard by partition key, each key in order (default 1). */
  parallelizationFactor?: number
  /** A handler call taking longer is aborted (batch.signal) and retried once it returned. Default: no limit. */
  handlerTimeoutMs?: number
  reconnectInitialDelayMs?: number
  reconnectMaxDelayMs?: number
  /** Consecutive failed connections before run() rejects with ConnectionError (default: retry forever). */
  maxReconnectAttempts?: number
  /** Failed attempts to open the first session before run() rejects with ConnectionError (default 6, about 6 s), so a wrong endpoint fails fast. */
  maxInitialConnectAttempts?: number
  /** Limit on connecting and on each checkpoint call (default 10 s). */
  requestTimeoutMs?: number
  /** On stop, how long batches in hand may take to finish (default 30 s). */
  shutdownTimeoutMs?: number
}

/**
 * A handler: may return a Promise; throwing or rejecting fails the batch (it is retried).
 * Throw an Error with `.record` (or resolve `{ failedRecord }`) to name the first failed
 * record: the records before it count as handled and the retry starts at it.
 */
export type Handler = (batch: Batch) => unknown

/** A handler object: `handle` plus optional hooks, awaited before a shard's first batch and before its final checkpoint and release. */
export interface HandlerObject {
  handle(batch: Batch): unknown
  shardStarted?(shard: Shard): unknown
  shardStopped?(shard: Shard, reason: StopReason): unknown
}

export interface RunOptions {
  /** Aborting stops the consumer gracefully. */
  signal?: AbortSignal
  /** SIGINT and SIGTERM stop gracefully while running (default true); a second one gives up at once. */
  handleSignals?: boolean
}

export interface ConsumerEvents {
  shardStarted: [shard: Shard]
  shardStopped: [shard: Shard, reason: StopReason]
}

/**
 * Reads `streams` of `app` through the Kinesis Butler server at `endpoint`
 * (e.g. 'http://127.0.0.1:50051'; null: $KINESIS_BUTLER_ENDPOINT) and hands their
 * records to a handler. Emits 'shardStarted' / 'shardStopped'.
 * Throws TypeError or InvalidArgumentError for bad arguments.
 */
export declare class Consumer extends EventEmitter implements AsyncIterable<Batch> {
  constructor(endpoint: string | null | undefined, app: string, streams: string | string[], options?: ConsumerOptions)
  readonly endpoint: string | undefined
  readonly app: string
  readonly streams: string[]
  /** Whether stop() was called. */
  readonly stopped: boolean
  /**
   * Runs `handler` on every batch until stop(), the signal or SIGINT/SIGTERM; resolves
   * once batches in hand are handled and checkpointed. Rejects with HandlerError,
   * NotFoundError, ConnectionError, StoppedError (stopped before)…
   */
  run(handler: Handler | HandlerObject, options?: RunOptions): Promise<void>
  /** Counters and per-shard lag now. */
  stats(): Stats
  /** Stops gracefully; batches in hand finish and are checkpointed. */
  stop(): void
  /** `for await`: each batch is checkpointed once the loop body is done with it. */
  [Symbol.asyncIterator](): AsyncIterableIterator<Batch>
  /** The iterator of `for await`, with run()'s options. */
  batches(options?: RunOptions): AsyncIterableIterator<Batch>
  /** `await using`: stops and waits for run() to end. */
  [Symbol.asyncDispose](): Promise<void>
  on<E extends keyof ConsumerEvents>(event: E, listener: (...args: ConsumerEvents[E]) => void): this
  once<E extends keyof ConsumerEvents>(event: E, listener: (...args: ConsumerEvents[E]) => void): this
  off<E extends keyof ConsumerEvents>(event: E, listener: (...args: ConsumerEvents[E]) => void): this
}

export declare class ButlerError extends Error {
  /** The client's stable kind (the same strings as Python's `code`). */
  readonly code: ErrorCode | 'butler'
  /** `code` (kept for earlier versions). */
  readonly kind: string
  /** The gRPC status code name behind the error ('UNAVAILABLE'…), or null. */
  readonly grpcCode: string | null
  /** Whether trying again later may succeed. */
  readonly retryable: boolean
}
export declare class ConnectionError extends ButlerError {
  readonly code: 'connection'
  readonly endpoint: string
}
export declare class LeaseLostError extends ButlerError {
  readonly code: 'lease_lost'
  readonly stream: string
  readonly shardId: string
  readonly leaseEpoch: number
}
export declare class HandlerError extends ButlerError {
  readonly code: 'handler'
  readonly stream: string
  readonly shardId: string
  readonly attempts: number
  /** What the handler threw (or rejected with) last. */
  readonly cause: unknown
}
export declare class InvalidArgumentError extends ButlerError {
  readonly code: 'invalid_argument'
}
export declare class NotFoundError extends ButlerError {
  readonly code: 'not_found'
}
export declare class UnauthenticatedError extends ButlerError {
  readonly code: 'unauthenticated'
}
export declare class StoppedError extends ButlerError {
  readonly code: 'stopped'
}
export declare class ServerError extends ButlerError {
  readonly code: 'server'
}
