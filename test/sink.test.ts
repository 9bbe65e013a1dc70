// The file sink's write path: large writes are cut into pieces off the 1 MiB grid and written
// several at once; the bytes that land must be exactly the bytes given, wherever they start, and a
// failure is reported for the lowest offset.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { CUT_OFFSET, WRITE_PIECE, cutPieces, inParallel, joinAdjacent, openSink } from '../src/io/sink.js';
import { BufferPool } from '../src/pipeline/buffer-pool.js';

const MiB = 1024 * 1024;

test('cutPieces: pieces cover the bytes exactly, at most one piece long, cut only on the shifted grid; no piece covers an aligned block', () => {
  for (const [size, offset] of [[WRITE_PIECE, CUT_OFFSET], [MiB, MiB / 2]] as const) {
    for (const position of [0, 512, 65536, 512 * 1024, MiB, 1.125 * MiB, 2 * MiB + CUT_OFFSET, 3 * MiB + 4096, 7 * MiB - 1]) {
      for (const lengths of [[1], [4096], [MiB], [4 * MiB], [65536, 65536, 3 * MiB, 17], [2 * MiB + 1, 0, 5], [9 * MiB]]) {
        const bufs = lengths.map((n) => randomBytes(n));
        const pieces = cutPieces(bufs, position, size, offset);
        let at = position;
        for (const [i, p] of pieces.entries()) {
          assert.equal(p.at, at, 'pieces follow each other');
          assert.equal(p.length, p.bufs.reduce((n, b) => n + b.length, 0));
          assert.ok(p.length > 0 && p.length <= size, `piece of ${p.length} bytes`);
          const end = p.at + p.length;
          if (i < pieces.length - 1) assert.equal((end - offset) % size, 0, `cut at ${end}, not ${offset} past a multiple of ${size}`);
          // No piece covers a whole aligned block of its size.
          assert.ok(Math.ceil(p.at / size) * size + size > end, `piece [${p.at}, ${end}) covers an aligned block`);
          at = end;
        }
        const total = lengths.reduce((a, b) => a + b, 0);
        assert.equal(at, position + total);
        assert.ok(Buffer.concat(pieces.flatMap((p) => p.bufs)).equals(Buffer.concat(bufs)), 'same bytes, same order');
      }
    }
  }
});

test('joinAdjacent: consecutive views of one block become one; others stay apart', () => {
  const block = randomBytes(1000);
  const other = randomBytes(10);
  const joined = joinAdjacent([block.subarray(0, 100), block.subarray(100, 400), other, block.subarray(400, 500), block.subarray(600, 700)]);
  assert.equal(joined.length, 4);
  assert.ok(joined[0]!.equals(block.subarray(0, 400)));
  assert.ok(Buffer.concat(joined).equals(Buffer.concat([block.subarray(0, 400), other, block.subarray(400, 500), block.subarray(600, 700)])));
});

test('inParallel: bounded, every item runs once, the lowest-offset failure is thrown after all settle', async () => {
  let running = 0;
  let peak = 0;
  const seen: number[] = [];
  const items = Array.from({ length: 20 }, (_, i) => ({ at: i * 10 }));
  await inParallel(items, 3, async (it) => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 1 + (it.at % 7)));
    seen.push(it.at);
    running--;
  });
  assert.equal(peak, 3);
  assert.deepEqual([...seen].sort((a, b) => a - b), items.map((i) => i.at));

  let settled = 0;
  await assert.rejects(
    inParallel(items.slice(0, 4), 4, async (it) => {
      await new Promise((r) => setTimeout(r, 40 - it.at)); // later offsets fail first
      settled++;
      if (it.at >= 10) throw new Error(`fail ${it.at}`);
    }),
    /fail 10/,
  );
  assert.equal(settled, 4, 'all started writes settled before the error');

  // After a failure no further item starts; a synchronous throw counts as that item's failure.
  const started: number[] = [];
  await assert.rejects(
    inParallel(items, 2, (it) => {
      started.push(it.at);
      if (it.at === 30) throw new Error('sync fail 30');
      return new Promise((r) => setTimeout(r, 5));
    }),
    /sync fail 30/,
  );
  assert.ok(started.length <= 5 && !started.includes(190), `started after the failure: ${started.join(',')}`);
});

