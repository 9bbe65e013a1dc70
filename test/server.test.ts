// `ferry server`: the control plane over a state directory holding a succeeded and a failed import
// (made with the CLI). The API refuses every call without the token (reads and writes), lists both
// jobs with progress and the failure's code, message and remedy, refuses to retry a finished job,
// starts an import on POST (which then appears and succeeds); the console page and the metrics are
// served.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer, type AddressInfo } from 'node:net';
import { fileSha } from './file-sha.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
let dir = '';
let server: ChildProcess | undefined;
let base = '';
let token = '';
/** The server's report-only token (what reporting machines hold). */
let reportToken = '';
/** Processes the report tests start (receivers, migrations), killed at the end whatever happened. */
const children: ChildProcess[] = [];

function ferry(args: string[]): { code: number; stdout: string } {
  try {
    return { code: 0, stdout: execFileSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, FERRY_STATE_DIR: join(dir, 'state') }, stdio: ['ignore', 'pipe', 'pipe'] }) };
  } catch (err) {
    const e = err as { status: number; stdout: string };
    return { code: e.status, stdout: e.stdout };
  }
}

interface ApiJob {
  id: string;
  state: string;
  target: string;
  percent: number;
  error: { code: string; message: string; remedy?: string } | null;
}
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON documents of several shapes, checked field by field
type Doc = any;

async function call(path: string, opts: { method?: string; auth?: string | null; body?: unknown } = {}): Promise<{ status: number; doc: Doc }> {
  const headers: Record<string, string> = {};
  const auth = opts.auth === undefined ? token : opts.auth;
  if (auth !== null) headers.authorization = `Bearer ${auth}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(base + path, { method: opts.method ?? 'GET', headers, ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
  const text = await r.text();
  return { status: r.status, doc: r.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text };
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-server-'));
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk.qcow2'), '16M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 3M', join(dir, 'disk.qcow2')]);
  writeFileSync(join(dir, 'notimg.bin'), randomBytes(65536));
  assert.equal(ferry(['import', join(dir, 'disk.qcow2'), '--target', join(dir, 'ok.raw'), '--json']).code, 0);
  assert.notEqual(ferry(['import', join(dir, 'notimg.bin'), '--format', 'qcow2', '--target', join(dir, 'bad.raw'), '--json']).code, 0);
  server = spawn(process.execPath, [BIN, 'server', '--listen', '127.0.0.1:0', '--data-dir', join(dir, 'state'), '--json'], { env: { ...process.env, FERRY_SERVER_SAMPLE_MS: '100', FERRY_PROGRESS_MS: '100', FERRY_SERVER_STALE_MS: '1500' } });
  let out = '';
  server.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 200 && !out.includes('\n'); i++) await new Promise((r) => setTimeout(r, 50));
  const first = JSON.parse(out.split('\n')[0]!) as { address: string; token: string; reportToken: string; console: string };
  base = `http://${first.address}`;
  token = first.token;
  reportToken = first.reportToken;
  assert.ok(reportToken && reportToken !== token);
  assert.match(first.console, /#token=/);
});

after(() => {
  for (const c of children) c.kill('SIGKILL');
  server?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the API refuses calls without the right token, reads and writes alike', async () => {
  assert.equal((await call('/api/jobs', { auth: null })).status, 401);
  assert.equal((await call('/api/jobs', { auth: 'wrong-token' })).status, 401);
  const post = await call('/api/jobs', { method: 'POST', auth: null, body: { kind: 'import', source: join(dir, 'disk.qcow2'), target: join(dir, 'anon.raw') } });
  assert.equal(post.status, 401);
  assert.equal(post.doc.error.code, 'UNAUTHORIZED');
  assert.equal((await call('/api/health', { auth: null })).status, 200);
});

