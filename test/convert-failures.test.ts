// Conversions that cannot succeed: an unsupported source, an unwritable or missing target
// directory, a target file system that is full (a small loop-mounted ext4, before and during the
// write), an existing output, and a run stopped by Ctrl-C or killed with SIGKILL. Each must give a
// clear error (code, exit status) and leave no file under the final name.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PARTIAL_MARK } from '../src/io/sink.js';
import { writeRandomFile } from './corpus/reference-disk.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
let dir = '';
let mnt = '';
let rofs = '';
const mounts: string[] = [];

function ferry(...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function errorOf(r: { stdout: string }): { code: string; message: string } {
  return (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error;
}

function leftovers(d: string): string[] {
  return readdirSync(d).filter((n) => n.includes(PARTIAL_MARK));
}

function mountLoop(image: string, at: string, ro: boolean): void {
  mkdirSync(at, { recursive: true });
  execFileSync('mount', ['-o', ro ? 'loop,ro' : 'loop', image, at]);
  mounts.push(at);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-fail-'));
  // Source disks: 64 MiB with 48 MiB of random data; 1 GiB with 768 MiB (slow enough to interrupt).
  await writeRandomFile(join(dir, 'disk.raw'), 48 << 20, 'fail-small');
  execFileSync('truncate', ['-s', '64M', join(dir, 'disk.raw')]);
  await writeRandomFile(join(dir, 'big.raw'), 768 << 20, 'fail-big');
  execFileSync('truncate', ['-s', '1G', join(dir, 'big.raw')]);
  // A 16 MiB ext4, mounted read-write, and a second one mounted read-only.
  for (const [name, ro] of [['small', false], ['ro', true]] as const) {
    const img = join(dir, `${name}.ext4`);
    execFileSync('truncate', ['-s', '16M', img]);
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', img]);
    mountLoop(img, join(dir, `mnt-${name}`), ro);
  }
  mnt = join(dir, 'mnt-small');
  rofs = join(dir, 'mnt-ro');
});

after(() => {
  for (const m of mounts.reverse()) {
    try {
      execFileSync('umount', [m]);
    } catch {
      execFileSync('umount', ['-l', m]);
    }
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('an unsupported source is named and nothing is written', () => {
  const vhdx = join(dir, 'disk.vhd');
  execFileSync('qemu-img', ['create', '-q', '-f', 'vhdx', vhdx, '64M']);
  const out = join(dir, 'from-vhdx.qcow2');
  const r = ferry('image', 'convert', '--json', '-O', 'qcow2', vhdx, out);
  assert.equal(r.code, 4, r.stdout + r.stderr);
  assert.equal(errorOf(r).code, 'IMAGE_UNSUPPORTED_FORMAT');
  assert.ok(!existsSync(out));
  assert.deepEqual(leftovers(dir), []);
});

test('a read-only file system and a missing directory are TARGET errors', () => {
  const ro = ferry('image', 'convert', '--json', '-O', 'qcow2', join(dir, 'disk.raw'), join(rofs, 'out.qcow2'));
  assert.equal(ro.code, 7, ro.stdout + ro.stderr);
  assert.equal(errorOf(ro).code, 'TARGET_NOT_WRITABLE');
  assert.match(errorOf(ro).message, /read-only/);
  const missing = ferry('image', 'convert', '--json', '-O', 'raw', join(dir, 'disk.raw'), join(dir, 'no', 'such', 'dir', 'out.raw'));
  assert.equal(missing.code, 7);
  assert.equal(errorOf(missing).code, 'TARGET_NOT_FOUND');
});

test('an existing output is not replaced without --overwrite', () => {
  const out = join(dir, 'exists.raw');
  writeFileSync(out, 'keep me');
  const r = ferry('image', 'convert', '--json', '-O', 'raw', join(dir, 'disk.raw'), out);
  assert.equal(r.code, 7);
  assert.equal(errorOf(r).code, 'TARGET_EXISTS');
  assert.equal(execFileSync('cat', [out], { encoding: 'utf8' }), 'keep me');
});

test('a full target file system: refused up front (raw), or stopped mid-write (compressed), no file left', () => {
  const raw = ferry('image', 'convert', '--json', '-O', 'raw', join(dir, 'disk.raw'), join(mnt, 'out.raw'));
  assert.equal(raw.code, 7, raw.stdout + raw.stderr);
  assert.equal(errorOf(raw).code, 'TARGET_NO_SPACE');
  assert.match(errorOf(raw).message, /needs at least \d+ bytes .* only \d+ bytes are free/);
  // Random data does not compress: the qcow2 outgrows the 16 MiB file system while being written.
  const q = ferry('image', 'convert', '--json', '-O', 'qcow2', '-c', join(dir, 'disk.raw'), join(mnt, 'out.qcow2'));
  assert.equal(q.code, 7, q.stdout + q.stderr);
  assert.equal(errorOf(q).code, 'TARGET_NO_SPACE');
  assert.match(errorOf(q).message, /no space left/);
  assert.deepEqual(readdirSync(mnt).filter((n) => n !== 'lost+found'), [], 'nothing left on the full file system');
});

test('an output that fits a nearly full file system is written (no over-reservation)', async () => {
  const small = join(dir, 'small-data.raw');
  await writeRandomFile(small, 4 << 20, 'fits');
  execFileSync('truncate', ['-s', '64M', small]);
  for (const [fmt, ext] of [['qcow2', 'qcow2'], ['vpc', 'vhd'], ['vmdk', 'vmdk'], ['raw', 'raw']] as const) {
    const out = join(mnt, `fits.${ext}`);
    const r = ferry('image', 'convert', '--json', '-O', fmt, small, out);
    assert.equal(r.code, 0, `${fmt}: ${r.stdout}${r.stderr}`);
    const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', fmt, small, out], { encoding: 'utf8' });
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    rmSync(out);
  }
});

/** Starts a conversion of big.raw and resolves once its partial output exists. */
async function startBig(out: string): Promise<ReturnType<typeof spawn>> {
  const child = spawn(process.execPath, [BIN, 'image', 'convert', '-O', 'qcow2', '-c', '--json', join(dir, 'big.raw'), out], { stdio: ['ignore', 'pipe', 'pipe'] });
  const deadline = Date.now() + 20_000;
  while (leftovers(dir).length === 0) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error('the conversion did not start writing');
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, 300));
  return child;
}

function exited(child: ReturnType<typeof spawn>): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string }> {
  let stdout = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stdout })));
}

test('Ctrl-C stops with INTERRUPTED (exit 130) and removes the partial file', async () => {
  const out = join(dir, 'int.qcow2');
  const child = await startBig(out);
  const done = exited(child);
  child.kill('SIGINT');
  const r = await done;
  assert.equal(r.code, 130, r.stdout);
  assert.equal(errorOf(r).code, 'INTERRUPTED');
  assert.ok(!existsSync(out));
  assert.deepEqual(leftovers(dir), []);
});

test('kill -9 leaves no file under the final name (only a clearly named partial file)', async () => {
  const out = join(dir, 'killed.qcow2');
  const child = await startBig(out);
  const done = exited(child);
  child.kill('SIGKILL');
  const r = await done;
  assert.equal(r.signal, 'SIGKILL');
  assert.ok(!existsSync(out), 'the final name must not exist');
  const left = leftovers(dir);
  assert.equal(left.length, 1);
  assert.match(left[0]!, /^\.killed\.qcow2\.ferry-partial-[0-9a-f]{6}$/);
  for (const f of left) rmSync(join(dir, f));
});
