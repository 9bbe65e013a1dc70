// The VHD (vpc) driver against qemu-img 7.2: content (SHA-256 of the whole virtual disk), virtual
// size (including qemu's CHS / current_size rule), map, for fixed and dynamic images made by qemu;
// a hand-built differencing disk over a qemu-made parent; and damaged / hostile images.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync, openSync, writeSync, closeSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../src/errors.js';
import { openImage } from '../src/image/open.js';
import { readVirtual } from '../src/image/read.js';
import { extents } from '../src/image/extents.js';
import type { DiskImage, OpenOptions } from '../src/image/types.js';
import { vhdChecksum } from '../src/image/vhd/footer.js';
import { buildDiff, type DiffSpec } from './corpus/vhd-diff.js';

const MiB = 1024 * 1024;
let dir = '';
const p = (name: string) => join(dir, name);
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-vhd-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

function qemuSha(file: string, fmt = 'vpc'): string {
  const out = p(`qemu-${Math.random().toString(36).slice(2)}.raw`);
  sh('qemu-img', ['convert', '-f', fmt, '-O', 'raw', file, out]);
  const h = sha(readFileSync(out));
  rmSync(out);
  return h;
}

async function ferrySha(img: DiskImage): Promise<string> {
  const h = createHash('sha256');
  for (let pos = 0; pos < img.virtualSize; pos += 4 * MiB) h.update(await readVirtual(img, pos, Math.min(4 * MiB, img.virtualSize - pos)));
  return h.digest('hex');
}

interface Run {
  start: number;
  length: number;
  kind: string;
  depth: number;
}

