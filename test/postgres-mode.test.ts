// PostgreSQL mode of the control plane: a real PostgreSQL server, `ferry server --database` and two
// `ferry worker`s (separate state directories, as on two machines). Imports posted to the API are
// shared out by the queue: every job runs exactly once, both workers take jobs, every target is
// bit-identical to its source's virtual content; a damaged source fails with its code and remedy
// on the worker and shows in the API; once the source is fixed, retry requeues it and it succeeds;
// a queued job can be cancelled; a worker killed mid-copy resumes its job from the last checkpoint
// when started again; the row is the lock (a job is claimed once; a worker that lost its job has
// its writes refused); bad database URLs and a wrong password get their own error codes, and the
// password is never printed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileSha } from './file-sha.js';
import { PASSWORD_ROLE, startPostgres, type Postgres } from './postgres.js';
import { PgJobs } from '../src/queue/pg-jobs.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const N = 6;
let dir = '';
let pg: Postgres | undefined;
const procs: ChildProcess[] = [];
let base = '';
let token = '';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON documents of several shapes, checked field by field
type Doc = any;

async function call(path: string, opts: { method?: string; body?: unknown } = {}): Promise<{ status: number; doc: Doc }> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}` };
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(base + path, { method: opts.method ?? 'GET', headers, ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
  const text = await r.text();
  return { status: r.status, doc: r.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text };
}

/** Starts `ferry ARGS` and resolves with its first stdout line (parsed). */
async function startFerry(args: string[], env: Record<string, string> = {}): Promise<Doc> {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  for (let i = 0; i < 600 && !out.includes('\n'); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(out.includes('\n'), `ferry ${args[0]} did not start: ${err}`);
  return JSON.parse(out.split('\n')[0]!);
}

/** Polls the API until every given job is finished (or the time is up). */
async function waitFinished(ids: string[], seconds = 180): Promise<Map<string, Doc>> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const { doc } = await call('/api/jobs');
    const byId = new Map<string, Doc>((doc.jobs as Doc[]).map((j) => [j.id, j]));
    if (ids.every((id) => ['succeeded', 'failed', 'cancelled'].includes(byId.get(id)?.state))) return byId;
    if (Date.now() > deadline) throw new Error(`jobs not finished: ${JSON.stringify(ids.map((id) => byId.get(id)))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function image(i: number): string {
  return join(dir, `src${i}.qcow2`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-pgmode-'));
  for (let i = 0; i < N; i++) {
    // 256 MiB disks with 48 MiB of data each in two places (so an import takes a moment).
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image(i), '256M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P ${0x11 + i} 0 32M`, '-c', `write -P ${0x71 + i} 200M 16M`, image(i)]);
  }
  pg = await startPostgres();
  const srv = await startFerry(['server', '--listen', '127.0.0.1:0', '--database', pg.url, '--data-dir', join(dir, 'server'), '--json'], { FERRY_SERVER_SAMPLE_MS: '100' });
  base = `http://${srv.address}`;
  token = srv.token;
  for (const w of ['w1', 'w2']) {
    const ready = await startFerry(['worker', '--database', pg.url, '--name', w, '--poll', '0.5', '--data-dir', join(dir, w), '--json']);
    assert.equal(ready.event, 'ready');
    assert.equal(ready.worker, w);
  }
});

after(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await pg?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('two workers share the queued imports: each runs once, both take jobs, every target verified', async () => {
  const ids: string[] = [];
  for (let i = 0; i < N; i++) {
    const r = await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: image(i), target: join(dir, `tgt${i}.raw`) } });
    assert.equal(r.status, 202, JSON.stringify(r.doc));
    assert.match(r.doc.id, /^[0-9a-f-]{36}$/);
    ids.push(r.doc.id);
  }
  const t0 = Date.now();
  const jobs = await waitFinished(ids);
  const workers = new Map<string, number>();
  for (let i = 0; i < N; i++) {
    const j = jobs.get(ids[i]!)!;
    assert.equal(j.state, 'succeeded', JSON.stringify(j));
    assert.equal(j.percent, 100);
    workers.set(j.worker, (workers.get(j.worker) ?? 0) + 1);
    const raw = join(dir, `ref${i}.raw`);
    execFileSync('qemu-img', ['convert', '-O', 'raw', image(i), raw]);
    assert.equal(await fileSha(join(dir, `tgt${i}.raw`)), await fileSha(raw), `target ${i} differs from its source`);
    const one = await call(`/api/jobs/${ids[i]}`);
    const started = (one.doc.events as { message: string }[]).filter((e) => e.message.startsWith('started by worker'));
    assert.equal(started.length, 1, `job ${i} ran ${started.length} times`);
  }
  assert.deepEqual([...workers.keys()].sort(), ['w1', 'w2'], `jobs per worker: ${JSON.stringify([...workers])}`);
  console.log(`# ${N} imports (256 MiB disks) in ${((Date.now() - t0) / 1000).toFixed(1)} s; jobs per worker: ${JSON.stringify(Object.fromEntries(workers))}`);
  const metrics = await call('/metrics');
  assert.match(metrics.doc as string, new RegExp(`ferry_jobs\\{kind="import",state="succeeded"\\} ${N}`));
});

