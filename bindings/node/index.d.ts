// Type definitions of kinesis-butler. The native types (./native.d.ts) are generated
// by napi-rs from the Rust sources; this file describes the JavaScript layer over them.
import type { LogEvent, NativeBatch, TlsOptions } from './native'

export type { LogEvent, TlsOptions }

/**
 * Sets the function receiving the client's log events, or null for none. By default
 * warnings and errors are printed to stderr (KINESIS_BUTLER_LOG=info|warn|off).
 */
export declare function setLogger(logger: ((event: LogEvent) => void) | null): void

/** One Kinesis record. */
export interface Record {
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
  private constructor(native: NativeBatch)
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
   * batch. Rejects with LeaseLostError when the shard moved to another consumer.
   */
  checkpoint(record?: Pick<Record, 'sequenceNumber' | 'subSequenceNumber'> | null): Promise<void>
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

/** Settings of a Consumer; durations are in milliseconds. Left out: the default. */
export interface ConsumerOptions {
  /** Shown by `kinesis-butler leases` (default `node-<pid>`). */
  clientName?: string
  /** Sent as `authorization: Bearer <token>` (servers started with `--auth-token`). */
  authToken?: string
  /** TLS settings for an `https://` endpoint. */
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

/**
 * Reads `streams` of `app` through the Kinesis Butler server at `endpoint`
 * (e.g. 'http://127.0.0.1:50051') and hands their records to a handler.
 * Throws TypeError or InvalidArgumentError for bad arguments.
 */
export declare class Consumer {
  constructor(endpoint: string, app: string, streams: string | string[], options?: ConsumerOptions)
  readonly endpoint: string
  readonly app: string
  readonly streams: string[]
  /** Whether stop() was called. */
  readonly stopped: boolean
  /**
   * Runs `handler` on every batch until stop(); resolves once batches in hand are
   * handled and checkpointed. Rejects with HandlerError, NotFoundError, ConnectionError…
   */
  run(handler: Handler): Promise<void>
  /** Counters and per-shard lag now. */
  stats(): Stats
  /** Stops gracefully; batches in hand finish and are checkpointed. */
  stop(): void
}

export declare class ButlerError extends Error {
  /** 'ERR_KB_…' */
  readonly code: string
  /** 'connection', 'lease_lost', 'handler', 'invalid_argument', 'not_found', 'unauthenticated', 'stopped', 'server' */
  readonly kind: string
}
export declare class ConnectionError extends ButlerError {
  readonly code: 'ERR_KB_CONNECTION'
  readonly endpoint: string
}
export declare class LeaseLostError extends ButlerError {
  readonly code: 'ERR_KB_LEASE_LOST'
  readonly stream: string
  readonly shardId: string
  readonly leaseEpoch: number
}
export declare class HandlerError extends ButlerError {
  readonly code: 'ERR_KB_HANDLER'
  readonly stream: string
  readonly shardId: string
  readonly attempts: number
  /** What the handler threw (or rejected with) last. */
  readonly cause: unknown
}
export declare class InvalidArgumentError extends ButlerError {
  readonly code: 'ERR_KB_INVALID_ARGUMENT'
}
export declare class NotFoundError extends ButlerError {
  readonly code: 'ERR_KB_NOT_FOUND'
}
export declare class UnauthenticatedError extends ButlerError {
  readonly code: 'ERR_KB_UNAUTHENTICATED'
}
export declare class StoppedError extends ButlerError {
  readonly code: 'ERR_KB_STOPPED'
}
export declare class ServerError extends ButlerError {
  readonly code: 'ERR_KB_SERVER'
  /** The gRPC status code name. */
  readonly grpcCode: string
}
