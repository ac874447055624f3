// The ESM entry point exports the same classes as the CommonJS one.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createRequire } from 'node:module'

import kinesisButler, { Consumer, Batch, ButlerError, HandlerError, ConnectionError, InvalidArgumentError } from 'kinesis-butler'

const cjs = createRequire(import.meta.url)('kinesis-butler')

test('import and require give the same classes', () => {
  assert.equal(Consumer, cjs.Consumer)
  assert.equal(Batch, cjs.Batch)
  assert.equal(HandlerError, cjs.HandlerError)
  assert.equal(kinesisButler, cjs)
  assert.ok(new HandlerError('x') instanceof ButlerError)
  assert.ok(new ConnectionError('x') instanceof Error)
  assert.throws(() => new Consumer('http://127.0.0.1:1', 'app', []), InvalidArgumentError)
})