function normalize(runs: Run[]): Run[] {
  const out: Run[] = [];
  for (const r of runs) {
    const prev = out[out.length - 1];
    if (prev && prev.kind === r.kind && prev.depth === r.depth && prev.start + prev.length === r.start) prev.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

function qemuMap(file: string, fmt = 'vpc'): Run[] {
  const j = JSON.parse(sh('qemu-img', ['map', '-f', fmt, '--output=json', file])) as {
    start: number;
    length: number;
    depth: number;
    present: boolean;
    zero: boolean;
    data: boolean;
  }[];
  return normalize(j.map((e) => ({ start: e.start, length: e.length, depth: e.depth, kind: e.data ? 'data' : !e.present ? 'unallocated' : 'zero' })));
}

async function ferryMap(img: DiskImage): Promise<Run[]> {
  const runs: Run[] = [];
  for await (const e of extents(img)) runs.push({ start: e.offset, length: e.length, kind: e.kind, depth: e.depth });
  return normalize(runs);
}

function qemuSize(file: string, fmt = 'vpc'): number {
  return (JSON.parse(sh('qemu-img', ['info', '-f', fmt, '--output=json', file])) as { 'virtual-size': number })['virtual-size'];
}

async function withImage<T>(file: string, fn: (img: DiskImage) => Promise<T>, options: OpenOptions = {}): Promise<T> {
  const img = await openImage(file, options);
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}

async function openError(file: string, options: OpenOptions = {}): Promise<FerryError> {
  try {
    const img = await openImage(file, options);
    await img.close();
  } catch (err) {
    assert.ok(err instanceof FerryError, `expected a FerryError, got ${String(err)}`);
    return err;
  }
  assert.fail(`${file} opened, but it should have been refused`);
}

/** Compares content, virtual size and map of `file` with qemu's view. */
async function sameAsQemu(file: string): Promise<void> {
  await withImage(file, async (img) => {
    assert.equal(img.format, 'vpc');
    assert.equal(img.virtualSize, qemuSize(file), 'virtual size');
    assert.equal(await ferrySha(img), qemuSha(file), 'content');
    assert.deepEqual(await ferryMap(img), qemuMap(file), 'map');
    const report = await img.check();
    assert.equal(report.verdict, 'clean', JSON.stringify(report.problems));
  });
}

function patch(file: string, at: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, bytes, 0, bytes.length, at);
  closeSync(fd);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** Recomputes the footer checksum of the 512 bytes at `at` and the dynamic header checksum at `hdr`. */
function fixChecksums(file: string, footers: number[], hdr?: number): void {
  const buf = readFileSync(file);
  for (const at of footers) patch(file, at + 64, u32(vhdChecksum(buf.subarray(at, at + 512), 64)));
  if (hdr !== undefined) patch(file, hdr + 36, u32(vhdChecksum(buf.subarray(hdr, hdr + 1024), 36)));
}

/** A raw file with random and zero regions (size not a multiple of the CHS granularity). */
function makeRaw(name: string, size: number): string {
  const buf = Buffer.alloc(size);
  randomBytes(3 * MiB).copy(buf, 0);
  randomBytes(MiB + 4096).copy(buf, 7 * MiB + 512);
  randomBytes(512).copy(buf, size - 512);
  writeFileSync(p(name), buf);
  return p(name);
}

test('dynamic VHD written by qemu-io: content, size, map, clean check, info', async () => {
  const f = p('dyn.vhd');
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', f, '10M']);
  sh('qemu-io', ['-f', 'vpc', '-c', 'write -P 0xab 1M 3M', f]);
  await sameAsQemu(f);
  await withImage(f, async (img) => {
    const info = await img.info();
    assert.equal(info.subformat, 'dynamic');
    assert.equal(info.clusterSize, 2 * MiB);
    assert.equal(info.details?.creatorApplication, 'qemu');
    assert.equal(info.details?.sizeRule, 'chs');
    assert.equal(info.fileSize, statSync(f).size);
    assert.equal(info.warnings, undefined);
    const b = await readVirtual(img, MiB - 1, 2);
    assert.deepEqual([...b], [0, 0xab]);
  });
});

for (const sub of ['fixed', 'dynamic']) {
  for (const force of [false, true]) {
    test(`qemu-img convert -O vpc subformat=${sub}${force ? ' force_size=on' : ''}: same as qemu`, async () => {
      const raw = makeRaw(`src-${sub}-${force}.raw`, 10 * MiB + 3 * 512 * 1000);
      const f = p(`conv-${sub}-${force}.vhd`);
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', `subformat=${sub}${force ? ',force_size=on' : ''}`, raw, f]);
      await sameAsQemu(f);
      await withImage(f, async (img) => {
        assert.equal((await img.info()).subformat, sub);
        if (force) assert.equal(img.virtualSize, statSync(raw).size);
      });
    });
  }
}

test('fixed VHD is detected by its footer in the last 512 bytes (no --format)', async () => {
  const f = p('fixed-created.vhd');
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', f, '5M']);
  sh('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x11 512 4096', f]);
  await sameAsQemu(f);
});

test('creator application decides CHS vs current_size as qemu does', async () => {
  const base = p('creator-base.vhd');
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', base, '10M']);
  const size = statSync(base).size;
  // qemu-made: current_size equals the CHS size; make current_size differ to tell the rules apart.
  for (const app of ['win ', 'tap\0', 'd2v ', 'CTXS', 'qem2', 'vpc ', 'vbox']) {
    const f = p(`creator-${app.replace('\0', '0').trim()}.vhd`);
    copyFileSync(base, f);
    for (const at of [0, size - 512]) {
      patch(f, at + 28, Buffer.from(app, 'latin1'));
      patch(f, at + 48, Buffer.from([0, 0, 0, 0, 0, 0xa0, 0x10, 0x00])); // current_size 10489856
    }
    fixChecksums(f, [0, size - 512]);
    const expected = qemuSize(f);
    await withImage(f, async (img) => assert.equal(img.virtualSize, expected, `creator '${app}'`));
    assert.equal(expected === 10489856, ['win ', 'tap\0', 'd2v ', 'CTXS', 'qem2'].includes(app), `qemu's rule for '${app}'`);
  }
});

// ---- differencing -------------------------------------------------------------------------------

function diffParent(): { parent: string; parentRaw: Buffer } {
  const parent = p('parent.vhd');
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', parent, '9M']);
  sh('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 0 3M', '-c', 'write -P 0x77 6M 1M', parent]);
  const out = p('parent-flat.raw');
  sh('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', parent, out]);
  const parentRaw = readFileSync(out);
  rmSync(out);
  return { parent, parentRaw };
}

