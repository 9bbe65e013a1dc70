// `ferry import` end to end against the real S3 server (Swift with s3api): images uploaded by Ferry
// in each format are imported onto a file target and onto a loop block device and compared with
// the source disk; every failure class stops before writing with its own code: unsupported
// formats (VHDX, VDI, ISO, unknown), a truncated object, data damaged in storage (the manifest),
// a missing object, wrong credentials, and unusable targets (missing, too small, read-only,
// mounted).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, readSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { startS3Server, type S3Server } from './s3-server.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const BUCKET = 'ferry-import';
const MiB = 1024 * 1024;
let s3: S3Server;
let dir = '';
let raw = '';
const loops: string[] = [];
const mounts: string[] = [];

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ferry(env: Record<string, string>, ...args: string[]): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env, FERRY_DEBUG: '' }, timeout: 240_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function errorOf(r: Ran): { code: string; message: string; remedy: string; details?: Record<string, unknown> } {
  assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+:\d+:\d+/, 'a stack trace was printed');
  try {
    return (JSON.parse(r.stdout) as { error: { code: string; message: string; remedy: string } }).error;
  } catch {
    assert.fail(`no JSON error (exit ${r.code}): ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
  }
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function readDevice(dev: string, length: number): Buffer {
  const fd = openSync(dev, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) done += readSync(fd, buf, done, length - done, done);
    return buf;
  } finally {
    closeSync(fd);
  }
}

function loopDevice(name: string, size: number): string {
  const file = join(dir, name);
  writeFileSync(file, Buffer.alloc(size, 0xee));
  const dev = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  loops.push(dev);
  return dev;
}

async function put(key: string, body: Buffer): Promise<void> {
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: body, ContentMD5: createHash('md5').update(body).digest('base64') }));
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-import-'));
  process.env.FERRY_STATE_DIR = join(dir, 'state');
  s3 = await startS3Server();
  Object.assign(process.env, s3.env);
  await s3.createBucket(BUCKET);
  raw = join(dir, 'disk.raw');
  const buf = Buffer.alloc(40 * MiB);
  randomBytes(6 * MiB).copy(buf, 3 * MiB);
  buf.write('Ferry import test. '.repeat(100000), 16 * MiB);
  writeFileSync(raw, buf);
  execFileSync('sfdisk', ['-q', raw], { input: 'label: dos\nstart=2048, size=60000, type=83\n' });
  execFileSync('qemu-img', ['convert', '-O', 'vpc', raw, join(dir, 'disk.vhd')]);
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, join(dir, 'disk.vmdk')]);
  for (const [key, src, extra] of [
    ['raw', raw, []],
    ['vhd', join(dir, 'disk.vhd'), []],
    ['vmdk', join(dir, 'disk.vmdk'), []],
    ['qcow2-zstd', raw, ['--compress', 'zstd']],
  ] as const) {
    const r = ferry({}, 'upload', '--json', src, `s3://${BUCKET}/${key}`, ...extra);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  }
});

