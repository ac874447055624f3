// Type definitions of kinesis-butler/testing: batches and records for a handler's unit tests.
import { Batch, Record, Handler, HandlerObject, Shard, StopReason } from './index'

export interface RecordOptions {
  sequenceNumber?: string
  partitionKey?: string
  subSequenceNumber?: number
  arrival?: Date
  stream?: string
  shardId?: string
}

export interface BatchOptions {
  stream?: string
  shardId?: string
  leaseEpoch?: number
  attempt?: number
  /** The sequence number of the first payload given (then +1 each). */
  firstSequence?: bigint | number | string
}

/** A Batch without a server; `checkpoints` lists what its checkpoint() calls stored. */
export declare class TestBatch extends Batch {
  readonly checkpoints: string[]
}

export declare function makeShard(shard?: Partial<Shard>): Shard
export declare function makeRecord(data: Buffer | Uint8Array | string, options?: RecordOptions): Record
export declare function makeBatch(records: Iterable<Record | Buffer | Uint8Array | string>, options?: BatchOptions): TestBatch

export interface HandlerRun {
  /** Sequence numbers checkpointed, in order (the handler's own and, unless manual, each batch's end). */
  checkpoints: string[]
  /** ['started', shardId] / ['batch', shardId] / ['stopped', shardId, reason]. */
  calls: (string[])[]
}

export declare function runHandler(
  handler: Handler | HandlerObject,
  batches: Batch | Iterable<Batch>,
  options?: { checkpoint?: 'batch' | 'manual'; stopReason?: StopReason },
): Promise<HandlerRun>
