// Import jobs against the real S3 server (Swift with s3api), seen through a TCP proxy that counts
// the bytes the server sends (and can slow them down): a job killed with SIGKILL mid-copy resumes
// from its last durable checkpoint — with `ferry jobs retry` and by running the same import again —
// and ends bit-identical, re-fetching only what was in flight; the same on a loop block device;
// jobs are listed and shown with state, progress and failure; the same target is never written by
// two jobs at once; separate targets import concurrently; a running job is cancelled.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { fileSha } from './file-sha.js';
import { startS3Server, type S3Server } from './s3-server.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const BUCKET = 'ferry-jobs';
const MiB = 1024 * 1024;
const SIZE = 256 * MiB;
let s3: S3Server;
let dir = '';
let raw = '';
let want = '';
let proxy: CountingProxy;
const loops: string[] = [];
const children = new Set<ChildProcess>();

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI asynchronously (the proxy lives in this process's event loop), through the proxy. */
function ferry(env: Record<string, string>, ...args: string[]): Promise<Ran> & { child: ChildProcess } {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, AWS_ENDPOINT_URL: proxy.url, FERRY_DEBUG: '', ...env } });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
  const done = new Promise<Ran>((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return Object.assign(done, { child });
}

function doc<T = Record<string, unknown>>(r: Ran): T {
  assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+:\d+:\d+/, 'a stack trace was printed');
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    assert.fail(`no JSON (exit ${r.code} ${r.signal ?? ''}): ${r.stdout.slice(0, 300)} ${r.stderr.slice(-600)}`);
  }
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A TCP proxy to the S3 server that counts the bytes sent to clients; optionally slows them. */
interface CountingProxy {
  url: string;
  server: Server;
  received: () => number;
  setRate: (bytesPerSecond: number | undefined) => void;
}

function countingProxy(target: URL): Promise<CountingProxy> {
  let received = 0;
  let rate: number | undefined;
  let nextFree = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const up = connect(Number(target.port), target.hostname);
    sockets.add(client).add(up);
    client.pipe(up);
    up.on('data', (d: Buffer) => {
      received += d.length;
      if (!client.write(d)) up.pause();
      if (rate) {
        // One rate for all connections together.
        const now = Date.now();
        nextFree = Math.max(now, nextFree) + (d.length / rate) * 1000;
        up.pause();
        setTimeout(() => up.resume(), nextFree - now);
      }
    });
    client.on('drain', () => up.resume());
    up.on('end', () => client.end());
    const close = () => {
      client.destroy();
      up.destroy();
      sockets.delete(client);
      sockets.delete(up);
    };
    client.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
  });
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
        server,
        received: () => received,
        setRate: (r) => (rate = r),
      }),
    ),
  );
}

interface JobDoc {
  id: string;
  state: string;
  shownState: string;
  committed: number;
  written: number;
  bytesDone: number;
  bytesTotal: number;
  attempts: number;
  partialPath: string | null;
  error: { code: string; message: string; remedy: string } | null;
  events: { state: string | null; message: string }[];
}

async function jobsList(): Promise<JobDoc[]> {
  return doc<{ jobs: JobDoc[] }>(await ferry({}, 'jobs', 'list', '--json')).jobs;
}

async function waitFor(what: string, fn: () => Promise<boolean>, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-jobs-'));
  process.env.FERRY_STATE_DIR = join(dir, 'state');
  s3 = await startS3Server();
  Object.assign(process.env, s3.env);
  await s3.createBucket(BUCKET);
  proxy = await countingProxy(new URL(s3.endpoint));
  // 256 MiB disk: 1 MiB of random data in every 2 MiB (incompressible), zeros between.
  raw = join(dir, 'disk.raw');
  const buf = Buffer.alloc(SIZE);
  for (let at = 0; at < SIZE; at += 2 * MiB) randomBytes(MiB).copy(buf, at);
  writeFileSync(raw, buf);
  want = sha(buf);
  const up = await ferry({}, 'upload', '--json', raw, `s3://${BUCKET}/disk.qcow2`, '--to', 'qcow2', '--compress', 'zlib');
  assert.equal(up.code, 0, up.stdout + up.stderr);
});

after(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const l of loops.reverse()) spawnSync('losetup', ['-d', l]);
  proxy?.server.close();
  s3?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Runs `fn` and returns what the server sent meanwhile. */
async function fetched<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const before = proxy.received();
  const r = await fn();
  return [r, proxy.received() - before];
}

