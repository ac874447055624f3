// Benchmark reader for `make bench`: reads `--expect` records of a stream through a
// Kinesis Butler server with a plain async batch handler that touches every record's
// data, and prints `records_per_sec=<float>`.
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
let last = 0
const start = Date.now()

consumer
  .run(async (batch) => {
    for (const record of batch.records) bytes += record.data.length
    count += batch.records.length
    if (count >= expect && !last) {
      last = Date.now()
      consumer.stop()
    }
  })
  .then(() => {
    clearTimeout(watchdog)
    if (count < expect) throw new Error(`read ${count} of ${expect} records before the timeout`)
    const seconds = (last - start) / 1000
    console.log(`records=${count} bytes=${bytes} seconds=${seconds.toFixed(3)}`)
    console.log(`records_per_sec=${(count / seconds).toFixed(1)}`)
  })
  .catch((error) => {
    console.error(error)
    process.exitCode = 1
  })
