// CRC-64/XZ as COS computes it (x-cos-hash-crc64ecma): the catalogue check value, continuation,
// and combining the CRCs of parts into the CRC of the whole object.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { crc64, crc64Combine } from '../src/storage/crc64.js';

test('crc64 gives the CRC-64/XZ check value', () => {
  assert.equal(crc64(Buffer.from('123456789')), 0x995dc9bbdf1939fan);
  assert.equal(crc64(Buffer.alloc(0)), 0n);
});

test('crc64 continues and combines like the CRC of the concatenation', () => {
  for (const [la, lb] of [
    [1, 1],
    [1000, 37],
    [65536, 1],
    [5 << 20, 123457],
  ] as const) {
    const a = randomBytes(la);
    const b = randomBytes(lb);
    const whole = crc64(Buffer.concat([a, b]));
    assert.equal(crc64(b, crc64(a)), whole);
    assert.equal(crc64Combine(crc64(a), crc64(b), b.length), whole);
  }
});