test('a damaged source fails on its worker with its code and remedy; retried once fixed, it succeeds', async () => {
  const bad = join(dir, 'bad.qcow2');
  copyFileSync(image(0), bad);
  truncateSync(bad, 4 * 1024 * 1024); // most data clusters are gone
  const r = await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: bad, target: join(dir, 'bad.raw') } });
  const id = r.doc.id as string;
  const failed = (await waitFinished([id])).get(id)!;
  assert.equal(failed.state, 'failed');
  // Preflight finds the data clusters past the end of the file: the image is damaged.
  assert.equal(failed.error.code, 'IMAGE_CORRUPT', JSON.stringify(failed.error));
  assert.match(failed.error.message, /truncated/);
  assert.ok(failed.error.remedy, 'a remedy is shown');
  assert.ok(['w1', 'w2'].includes(failed.worker));
  copyFileSync(image(0), bad); // fixed: uploaded again
  const retry = await call(`/api/jobs/${id}/retry`, { method: 'POST' });
  assert.equal(retry.status, 202, JSON.stringify(retry.doc));
  const done = (await waitFinished([id])).get(id)!;
  assert.equal(done.state, 'succeeded', JSON.stringify(done));
  const raw = join(dir, 'ref0.raw');
  assert.equal(await fileSha(join(dir, 'bad.raw')), await fileSha(raw));
  const again = await call(`/api/jobs/${id}/retry`, { method: 'POST' });
  assert.equal(again.status, 409);
  assert.equal(again.doc.error.code, 'JOB_STATE');
});

test('a queued job can be cancelled before a worker takes it', async () => {
  // Stop the workers from taking jobs: kill them, post, cancel, then check nothing ran it.
  for (const p of procs.slice(1)) p.kill('SIGKILL');
  const r = await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: image(1), target: join(dir, 'never.raw') } });
  const c = await call(`/api/jobs/${r.doc.id}/cancel`, { method: 'POST' });
  assert.equal(c.status, 200, JSON.stringify(c.doc));
  assert.equal(c.doc.job.state, 'cancelled');
  const w = await startFerry(['worker', '--database', pg!.url, '--name', 'w3', '--poll', '0.5', '--data-dir', join(dir, 'w3'), '--json']);
  assert.equal(w.event, 'ready');
  // A job posted after the cancel runs: by then the worker has been through the queue.
  const next = await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: image(2), target: join(dir, 'next.raw') } });
  assert.equal((await waitFinished([next.doc.id])).get(next.doc.id).state, 'succeeded');
  assert.equal((await call(`/api/jobs/${r.doc.id}/retry`, { method: 'POST' })).status, 409, 'a cancelled job is not retried');
  const after = await call(`/api/jobs/${r.doc.id}`);
  assert.equal(after.doc.job.state, 'cancelled');
  assert.equal(after.doc.job.worker, null);
  assert.equal(spawnSync('test', ['-e', join(dir, 'never.raw')]).status, 1, 'the cancelled job wrote nothing');
});

test('a worker killed mid-copy (kill -9) resumes the job from its last checkpoint when started again', async () => {
  for (const p of procs.slice(1)) p.kill('SIGKILL');
  const src = join(dir, 'big.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '256M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x3c 0 160M', src]);
  const MiB = 1024 * 1024;
  // No --name: the default name (host and state directory) is the same at the restart below.
  const wk = ['worker', '--database', pg!.url, '--poll', '0.5', '--data-dir', join(dir, 'wk'), '--json'];
  const first = await startFerry(wk, { FERRY_FAULT: `kill-at-byte:${120 * MiB}` });
  assert.match(first.worker, /^[^:]+:[0-9a-f]{8}$/);
  const faulty = procs[procs.length - 1]!;
  const r = await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: src, target: join(dir, 'big.raw') } });
  const id = r.doc.id as string;
  if (faulty.exitCode === null && faulty.signalCode === null) await new Promise((res) => faulty.once('exit', res));
  assert.equal(faulty.signalCode, 'SIGKILL', 'the worker was killed mid-copy');
  const mid = (await call(`/api/jobs/${id}`)).doc.job;
  assert.ok(['preflight', 'copying'].includes(mid.state), `left running: ${mid.state}`);
  assert.equal(mid.worker, first.worker);

  const again = await startFerry(wk); // the same worker again: same state directory, so same name
  assert.equal(again.worker, first.worker);
  // Meanwhile a second worker on the same state directory is refused.
  const twin = spawnSync(process.execPath, [BIN, ...wk], { encoding: 'utf8', timeout: 30_000 });
  assert.notEqual(twin.status, 0);
  assert.match(twin.stdout + twin.stderr, /another ferry worker \(process \d+\) uses the state directory/);
  const done = (await waitFinished([id])).get(id)!;
  assert.equal(done.state, 'succeeded', JSON.stringify(done));
  const events = (await call(`/api/jobs/${id}`)).doc.events as { message: string }[];
  const resumed = events.find((e) => /resumes it at byte/.test(e.message));
  assert.ok(resumed, `resumed from a checkpoint: ${JSON.stringify(events)}`);
  const at = Number(/at byte (\d+)/.exec(resumed.message)![1]);
  assert.ok(at > 0 && at <= 120 * MiB, `resumed at ${at}`);
  assert.equal(events.filter((e) => e.message.startsWith('started by worker')).length, 2);
  const ref = join(dir, 'big.ref.raw');
  execFileSync('qemu-img', ['convert', '-O', 'raw', src, ref]);
  assert.equal(await fileSha(join(dir, 'big.raw')), await fileSha(ref), 'bit-identical after the kill');
  console.log(`# worker killed at ${120} MiB, resumed at ${(at / MiB).toFixed(0)} MiB, target verified`);
});

