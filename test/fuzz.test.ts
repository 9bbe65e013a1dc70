// Hostile images: property-based mutation of real images (made by qemu-img) with a fixed seed.
// Whatever the damage, opening, info, check, map and reading must end with either success or a
// FerryError — never another exception (a crash), never a hang, never a memory blow-up.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, openSync, closeSync, readSync, rmSync, statSync, truncateSync, writeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { FerryError } from '../src/errors.js';
import { openImage } from '../src/image/open.js';
import { readVirtual } from '../src/image/read.js';
import { extents } from '../src/image/extents.js';

const SEED = 20261125;
const RUNS = Number(process.env.FERRY_FUZZ_RUNS ?? 120);
const CASE_TIMEOUT_MS = 10_000;
const MEMORY_LIMIT = 256 * 1024 * 1024;
/** Only this much of a (possibly absurdly large) virtual disk is walked and read per case. */
const READ_LIMIT = 16 * 1024 * 1024;

let dir = '';
const bases: { name: string; path: string }[] = [];
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-fuzz-'));
  // A 4 MiB disk with text, random and zero regions.
  const raw = join(dir, 'src.raw');
  const buf = Buffer.alloc(4 << 20);
  let x = 12345;
  for (let i = 1 << 20; i < 2 << 20; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    buf[i] = x >>> 24;
  }
  buf.write('Ferry fuzz base image. '.repeat(2000), 3 << 20);
  writeFileSync(raw, buf);
  const make = (name: string, args: string[]) => {
    const path = join(dir, name);
    sh('qemu-img', ['convert', ...args, raw, path]);
    bases.push({ name, path });
  };
  make('v3.qcow2', ['-O', 'qcow2']);
  make('v2-512.qcow2', ['-O', 'qcow2', '-o', 'compat=0.10,cluster_size=512']);
  make('zlib.qcow2', ['-c', '-O', 'qcow2']);
  make('zstd.qcow2', ['-c', '-O', 'qcow2', '-o', 'compression_type=zstd']);
  make('l2ext.qcow2', ['-O', 'qcow2', '-o', 'extended_l2=on']);
  make('dynamic.vhd', ['-O', 'vpc', '-o', 'subformat=dynamic']);
  make('fixed.vhd', ['-O', 'vpc', '-o', 'subformat=fixed']);
  make('sparse.vmdk', ['-O', 'vmdk', '-o', 'subformat=monolithicSparse']);
  make('stream.vmdk', ['-O', 'vmdk', '-o', 'subformat=streamOptimized']);
});

after(() => rmSync(dir, { recursive: true, force: true }));

interface Mutation {
  /** Fraction of the metadata-heavy region (first 64 KiB, last 2 KiB) or the whole file. */
  where: number;
  region: 'head' | 'tail' | 'any';
  kind: 'byte' | 'u32' | 'u64';
  value: bigint;
}

// Positions and truncation points are uniform integers (fast-check's doubles favour extremes
// such as 0, which would mostly hit the magic number or empty the file).
const FRACTION = 1_000_000;
const fraction = fc.integer({ min: 0, max: FRACTION - 1 }).map((n) => n / FRACTION);

const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  where: fraction,
  region: fc.constantFrom('head', 'head', 'tail', 'any'),
  kind: fc.constantFrom('byte', 'u32', 'u64'),
  value: fc.oneof(
    fc.constantFrom(0n, 1n, 0x7fn, 0x80n, 0xffn, 0xffffffffn, 0x7fffffffffffffffn, 0xffffffffffffffffn, 0x200n, 0x10000n),
    fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }),
  ),
});

const caseArb = fc.record({
  mutations: fc.array(mutationArb, { minLength: 1, maxLength: 6 }),
  truncateTo: fc.oneof({ arbitrary: fc.constant(null), weight: 4 }, { arbitrary: fraction, weight: 1 }),
});

