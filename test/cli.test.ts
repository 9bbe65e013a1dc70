// The `ferry` command as users run it (bin/ferry.js in a child process): one JSON document with
// --json, {"error": {code, message, remedy}} and the documented exit code on failure, never a stack
// trace, and check's exit codes (0 healthy, 2 corrupt) like qemu-img check.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImage } from '../src/image/open.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
let dir = '';
let raw = '';

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

function ferry(...args: string[]): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, FERRY_DEBUG: '' } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function json(r: Ran): Record<string, unknown> {
  try {
    return JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    assert.fail(`stdout is not one JSON document: ${r.stdout.slice(0, 300)} / stderr ${r.stderr.slice(0, 300)}`);
  }
}

function noStack(r: Ran): void {
  assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+:\d+:\d+/, 'a stack trace was printed');
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
  raw = join(dir, 'disk.raw');
  // 32 MiB: an MBR with one Linux partition, text, random data and a zero hole.
  const buf = Buffer.alloc(32 << 20);
  let x = 99;
  for (let i = 4 << 20; i < 6 << 20; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    buf[i] = x >>> 24;
  }
  buf.write('Ferry CLI test. '.repeat(10000), 8 << 20);
  writeFileSync(raw, buf);
  execFileSync('sfdisk', ['-q', raw], { input: 'label: dos\nstart=2048, size=40000, type=83\n' });
  execFileSync('qemu-img', ['convert', '-c', '-O', 'qcow2', raw, join(dir, 'disk.qcow2')]);
});

after(() => rmSync(dir, { recursive: true, force: true }));

test('image info --json prints one document with format, sizes and partitions', () => {
  const r = ferry('image', 'info', '--json', join(dir, 'disk.qcow2'));
  assert.equal(r.code, 0, r.stderr);
  const d = json(r);
  assert.equal(d.format, 'qcow2');
  assert.equal(d.subformat, 'v3');
  assert.equal(d.virtualSize, 32 << 20);
  const pt = d.partitionTable as { type: string; partitions: { typeName: string; startSector: number }[] };
  assert.equal(pt.type, 'mbr');
  assert.equal(pt.partitions[0]?.startSector, 2048);
  assert.ok((d.compressedBytes as number) > 0, 'compressed clusters are counted');
});

test('image info text names format, size and partition type', () => {
  const r = ferry('image', 'info', join(dir, 'disk.qcow2'));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /format:\s+qcow2 \(v3\)/);
  assert.match(r.stdout, /virtual size:\s+32 MiB \(33554432 bytes\)/);
  assert.match(r.stdout, /partitions \(MBR/);
});

test('image checksum equals sha256 of the raw disk, in any format', () => {
  const want = createHash('sha256').update(readFileSync(raw)).digest('hex');
  for (const f of ['disk.raw', 'disk.qcow2']) {
    const r = ferry('image', 'checksum', '--json', join(dir, f));
    assert.equal(r.code, 0, r.stderr);
    assert.equal(json(r).sha256, want, f);
  }
  const text = ferry('image', 'checksum', join(dir, 'disk.qcow2'));
  assert.equal(text.stdout.split(/\s+/)[0], want);
});

test('image map --json covers the disk with ordered extents', () => {
  const r = ferry('image', 'map', '--json', join(dir, 'disk.qcow2'));
  assert.equal(r.code, 0, r.stderr);
  const d = json(r) as { extents: { offset: number; length: number; kind: string }[]; virtualSize: number };
  let pos = 0;
  for (const e of d.extents) {
    assert.equal(e.offset, pos);
    pos += e.length;
  }
  assert.equal(pos, d.virtualSize);
  assert.ok(d.extents.some((e) => e.kind === 'data') && d.extents.some((e) => e.kind !== 'data'));
});

test('image check: healthy is exit 0; a corrupted compressed cluster is exit 2 with --deep, naming the guest offset', async () => {
  const good = ferry('image', 'check', '--deep', join(dir, 'disk.qcow2'));
  assert.equal(good.code, 0, good.stdout + good.stderr);
  assert.match(good.stdout, /no errors were found/);
  // Damage compressed data in the middle of the file: structure stays valid, data does not decode.
  const bad = join(dir, 'bad.qcow2');
  writeFileSync(bad, readFileSync(join(dir, 'disk.qcow2')));
  const host = await compressedHostOffset(bad, 8 << 20);
  const fd = openSync(bad, 'r+');
  writeSync(fd, Buffer.alloc(64, 0xa5), 0, 64, host + 8);
  closeSync(fd);
  const shallow = ferry('image', 'check', '--json', bad);
  assert.equal(shallow.code, 0, 'the structure is intact: a shallow check cannot see it');
  const deep = ferry('image', 'check', '--deep', '--json', bad);
  noStack(deep);
  assert.equal(deep.code, 2, deep.stdout);
  const d = json(deep) as { verdict: string; deep: { ok: boolean; guestOffset: number } };
  assert.equal(d.verdict, 'corrupt');
  assert.equal(d.deep.ok, false);
  assert.equal(d.deep.guestOffset, 8 << 20);
});

/** Host offset of the compressed cluster holding virtual offset `at` (found with the library). */
async function compressedHostOffset(path: string, at: number): Promise<number> {
  const img = await openImage(path);
  try {
    const [seg] = await img.map(at, 512);
    assert.equal(seg?.source.type, 'compressed', 'the test disk must have a compressed cluster there');
    return seg.source.type === 'compressed' ? seg.source.offset : 0;
  } finally {
    await img.close();
  }
}

test('failures: JSON error document, documented exit codes, no stack trace', () => {
  const cases: [args: string[], code: number, errorCode: string][] = [
    [['image', 'info', '--json', join(dir, 'missing.qcow2')], 5, 'FILE_NOT_FOUND'],
    [['image', 'info', '--json', dir], 5, 'IO_ERROR'],
    [['image', 'info', '--json', '--format', 'vmdk', join(dir, 'disk.qcow2')], 4, 'IMAGE_FORMAT_MISMATCH'],
    [['image', 'info', '--json', '--format', 'nope', join(dir, 'disk.qcow2')], 64, 'USAGE'],
    [['image', 'frobnicate', '--json'], 64, 'USAGE'],
  ];
  writeFileSync(join(dir, 'notes.txt'), 'hello\n');
  cases.push([['image', 'check', '--json', join(dir, 'notes.txt')], 4, 'IMAGE_UNKNOWN_FORMAT']);
  for (const [args, code, errorCode] of cases) {
    const r = ferry(...args);
    noStack(r);
    assert.equal(r.code, code, `${args.join(' ')}: exit ${r.code}: ${r.stdout}${r.stderr}`);
    const e = json(r).error as { code: string; message: string; remedy: string };
    assert.equal(e.code, errorCode, args.join(' '));
    assert.ok(e.message.length > 0 && e.remedy.length > 0);
  }
  const text = ferry('image', 'info', join(dir, 'missing.qcow2'));
  assert.equal(text.stdout, '');
  assert.match(text.stderr, /^ferry: error \[FILE_NOT_FOUND\]: .*\n {2}remedy: /);
});

test('no command prints the usage and exits 64; --help exits 0', () => {
  const none = ferry();
  assert.equal(none.code, 64);
  assert.match(none.stdout + none.stderr, /Usage: ferry/);
  const help = ferry('image', 'info', '--help');
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--allow-backing/);
});