test('kill -9 mid-copy: `jobs retry` and a repeated `ferry import` resume from the last checkpoint; bit-identical, little re-fetched', async () => {
  const src = `s3://${BUCKET}/disk.qcow2`;
  const [full, fullBytes] = await fetched(() => ferry({}, 'import', '--json', src, '--target', join(dir, 'whole.raw')));
  assert.equal(full.code, 0, full.stderr);
  assert.equal(fileSha(join(dir, 'whole.raw'), SIZE), want);
  rmSync(join(dir, 'whole.raw'));

  const target = join(dir, 'resumed.raw');
  const [first, bytes1] = await fetched(() => ferry({ FERRY_FAULT: `kill-at-byte:${130 * MiB}` }, 'import', '--json', src, '--target', target));
  assert.equal(first.signal, 'SIGKILL', `the first run was to be killed: ${first.stdout}${first.stderr}`);
  assert.ok(!existsSync(target), 'no complete-looking target after the kill');
  const job = (await jobsList())[0]!;
  assert.equal(job.shownState, 'interrupted');
  assert.ok(job.written > 0, 'written progress was recorded before the kill');
  assert.ok(job.written >= job.committed);
  assert.ok(job.partialPath && existsSync(job.partialPath));
  const at1 = job.written;

  const [second, bytes2] = await fetched(() => ferry({ FERRY_FAULT: `kill-at-byte:${220 * MiB}` }, 'jobs', 'retry', job.id, '--json'));
  assert.equal(second.signal, 'SIGKILL', `the retry was to be killed: ${second.stdout}${second.stderr}`);
  const after2 = (await jobsList())[0]!;
  assert.equal(after2.id, job.id);
  assert.ok(after2.written > at1, `the retry got further (${after2.written} > ${at1})`);

  // Running the same import again finds the interrupted job and resumes it.
  const [third, bytes3] = await fetched(() => ferry({}, 'import', '--json', src, '--target', target));
  assert.equal(third.code, 0, third.stdout + third.stderr);
  const r = doc<{ job: string; resumedAt: number; verified: string }>(third);
  assert.equal(r.job, job.id, 'the same job was resumed');
  assert.equal(r.resumedAt, after2.written, 'same boot: resumed where the killed run had written up to');
  assert.equal(r.verified, 'manifest');
  assert.equal(fileSha(target, SIZE), want, 'bit-identical after two kills');
  assert.ok(!readdirSync(dir).some((n) => n.includes('ferry-partial')), 'no partial file left');

  const shown = doc<JobDoc>(await ferry({}, 'jobs', 'show', job.id, '--json'));
  assert.equal(shown.state, 'succeeded');
  assert.equal(shown.attempts, 3);
  assert.ok(shown.events.some((e) => /resuming at byte/.test(e.message)));

  const refetched = bytes1 + bytes2 + bytes3 - fullBytes;
  // The bound per kill: what the pipeline holds in flight — the object reader's readahead (its
  // 64 MiB window: up to 4 concurrent range requests of 16 MiB), the 16 MiB decode window and
  // 16 MiB of pending writes.
  const perKill = 4 * 16 * MiB + 32 * MiB;
  console.log(
    `# full import fetched ${(fullBytes / MiB).toFixed(1)} MiB; killed runs ${(bytes1 / MiB).toFixed(1)} + ${(bytes2 / MiB).toFixed(1)} MiB, final run ${(bytes3 / MiB).toFixed(1)} MiB; ` +
      `resumed at ${(at1 / MiB).toFixed(1)} and ${(after2.written / MiB).toFixed(1)} MiB; re-fetched ${(refetched / MiB).toFixed(1)} MiB over 2 kills (${(refetched / 2 / MiB).toFixed(1)} MiB per kill)`,
  );
  assert.ok(refetched <= 2 * perKill, `re-fetched ${refetched} bytes`);
});