test('jobs are listed with state, progress and the failure\'s code, message and remedy', async () => {
  const { status, doc } = await call('/api/jobs');
  assert.equal(status, 200);
  const ok = doc.jobs.find((j: ApiJob) => j.target === join(dir, 'ok.raw'));
  const bad = doc.jobs.find((j: ApiJob) => j.target === join(dir, 'bad.raw'));
  assert.ok(ok && bad, JSON.stringify(doc));
  assert.equal(ok.state, 'succeeded');
  assert.equal(ok.percent, 100);
  assert.equal(bad.state, 'failed');
  assert.equal(bad.error.code, 'IMAGE_FORMAT_MISMATCH');
  assert.match(bad.error.remedy, /--format/);
  const one = await call(`/api/jobs/${bad.id}`);
  assert.equal(one.doc.job.id, bad.id);
  assert.ok(Array.isArray(one.doc.events) && one.doc.events.length > 0);
  assert.equal((await call(`/api/jobs/${ok.id}/retry`, { method: 'POST' })).status, 409);
  assert.equal((await call('/api/jobs/imp-nonexistent')).status, 404);
});

test('POST /api/jobs starts an import that then succeeds', async () => {
  const target = join(dir, 'api.raw');
  const r = await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: join(dir, 'disk.qcow2'), target } });
  assert.equal(r.status, 202);
  let job: ApiJob | undefined;
  for (let i = 0; i < 200; i++) {
    job = (await call('/api/jobs')).doc.jobs.find((j: ApiJob) => j.target === target);
    if (job?.state === 'succeeded' || job?.state === 'failed') break;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(job?.state, 'succeeded', JSON.stringify(job));
  assert.equal(fileSha(target), fileSha(join(dir, 'ok.raw')));
});

test('the console page and the Prometheus metrics are served', async () => {
  const page = await call('/', { auth: null });
  assert.equal(page.status, 200);
  assert.match(page.doc, /Ferry — migrations and imports/);
  assert.match(page.doc, /\/api\/jobs/);
  const m = await call('/metrics', { auth: null });
  assert.equal(m.status, 200);
  assert.match(m.doc, /^ferry_jobs\{kind="import",state="failed"\} 1$/m);
  assert.match(m.doc, /^ferry_jobs\{kind="import",state="succeeded"\} [23]$/m);
});

test('the console in headless Chromium: the job list, a job\'s rate chart and a failure\'s remedy; a screenshot', async () => {
  // A larger import (896 MiB), sampled while it runs, gives the chart something to draw. The server
  // samples every 100 ms and its imports write progress every 100 ms here (FERRY_SERVER_SAMPLE_MS,
  // FERRY_PROGRESS_MS), so even an import that takes under a second leaves rates to draw.
  const big = join(dir, 'big.raw');
  const fd = openSync(big, 'w');
  for (let i = 0; i < 112; i++) writeSync(fd, randomBytes(8 * 1024 * 1024));
  closeSync(fd);
  const target = join(dir, 'big-copy.raw');
  assert.equal((await call('/api/jobs', { method: 'POST', body: { kind: 'import', source: big, target } })).status, 202);
  let job: ApiJob | undefined;
  for (let i = 0; i < 600 && job?.state !== 'succeeded' && job?.state !== 'failed'; i++) {
    await new Promise((res) => setTimeout(res, 100));
    job = ((await call('/api/jobs')).doc.jobs as ApiJob[]).find((j) => j.target === target);
  }
  assert.equal(job?.state, 'succeeded', JSON.stringify(job));
  const rates = (await call(`/api/jobs/${job!.id}/rates`)).doc.rates as { bytesPerSecond: number }[];
  assert.ok(rates.length >= 2 && rates.some((r) => r.bytesPerSecond > 0), `rate samples: ${JSON.stringify(rates)}`);

  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${base}/#token=${encodeURIComponent(token)}`);
    await page.waitForSelector('tr.job');
    assert.ok((await page.locator('tr.job').count()) >= 4);
    // The job list shows the failure with its remedy.
    await page.locator('tr.job', { hasText: 'IMAGE_FORMAT_MISMATCH' }).first().locator('.remedy').waitFor();
    // The big import's chart.
    await page.locator('tr.job', { hasText: 'big-copy.raw' }).click();
    await page.waitForFunction('Number(document.getElementById("chart").dataset.samples) >= 2');
    const artifacts = process.env.FERRY_TEST_ARTIFACTS ?? join(tmpdir(), 'ferry-test-artifacts');
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: join(artifacts, 'console-chart.png'), fullPage: true });
    // A failed job's detail: code, message and remedy.
    await page.locator('tr.job', { hasText: 'IMAGE_FORMAT_MISMATCH' }).first().click();
    await page.locator('#d-body .remedy', { hasText: '--format' }).waitFor();
    const shot = join(artifacts, 'console-failure.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 10_000, 'the screenshot has content');
    console.log(`# console screenshots: ${join(artifacts, 'console-chart.png')}, ${shot}`);
  } finally {
    await browser.close();
  }
});

