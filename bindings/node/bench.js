// Benchmark reader for `make bench`: reads `--expect` records of a stream through a
// Kinesis Butler server with a plain async batch handler that touches every record's
// data, and prints `records_per_sec=<float>` (steady state: records after the first batch
// over the time from the first batch to the last) and `first_record_secs=<float>`.
//
//   node bindings/node/bench.js --endpoint http://127.0.0.1:50051 --app bench --stream s --expect 100000
'use strict'
const { parseArgs } = require('node:util')
const { Consumer } = require('./index.js')

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string' },
    app: { type: 'string' },
    stream: { type: 'string' },
    expect: { type: 'string' },
    timeout: { type: 'string', default: '600' },
  },
})
const expect = Number(args.expect)
const consumer = new Consumer(args.endpoint, args.app, [args.stream], { maxRecordsPerBatch: 10000, shardQueueBatches: 8 })
const watchdog = setTimeout(() => consumer.stop(), Number(args.timeout) * 1000)
let count = 0
let bytes = 0
let first = 0
let firstCount = 0
let last = 0
const start = performance.now()

consumer
  .run(async (batch) => {
    for (const record of batch.records) bytes += record.data.length
    const now = performance.now()
    if (!first) {
      first = now
      firstCount = batch.records.length
    }
    if (count < expect) last = now
    count += batch.records.length
    if (count >= expect) consumer.stop()
  })
  .then(() => {
    clearTimeout(watchdog)
    if (count < expect) throw new Error(`read ${count} of ${expect} records before the timeout`)
    const seconds = (last - first) / 1000
    if (seconds <= 0) throw new Error('every record came in one batch; read more records')
    console.log(`records=${count} bytes=${bytes} seconds=${seconds.toFixed(3)}`)
    console.log(`records_per_sec=${((count - firstCount) / seconds).toFixed(1)}`)
    console.log(`first_record_secs=${((first - start) / 1000).toFixed(3)}`)
  })
  .catch((error) => {
    console.error(error)
    process.exitCode = 1
  })
