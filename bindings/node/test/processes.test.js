'use strict'
// Consumers in separate processes: sharing shards, failover, SIGINT.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('node:fs')
const path = require('node:path')

const { Worker, useServer, waitUntil, unique } = require('./helpers.js')

const { server, newStream } = useServer()

/** client name -> shards it holds, once no lease is being handed over; else null. */
function holdings(app, stream) {
  const state = server().leases(app, stream.name)
  if (state.leases.some((l) => l.handoff_to || !l.owner)) return null
  const names = new Map(state.sessions.map((s) => [s.session_id, s.client_name]))
  const held = {}
  for (const l of state.leases) {
    const name = names.get(l.owner) || l.owner
    ;(held[name] ||= new Set()).add(l.shard_id)
  }
  return held
}

const nameOf = (worker) => `node-${worker.pid}`
const shardOf = (key) => key.split('/')[0]

function assertOrderedPerLease(worker) {
  const last = new Map()
  for (const b of worker.batches()) {
    const key = `${b.shard}@${b.epoch}`
    const seqs = b.seqs.map(BigInt)
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i - 1] < seqs[i], `out of order in a batch of ${key}`)
    if (last.has(key)) assert.ok(last.get(key) < seqs[0], `out of order on ${key}`)
    last.set(key, seqs[seqs.length - 1])
  }
}

test('two processes split the shards; one takes over when the other dies', async () => {
  const stream = await newStream(4)
  await stream.putRecords(200)
  const app = unique('app')
  const first = new Worker(server().endpoint, app, stream.name)
  let second
  try {
    await first.waitFor((w) => w.records().size >= 200, 60000, 'the first worker to read every record')

    second = new Worker(server().endpoint, app, stream.name)
    const split = await waitUntil(
      () => {
        const h = holdings(app, stream)
        if (!h) return null
        const names = Object.keys(h).sort()
        const sizes = Object.values(h).map((s) => s.size).sort()
        return names.join() === [nameOf(first), nameOf(second)].sort().join() && sizes.join() === '2,2' ? h : null
      },
      60000,
      'the shards to be split 2/2 between the two workers',
    )
    const mine = split[nameOf(first)]
    const theirs = split[nameOf(second)]

    const round1 = stream.keys()
    await stream.putRecords(200)
    const round2 = [...stream.keys()].filter((k) => !round1.has(k))
    await waitUntil(
      () => round2.every((k) => first.records().has(k) || second.records().has(k)),
      60000,
      'the two workers to read the second round',
    )
    for (const key of round2) {
      const [owner, other] = mine.has(shardOf(key)) ? [first, second] : [second, first]
      assert.ok(owner.records().has(key), `${key} not read by its shard's owner`)
      assert.ok(!other.records().has(key), `${key} read by both`)
    }
    // Graceful handoff: nothing was handled twice.
    for (const [key, times] of first.records()) assert.equal(times + (second.records().get(key) || 0), 1, key)

    await second.kill()
    await waitUntil(
      () => {
        const h = holdings(app, stream)
        return h && Object.keys(h).join() === nameOf(first) && h[nameOf(first)].size === 4
      },
      60000,
      'the first worker to take every shard over',
    )
    const round12 = stream.keys()
    await stream.putRecords(200)
    const round3 = [...stream.keys()].filter((k) => !round12.has(k))
    await first.waitFor((w) => round3.every((k) => w.records().has(k)), 60000, 'the survivor to read the third round')
    assert.ok(round3.some((k) => theirs.has(shardOf(k))), 'no record went to the taken-over shards')
    assertOrderedPerLease(first)
    assertOrderedPerLease(second)
  } finally {
    await first.kill()
    if (second) await second.kill()
  }
})

for (const [signal, extra] of [['SIGINT', ['--own-sigint']], ['SIGTERM', []]]) test(`${signal} stops a worker cleanly with a final checkpoint and released leases`, async () => {
  const stream = await newStream(2)
  await stream.putRecords(100)
  const app = unique('app')
  // Checkpoints only every 10^6 records: only the final checkpoint can store progress.
  const worker = new Worker(server().endpoint, app, stream.name, '--checkpoint-every', '1000000', ...extra)
  try {
    await worker.waitFor((w) => w.records().size >= 100, 60000, 'the worker to read every record')
    worker.process.kill(signal)
    assert.equal(await worker.exited, 0, worker.stderr)
    assert.deepEqual(worker.lines[worker.lines.length - 1], { event: 'stopped', stopped: true })
  } finally {
    await worker.kill()
  }
  const state = server().leases(app, stream.name)
  assert.deepEqual(state.sessions, [])
  assert.deepEqual(state.leases.map((l) => l.owner), ['', ''], 'the leases were released')
  const checkpoints = Object.fromEntries(state.leases.map((l) => [l.shard_id, l.checkpoint]))
  const expected = Object.fromEntries([...stream.put].map(([shard, records]) => [shard, records[records.length - 1].seq]))
  assert.deepEqual(checkpoints, expected)
})

// test.sh copies examples/node/processor.js next to the tests in the scratch project.
const example = path.join(__dirname, '..', 'examples', 'processor.js')
test('the example processor counts every record and stops on SIGINT', { skip: !fs.existsSync(example) }, async () => {
  const stream = await newStream(4)
  await stream.putRecords(300)
  const app = unique('app')
  const processor = new Worker([example, '--endpoint', server().endpoint, '--app', app, '--stream', stream.name])
  const total = (w) => {
    const totals = w.lines.map((l) => /^total=(\d+)/.exec(l.text || '')).filter(Boolean)
    return totals.length ? Number(totals[totals.length - 1][1]) : 0
  }
  try {
    await processor.waitFor((w) => total(w) === 300, 60000, 'the example to count 300 records')
    processor.process.kill('SIGINT')
    assert.equal(await processor.exited, 0, processor.stderr)
    assert.equal(processor.lines[processor.lines.length - 1].text, 'stopped cleanly')
    assert.equal(total(processor), 300)
  } finally {
    await processor.kill()
  }
  assert.deepEqual(server().leases(app, stream.name).sessions, [])
})
