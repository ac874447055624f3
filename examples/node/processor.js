// Counts records per shard through a Kinesis Butler server and prints the counts every
// second. Ctrl-C (SIGINT) or SIGTERM stops cleanly: batches in hand finish, progress is
// checkpointed and the session closes, so the shards move to other processors at once.
//
//   npm install ./bindings/node   # from a checkout (builds the addon; here: npm install links it)
//   node examples/node/processor.js --endpoint http://127.0.0.1:50051 --app demo --stream demo
'use strict'
const { parseArgs } = require('node:util')
const { Consumer } = require('kinesis-butler')

const { values: args } = parseArgs({
  options: {
    endpoint: { type: 'string', default: 'http://127.0.0.1:50051' },
    app: { type: 'string', default: 'demo' },
    stream: { type: 'string', multiple: true },
  },
})
if (!args.stream) throw new Error('give at least one --stream')

const consumer = new Consumer(args.endpoint, args.app, args.stream)
// run() stops gracefully on SIGINT and SIGTERM.

const counts = new Map()
const report = () => {
  const total = [...counts.values()].reduce((a, b) => a + b, 0)
  const shards = [...counts].sort().map(([shard, n]) => `${shard}=${n}`)
  console.log(`total=${total} | ${shards.join(' ')}`)
}
const timer = setInterval(report, 1000)

consumer
  .run(async (batch) => {
    // Batches of one shard arrive one at a time, in order; return (or resolve) when done.
    const shard = `${batch.stream}/${batch.shardId}`
    counts.set(shard, (counts.get(shard) || 0) + batch.records.length)
  })
  .then(() => {
    report()
    console.log('stopped cleanly')
  })
  .catch((error) => {
    console.error(error)
    process.exitCode = 1
  })
  .finally(() => clearInterval(timer))
