// `ferry import https://…` and `ferry image info https://…` against a real web server (Debian's
// nginx, started here on 127.0.0.1 with a self-signed certificate made by openssl): range reads,
// the manifest found beside the file, TLS trust through NODE_EXTRA_CA_CERTS (and a clear error
// without it), a missing file, a truncated file, a file without a manifest (--verify), and a kill
// -9 mid-import resumed from the job's checkpoint.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileSha } from './file-sha.js';
import { freePorts } from './s3-server.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const MiB = 1024 * 1024;
let dir = '';
let www = '';
let base = '';
let nginx: ChildProcess | undefined;
let want = '';
const SIZE = 96 * MiB;

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function ferry(env: Record<string, string>, ...args: string[]): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, NODE_EXTRA_CA_CERTS: join(dir, 'cert.pem'), FERRY_DEBUG: '', ...env },
    timeout: 120_000,
  });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

function doc<T = Record<string, unknown>>(r: Ran): T {
  assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+:\d+:\d+/, 'a stack trace was printed');
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    assert.fail(`no JSON (exit ${r.code}): ${r.stdout.slice(0, 300)} ${r.stderr.slice(-600)}`);
  }
}

const errorOf = (r: Ran) => doc<{ error: { code: string; message: string; remedy: string } }>(r).error;

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = spawnSync('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`]);
    if (r.status === 0) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`nginx did not listen on ${port}: ${readFileSync(join(dir, 'error.log'), 'utf8')}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-https-'));
  process.env.FERRY_STATE_DIR = join(dir, 'state');
  www = join(dir, 'www');
  mkdirSync(www);
  mkdirSync(join(dir, 'tmp'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'),
  ], { stdio: 'ignore' });
  const port = await freePorts(1);
  writeFileSync(
    join(dir, 'nginx.conf'),
    `daemon off;
master_process off;
user root;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events {}
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${dir}/cert.pem;
    ssl_certificate_key ${dir}/key.pem;
    root ${www};
  }
}
`,
  );
  nginx = spawn('nginx', ['-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')], { stdio: 'ignore' });
  await waitForPort(port);
  base = `https://127.0.0.1:${port}`;
  // The disk: random data in every other MiB.
  const buf = Buffer.alloc(SIZE);
  for (let at = 0; at < SIZE; at += 2 * MiB) randomBytes(MiB).copy(buf, at);
  writeFileSync(join(dir, 'disk.raw'), buf);
  want = createHash('sha256').update(buf).digest('hex');
  // Published the way Ferry stores it (a file:// store is a directory: object + manifest beside it).
  const up = ferry({}, 'upload', '--json', join(dir, 'disk.raw'), `file://${www}/disk.qcow2`, '--to', 'qcow2', '--compress', 'zstd');
  assert.equal(up.code, 0, up.stdout + up.stderr);
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(dir, 'disk.raw'), join(www, 'plain.vmdk')]);
});

after(() => {
  nginx?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('import from https:// with the manifest beside the file: bit-identical and verified', () => {
  const target = join(dir, 't1.raw');
  const r = ferry({}, 'import', '--json', `${base}/disk.qcow2`, '--target', target);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const d = doc<{ verified: string; bytesFetched: number; format: string }>(r);
  assert.equal(d.verified, 'manifest');
  assert.equal(d.format, 'qcow2');
  assert.equal(fileSha(target, SIZE), want);
  const info = doc<{ format: string; virtualSize: number }>(ferry({}, 'image', 'info', '--json', `${base}/disk.qcow2`));
  assert.equal(info.format, 'qcow2');
  assert.equal(info.virtualSize, SIZE);
});

test('a file without a manifest: imported, and compared with the source under --verify', () => {
  const target = join(dir, 't2.raw');
  const r = ferry({}, 'import', '--json', '--verify', `${base}/plain.vmdk`, '--target', target);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(doc<{ verified: string }>(r).verified, 'reread');
  assert.equal(fileSha(target, SIZE), want);
});

test('an untrusted certificate, a missing file and a truncated file are each named', () => {
  const untrusted = errorOf(ferry({ NODE_EXTRA_CA_CERTS: '' }, 'import', '--json', `${base}/disk.qcow2`, '--target', join(dir, 'never1.raw')));
  assert.equal(untrusted.code, 'STORAGE_UNREACHABLE');
  assert.match(untrusted.message, /certificate is not trusted/);
  assert.match(untrusted.remedy, /NODE_EXTRA_CA_CERTS/);
  assert.equal(errorOf(ferry({}, 'import', '--json', `${base}/no-such.qcow2`, '--target', join(dir, 'never2.raw'))).code, 'OBJECT_NOT_FOUND');
  copyFileSync(join(www, 'disk.qcow2'), join(www, 'cut.qcow2'));
  copyFileSync(join(www, 'disk.qcow2.ferry.json'), join(www, 'cut.qcow2.ferry.json'));
  truncateSync(join(www, 'cut.qcow2'), 2 * MiB);
  assert.equal(errorOf(ferry({}, 'import', '--json', `${base}/cut.qcow2`, '--target', join(dir, 'never3.raw'))).code, 'UPLOAD_INCOMPLETE');
  const upload = errorOf(ferry({}, 'upload', '--json', join(dir, 'disk.raw'), `${base}/up.raw`));
  assert.equal(upload.code, 'USAGE');
  assert.match(upload.message, /read-only/);
});

test('kill -9 during an https import, then `ferry jobs retry`: resumed, bit-identical', () => {
  const target = join(dir, 't3.raw');
  const first = ferry({ FERRY_FAULT: `kill-at-byte:${60 * MiB}` }, 'import', '--json', `${base}/disk.qcow2`, '--target', target);
  assert.equal(first.signal, 'SIGKILL');
  const jobs = doc<{ jobs: { id: string; written: number }[] }>(ferry({}, 'jobs', 'list', '--json')).jobs;
  const job = jobs[0]!;
  assert.ok(job.written > 0, 'the killed run had written part of the disk');
  const again = ferry({}, 'jobs', 'retry', job.id, '--json');
  assert.equal(again.code, 0, again.stdout + again.stderr);
  const d = doc<{ resumedAt: number; verified: string }>(again);
  assert.equal(d.resumedAt, job.written);
  assert.equal(d.verified, 'manifest');
  assert.equal(fileSha(target, SIZE), want);
});