/** Runs ferry in the background (state in its own directory); resolves with exit code and output. */
function ferryBg(args: string[], env: Record<string, string> = {}): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, FERRY_STATE_DIR: join(dir, 'reporter-state'), ...env } });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return { child, done: new Promise((res) => child.on('exit', (code) => res({ code, stdout, stderr }))) };
}

/** A receiver on loopback with one file disk `d`; its first JSON line (address, fingerprint, token). */
async function receiver(disk: string): Promise<{ address: string; fingerprint: string; token: string }> {
  const r = ferryBg(['receive', '--listen', '127.0.0.1:0', '--disk', `d=${disk}`, '--state-dir', join(dir, `recv-${Date.now()}`), '--json']);
  let out = '';
  r.child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 200 && !out.includes('\n'); i++) await new Promise((res) => setTimeout(res, 50));
  return JSON.parse(out.split('\n')[0]!) as { address: string; fingerprint: string; token: string };
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));
async function reported(id: string): Promise<Doc> {
  return ((await call('/api/jobs')).doc.jobs as Doc[]).find((j) => j.id === id);
}

test('a migration on another machine reports to the server while it runs (--report): state, progress, rate; then succeeded', async () => {
  const src = join(dir, 'm-src.img');
  const tgt = join(dir, 'm-tgt.img');
  writeFileSync(src, randomBytes(48 * 1024 * 1024));
  writeFileSync(tgt, Buffer.alloc(0));
  execFileSync('truncate', ['-s', '48M', tgt]);
  const rx = await receiver(tgt);
  // 48 MiB of random data at 12 MB/s: ~4 s of copying to watch.
  const m = ferryBg(['migrate', '--target', rx.address, '--token', rx.token, '--fingerprint', rx.fingerprint, '--disk', `${src}=d`, '--bandwidth', '12M', '--report', base, '--report-id', 'web7:root', '--json'], { FERRY_REPORT_TOKEN: reportToken, FERRY_REPORT_MS: '100' });
  const seen: Doc[] = [];
  for (let i = 0; i < 300; i++) {
    const j = await reported('web7:root');
    if (j) seen.push(j);
    if (j?.finished) break;
    await sleep(50);
  }
  const r = await m.done;
  assert.equal(r.code, 0, r.stderr);
  seen.push(await reported('web7:root')); // the final report is in before the command ends
  const mid = seen.filter((j) => j.state === 'running' && j.percent > 0 && j.percent < 100);
  assert.ok(mid.length >= 3, `running reports seen while copying: ${mid.map((j) => j.percent).join(', ')}`);
  assert.ok(mid.some((j) => j.rate > 0 && j.eta !== null && /round 1/.test(j.phase)), JSON.stringify(mid.at(-1)));
  assert.ok(mid.every((j, k) => k === 0 || j.bytesDone >= mid[k - 1].bytesDone), 'progress only grows');
  const last = seen.at(-1);
  assert.equal(last.state, 'succeeded', JSON.stringify(last));
  assert.equal(last.kind, 'migration');
  assert.equal(last.percent, 100);
  assert.equal(last.reported, true);
  assert.ok(new Set(mid.map((j) => j.bytesDone)).size >= 2, 'several progress reports while copying');
  assert.ok(last.reports >= 4, `reports received: ${last.reports}`);
  assert.match(last.target, /\(d\)$/);
  assert.equal(fileSha(tgt), fileSha(src));
  console.log(`# reported migration: ${mid.length} running reports seen (${mid[0].percent}% … ${mid.at(-1).percent}%), ${last.reports} reports in all, final ${last.state}`);
});