test('a killed import onto a block device resumes in place and ends bit-identical', async () => {
  const file = join(dir, 'dev.img');
  writeFileSync(file, Buffer.alloc(SIZE + 4 * MiB, 0xee));
  const dev = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  loops.push(dev);
  const src = `s3://${BUCKET}/disk.qcow2`;
  const first = await ferry({ FERRY_FAULT: `kill-at-byte:${160 * MiB}` }, 'import', '--json', src, '--target', dev);
  assert.equal(first.signal, 'SIGKILL');
  const job = (await jobsList())[0]!;
  assert.equal(job.partialPath, null, 'a device is written in place');
  assert.ok(job.committed > 0, 'a durable checkpoint was recorded');
  // As after a power loss: the record says another boot wrote it, so only the flushed part counts.
  const db = new Database(join(dir, 'state', 'jobs.db'));
  db.prepare("UPDATE jobs SET boot_id = 'an-earlier-boot' WHERE id = ?").run(job.id);
  db.close();
  const again = await ferry({}, 'jobs', 'retry', job.id, '--json');
  assert.equal(again.code, 0, again.stdout + again.stderr);
  assert.equal(doc<{ resumedAt: number }>(again).resumedAt, job.committed, 'after a restart: resumed at the last flushed checkpoint');
  console.log(`# block device: killed with ${(job.written / MiB).toFixed(1)} MiB written, ${(job.committed / MiB).toFixed(1)} MiB flushed; resumed at the flushed offset as after a power loss`);
  assert.equal(fileSha(dev, SIZE), want);
});

test('one writer per target (TARGET_LOCKED), concurrent imports to separate targets, cancel of a running job', async () => {
  const src = `s3://${BUCKET}/disk.qcow2`;
  proxy.setRate(24 * MiB); // slow enough that the jobs overlap
  try {
    const a = ferry({}, 'import', '--json', src, '--target', join(dir, 'a.raw'));
    const b = ferry({}, 'import', '--json', src, '--target', join(dir, 'b.raw'));
    await waitFor('both jobs copying', async () => (await jobsList()).filter((j) => j.shownState === 'copying').length >= 2);
    const clash = await ferry({}, 'import', '--json', src, '--target', join(dir, 'a.raw'));
    assert.equal(clash.code, 7);
    const e = doc<{ error: { code: string; message: string; remedy: string } }>(clash).error;
    assert.equal(e.code, 'TARGET_LOCKED');
    assert.match(e.message, /another Ferry job/);
    proxy.setRate(undefined);
    const [ra, rb] = await Promise.all([a, b]);
    assert.equal(ra.code, 0, ra.stderr);
    assert.equal(rb.code, 0, rb.stderr);
    assert.equal(fileSha(join(dir, 'a.raw'), SIZE), want);
    assert.equal(fileSha(join(dir, 'b.raw'), SIZE), want);

    proxy.setRate(16 * MiB);
    const c = ferry({}, 'import', '--json', src, '--target', join(dir, 'c.raw'));
    let id = '';
    await waitFor('job c copying', async () => {
      const j = (await jobsList()).find((x) => x.shownState === 'copying');
      id = j?.id ?? '';
      return id !== '';
    });
    const cancel = await ferry({}, 'jobs', 'cancel', id, '--json');
    assert.equal(cancel.code, 0, cancel.stdout + cancel.stderr);
    assert.equal(doc<JobDoc>(cancel).state, 'cancelled');
    const rc = await c;
    assert.equal(rc.code, 130, 'the cancelled import stopped as interrupted');
    assert.ok(!readdirSync(dir).some((n) => n.startsWith('c.raw') || n.startsWith('.c.raw')), 'the partial file was removed');
    const retry = await ferry({}, 'jobs', 'retry', id, '--json');
    assert.equal(doc<{ error: { code: string } }>(retry).error.code, 'JOB_STATE');
  } finally {
    proxy.setRate(undefined);
  }
});

test('a failed job is listed with its code, message and remedy', async () => {
  const r = await ferry({}, 'import', '--json', `s3://${BUCKET}/missing.qcow2`, '--target', join(dir, 'never.raw'));
  assert.equal(doc<{ error: { code: string } }>(r).error.code, 'OBJECT_NOT_FOUND');
  const job = (await jobsList()).find((j) => j.state === 'failed')!;
  assert.ok(job, 'the failed job is recorded');
  assert.equal(job.error?.code, 'OBJECT_NOT_FOUND');
  assert.ok((job.error?.remedy.length ?? 0) > 20);
  const text = await ferry({}, 'jobs', 'show', job.id);
  assert.match(text.stdout, /error:\s+\[OBJECT_NOT_FOUND\]/);
  assert.match(text.stdout, /remedy:/);
  const list = await ferry({}, 'jobs', 'list');
  assert.match(list.stdout, new RegExp(`${job.id}\\s+failed`));
  const missing = await ferry({}, 'jobs', 'show', 'imp-nosuch', '--json');
  assert.equal(doc<{ error: { code: string } }>(missing).error.code, 'JOB_NOT_FOUND');
});
