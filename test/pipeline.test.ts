// Tests of the streaming read engine (streamVirtual), checksumVirtual and deepCheck over a fake
// DiskImage whose map() mixes host, zero, unallocated and compressed (deflate/zlib/zstd) segments
// over a temp file, plus a qemu-img comparison once the qcow2 driver works.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { deflateRawSync, deflateSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import { FerryError } from '../src/errors.js';
import { FileSource, type ByteSource } from '../src/io/byte-source.js';
import { readVirtual } from '../src/image/read.js';
import type { CheckReport, Codec, DiskImage, ImageInfo, Segment } from '../src/image/types.js';
import { streamVirtual, type StreamOptions, type VirtualChunk } from '../src/pipeline/virtual-stream.js';
import { checksumVirtual } from '../src/pipeline/checksum.js';
import { deepCheck } from '../src/pipeline/deep-check.js';
import { activeWorkerCount } from '../src/pipeline/worker-pool.js';

const UNIT = 64 * 1024;

type Cluster =
  | { t: 'host'; hostOffset: number }
  | { t: 'zero' }
  | { t: 'unalloc' }
  | { t: 'comp'; codec: Codec; hostOffset: number; length: number; split: boolean };

/** A ByteSource wrapper that records the most bytes ever being read at once. */
class CountingSource implements ByteSource {
  inFlight = 0;
  maxInFlight = 0;
  reads = 0;
  constructor(private readonly inner: ByteSource) {}
  get name(): string {
    return this.inner.name;
  }
  get size(): number {
    return this.inner.size;
  }
  async read(buf: Buffer, off: number, len: number, pos: number): Promise<number> {
    this.reads++;
    this.inFlight += len;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      return await this.inner.read(buf, off, len, pos);
    } finally {
      this.inFlight -= len;
    }
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A fake image: per-64-KiB-cluster table, virtual size may end in a partial cluster. */
class FakeImage implements DiskImage {
  readonly format = 'qcow2' as const;
  mapCalls = 0;
  constructor(
    readonly name: string,
    readonly virtualSize: number,
    private readonly clusterAt: (index: number) => Cluster,
    readonly file: ByteSource,
  ) {}

  async map(offset: number, length: number): Promise<Segment[]> {
    this.mapCalls++;
    const out: Segment[] = [];
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const ci = Math.floor(pos / UNIT);
      const cStart = ci * UNIT;
      const c = this.clusterAt(ci);
      // Compressed clusters split into two segments exercise `skip`.
      const pieces = c.t === 'comp' && c.split ? [cStart, cStart + UNIT / 2, cStart + UNIT] : [cStart, cStart + UNIT];
      for (let k = 0; k + 1 < pieces.length; k++) {
        const a = Math.max(pieces[k]!, pos);
        const b = Math.min(pieces[k + 1]!, end);
        if (b <= a) continue;
        const len = b - a;
        let seg: Segment;
        if (c.t === 'host') seg = { offset: a, length: len, kind: 'data', depth: 0, source: { type: 'host', file: this.file, offset: c.hostOffset + (a - cStart) } };
        else if (c.t === 'zero') seg = { offset: a, length: len, kind: 'zero', depth: 0, source: { type: 'zero' } };
        else if (c.t === 'unalloc') seg = { offset: a, length: len, kind: 'unallocated', depth: 0, source: { type: 'zero' } };
        else {
          seg = {
            offset: a, length: len, kind: 'data', depth: 0,
            source: { type: 'compressed', file: this.file, offset: c.hostOffset, length: c.length, codec: c.codec, unitSize: UNIT, skip: a - cStart },
          };
        }
        out.push(seg);
      }
      pos = Math.min(end, cStart + UNIT);
    }
    return out;
  }
  async info(): Promise<ImageInfo> {
    return { format: 'qcow2', subformat: 'fake', virtualSize: this.virtualSize, fileSize: this.file.size };
  }
  async check(): Promise<CheckReport> {
    return { format: 'qcow2', verdict: 'clean', corruptions: 0, leaks: 0, problems: [] };
  }
  close(): Promise<void> {
    return this.file.close();
  }
}

function clusterContent(i: number): Buffer {
  // Moderately compressible: a text pattern with some random bytes mixed in.
  const b = Buffer.alloc(UNIT, `cluster ${i} lorem ipsum dolor sit amet `);
  randomBytes(UNIT / 8).copy(b, (i * 4096) % (UNIT - UNIT / 8));
  return b;
}

interface Fixture {
  image: FakeImage;
  source: CountingSource;
  expected: Buffer;
  clusters: Cluster[];
  path: string;
}