const w2ru = (s: string) => Buffer.from(s, 'utf16le');

test('differencing VHD over a qemu-made parent: per-sector composition, map depth, info', async () => {
  const { parent, parentRaw } = diffParent();
  const blockSize = 2 * MiB;
  const blocks = new Map([
    [0, { sectors: [0, 1, 2, 3, 8, 100], fill: 0xc1 }],
    [2, { sectors: Array.from({ length: 64 }, (_, i) => i * 2), fill: 0xc2 }], // alternating, over parent data (0x5a) at 4M..
    [4, { sectors: [700], fill: 0xc3 }], // one sector of a block the parent lacks
  ]);
  const child = p('child.vhd');
  writeFileSync(child, buildDiff({ parent, parentName: 'parent.vhd', locators: [{ code: 'W2ru', data: w2ru('.\\parent.vhd') }], blocks }));
  const expected = Buffer.from(parentRaw);
  for (const [bi, b] of blocks) for (const sec of b.sectors) expected.fill(b.fill, bi * blockSize + sec * 512, bi * blockSize + sec * 512 + 512);

  await withImage(
    child,
    async (img) => {
      assert.equal(img.virtualSize, parentRaw.length);
      assert.equal(await ferrySha(img), sha(expected));
      const info = await img.info();
      assert.equal(info.subformat, 'differencing');
      assert.equal(info.backing?.path, 'parent.vhd');
      const runs = await ferryMap(img);
      assert.deepEqual(runs.slice(0, 3), [
        { start: 0, length: 2048, kind: 'data', depth: 0 },
        { start: 2048, length: 2048, kind: 'data', depth: 1 },
        { start: 4096, length: 512, kind: 'data', depth: 0 },
      ]);
      // Block 4 (8M..): the parent has no block there (zero at depth 1), one sector comes from the child.
      assert.deepEqual(
        runs.filter((r) => r.start >= 8 * MiB),
        [
          { start: 8 * MiB, length: 700 * 512, kind: 'zero', depth: 1 },
          { start: 8 * MiB + 700 * 512, length: 512, kind: 'data', depth: 0 },
          { start: 8 * MiB + 701 * 512, length: img.virtualSize - (8 * MiB + 701 * 512), kind: 'zero', depth: 1 },
        ],
      );
      // Where the child has no block, the parent's map shows through at depth 1 (qemu's view of the parent).
      const parentRuns = qemuMap(parent).map((r) => ({ ...r, depth: 1 }));
      assert.deepEqual(
        runs.filter((r) => r.start >= 6 * MiB && r.start < 8 * MiB),
        parentRuns.filter((r) => r.start >= 6 * MiB && r.start < 8 * MiB),
      );
      assert.equal((await img.check()).verdict, 'clean', JSON.stringify((await img.check()).problems));
    },
    { allowBacking: true },
  );
});