function applyCase(src: string, dst: string, c: { mutations: Mutation[]; truncateTo: number | null }): void {
  copyFileSync(src, dst);
  const size = statSync(dst).size;
  const fd = openSync(dst, 'r+');
  try {
    for (const m of c.mutations) {
      const width = m.kind === 'byte' ? 1 : m.kind === 'u32' ? 4 : 8;
      const span = m.region === 'head' ? Math.min(size, 65536) : m.region === 'tail' ? Math.min(size, 2048) : size;
      const base = m.region === 'tail' ? size - span : 0;
      const pos = Math.min(size - width, base + Math.floor(m.where * span));
      if (pos < 0) continue;
      const b = Buffer.alloc(width);
      // Endianness at random-ish: qcow2/VHD are big-endian, VMDK little-endian.
      if (width === 1) b[0] = Number(m.value & 0xffn);
      else if (width === 4) (m.value & 1n ? b.writeUInt32LE.bind(b) : b.writeUInt32BE.bind(b))(Number(m.value & 0xffffffffn));
      else (m.value & 1n ? b.writeBigUInt64LE.bind(b) : b.writeBigUInt64BE.bind(b))(m.value);
      writeSync(fd, b, 0, width, pos);
    }
  } finally {
    closeSync(fd);
  }
  if (c.truncateTo !== null) truncateSync(dst, Math.floor(c.truncateTo * size));
}

/** Runs everything a user can do with an image; returns normally or throws a FerryError. */
async function exercise(path: string): Promise<void> {
  const image = await openImage(path);
  try {
    await image.info();
    const report = await image.check();
    assert.ok(['clean', 'leaks', 'corrupt'].includes(report.verdict));
    const limit = Math.min(image.virtualSize, READ_LIMIT);
    let walked = 0;
    for await (const e of extents(image, 0, limit)) walked += e.length;
    assert.equal(walked, limit);
    for (let off = 0; off < limit; off += 1 << 20) await readVirtual(image, off, Math.min(1 << 20, limit - off));
    if (image.virtualSize > limit) await readVirtual(image, image.virtualSize - 512, 512);
  } finally {
    await image.close();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: ${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

test('mutated and truncated images never crash, hang or exhaust memory', async (t) => {
  const baseline = process.memoryUsage().rss;
  let peak = baseline;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  const outcomes: Record<string, { ok: number; ferryError: Record<string, number> }> = {};
  try {
    for (const base of bases) {
      const stats: { ok: number; ferryError: Record<string, number> } = { ok: 0, ferryError: {} };
      outcomes[base.name] = stats;
      const target = join(dir, `mut-${base.name}`);
      // The unmutated image must work, or the property says nothing.
      await exercise(base.path);
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          applyCase(base.path, target, c);
          try {
            await withTimeout(exercise(target), CASE_TIMEOUT_MS, base.name);
            stats.ok++;
          } catch (err) {
            if (!(err instanceof FerryError)) {
              const head = Buffer.alloc(16);
              const fd = openSync(target, 'r');
              readSync(fd, head, 0, 16, 0);
              closeSync(fd);
              throw new Error(`${base.name}: not a FerryError: ${(err as Error)?.stack ?? String(err)}`);
            }
            stats.ferryError[err.code] = (stats.ferryError[err.code] ?? 0) + 1;
          }
          peak = Math.max(peak, process.memoryUsage().rss);
          assert.ok(peak - baseline < MEMORY_LIMIT, `memory grew by ${peak - baseline} bytes on ${base.name}`);
        }),
        { seed: SEED, numRuns: RUNS, endOnFailure: true },
      );
    }
  } finally {
    clearInterval(sampler);
  }
  for (const [name, s] of Object.entries(outcomes)) t.diagnostic(`${name}: ${s.ok} readable, errors ${JSON.stringify(s.ferryError)}`);
  t.diagnostic(`peak RSS growth: ${Math.round((peak - baseline) / 1048576)} MiB`);
});
