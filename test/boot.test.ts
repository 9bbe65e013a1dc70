// A migrated server still boots: a small bootable Linux disk (Debian kernel and busybox, GRUB,
// ext4 root found by UUID; built by scripts/boot-disk.sh) goes through `ferry image convert`
// (compressed qcow2), `ferry upload` to the real S3 server (Swift with s3api) and `ferry import`
// onto a raw file, and that file is booted with qemu-system-x86_64 (software emulation). The
// root's init prints FERRY-BOOT-OK once it runs from the disk's partition and FERRY-CHECKSUMS-OK
// when every file on it matches its checksum list; both markers must appear on the serial console.
// A copy of the imported disk with one byte flipped inside a checked file must boot and report
// FERRY-CHECKSUMS-FAILED instead: the markers cannot appear by accident.
import { test, before, after, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, createReadStream, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startS3Server, type S3Server } from './s3-server.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const BUILD = fileURLToPath(new URL('../../scripts/boot-disk.sh', import.meta.url));
const BUCKET = 'ferry-boot';
const BOOT_TIMEOUT_MS = 180_000;
const MiB = 1024 * 1024;
let s3: S3Server | undefined;
let dir = '';
let uuid = '';
let imported = '';
const running = new Set<ChildProcess>();

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ferry(...args: string[]): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, FERRY_DEBUG: '' }, timeout: 240_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: Ran, what: string): Ran {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}): ${r.stdout.slice(0, 2000)} ${r.stderr.slice(-2000)}`);
  return r;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

function killAll(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

interface Boot {
  serial: string;
  seconds: number;
  exit: string;
}

/** Boots DISK (format given explicitly) with qemu, software emulation only; the serial console goes
 * to a file. Ends when the guest powers off (or panics: -no-reboot), or is killed after the
 * timeout. */
function boot(disk: string, format: 'raw' | 'qcow2', name: string, extra: string[] = []): Promise<Boot> {
  const log = join(dir, `${name}.serial.log`);
  const args = [
    '-accel', 'tcg', '-nodefaults', '-m', '256', '-no-reboot', '-display', 'none',
    '-serial', `file:${log}`, '-drive', `file=${disk},format=${format},if=ide`, ...extra,
  ];
  const started = Date.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), BOOT_TIMEOUT_MS);
    child.once('error', (err) => {
      clearTimeout(timer);
      running.delete(child);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      const seconds = (Date.now() - started) / 1000;
      const serial = existsSync(log) ? readFileSync(log, 'latin1') : '';
      const exit = signal ? `killed by ${signal}${signal === 'SIGKILL' ? ` (timeout ${BOOT_TIMEOUT_MS / 1000} s)` : ''}` : `exit ${code}`;
      if (code !== 0 && !signal) reject(new Error(`qemu failed (${exit}): ${stderr.slice(-2000)}`));
      else resolve({ serial, seconds, exit });
    });
  });
}

const markers = (serial: string) => serial.split(/\r?\n/).filter((l) => l.startsWith('FERRY-'));
const tail = (b: Boot) => `qemu ${b.exit} after ${b.seconds.toFixed(1)} s; serial console (end):\n${b.serial.slice(-3000)}`;

function assertBooted(t: TestContext, b: Boot, what: string): void {
  const lines = markers(b.serial);
  t.diagnostic(`${what}: booted in ${b.seconds.toFixed(1)} s (${b.exit}): ${lines.join(' | ')}`);
  assert.ok(lines.includes(`FERRY-BOOT-OK root=UUID=${uuid} dev=/dev/sda1`), `${what}: no FERRY-BOOT-OK for UUID ${uuid}; ${tail(b)}`);
  assert.ok(lines.some((l) => /^FERRY-CHECKSUMS-OK files=\d+$/.test(l)), `${what}: no FERRY-CHECKSUMS-OK; ${tail(b)}`);
  assert.ok(!lines.some((l) => l.includes('FAILED')), `${what}: a failure was reported; ${tail(b)}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-boot-'));
  process.env.FERRY_STATE_DIR = join(dir, 'state');
  for (const tool of ['qemu-system-x86_64', 'apt-get']) {
    assert.equal(spawnSync('sh', ['-c', `command -v ${tool}`]).status, 0, `${tool} is missing: run bash scripts/setup.sh`);
  }
  // The disk (the packages are cached across runs: only the first run downloads them).
  const built = spawnSync('bash', [BUILD, join(dir, 'disk.raw'), join(dir, 'work')], { encoding: 'utf8', timeout: 600_000 });
  assert.equal(built.status, 0, `boot-disk.sh failed: ${built.stderr.slice(-3000)}`);
  const m = /^FERRY_BOOT_UUID=([0-9a-f-]{36})$/m.exec(built.stdout);
  assert.ok(m, `no UUID from boot-disk.sh: ${built.stdout}`);
  uuid = m[1];
  s3 = await startS3Server();
  Object.assign(process.env, s3.env);
  await s3.createBucket(BUCKET);
});