test('differencing VHD: refused without allowBacking, hostile parent paths refused, UUID mismatch', async () => {
  const { parent } = diffParent();
  const blocks = new Map([[0, { sectors: [0], fill: 1 }]]);
  const make = (name: string, spec: Partial<DiffSpec>) => {
    writeFileSync(p(name), buildDiff({ parent, blocks, ...spec }));
    return p(name);
  };
  const ok = make('c-ok.vhd', { parentName: 'parent.vhd', locators: [{ code: 'W2ru', data: w2ru('.\\parent.vhd') }] });
  assert.equal((await openError(ok)).code, 'IMAGE_BACKING_REFUSED');
  const abs = make('c-abs.vhd', { locators: [{ code: 'W2ru', data: w2ru('/etc/passwd') }] });
  assert.equal((await openError(abs, { allowBacking: true })).code, 'IMAGE_PATH_REFUSED');
  const up = make('c-up.vhd', { parentName: '..\\x', locators: [{ code: 'W2ku', data: w2ru('C:\\vms\\nothere.vhd') }] });
  assert.equal((await openError(up, { allowBacking: true })).code, 'IMAGE_PATH_REFUSED');
  const mac = make('c-mac.vhd', { locators: [{ code: 'MacX', data: Buffer.from('file:///etc/passwd') }] });
  assert.equal((await openError(mac, { allowBacking: true })).code, 'IMAGE_PATH_REFUSED');
  // A Windows absolute locator falls back to the same name next to the child.
  const win = make('c-win.vhd', { locators: [{ code: 'W2ku', data: w2ru('D:\\Hyper-V\\parent.vhd') }] });
  await withImage(win, async (img) => assert.equal((await img.info()).backing?.path, 'parent.vhd'), { allowBacking: true });
  const wrong = make('c-uuid.vhd', { parentName: 'parent.vhd', parentUuid: randomBytes(16) });
  const err = await openError(wrong, { allowBacking: true });
  assert.equal(err.code, 'IMAGE_CORRUPT');
  assert.match(err.message, /unique id/);
  const missing = make('c-missing.vhd', { parentName: 'gone.vhd' });
  assert.equal((await openError(missing, { allowBacking: true })).code, 'IMAGE_BACKING_MISSING');
});

// ---- damage ---------------------------------------------------------------------------------------

function dataImage(name: string): { file: string; content: string } {
  const f = p(name);
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', f, '8M']);
  sh('qemu-io', ['-f', 'vpc', '-c', 'write -P 0xab 0 5M', f]);
  return { file: f, content: qemuSha(f) };
}

async function checkOf(file: string) {
  return withImage(file, (img) => img.check());
}

test('truncated dynamic VHD: check reports expected vs actual size, reading fails with IMAGE_TRUNCATED', async () => {
  const { file } = dataImage('trunc.vhd');
  const full = statSync(file).size;
  truncateSync(file, full - MiB);
  const report = await checkOf(file);
  assert.equal(report.verdict, 'corrupt');
  assert.ok(report.problems.some((x) => /no footer at the end/.test(x.message)));
  assert.ok(report.problems.some((x) => /truncated: it needs at least \d+ bytes but has \d+/.test(x.message) && x.field === 'BAT[2]'), JSON.stringify(report.problems));
  await withImage(file, async (img) => {
    await assert.rejects(readVirtual(img, 0, img.virtualSize), (e: FerryError) => e.code === 'IMAGE_TRUNCATED');
    assert.ok(((await img.info()).warnings ?? []).some((w) => /no footer at the end/.test(w)));
  });
});

test('BAT entry past EOF is corruption; reading it is IMAGE_TRUNCATED', async () => {
  const { file } = dataImage('batpast.vhd');
  patch(file, 1536 + 4, u32(0x00800000));
  const report = await checkOf(file);
  assert.equal(report.verdict, 'corrupt');
  assert.ok(report.problems.some((x) => x.field === 'BAT[1]' && /past the end/.test(x.message)));
  await withImage(file, async (img) => {
    assert.deepEqual([...(await readVirtual(img, 0, 1))], [0xab]);
    await assert.rejects(readVirtual(img, 2 * MiB, 512), (e: FerryError) => e.code === 'IMAGE_TRUNCATED');
  });
});

test('overlapping blocks are corruption', async () => {
  const { file } = dataImage('overlap.vhd');
  const first = readFileSync(file).readUInt32BE(1536);
  patch(file, 1536 + 4, u32(first + 8));
  const report = await checkOf(file);
  assert.equal(report.verdict, 'corrupt');
  assert.ok(report.problems.some((x) => /overlaps block 0/.test(x.message)), JSON.stringify(report.problems));
});

