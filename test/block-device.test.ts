// Converting onto a real block device (a loop device made by the test): the raw disk lands on the
// device byte for byte, old data in zero ranges is overwritten (unless --target-is-zero), a device
// smaller than the disk is TARGET_TOO_SMALL, a mounted one TARGET_IN_USE, and image formats are
// refused on devices. Loop devices and mounts are removed afterwards, also on failure.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const MiB = 1024 * 1024;
let dir = '';
const loops: string[] = [];
const mounts: string[] = [];

function ferry(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function errorCode(r: { stdout: string }): string {
  return (JSON.parse(r.stdout) as { error: { code: string } }).error.code;
}

/** A loop device over a new file of `size` bytes filled with `fill`. */
function loopDevice(name: string, size: number, fill: number): string {
  const file = join(dir, name);
  writeFileSync(file, Buffer.alloc(size, fill));
  const dev = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  loops.push(dev);
  return dev;
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-blk-'));
  // 32 MiB source: data, a zero gap, data.
  const src = Buffer.alloc(32 * MiB);
  src.write('ferry block device test '.repeat(40000), 0);
  for (let i = 20 * MiB; i < 21 * MiB; i++) src[i] = (i * 7) & 0xff;
  writeFileSync(join(dir, 'src.raw'), src);
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-c', join(dir, 'src.raw'), join(dir, 'src.qcow2')]);
});

after(() => {
  for (const m of mounts.reverse()) spawnSync('umount', ['-l', m]);
  for (const l of loops.reverse()) spawnSync('losetup', ['-d', l]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('a qcow2 converted onto a block device holds the disk exactly, old bytes in zero ranges overwritten', () => {
  const dev = loopDevice('dev1.img', 32 * MiB, 0xee);
  const r = ferry('image', 'convert', '--json', '-O', 'raw', join(dir, 'src.qcow2'), dev);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const want = readFileSync(join(dir, 'src.raw'));
  const got = readFileSync(dev);
  assert.equal(sha(got), sha(want), 'device content differs from the source disk');
  const cmp = spawnSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', join(dir, 'src.qcow2'), dev], { encoding: 'utf8' });
  assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
});

test('--target-is-zero skips zero ranges (the device must really read as zeros)', () => {
  const dev = loopDevice('dev2.img', 32 * MiB, 0);
  const r = ferry('image', 'convert', '--json', '-O', 'raw', '--target-is-zero', join(dir, 'src.qcow2'), dev);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(sha(readFileSync(dev)), sha(readFileSync(join(dir, 'src.raw'))));
  // On a device holding old bytes, the skipped ranges keep them: that is what the flag promises not to need.
  const dirty = loopDevice('dev3.img', 32 * MiB, 0xee);
  assert.equal(ferry('image', 'convert', '--json', '-O', 'raw', '--target-is-zero', join(dir, 'src.qcow2'), dirty).code, 0);
  assert.equal(readFileSync(dirty)[10 * MiB], 0xee);
});

test('a device smaller than the disk is TARGET_TOO_SMALL, and nothing is written', () => {
  const dev = loopDevice('small.img', 16 * MiB, 0xab);
  const r = ferry('image', 'convert', '--json', '-O', 'raw', join(dir, 'src.qcow2'), dev);
  assert.equal(r.code, 7, r.stdout + r.stderr);
  assert.equal(errorCode(r), 'TARGET_TOO_SMALL');
  assert.ok(readFileSync(dev).every((b) => b === 0xab), 'the device was written to');
});

test('a mounted device is TARGET_IN_USE; image formats are not written onto devices', () => {
  const dev = loopDevice('fs.img', 32 * MiB, 0);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', dev]);
  const at = join(dir, 'mnt');
  mkdirSync(at);
  execFileSync('mount', [dev, at]);
  mounts.push(at);
  const busy = ferry('image', 'convert', '--json', '-O', 'raw', join(dir, 'src.qcow2'), dev);
  assert.equal(busy.code, 7, busy.stdout + busy.stderr);
  assert.equal(errorCode(busy), 'TARGET_IN_USE');
  const free = loopDevice('dev4.img', 64 * MiB, 0);
  const fmt = ferry('image', 'convert', '--json', '-O', 'qcow2', join(dir, 'src.raw'), free);
  assert.equal(fmt.code, 7);
  assert.equal(errorCode(fmt), 'TARGET_NOT_WRITABLE');
});