/** Builds the fake image file and the expected virtual content independently. */
async function buildFixture(dir: string, nClusters: number, tail: number, corruptCluster?: number): Promise<Fixture> {
  const parts: Buffer[] = [];
  let hostPos = 0;
  const put = (b: Buffer) => {
    parts.push(b);
    hostPos += b.length;
  };
  put(Buffer.alloc(4096, 0xee)); // a "header" so no data starts at host offset 0
  const clusters: Cluster[] = [];
  const virtualSize = nClusters * UNIT + tail;
  const expected = Buffer.alloc(virtualSize);
  const total = nClusters + (tail > 0 ? 1 : 0);
  for (let i = 0; i < total; i++) {
    const content = clusterContent(i);
    const last = i === nClusters;
    const r = last ? 0 : (i * 7919) % 10;
    let c: Cluster;
    if (last || r <= 2) {
      // Runs of host clusters, mostly contiguous; every 5th one leaves a gap in the file.
      if (i % 5 === 0) put(Buffer.alloc(512 * (1 + (i % 3)), 0xaa));
      c = { t: 'host', hostOffset: hostPos };
      put(content);
    } else if (r === 3) c = { t: 'zero' };
    else if (r === 4) c = { t: 'unalloc' };
    else {
      const codec: Codec = r <= 6 ? 'deflate' : r <= 8 ? 'zstd' : 'zlib';
      let comp = codec === 'deflate' ? deflateRawSync(content) : codec === 'zlib' ? deflateSync(content) : zstdCompress(content);
      if (i === corruptCluster) comp = Buffer.alloc(comp.length, 0xff);
      // An upper-bound length (qcow2-like sector rounding) that overlaps the next unit.
      c = { t: 'comp', codec, hostOffset: hostPos, length: comp.length + 300, split: i % 3 === 0 };
      put(comp);
    }
    clusters.push(c);
    if (c.t === 'host' || c.t === 'comp') content.copy(expected, i * UNIT, 0, Math.min(UNIT, virtualSize - i * UNIT));
  }
  // Some trailing metadata after the last unit (the compressed upper bounds reach into it).
  put(Buffer.alloc(100, 0x55));
  const path = join(dir, `fake-${nClusters}-${corruptCluster ?? 'ok'}.img`);
  writeFileSync(path, Buffer.concat(parts));
  const source = new CountingSource(await FileSource.open(path));
  const image = new FakeImage(path, virtualSize, (i) => clusters[i]!, source);
  return { image, source, expected, clusters, path };
}

async function collect(image: DiskImage, opts: StreamOptions = {}): Promise<{ buf: Buffer; chunks: VirtualChunk[] }> {
  const start = opts.offset ?? 0;
  const len = opts.length ?? image.virtualSize - start;
  const buf = Buffer.alloc(len);
  const chunks: VirtualChunk[] = [];
  let pos = start;
  for await (const c of streamVirtual(image, opts)) {
    assert.equal(c.offset, pos, 'chunks are in order and adjacent');
    assert.ok(c.length > 0);
    if (c.kind === 'data') {
      assert.ok(c.data, 'data chunks carry data');
      assert.equal(c.data.length, c.length);
      assert.ok(c.length <= (opts.chunkSize ?? 4 << 20), 'data chunk at most chunkSize');
      c.data.copy(buf, c.offset - start);
    } else {
      assert.equal(c.data, undefined, 'zero runs carry no data');
    }
    chunks.push({ offset: c.offset, length: c.length, kind: c.kind });
    pos += c.length;
  }
  assert.equal(pos, start + len, 'chunks cover the range exactly');
  return { buf, chunks };
}

const dir = mkdtempSync(join(tmpdir(), 'ferry-pipeline-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('streamVirtual equals readVirtual and the independently built content', async () => {
  const f = await buildFixture(dir, 700, 3 * 512);
  try {
    const viaRead = await readVirtual(f.image, 0, f.image.virtualSize);
    assert.ok(viaRead.equals(f.expected), 'readVirtual agrees with the fixture (fixture sanity)');
    for (const opts of [
      { chunkSize: 1 << 20, workers: 2 },
      { chunkSize: 4 << 20, workers: 0 },
      { chunkSize: 256 * 1024, workers: 1, maxInFlightBytes: 1 << 20 },
      { chunkSize: 1 << 20, workers: 2, minZeroRun: 128 * 1024 },
    ]) {
      const { buf, chunks } = await collect(f.image, opts);
      assert.ok(buf.equals(f.expected), `content equal with ${JSON.stringify(opts)}`);
      // Zero/unallocated runs are maximal: never two adjacent runs of the same kind.
      for (let i = 1; i < chunks.length; i++) {
        if (chunks[i]!.kind !== 'data') assert.notEqual(chunks[i]!.kind, chunks[i - 1]!.kind);
      }
      // Data chunks never cross the chunkSize grid.
      for (const c of chunks) {
        if (c.kind === 'data') assert.equal(Math.floor(c.offset / opts.chunkSize), Math.floor((c.offset + c.length - 1) / opts.chunkSize));
      }
      if (opts.minZeroRun === undefined) {
        // Without absorption, every zero/unallocated cluster shows up as a chunk kind.
        const kinds = new Set(chunks.map((c) => c.kind));
        assert.deepEqual([...kinds].sort(), ['data', 'unallocated', 'zero']);
      }
    }
    // Unaligned sub-ranges.
    for (const [off, len] of [
      [12345, 3 << 20],
      [UNIT * 7 + 100, UNIT * 3 - 50],
      [f.image.virtualSize - 1000, 1000],
      [5, 0],
    ] as const) {
      const { buf } = await collect(f.image, { offset: off, length: len, chunkSize: 1 << 20, workers: 2 });
      assert.ok(buf.equals(await readVirtual(f.image, off, len)), `range ${off}+${len}`);
    }
    assert.equal(activeWorkerCount(), 0, 'no workers left after the streams ended');
  } finally {
    await f.image.close();
  }
});

