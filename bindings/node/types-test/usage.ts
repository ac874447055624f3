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