after(() => {
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  for (const l of loops.reverse()) spawnSync('losetup', ['-d', l]);
  s3?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('images of each format, uploaded by Ferry, import bit-identical onto a file and onto a block device', () => {
  const want = sha(readFileSync(raw));
  for (const key of ['raw', 'vhd', 'vmdk', 'qcow2-zstd']) {
    const target = join(dir, `target-${key}.raw`);
    const r = ferry({}, 'import', '--json', `s3://${BUCKET}/${key}`, '--target', target);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const doc = JSON.parse(r.stdout) as { verified: string; dataBytes: number; bytesFetched: number };
    assert.equal(doc.verified, 'manifest');
    // qemu-img's VHD is CHS-rounded: compare the source's length.
    assert.equal(sha(readFileSync(target).subarray(0, 40 * MiB)), want, `${key}: file target differs`);
    rmSync(target);
  }
  const dev = loopDevice('dev.img', 48 * MiB);
  for (const key of ['raw', 'vhd', 'vmdk', 'qcow2-zstd']) {
    writeFileSync(dev, Buffer.alloc(48 * MiB, 0xee)); // stale bytes the import must overwrite
    const r = ferry({}, 'import', '--json', `s3://${BUCKET}/${key}`, '--target', dev);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(sha(readDevice(dev, 40 * MiB)), want, `${key}: block device differs`);
  }
  const local = ferry({}, 'import', '--json', '--verify', join(dir, 'disk.vmdk'), '--target', join(dir, 'from-local.raw'));
  assert.equal(local.code, 0, local.stdout + local.stderr);
  assert.equal((JSON.parse(local.stdout) as { verified: string }).verified, 'reread');
});

test('unsupported formats are named before anything is written', async () => {
  const cases: [string, string][] = [];
  execFileSync('qemu-img', ['create', '-q', '-f', 'vhdx', join(dir, 'x.vhdx'), '64M']);
  cases.push(['renamed.vhd', 'vhdx']);
  await put('renamed.vhd', readFileSync(join(dir, 'x.vhdx')));
  execFileSync('qemu-img', ['create', '-q', '-f', 'vdi', join(dir, 'x.vdi'), '64M']);
  await put('disk.vdi', readFileSync(join(dir, 'x.vdi')));
  cases.push(['disk.vdi', 'vdi']);
  mkdirSync(join(dir, 'iso'));
  writeFileSync(join(dir, 'iso', 'a.txt'), 'hello');
  execFileSync('genisoimage', ['-quiet', '-o', join(dir, 'x.iso'), join(dir, 'iso')]);
  await put('cd.iso', readFileSync(join(dir, 'x.iso')));
  cases.push(['cd.iso', 'iso']);
  await put('junk.bin', randomBytes(1000));
  cases.push(['junk.bin', 'unknown']);
  for (const [key, detected] of cases) {
    const target = join(dir, `never-${key}`);
    const r = ferry({}, 'import', '--json', `s3://${BUCKET}/${key}`, '--target', target);
    const e = errorOf(r);
    assert.match(e.code, /^IMAGE_(UNSUPPORTED|UNKNOWN)_FORMAT$/, key);
    assert.equal(r.code, 4);
    assert.equal(e.details?.detectedFormat, detected, key);
    assert.ok(!existsSync(target));
  }
});

test('a truncated object, damaged data and a missing object are each caught with their own code', async () => {
  // Truncated: the object replaced by its first half (the manifest records the full size).
  const whole = (await s3.client.send(new (await import('@aws-sdk/client-s3')).GetObjectCommand({ Bucket: BUCKET, Key: 'qcow2-zstd' }))).Body!;
  const bytes = Buffer.from(await whole.transformToByteArray());
  await put('truncated.qcow2', bytes.subarray(0, bytes.length >> 1));
  const noManifest = errorOf(ferry({}, 'import', '--json', `s3://${BUCKET}/truncated.qcow2`, '--target', join(dir, 'never1')));
  assert.match(noManifest.code, /^IMAGE_(TRUNCATED|CORRUPT)$/);
  const up = ferry({}, 'upload', '--json', raw, `s3://${BUCKET}/cut.qcow2`, '--to', 'qcow2');
  assert.equal(up.code, 0);
  await put('cut.qcow2', bytes.subarray(0, 1 * MiB));
  assert.equal(errorOf(ferry({}, 'import', '--json', `s3://${BUCKET}/cut.qcow2`, '--target', join(dir, 'never2'))).code, 'UPLOAD_INCOMPLETE');
  // Damaged data with an intact structure: a byte flipped inside the object in a file:// store.
  const store = join(dir, 'store');
  assert.equal(ferry({}, 'upload', '--json', raw, `file://${store}/disk.raw`).code, 0);
  const obj = join(store, 'disk.raw');
  const b = readFileSync(obj);
  b[17 * MiB + 5] ^= 0xff;
  writeFileSync(obj, b);
  const target = join(dir, 'damaged.raw');
  const r = ferry({}, 'import', '--json', `file://${store}/disk.raw`, '--target', target);
  const e = errorOf(r);
  assert.equal(e.code, 'CHECKSUM_MISMATCH');
  assert.equal(e.details?.chunk, 4, 'the damaged 4 MiB chunk is named');
  assert.equal(r.code, 9);
  assert.ok(!existsSync(target), 'the damaged target was not kept');
  assert.ok(!readdirSync(dir).some((n) => n.includes('damaged.raw')), 'no partial file left');
  assert.equal(errorOf(ferry({}, 'import', '--json', `s3://${BUCKET}/no/such/key`, '--target', join(dir, 'never3'))).code, 'OBJECT_NOT_FOUND');
  assert.equal(errorOf(ferry({ AWS_SECRET_ACCESS_KEY: 'wrong' }, 'import', '--json', `s3://${BUCKET}/raw`, '--target', join(dir, 'never4'))).code, 'AUTH_FAILED');
});

test('unusable targets are refused before writing: missing, too small, read-only, mounted', () => {
  const src = `s3://${BUCKET}/qcow2-zstd`;
  assert.equal(errorOf(ferry({}, 'import', '--json', src, '--target', join(dir, 'no', 'such', 'dir', 't.raw'))).code, 'TARGET_NOT_FOUND');
  const small = loopDevice('small.img', 16 * MiB);
  const e = errorOf(ferry({}, 'import', '--json', src, '--target', small));
  assert.equal(e.code, 'TARGET_TOO_SMALL');
  assert.equal(readDevice(small, 4096).every((x) => x === 0xee), true, 'nothing was written');
  const ro = join(dir, 'ro');
  mkdirSync(ro);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro]);
  mounts.push(ro);
  assert.equal(errorOf(ferry({}, 'import', '--json', src, '--target', join(ro, 't.raw'))).code, 'TARGET_NOT_WRITABLE');
  const busy = loopDevice('busy.img', 48 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', busy]);
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  execFileSync('mount', [busy, mnt]);
  mounts.push(mnt);
  assert.equal(errorOf(ferry({}, 'import', '--json', src, '--target', busy)).code, 'TARGET_IN_USE');
});