test('broken footer checksum: qemu refuses, Ferry reads with a warning, check says corrupt', async () => {
  const { file, content } = dataImage('badsum.vhd');
  const size = statSync(file).size;
  for (const at of [0, size - 512]) patch(file, at + 100, Buffer.from([1]));
  assert.throws(() => sh('qemu-img', ['info', '-f', 'vpc', file]), /Incorrect header checksum/);
  await withImage(file, async (img) => {
    assert.equal(await ferrySha(img), content);
    assert.ok(((await img.info()).warnings ?? []).some((w) => /checksum/.test(w)));
    const report = await img.check();
    assert.equal(report.verdict, 'corrupt');
    assert.ok(report.problems.some((x) => x.field === 'footer.checksum' && x.offset === 64));
  });
  // Only the copy at 0 damaged: the end footer is used.
  const g = dataImage('badsum0.vhd');
  patch(g.file, 100, Buffer.from([1]));
  await withImage(g.file, async (img) => {
    assert.equal(await ferrySha(img), g.content);
    assert.ok(((await img.info()).warnings ?? []).some((w) => /using the footer at the end/.test(w)));
    assert.equal((await img.check()).verdict, 'corrupt');
  });
  // A fixed disk with a broken footer checksum.
  const fx = p('badsum-fixed.vhd');
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', fx, '4M']);
  patch(fx, statSync(fx).size - 512 + 100, Buffer.from([1]));
  await withImage(fx, async (img) => {
    assert.equal((await img.info()).subformat, 'fixed');
    assert.equal((await img.check()).verdict, 'corrupt');
  });
});

test('broken dynamic-header checksum: qemu ignores it, Ferry reads, warns, check says corrupt', async () => {
  const { file, content } = dataImage('badhdr.vhd');
  patch(file, 512 + 900, Buffer.from([7]));
  assert.equal(qemuSha(file), content);
  await withImage(file, async (img) => {
    assert.equal(await ferrySha(img), content);
    const report = await img.check();
    assert.equal(report.verdict, 'corrupt');
    assert.ok(report.problems.some((x) => x.field === 'dynamic_header.checksum'));
  });
});

test('absurd max_table_entries and block size', async () => {
  const a = dataImage('absurd-bat.vhd');
  patch(a.file, 512 + 28, u32(0x7fffffff));
  fixChecksums(a.file, [], 512);
  const report = await checkOf(a.file);
  assert.equal(report.verdict, 'corrupt');
  assert.ok(report.problems.some((x) => x.field === 'dynamic_header.max_table_entries' && /extends past/.test(x.message)));
  const b = dataImage('absurd-bs.vhd');
  patch(b.file, 512 + 32, u32(3000));
  fixChecksums(b.file, [], 512);
  const err = await openError(b.file);
  assert.equal(err.code, 'IMAGE_CORRUPT');
  assert.match(err.message, /block_size 3000/);
  const c = dataImage('tiny-bat.vhd');
  patch(c.file, 512 + 28, u32(1));
  fixChecksums(c.file, [], 512);
  assert.match((await openError(c.file)).message, /max_table_entries 1/);
});

test('fixed VHD whose footer claims more than the file holds', async () => {
  const f = p('short-fixed.vhd');
  sh('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed,force_size=on', f, '4M']);
  const at = statSync(f).size - 512;
  patch(f, at + 48, Buffer.from([0, 0, 0, 0, 0, 0x80, 0, 0])); // current_size 8 MiB
  fixChecksums(f, [at]);
  const report = await checkOf(f);
  assert.equal(report.verdict, 'corrupt');
  assert.ok(report.problems.some((x) => /file too short for a fixed disk/.test(x.message)));
  await withImage(f, async (img) => {
    await assert.rejects(readVirtual(img, 0, img.virtualSize), (e: FerryError) => e.code === 'IMAGE_TRUNCATED');
  });
});
