// The manifest's content digest: SHA-256 over the SHA-256s of every 4 MiB chunk of the virtual
// disk. Checked against that definition computed directly, for content fed in arbitrary pieces
// (data and zero runs), with hashing on this thread and offloaded (assembled chunks, whole-chunk
// pieces handed over as they are), and hashing on the pool bounded behind a fast reader.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { ContentHasher, MANIFEST_CHUNK } from '../src/transfer/content-hash.js';
import { HASHES_IN_FLIGHT, hashing, offloadedHasher } from '../src/transfer/content-hash-pool.js';
import { BufferPool } from '../src/pipeline/buffer-pool.js';
import { WorkerPool } from '../src/pipeline/worker-pool.js';
import type { VirtualChunk } from '../src/pipeline/virtual-stream.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest();

function reference(disk: Buffer): string {
  const digests: Buffer[] = [];
  for (let at = 0; at < disk.length; at += MANIFEST_CHUNK) digests.push(sha(disk.subarray(at, Math.min(disk.length, at + MANIFEST_CHUNK))));
  return createHash('sha256').update(Buffer.concat(digests)).digest('hex');
}

test('the content digest matches its definition whatever the pieces, on this thread or offloaded', async () => {
  const size = 5 * MANIFEST_CHUNK + 12345 * 512; // a partial last chunk
  const disk = Buffer.alloc(size);
  // Data islands of random sizes separated by zero runs; one piece exactly one whole chunk.
  const pieces: { offset: number; length: number; zero: boolean }[] = [];
  let pos = 0;
  let seed = 1;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
  while (pos < size) {
    if (pos === MANIFEST_CHUNK * 2) {
      pieces.push({ offset: pos, length: MANIFEST_CHUNK, zero: false });
      randomBytes(MANIFEST_CHUNK).copy(disk, pos);
      pos += MANIFEST_CHUNK;
      continue;
    }
    const len = Math.min(size - pos, 512 * (1 + rnd(3000)), pos < MANIFEST_CHUNK * 2 ? MANIFEST_CHUNK * 2 - pos : Infinity);
    const zero = rnd(3) === 0;
    if (!zero) randomBytes(len).copy(disk, pos);
    pieces.push({ offset: pos, length: len, zero });
    pos += len;
  }
  const want = reference(disk);
  const plain = new ContentHasher(size);
  let handed = 0;
  const off = new ContentHasher(size, {
    digest: async (b) => {
      handed++;
      await new Promise((r) => setTimeout(r, 1));
      return sha(b);
    },
    take: () => Buffer.alloc(MANIFEST_CHUNK, 0xee), // dirty buffers: gaps must be zeroed
    give: () => {},
  });
  for (const p of pieces) {
    if (p.zero) {
      plain.zeros(p.offset, p.length);
      off.zeros(p.offset, p.length);
    } else {
      const data = disk.subarray(p.offset, p.offset + p.length);
      plain.data(p.offset, data);
      off.dataAsync(p.offset, data, async (b) => sha(b));
    }
  }
  const a = await plain.result();
  const b = await off.result();
  assert.equal(a.digest, want);
  assert.equal(b.digest, want);
  assert.equal(a.chunks.length, Math.ceil(size / MANIFEST_CHUNK));
  assert.ok(handed >= 4, 'assembled chunks were hashed by the offloaded function');
  // A zero disk: every chunk has the zero digest, nothing is hashed.
  const z = new ContentHasher(size);
  z.zeros(0, size);
  assert.equal((await z.result()).digest, reference(Buffer.alloc(size)));
});

test('data after a gap: the gap is hashed as zeros, as documented', async () => {
  const size = 2 * MANIFEST_CHUNK + 4096;
  const disk = Buffer.alloc(size);
  const first = randomBytes(8192);
  const second = randomBytes(4096);
  first.copy(disk, 0);
  second.copy(disk, MANIFEST_CHUNK + 512); // after a gap that crosses into the next chunk
  const h = new ContentHasher(size);
  h.data(0, first);
  h.data(MANIFEST_CHUNK + 512, second); // no zeros() for the gap in between
  assert.equal((await h.result()).digest, reference(disk));
  assert.throws(() => h.data(0, first), /out of order/);
});

test('hashing() on the pool cannot fall behind a fast reader: digests in flight stay bounded, the digest is right', async () => {
  // A reader far faster than the hashing (as a cached file is, with the workers also busy with
  // part MD5s): without the bound every chunk waiting for its hash holds its buffer.
  const pool = new WorkerPool(2);
  try {
    const chunks = 48;
    const size = chunks * MANIFEST_CHUNK - 3 * 512; // a short last chunk: assembled in a cell
    const arena = new BufferPool(MANIFEST_CHUNK, chunks);
    const disk = Buffer.alloc(size);
    async function* fast(): AsyncGenerator<VirtualChunk> {
      for (let i = 0; i < chunks; i++) {
        const offset = i * MANIFEST_CHUNK;
        const length = Math.min(MANIFEST_CHUNK, size - offset);
        const data = arena.take(length);
        data.fill(i + 1);
        data.copy(disk, offset);
        // Odd chunks arrive in two pieces: they go through the cells, not straight to the pool.
        if (i % 2) {
          yield { offset, length: 4096, kind: 'data', data: data.subarray(0, 4096) };
          yield { offset: offset + 4096, length: length - 4096, kind: 'data', data: data.subarray(4096), release: () => arena.give(data) };
        } else {
          yield { offset, length, kind: 'data', data, release: (b) => arena.give(b ?? data) };
        }
      }
    }
    const hasher = offloadedHasher(size, pool);
    for await (const c of hashing(fast(), hasher, pool)) c.release?.();
    assert.equal((await hasher.result()).digest, reference(disk));
    assert.ok(hasher.peakBacklog >= 2, `the pool hashed chunks side by side (peak ${hasher.peakBacklog})`);
    assert.ok(hasher.peakBacklog <= HASHES_IN_FLIGHT, `at most ${HASHES_IN_FLIGHT} digests in flight, saw ${hasher.peakBacklog}`);
  } finally {
    await pool.close();
  }
});