test('reads are coalesced and bounded by maxInFlightBytes', async () => {
  const f = await buildFixture(dir, 700, 0);
  try {
    // Build an all-host variant view: read the same file, count reads.
    const maxInFlight = 2 << 20;
    const { buf } = await collect(f.image, { chunkSize: 512 * 1024, workers: 2, maxInFlightBytes: maxInFlight });
    assert.ok(buf.equals(f.expected));
    assert.ok(f.source.maxInFlight <= maxInFlight, `at most ${maxInFlight} bytes being read at once (saw ${f.source.maxInFlight})`);
    const dataClusters = f.clusters.filter((c) => c.t === 'host' || c.t === 'comp').length;
    assert.ok(f.source.reads < dataClusters / 2, `coalesced: ${f.source.reads} reads for ${dataClusters} data clusters`);
  } finally {
    await f.image.close();
  }
});

test('checksumVirtual matches sha256 of the expected content', async () => {
  const f = await buildFixture(dir, 300, 512);
  try {
    const r = await checksumVirtual(f.image, { chunkSize: 1 << 20 });
    assert.equal(r.sha256, createHash('sha256').update(f.expected).digest('hex'));
    assert.equal(r.bytes, f.image.virtualSize);
    const dataBytes = f.clusters.reduce((n, c, i) => n + (c.t === 'host' || c.t === 'comp' ? Math.min(UNIT, f.image.virtualSize - i * UNIT) : 0), 0);
    assert.equal(r.dataBytes, dataBytes);
  } finally {
    await f.image.close();
  }
});

test('stopping early closes the worker pool', async () => {
  const f = await buildFixture(dir, 400, 0);
  try {
    let n = 0;
    for await (const c of streamVirtual(f.image, { chunkSize: 256 * 1024, workers: 2 })) {
      if (c.kind === 'data') n++;
      if (n === 3) {
        assert.ok(activeWorkerCount() > 0, 'workers run while streaming compressed data');
        break;
      }
    }
    assert.equal(activeWorkerCount(), 0, 'break closed the pool');
    // Explicit return() on a started generator.
    const g = streamVirtual(f.image, { chunkSize: 256 * 1024, workers: 2 });
    await g.next();
    await g.next();
    await g.return(undefined);
    assert.equal(activeWorkerCount(), 0, 'return() closed the pool');
    // An image without compressed segments never starts workers.
    const hostOnly = new FakeImage('host-only', 64 * UNIT, () => ({ t: 'host', hostOffset: 4096 }), f.source);
    for await (const c of streamVirtual(hostOnly, { chunkSize: UNIT * 4 })) {
      assert.equal(c.kind, 'data');
      assert.equal(activeWorkerCount(), 0, 'no workers for uncompressed images');
    }
  } finally {
    await f.image.close();
  }
});

test('a corrupted compressed unit is IMAGE_CORRUPT with its host and guest offsets', async () => {
  // Find a compressed cluster well inside the image and corrupt it.
  const probe = await buildFixture(dir, 200, 0);
  await probe.image.close();
  const victim = probe.clusters.findIndex((c, i) => i > 120 && c.t === 'comp' && c.codec === 'deflate');
  const f = await buildFixture(dir, 200, 0, victim);
  try {
    const c = f.clusters[victim]!;
    assert.equal(c.t, 'comp');
    for (const workers of [2, 0]) {
      await assert.rejects(
        async () => {
          for await (const _ of streamVirtual(f.image, { chunkSize: 1 << 20, workers })) {
            /* drain */
          }
        },
        (err: unknown) => {
          assert.ok(err instanceof FerryError, 'a FerryError');
          assert.equal(err.code, 'IMAGE_CORRUPT');
          assert.equal(err.details?.guestOffset, victim * UNIT);
          assert.equal(err.details?.hostOffset, c.t === 'comp' ? c.hostOffset : -1);
          assert.match(err.message, new RegExp(`host offset ${c.t === 'comp' ? c.hostOffset : -1} \\(guest offset ${victim * UNIT}\\)`));
          assert.ok(err.remedy.length > 0);
          return true;
        },
      );
      assert.equal(activeWorkerCount(), 0, 'the error closed the pool');
    }
    const progress: number[] = [];
    const r = await deepCheck(f.image, { onProgress: (p) => progress.push(p.position) });
    assert.equal(r.ok, false);
    if (!r.ok) {
      assert.equal(r.guestOffset, victim * UNIT);
      assert.equal(r.error.code, 'IMAGE_CORRUPT');
    }
    assert.ok(progress.length > 0 && progress.every((p) => p <= victim * UNIT), 'progress stops before the failure');
    assert.equal(activeWorkerCount(), 0);
  } finally {
    await f.image.close();
  }
});