test('the row is the lock: a queued job is claimed once; a worker that lost its job has its writes refused', async () => {
  for (const p of procs.slice(1)) p.kill('SIGKILL'); // no worker takes the job: the test plays two
  const db = await PgJobs.open(pg!.url);
  try {
    const job = await db.enqueueImport({ source: join(dir, 'none.qcow2'), target: join(dir, 'none.raw') });
    const a = await db.claim(job.id, 'test-a');
    assert.ok(a, 'the first claim takes it');
    assert.equal(await db.claim(job.id, 'test-b'), undefined, 'a second claim of the same job is refused');
    assert.equal(await db.update(job.id, { worker: 'test-a', attempts: a.attempts }, { state: 'copying', bytesDone: 1 }), 'ok');
    await assert.rejects(db.retry(job.id), (e: { code?: string }) => e.code === 'JOB_STATE', 'a running job that reports is not retried');
    // test-a stops reporting: a minute later the job may be retried and taken by another worker.
    const pool = (db as unknown as { pool: { query(sql: string, v: unknown[]): Promise<unknown> } }).pool;
    await pool.query("UPDATE ferry.jobs SET heartbeat = now() - interval '5 minutes' WHERE id = $1", [job.id]);
    assert.equal((await db.retry(job.id)).state, 'queued');
    assert.equal(await db.update(job.id, { worker: 'test-a', attempts: a.attempts }, { bytesDone: 2 }), 'lost', 'the old worker is fenced off once the job was requeued');
    const b = await db.claim(job.id, 'test-b');
    assert.ok(b, 'the requeued job is taken by another worker');
    assert.equal(b.attempts, a.attempts + 1);
    assert.equal(await db.update(job.id, { worker: 'test-a', attempts: a.attempts }, { state: 'succeeded', finished: true }), 'lost', 'the old worker cannot finish it');
    assert.equal(await db.update(job.id, { worker: 'test-b', attempts: b.attempts }, { state: 'failed', error: { code: 'X', message: 'test' }, finished: true }), 'ok');
    assert.equal((await db.get(job.id))!.state, 'failed');
  } finally {
    await db.close();
  }
});

test('a database that is not there, or refuses the user, gets its own error code', async () => {
  const port = new URL(pg!.url).port;
  const run = (url: string) => spawnSync(process.execPath, [BIN, 'worker', '--database', url, '--json'], { encoding: 'utf8', timeout: 30_000 });
  const down = run('postgres://postgres@127.0.0.1:1/postgres');
  assert.notEqual(down.status, 0);
  assert.equal(JSON.parse(down.stdout).error.code, 'DATABASE_UNREACHABLE');
  const nodb = run(`postgres://postgres@127.0.0.1:${port}/no_such_db`);
  assert.notEqual(nodb.status, 0);
  const e = JSON.parse(nodb.stdout).error;
  assert.equal(e.code, 'DATABASE_AUTH_FAILED');
  assert.match(e.remedy, /createdb/);
  execFileSync('psql', ['-q', '-h', '127.0.0.1', '-p', port, '-U', 'postgres', '-c', `CREATE ROLE ${PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD 'right-pw-42'`]);
  const wrong = run(`postgres://${PASSWORD_ROLE}:wrong-pw-17@127.0.0.1:${port}/postgres`);
  assert.notEqual(wrong.status, 0);
  const w = JSON.parse(wrong.stdout).error;
  assert.equal(w.code, 'DATABASE_AUTH_FAILED', JSON.stringify(w));
  assert.ok(!(wrong.stdout + wrong.stderr).includes('wrong-pw-17'), 'the password is not printed');
  const right = spawn(process.execPath, [BIN, 'worker', '--database', `postgres://${PASSWORD_ROLE}:right-pw-42@127.0.0.1:${port}/postgres`, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(right);
  let out = '';
  right.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 300 && !out.includes('\n'); i++) await new Promise((r) => setTimeout(r, 50));
  const ready = JSON.parse(out.split('\n')[0]!);
  assert.equal(ready.event, 'ready', out);
  assert.ok(!out.includes('right-pw-42'), `the password is not printed: ${out}`);
});