test('a file sink writes large, unaligned, vectored writes byte for byte', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-sink-'));
  try {
    const path = join(dir, 'out.bin');
    const sink = await openSink(path);
    const expect = Buffer.alloc(12 * MiB);
    const writes: [number, Buffer[]][] = [
      [3, [randomBytes(5 * MiB + 7)]],
      [5 * MiB + 10, [randomBytes(65536), randomBytes(3 * MiB), randomBytes(1)]],
      [9 * MiB, [randomBytes(MiB)]],
      [10 * MiB + 512, [randomBytes(2 * MiB - 512)]],
    ];
    for (const [at, bufs] of writes) {
      Buffer.concat(bufs).copy(expect, at);
      await sink.writev(bufs, at);
    }
    await sink.truncate(expect.length);
    await sink.commit();
    assert.ok(readFileSync(path).equals(expect));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Bytes of `path` held in the page cache (util-linux fincore). */
function residentBytes(path: string): number {
  return Number(execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' }).trim());
}

/** Whether O_DIRECT writes bypass the page cache in `dir`'s file system (not on tmpfs, for one). */
function directIoBypassesCache(dir: string): boolean {
  const probe = join(dir, 'probe');
  try {
    execFileSync('dd', ['if=/dev/zero', `of=${probe}`, 'bs=64K', 'count=16', 'oflag=direct', 'status=none']);
    return residentBytes(probe) === 0;
  } catch {
    return false;
  } finally {
    rmSync(probe, { force: true });
  }
}

const directDir = mkdtempSync(join(tmpdir(), 'ferry-sink-direct-'));
const directSkip = directIoBypassesCache(directDir) ? false : `O_DIRECT does not bypass the page cache in ${tmpdir()} (tmpfs?): set TMPDIR to a disk file system`;
rmSync(directDir, { recursive: true, force: true });

test('directWrites: aligned pieces from the page-aligned arena go past the page cache, the others through it; the bytes are exact either way', { skip: directSkip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-sink-direct-'));
  const pool = new BufferPool(4 * MiB, 4);
  try {
    for (const directWrites of [true, false]) {
      const path = join(dir, `out-${directWrites}.bin`);
      const sink = await openSink(path, { directWrites });
      const expect = Buffer.alloc(12 * MiB);
      // Aligned: two arena slots (8 MiB at 0, cut into 2 MiB pieces; also in one vectored write).
      const a = pool.take(4 * MiB);
      const b = pool.take(4 * MiB);
      randomBytes(4 * MiB).copy(a);
      randomBytes(4 * MiB).copy(b);
      a.copy(expect, 0);
      b.copy(expect, 4 * MiB);
      await sink.writev([a, b], 0);
      // Not aligned: an ordinary buffer at an odd sector, and an arena slot at an unaligned offset.
      const odd = randomBytes(MiB);
      odd.copy(expect, 8 * MiB + 512);
      await sink.write(odd, 8 * MiB + 512);
      const c = pool.take(64 * 1024);
      randomBytes(c.length).copy(c);
      c.copy(expect, 10 * MiB + 1024);
      await sink.write(c, 10 * MiB + 1024);
      await sink.truncate(expect.length);
      await sink.commit();
      const cached = residentBytes(path);
      if (directWrites) assert.ok(cached <= 2 * MiB, `with direct writes, ${cached} bytes of the file are in the page cache (the 8 MiB aligned part should not be)`);
      else assert.ok(cached >= 8 * MiB, `through the page cache, ${cached} bytes are cached (the control case)`);
      assert.ok(readFileSync(path).equals(expect), `the file holds exactly what was written (directWrites ${directWrites})`);
      for (const x of [a, b, c]) pool.give(x);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('directWrites: a file system that answers a direct write with EINVAL is written through the cache from then on, byte-exact', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-sink-einval-'));
  const pool = new BufferPool(4 * MiB, 2);
  try {
    const path = join(dir, 'out.bin');
    const sink = await openSink(path, { directWrites: true });
    // Stand in for a file system that opens with O_DIRECT but refuses the writes (alignment).
    let refused = 0;
    const refuse = async () => {
      refused++;
      throw Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL' });
    };
    (sink as unknown as { direct: unknown }).direct = { fd: -1, write: refuse, writev: refuse, close: async () => {} };
    const a = pool.take(4 * MiB);
    randomBytes(a.length).copy(a);
    await sink.writev([a], 0);
    await sink.writev([a], 4 * MiB);
    assert.equal((sink as unknown as { direct: unknown }).direct, undefined, 'direct writes given up');
    assert.ok(refused >= 1 && refused <= 3, `${refused} direct writes tried: at most the first write's pieces, in flight when the first failed`);
    await sink.commit();
    assert.ok(readFileSync(path).equals(Buffer.concat([a, a])));
    pool.give(a);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the raw writer writes runs concurrently only into sinks that allow it (uploads stream in order)', async () => {
  /** Records how many writes overlap; an in-order sink (like an upload's) must never see two. */
  class RecordingSink {
    readonly path = 'recording';
    readonly isBlockDevice = false;
    readonly deviceSize = undefined;
    inFlight = 0;
    peak = 0;
    bytes = new Map<number, Buffer>();
    constructor(readonly concurrentWrites: boolean) {}
    async write(buf: Buffer, position: number): Promise<void> {
      this.inFlight++;
      this.peak = Math.max(this.peak, this.inFlight);
      await new Promise((r) => setTimeout(r, 1));
      this.bytes.set(position, Buffer.from(buf));
      this.inFlight--;
    }
    async writev(bufs: Buffer[], position: number): Promise<void> {
      await this.write(Buffer.concat(bufs), position);
    }
    async truncate(): Promise<void> {}
    async reserve(): Promise<void> {}
    async commit(): Promise<void> {}
    async abort(): Promise<void> {}
  }
  const { RawWriter } = await import('../src/image/raw-writer.js');
  for (const concurrent of [false, true]) {
    const sink = new RecordingSink(concurrent);
    const w = new RawWriter({ sink, spec: { format: 'raw' }, sourceSize: MiB });
    const runs = Array.from({ length: 64 }, (_, i) => ({ offset: i * 8192, length: 4096, data: randomBytes(4096), compressed: false }));
    await w.write(runs);
    assert.equal(sink.bytes.size, 64);
    for (const r of runs) assert.ok(sink.bytes.get(r.offset)!.equals(r.data));
    if (concurrent) assert.ok(sink.peak > 1, 'a file sink gets several runs at once');
    else assert.equal(sink.peak, 1, 'an in-order sink got overlapping writes');
  }
});