test('deepCheck passes an intact image', async () => {
  const f = await buildFixture(dir, 150, 0);
  try {
    let last = 0;
    const r = await deepCheck(f.image, { onProgress: (p) => (last = p.position) });
    assert.equal(r.ok, true);
    assert.equal(last, f.image.virtualSize);
  } finally {
    await f.image.close();
  }
});

test('a truncated file is reported in virtual order with the guest offset', async () => {
  const f = await buildFixture(dir, 100, 0);
  await f.image.close();
  // Cut the file in the middle of the data; the image still maps past the end.
  const cutAt = Math.floor(f.source.size / 2);
  execFileSync('truncate', ['-s', String(cutAt), f.path]);
  const src = await FileSource.open(f.path);
  const image = new FakeImage(f.path, f.image.virtualSize, (i) => f.clusters[i]!, src);
  try {
    const r = await deepCheck(image, { workers: 2, chunkSize: 256 * 1024 });
    assert.equal(r.ok, false);
    if (!r.ok) {
      // A unit cut in its middle fails to decode (corrupt); one entirely past the cut is truncated.
      assert.ok(['IMAGE_TRUNCATED', 'IMAGE_CORRUPT'].includes(r.error.code), r.error.code);
      // The first cluster whose bytes lie past the cut.
      const first = f.clusters.findIndex((c) => (c.t === 'host' && c.hostOffset + UNIT > cutAt) || (c.t === 'comp' && c.hostOffset + c.length - 300 > cutAt));
      assert.ok(r.guestOffset <= first * UNIT && r.guestOffset >= Math.floor((first * UNIT) / (256 * 1024)) * 256 * 1024, `guest offset ${r.guestOffset} near cluster ${first}`);
    }
  } finally {
    await image.close();
  }
});

test('1 TiB mostly unallocated streams quickly with bounded memory', async () => {
  const f = await buildFixture(dir, 64, 0);
  try {
    const TiB = 2 ** 40;
    const dataAt = new Map<number, Cluster>();
    // A few data clusters scattered over the disk, taken from the small fixture.
    const picks = [0, 1, 2, Math.floor(TiB / UNIT / 2), TiB / UNIT - 1];
    picks.forEach((ci, k) => dataAt.set(ci, f.clusters.find((c, j) => j >= k * 7 && (c.t === 'host' || c.t === 'comp'))!));
    const image = new FakeImage('big', TiB, (i) => dataAt.get(i) ?? { t: 'unalloc' }, f.source);
    const rssBefore = process.memoryUsage().rss;
    const t0 = performance.now();
    let covered = 0;
    let chunks = 0;
    let dataBytes = 0;
    for await (const c of streamVirtual(image, { workers: 2 })) {
      chunks++;
      covered += c.length;
      if (c.data) dataBytes += c.length;
    }
    const ms = performance.now() - t0;
    assert.equal(covered, TiB);
    assert.equal(dataBytes, picks.length * UNIT);
    assert.ok(chunks <= 2 * picks.length + 1, `${chunks} chunks: unallocated runs are not split`);
    assert.ok(ms < 10_000, `took ${ms} ms`);
    assert.ok(image.mapCalls < 20_000, `${image.mapCalls} map() calls`);
    assert.ok(process.memoryUsage().rss - rssBefore < 200 * 1024 * 1024, 'bounded memory');
  } finally {
    await f.image.close();
  }
});

test('invalid options are USAGE errors', async () => {
  const f = await buildFixture(dir, 4, 0);
  try {
    for (const opts of [{ offset: -1 }, { length: f.image.virtualSize + 1 }, { chunkSize: 0 }, { workers: -1 }]) {
      await assert.rejects(streamVirtual(f.image, opts).next(), (e: unknown) => e instanceof FerryError && e.code === 'USAGE');
    }
  } finally {
    await f.image.close();
  }
});
