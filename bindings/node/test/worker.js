'use strict'
// A consumer process for the multi-process tests: prints one JSON line per batch and one
// when run() resolves. SIGINT stops it gracefully (as the example processor does).
const { Consumer } = require('kinesis-butler')

const [endpoint, app, stream, ...rest] = process.argv.slice(2)
const options = { reconnectInitialDelayMs: 50, reconnectMaxDelayMs: 500 }
const every = rest.indexOf('--checkpoint-every')
if (every >= 0) options.checkpointEveryRecords = Number(rest[every + 1])

const consumer = new Consumer(endpoint, app, [stream], options)
// run() stops on SIGINT and SIGTERM itself; --own-sigint also listens here (as older code did).
if (rest.includes('--own-sigint')) process.once('SIGINT', () => consumer.stop())

const emit = (line) => process.stdout.write(JSON.stringify(line) + '\n')
consumer
  .run(async (batch) => {
    emit({ event: 'batch', shard: batch.shardId, seqs: batch.records.map((r) => r.sequenceNumber), epoch: batch.leaseEpoch })
  })
  .then(
    () => emit({ event: 'stopped', stopped: consumer.stopped }),
    (error) => {
      console.error(error)
      process.exitCode = 1
    },
  )