after(() => {
  killAll();
  s3?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
process.once('exit', killAll);

test('a disk converted, uploaded and imported by Ferry still boots, and its files are intact', { timeout: 420_000 }, async (t) => {
  const raw = join(dir, 'disk.raw');
  const qcow2 = join(dir, 'disk.qcow2');
  let started = Date.now();
  ok(ferry('image', 'convert', '--json', raw, qcow2, '--to', 'qcow2', '--compress', 'zstd'), 'convert');
  ok(ferry('upload', '--json', qcow2, `s3://${BUCKET}/boot.qcow2`), 'upload qcow2');
  // A second path: the raw disk converted to streamOptimized VMDK while uploading.
  ok(ferry('upload', '--json', raw, `s3://${BUCKET}/boot.vmdk`, '--to', 'vmdk'), 'upload vmdk');
  imported = join(dir, 'imported.raw');
  const r = ok(ferry('import', '--json', `s3://${BUCKET}/boot.qcow2`, '--target', imported), 'import qcow2');
  assert.equal((JSON.parse(r.stdout) as { verified: string }).verified, 'manifest');
  const fromVmdk = join(dir, 'imported-vmdk.raw');
  ok(ferry('import', '--json', `s3://${BUCKET}/boot.vmdk`, '--target', fromVmdk), 'import vmdk');
  const want = await sha256File(raw);
  assert.equal(await sha256File(imported), want, 'the disk imported from qcow2 differs from the source disk');
  assert.equal(await sha256File(fromVmdk), want, 'the disk imported from vmdk differs from the source disk');
  rmSync(fromVmdk);
  t.diagnostic(`convert + 2 uploads + 2 imports: ${((Date.now() - started) / 1000).toFixed(1)} s`);

  started = Date.now();
  assertBooted(t, await boot(imported, 'raw', 'imported'), 'imported.raw (format=raw)');
  // The compressed qcow2 Ferry wrote boots too, read by qemu itself (-snapshot: left unchanged).
  assertBooted(t, await boot(qcow2, 'qcow2', 'qcow2', ['-snapshot']), 'disk.qcow2 (format=qcow2)');
  t.diagnostic(`boots: ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

test('one byte flipped inside a checked file: the disk boots and the checksums fail', { timeout: 240_000 }, async (t) => {
  assert.ok(imported && existsSync(imported), 'the import of the first test did not happen');
  const corrupt = join(dir, 'corrupt.raw');
  copyFileSync(imported, corrupt);
  // Find the file's bytes on the disk (random data: one place only) and flip one.
  const file = readFileSync(join(dir, 'work', 'root', 'data', 'random-6M.bin'));
  const needle = file.subarray(3 * MiB, 3 * MiB + 64);
  const disk = Buffer.alloc(statSync(corrupt).size);
  const fd = openSync(corrupt, 'r+');
  try {
    let done = 0;
    while (done < disk.length) {
      const n = readSync(fd, disk, done, disk.length - done, done);
      if (n === 0) break;
      done += n;
    }
    const at = disk.indexOf(needle);
    assert.ok(at > 0, 'the bytes of data/random-6M.bin are not on the disk');
    assert.equal(disk.indexOf(needle, at + 1), -1, 'the bytes of data/random-6M.bin are on the disk twice');
    writeSync(fd, Buffer.from([disk[at + 17] ^ 0x01]), 0, 1, at + 17);
  } finally {
    closeSync(fd);
  }
  const b = await boot(corrupt, 'raw', 'corrupt');
  const lines = markers(b.serial);
  t.diagnostic(`corrupt.raw: booted in ${b.seconds.toFixed(1)} s (${b.exit}): ${lines.join(' | ')}`);
  assert.ok(lines.includes(`FERRY-BOOT-OK root=UUID=${uuid} dev=/dev/sda1`), `no FERRY-BOOT-OK; ${tail(b)}`);
  assert.ok(lines.includes('FERRY-CHECKSUMS-FAILED'), `no FERRY-CHECKSUMS-FAILED; ${tail(b)}`);
  assert.ok(!lines.some((l) => l.startsWith('FERRY-CHECKSUMS-OK')), `FERRY-CHECKSUMS-OK despite the flipped byte; ${tail(b)}`);
  assert.match(b.serial, /data\/random-6M\.bin: FAILED/, `the damaged file is not named; ${tail(b)}`);
  rmSync(corrupt);
});