test('a reporter that stops reporting (kill -9) is shown as stale; a failed import reports its code and remedy', async () => {
  const src = join(dir, 'k-src.img');
  const tgt = join(dir, 'k-tgt.img');
  writeFileSync(src, randomBytes(32 * 1024 * 1024));
  execFileSync('truncate', ['-s', '32M', tgt]);
  const rx = await receiver(tgt);
  const m = ferryBg(['migrate', '--target', rx.address, '--token', rx.token, '--fingerprint', rx.fingerprint, '--disk', `${src}=d`, '--bandwidth', '4M', '--report', base, '--report-id', 'db3:data'], { FERRY_REPORT_TOKEN: reportToken, FERRY_REPORT_MS: '100' });
  let j: Doc;
  for (let i = 0; i < 200 && !(j?.state === 'running' && j.percent > 0); i++) {
    await sleep(50);
    j = await reported('db3:data');
  }
  assert.equal(j?.state, 'running', JSON.stringify(j));
  assert.equal(j.stale, false);
  m.child.kill('SIGKILL');
  await m.done;
  await sleep(3500); // the server's stale limit is 1.5 s here (FERRY_SERVER_STALE_MS)
  j = await reported('db3:data');
  assert.equal(j.state, 'running');
  assert.equal(j.stale, true, JSON.stringify(j));
  // In the metrics too: counted as stale, not running, and without a progress series.
  const metrics = (await call('/metrics', { auth: null })).doc as string;
  assert.match(metrics, /^ferry_jobs\{kind="migration",state="stale"\} [1-9]/m);
  assert.doesNotMatch(metrics, /ferry_job_bytes_done\{id="db3:data"/);

  const bad = ferryBg(['import', join(dir, 'notimg.bin'), '--format', 'qcow2', '--target', join(dir, 'rep-bad.raw'), '--report', base, '--report-token', reportToken, '--report-id', 'imp-host:bad', '--json']);
  assert.notEqual((await bad.done).code, 0);
  j = await reported('imp-host:bad');
  assert.equal(j.state, 'failed');
  assert.equal(j.kind, 'import');
  assert.equal(j.error.code, 'IMAGE_FORMAT_MISMATCH');
  assert.match(j.error.remedy, /--format/);
  assert.equal((await call('/api/jobs/imp-host:bad/retry', { method: 'POST' })).status, 400, 'a reported job is retried where it runs');
});

test('reports need the token and a well-formed document; a job whose server is away or refuses it still succeeds', async () => {
  const doc = { kind: 'import', source: 'a', target: 'b', state: 'copying', bytesDone: 1, bytesTotal: 2, rate: null, eta: null, started: null, finished: null, error: null };
  assert.equal((await call('/api/reports/x1', { method: 'PUT', auth: null, body: doc })).status, 401);
  const malformed = await call('/api/reports/x1', { method: 'PUT', body: { ...doc, state: 'flying', bytesDone: -1 } });
  assert.equal(malformed.status, 400);
  assert.match(malformed.doc.error.message, /state/);
  assert.match(malformed.doc.error.message, /bytesDone/);
  assert.equal((await call('/api/reports/..%2Fescape', { method: 'PUT', body: doc })).status, 400);
  assert.equal((await call('/api/reports/x1', { method: 'PUT', body: doc })).status, 200);
  // The report token sends reports and does nothing else.
  assert.equal((await call('/api/reports/x2', { method: 'PUT', auth: reportToken, body: doc })).status, 200);
  assert.equal((await call('/api/jobs', { auth: reportToken })).status, 401);
  assert.equal((await call('/api/jobs', { method: 'POST', auth: reportToken, body: { kind: 'import', source: join(dir, 'disk.qcow2'), target: join(dir, 'x.raw') } })).status, 401);
  assert.equal((await call('/api/reports/x2', { method: 'DELETE', auth: reportToken })).status, 401);
  assert.equal((await call('/api/reports/x2', { method: 'DELETE' })).status, 200);
  assert.equal(await reported('x2'), undefined);
  // A job the server also has in its own records (same state directory) is listed once: its own record.
  const local = ((await call('/api/jobs')).doc.jobs as Doc[]).find((j) => j.kind === 'import' && !j.reported);
  assert.equal((await call(`/api/reports/${local.id}`, { method: 'PUT', auth: reportToken, body: doc })).status, 200);
  const same = ((await call('/api/jobs')).doc.jobs as Doc[]).filter((j) => j.id === local.id);
  assert.equal(same.length, 1);
  assert.equal(same[0].reported, undefined);

  const wrong = ferryBg(['import', join(dir, 'disk.qcow2'), '--target', join(dir, 'rep-wrongtoken.raw'), '--report', base, '--report-token', 'not-the-token', '--json']);
  const w = await wrong.done;
  assert.equal(w.code, 0, w.stderr);
  assert.match(w.stderr, /"code":"REPORT_FAILED".*UNAUTHORIZED/);
  // A port nobody listens on (taken, then released).
  const probe = createServer();
  await new Promise<void>((res) => probe.listen(0, '127.0.0.1', () => res()));
  const closedPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((res) => probe.close(() => res()));
  const away = ferryBg(['import', join(dir, 'disk.qcow2'), '--target', join(dir, 'rep-away.raw'), '--report', `http://127.0.0.1:${closedPort}`, '--report-token', 'whatever', '--json']);
  const a = await away.done;
  assert.equal(a.code, 0, a.stderr);
  assert.match(a.stderr, /"code":"REPORT_FAILED".*ECONNREFUSED/);
  assert.equal(fileSha(join(dir, 'rep-away.raw')), fileSha(join(dir, 'ok.raw')));
  const noToken = ferryBg(['import', join(dir, 'disk.qcow2'), '--target', join(dir, 'rep-notoken.raw'), '--report', base], { FERRY_REPORT_TOKEN: '' });
  const n = await noToken.done;
  assert.equal(n.code, 64, n.stderr); // USAGE
  assert.match(n.stderr, /FERRY_REPORT_TOKEN/);
});

test('reported jobs survive a restart of the server (kept in its state directory)', async () => {
  const { ReportStore } = await import('../src/server/reports.js');
  const d = mkdtempSync(join(tmpdir(), 'ferry-reports-'));
  try {
    const a = new ReportStore(d);
    const put = a.put('h1:disk', { kind: 'migration', source: '/dev/vda', target: '10.0.0.2:7878 (root)', state: 'running', bytesDone: 5, bytesTotal: 10, rate: 1, eta: 5, started: null, finished: null, error: null });
    assert.equal(put.ok, true);
    a.put('h1:disk', { kind: 'migration', source: '/dev/vda', target: '10.0.0.2:7878 (root)', state: 'succeeded', bytesDone: 10, bytesTotal: 10, rate: null, eta: null, started: null, finished: '2026-01-01T00:00:00Z', error: null });
    a.put('h2:disk', { kind: 'import', source: 's3://b/k', target: '/dev/sdb', state: 'failed', bytesDone: 0, bytesTotal: 10, rate: null, eta: null, started: null, finished: null, error: null });
    a.delete('h2:disk');
    await a.flush(); // files are written in the background, the latest report of each job
    const b = new ReportStore(d);
    assert.equal(b.get('h1:disk')?.state, 'succeeded');
    assert.equal(b.get('h1:disk')?.bytesDone, 10);
    assert.equal(b.get('h2:disk'), undefined);
    assert.equal(b.list().length, 1);
    assert.deepEqual(readdirSync(join(d, 'reports')), ['h1:disk.json']);
  } finally {
    rmSync(d, { recursive: true, force: true });
  }
});

test('a reporter with nothing new to say repeats its state (heartbeat), so a long quiet phase is not taken for a dead job', async () => {
  const { Reporter } = await import('../src/server/reporter.js');
  const warnings: string[] = [];
  const r = new Reporter({ url: base, token: reportToken, id: 'quiet:verify', kind: 'import', source: 's', target: 't', heartbeatMs: 300, onWarning: (w) => warnings.push(w) });
  r.update({ state: 'verifying', phase: 'verifying', bytesDone: 10, bytesTotal: 10 });
  await sleep(500);
  const before = await reported('quiet:verify');
  await sleep(2500); // longer than the server's stale limit here (1.5 s), no update in between
  const j = await reported('quiet:verify');
  assert.equal(j.state, 'verifying');
  // Reports kept coming (what keeps a job from being stale; the flag itself depends on when the
  // server is asked, which a loaded test machine can delay).
  assert.ok(j.reports - before.reports >= 3, `reports: ${before.reports} then ${j.reports}`);
  assert.ok(Date.parse(j.reportedAt) > Date.parse(before.reportedAt) + 1500, `last report ${before.reportedAt}, then ${j.reportedAt}`);
  await r.finish({ state: 'succeeded' });
  assert.equal((await reported('quiet:verify')).state, 'succeeded');
  assert.deepEqual(warnings, []);
});
