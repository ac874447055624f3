// Type-checked (tsc -p types-test) against the package's definitions; never run.
// Lines marked @ts-expect-error must fail to type-check.
import { Batch, ButlerError, Consumer, ConsumerOptions, HandlerError, Record } from 'kinesis-butler'

const options: ConsumerOptions = { start: new Date(), checkpoint: 'manual', handlerTimeoutMs: 3000, maxReconnectAttempts: 5 }
const consumer = new Consumer('http://127.0.0.1:50051', 'app', ['orders'], options)

async function handle(batch: Batch): Promise<void> {
  const records: Record[] = batch.records
  for (const record of records) {
    const data: Buffer = record.data
    const when: Date = record.approximateArrivalTimestamp
    console.log(batch.shardId, record.sequenceNumber, data.toString(), when.toISOString(), record.partitionKey)
  }
  await batch.checkpoint(records[records.length - 1])
}

async function main(): Promise<void> {
  process.once('SIGINT', () => consumer.stop())
  try {
    await consumer.run(handle)
    await consumer.run((batch) => console.log(batch.records.length))
  } catch (e) {
    if (e instanceof HandlerError) console.log(e.shardId, e.attempts, e.cause, e.code)
    else if (e instanceof ButlerError) console.log(e.kind)
  }
  const stopped: boolean = consumer.stopped
  console.log(stopped)
}
void main

// @ts-expect-error: unknown start position
new Consumer('http://x', 'app', ['s'], { start: 'yesterday' })
// @ts-expect-error: unknown option
new Consumer('http://x', 'app', ['s'], { noSuchOption: 1 })
// @ts-expect-error: the handler must be a function
void consumer.run(42)
// @ts-expect-error: data is a Buffer
const text: string = ({} as Record).data
void text
// @ts-expect-error: streams are strings
new Consumer('http://x', 'app', [1])

// --- handler objects, iteration, signals, errors, logging, testing -------------------
import { HandlerObject, LeaseLostError, Shard, StopReason, setLogger } from 'kinesis-butler'
import { makeBatch, makeRecord, runHandler } from 'kinesis-butler/testing'

const hooked: HandlerObject = {
  handle: async (batch: Batch) => batch.records.length,
  shardStarted: (shard: Shard) => console.log(shard.stream, shard.shardId, shard.leaseEpoch, shard.checkpoint),
  shardStopped: async (shard: Shard, reason: StopReason) => console.log(shard.shardId, reason),
}

async function idioms(): Promise<void> {
  const controller = new AbortController()
  const c = new Consumer(null, 'app', 'orders', { tls: { caCertificatePem: Buffer.from('pem'), clientKeyPem: '/etc/key.pem' } })
  c.on('shardStopped', (shard, reason) => console.log(shard.shardId, reason.toUpperCase()))
  await c.run(hooked, { signal: controller.signal, handleSignals: false })
  for await (const batch of c) {
    const shardOfRecord: string = batch.records[0].shardId
    await batch.checkpoint(batch.records[0])
    console.log(shardOfRecord)
  }
  for await (const batch of c.batches({ handleSignals: false })) console.log(batch.stream)
  await c[Symbol.asyncDispose]()
  try {
    await c.run(() => {})
  } catch (e) {
    if (e instanceof LeaseLostError) {
      const code: 'lease_lost' = e.code
      const grpc: string | null = e.grpcCode
      const again: boolean = e.retryable
      console.log(code, grpc, again)
    }
  }
  setLogger(console)
  setLogger(console, { level: 'debug' })
  setLogger((event) => console.log(event.level, event.message, event.fields.shard))
  const batch = makeBatch(['a', Buffer.from('b')], { shardId: 'shardId-1', firstSequence: 5n })
  const run = await runHandler(hooked, [batch, makeBatch([makeRecord('c')])], { stopReason: 'rebalanced' })
  console.log(run.checkpoints.length, batch.checkpoints)
}
void idioms

// @ts-expect-error: hooks get a Shard, not a string
const badHooks: HandlerObject = { handle() {}, shardStarted: (shard: number) => shard }
void badHooks
// @ts-expect-error: not a log level
setLogger(console, { level: 'verbose' })
