// `ferry server`: the control plane over a state directory holding a succeeded and a failed import
// (made with the CLI). The API refuses every call without the token (reads and writes), lists both
// jobs with progress and the failure's code, message and remedy, refuses to retry a finished job,
// starts an import on POST (which then appears and succeeds); the console page and the metrics are
// served.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileSha } from './file-sha.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
let dir = '';
let server: ChildProcess | undefined;
let base = '';
let token = '';

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
  server = spawn(process.execPath, [BIN, 'server', '--listen', '127.0.0.1:0', '--data-dir', join(dir, 'state'), '--json'], { env: { ...process.env, FERRY_SERVER_SAMPLE_MS: '100', FERRY_PROGRESS_MS: '100' } });
  let out = '';
  server.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (let i = 0; i < 200 && !out.includes('\n'); i++) await new Promise((r) => setTimeout(r, 50));
  const first = JSON.parse(out.split('\n')[0]!) as { address: string; token: string; console: string };
  base = `http://${first.address}`;
  token = first.token;
  assert.match(first.console, /#token=/);
});

after(() => {
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
