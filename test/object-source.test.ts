// Random access to an object through ObjectSource when the store hands back a range as the pieces
// it arrived in (as the S3 store does: one buffer per HTTP body chunk, of any size, some empty):
// every read, sequential or not, across block and run boundaries, returns exactly the object's
// bytes. The store here serves a local file's bytes cut at random points; the S3 path itself is
// tested against the real server in storage.test.ts and import.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ObjectSource } from '../src/storage/object-source.js';
import type { ObjectStore } from '../src/storage/store.js';

/** A read-only store over one buffer whose ranges come back in uneven pieces. */
function piecewiseStore(data: Buffer, cut: () => number): ObjectStore & { requests: number } {
  const store = {
    name: 'test://pieces',
    bytesRead: 0,
    requests: 0,
    head: () => Promise.resolve({ size: data.length, metadata: {} }),
    getRange: (_key: string, offset: number, length: number) => Promise.resolve(Buffer.from(data.subarray(offset, offset + length))),
    getRangePieces: (_key: string, offset: number, length: number) => {
      store.requests++;
      const end = Math.min(data.length, offset + length);
      const pieces: Buffer[] = [];
      for (let at = offset; at < end; ) {
        const n = Math.min(end - at, cut());
        pieces.push(Buffer.from(data.subarray(at, at + n))); // n may be 0: an empty piece
        at += n;
      }
      return Promise.resolve(pieces);
    },
  };
  return store as unknown as ObjectStore & { requests: number };
}

test('ObjectSource: reads through pieced ranges return the exact bytes (sequential, random, across blocks and runs)', async () => {
  const data = randomBytes(40 * 1024 * 1024 + 12345);
  const sizes = [0, 1, 7, 4096, 65536, 65536, 65536, 100000, 300000];
  let i = 0;
  const store = piecewiseStore(data, () => sizes[i++ % sizes.length]!);
  const src = await ObjectSource.open(store, 'k');
  assert.equal(src.size, data.length);
  // Sequential 1 MiB + 17 reads: readahead turns on and fetches runs of up to 8 MiB.
  const step = 1024 * 1024 + 17;
  const buf = Buffer.alloc(step);
  for (let at = 0; at < data.length; at += step) {
    const n = await src.read(buf, 0, step, at);
    assert.equal(n, Math.min(step, data.length - at));
    assert.ok(buf.subarray(0, n).equals(data.subarray(at, at + n)), `sequential read at ${at}`);
  }
  assert.ok(store.requests < 20, `sequential reading took ${store.requests} requests (expected runs of several blocks)`);
  // Random reads of random lengths, into random offsets of the target buffer.
  for (let k = 0; k < 300; k++) {
    const pos = Math.floor(Math.random() * data.length);
    const len = 1 + Math.floor(Math.random() * 600000);
    const off = Math.floor(Math.random() * 1000);
    const out = Buffer.alloc(off + len);
    const n = await src.read(out, off, len, pos);
    assert.equal(n, Math.min(len, data.length - pos));
    assert.ok(out.subarray(off, off + n).equals(data.subarray(pos, pos + n)), `read of ${len} at ${pos}`);
  }
  assert.equal(await src.read(buf, 0, 10, data.length), 0, 'a read at the end returns 0');
  await src.close();
});

test('ObjectSource: an object shorter than its recorded size is reported as incomplete', async () => {
  const data = randomBytes(3 * 1024 * 1024);
  const store = piecewiseStore(data, () => 65536);
  const src = new ObjectSource(store, 'k', data.length + 4096);
  await assert.rejects(src.read(Buffer.alloc(4096), 0, 4096, data.length), (e: Error & { code?: string }) => e.code === 'UPLOAD_INCOMPLETE');
});
