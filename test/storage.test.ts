// Object storage against a real S3 server (OpenStack Swift with s3api, which verifies SigV4 and
// implements ListParts/Abort): uploads of every format as-is and converted on the fly, downloads
// bit-exact, image info/check through range reads, the file:// store, resume after kill -9
// (early, mid, after Complete) with a tampered part, and every failure class with its code.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HeadObjectCommand, ListPartsCommand, PutObjectCommand, UploadPartCommand } from '@aws-sdk/client-s3';
import { uploadImage } from '../src/transfer/upload.js';
import { downloadObject } from '../src/transfer/download.js';
import { verifyObject } from '../src/transfer/verify.js';
import { loadCheckpoint } from '../src/transfer/checkpoint.js';
import { readManifest } from '../src/transfer/manifest.js';
import { parseLocation } from '../src/storage/location.js';
import { openStore } from '../src/storage/open-store.js';
import { S3Store } from '../src/storage/s3-store.js';
import { FileStore } from '../src/storage/file-store.js';
import { startS3Server, freePorts, type S3Server } from './s3-server.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const BUCKET = 'ferry-test';
let s3: S3Server;
let dir = '';
let raw = '';
let big = '';
const sources: Record<string, string> = {};

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function ferry(env: Record<string, string>, ...args: string[]): Ran {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env, FERRY_DEBUG: '' }, timeout: 240_000 });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** As ferry(), without blocking this process (needed when this process serves the requests). */
function ferryAsync(env: Record<string, string>, ...args: string[]): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env, FERRY_DEBUG: '' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

// JSON documents are read loosely here: the assertions check the fields.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Doc = Record<string, any>;

function doc(r: Ran): Doc {
  try {
    return JSON.parse(r.stdout) as Doc;
  } catch {
    assert.fail(`not one JSON document (exit ${r.code}): ${r.stdout.slice(0, 400)} / ${r.stderr.slice(0, 400)}`);
  }
}

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function qemuCompare(a: string, b: string, formatB?: string): number {
  return spawnSync('qemu-img', ['compare', ...(formatB ? ['-F', formatB] : []), a, b]).status ?? -1;
}

function noStack(r: Ran): void {
  assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+:\d+:\d+/, 'a stack trace was printed');
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-storage-'));
  process.env.FERRY_STATE_DIR = join(dir, 'state');
  s3 = await startS3Server();
  Object.assign(process.env, s3.env);
  await s3.createBucket(BUCKET);
  // 48 MiB: an MBR, text, pseudo-random data and zero holes.
  raw = join(dir, 'disk.raw');
  const buf = Buffer.alloc(48 << 20);
  let x = 7;
  randomBytes(8 << 20).copy(buf, 4 << 20); // incompressible
  buf.write('Ferry object storage test. '.repeat(200000), 20 << 20);
  buf.fill(0x5a, 40 << 20, 41 << 20);
  writeFileSync(raw, buf);
  execFileSync('sfdisk', ['-q', raw], { input: 'label: dos\nstart=2048, size=60000, type=83\n' });
  sources.raw = raw;
  sources.qcow2 = join(dir, 'disk.qcow2');
  execFileSync('qemu-img', ['convert', '-O', 'qcow2', raw, sources.qcow2]);
  sources.vpc = join(dir, 'disk.vhd');
  execFileSync('qemu-img', ['convert', '-O', 'vpc', raw, sources.vpc]);
  sources.vmdk = join(dir, 'disk.vmdk');
  execFileSync('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, sources.vmdk]);
  // 120 MiB of incompressible data for the resume tests (24 parts of 5 MiB).
  big = join(dir, 'big.raw');
  const b = Buffer.alloc(120 << 20);
  for (let i = 0; i < b.length; i += 4) {
    x = (x * 1103515245 + 12345) >>> 0;
    b.writeUInt32LE(x, i);
  }
  writeFileSync(big, b);
});

after(() => {
  s3?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('every format uploads as-is and downloads bit-exact, verified by its manifest', async () => {
  for (const [fmt, path] of Object.entries(sources)) {
    const url = `s3://${BUCKET}/asis/${fmt}`;
    const up = await uploadImage(path, url, { partSize: 5 << 20 });
    assert.equal(up.object.format, fmt);
    assert.equal(up.object.size, readFileSync(path).length);
    assert.equal(up.resumed, false);
    const out = join(dir, `back.${fmt}`);
    const down = await downloadObject(url, out);
    assert.equal(down.verified, 'manifest');
    assert.equal(sha(out), sha(path), `${fmt}: downloaded bytes differ`);
    const v = await verifyObject(url);
    assert.equal(v.digest, up.content.digest);
  }
});

test('uploads convert on the fly to every output kind; qemu-img reads the same disk', async () => {
  // (qemu-img detects a fixed VHD only when told: -F vpc)
  const cases: { name: string; src: string; opts: Parameters<typeof uploadImage>[2]; check: boolean; qemuFormat?: string }[] = [
    { name: 'qcow2-zstd', src: raw, opts: { to: 'qcow2', compress: 'zstd' }, check: true },
    { name: 'qcow2-zlib', src: sources.vmdk!, opts: { compress: 'zlib' }, check: true },
    { name: 'qcow2-plain', src: sources.vpc!, opts: { to: 'qcow2' }, check: true },
    { name: 'vpc-dynamic', src: sources.qcow2!, opts: { to: 'vpc' }, check: false },
    { name: 'vpc-fixed', src: raw, opts: { to: 'vpc', subformat: 'fixed', exactSize: true }, check: false, qemuFormat: 'vpc' },
    { name: 'vmdk-stream', src: sources.qcow2!, opts: { to: 'vmdk' }, check: true },
    { name: 'vmdk-sparse', src: raw, opts: { to: 'vmdk', subformat: 'monolithicSparse' }, check: true },
    { name: 'raw', src: sources.qcow2!, opts: { to: 'raw' }, check: false },
  ];
  for (const c of cases) {
    const url = `s3://${BUCKET}/conv/${c.name}`;
    // 6 MiB parts: part 1, held to the end for the header, is only 5 MiB (S3's minimum), the
    // others 6 — the object's multipart ETag and the download's part checks must follow that.
    const up = await uploadImage(c.src, url, { ...c.opts, partSize: 6 << 20 });
    const loc = parseLocation(url);
    const manifest = await readManifest(openStore(loc), loc.key);
    assert.equal(manifest?.object.firstPartSize, 5 << 20, `${c.name}: part 1 is S3's minimum part size`);
    assert.equal(manifest?.object.partSize, 6 << 20);
    assert.equal((await verifyObject(url)).digest, up.content.digest, `${c.name}: verified by its manifest`);
    const out = join(dir, `conv-${c.name}`);
    await downloadObject(url, out);
    assert.equal(qemuCompare(raw, out, c.qemuFormat), 0, `${c.name}: qemu-img compare says the content differs`);
    if (c.check) assert.equal(spawnSync('qemu-img', ['check', out]).status, 0, `${c.name}: qemu-img check failed`);
    assert.ok(up.bytesSent <= up.object.size, `${c.name}: sent more than the object`);
    rmSync(out);
  }
});

test('raw output with thousands of small runs streams in order into the upload, byte-exact', async () => {
  // 4 KiB of data between 4 KiB holes: the raw writer gets ~1000 runs per 4 MiB chunk; the upload
  // packs bytes into 5 MiB parts in order, so those runs must reach it one after the other.
  const MiB = 1024 * 1024;
  const size = 24 * MiB;
  const holes = Buffer.alloc(size);
  for (let at = 0; at < size; at += 8192) randomBytes(4096).copy(holes, at);
  const holesRaw = join(dir, 'holes.raw');
  writeFileSync(holesRaw, holes);
  const src = join(dir, 'holes.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', holesRaw, src]);
  const url = `s3://${BUCKET}/conv/holes.raw`;
  await uploadImage(src, url, { to: 'raw', partSize: 5 * MiB, concurrency: 2 });
  const out = join(dir, 'holes-back.raw');
  await downloadObject(url, out);
  assert.ok(readFileSync(out).equals(holes), 'the uploaded raw object differs from the source disk');
  rmSync(out);
});

test('image info and check on s3:// objects read only the metadata (range requests)', () => {
  for (const fmt of ['qcow2', 'vpc', 'vmdk']) {
    const size = readFileSync(sources[fmt]!).length;
    const info = ferry({}, 'image', 'info', '--json', `s3://${BUCKET}/asis/${fmt}`);
    assert.equal(info.code, 0, info.stderr);
    const d = doc(info);
    assert.equal(d.format, fmt);
    assert.ok(d.transfer.bytesFetched < size / 4, `${fmt}: info fetched ${d.transfer.bytesFetched} of ${size} bytes`);
    console.log(`# image info s3://…/${fmt}: fetched ${d.transfer.bytesFetched} of ${size} bytes in ${d.transfer.requests} requests`);
    const check = ferry({}, 'image', 'check', '--json', `s3://${BUCKET}/asis/${fmt}`);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.equal(doc(check).verdict, 'clean');
    console.log(`# image check s3://…/${fmt}: fetched ${doc(check).transfer.bytesFetched} of ${size} bytes`);
  }
});

test('the file:// store works with the same commands (embedded default)', () => {
  const store = join(dir, 'store');
  const url = `file://${store}/disk.qcow2`;
  const up = ferry({}, 'upload', '--json', raw, url, '--compress', 'zstd');
  assert.equal(up.code, 0, up.stdout + up.stderr);
  assert.ok(existsSync(join(store, 'disk.qcow2.ferry.json')));
  assert.equal(ferry({}, 'verify', url).code, 0);
  const out = join(dir, 'file-back.qcow2');
  const down = ferry({}, 'download', '--json', url, out);
  assert.equal(down.code, 0, down.stdout + down.stderr);
  assert.equal(qemuCompare(raw, out), 0);
  const info = ferry({}, 'image', 'info', '--json', url);
  assert.equal(doc(info).format, 'qcow2');
});

/** Starts a CLI upload of `big` and SIGKILLs it once the checkpoint records `parts` parts. */
async function killDuringUpload(url: string, parts: number, extra: string[] = []): Promise<{ recorded: number; uploadId: string }> {
  const child = spawn(process.execPath, [BIN, 'upload', '--json', big, url, '--part-size', '5M', '--concurrency', '3', '--bandwidth', '24M', ...extra], {
    env: { ...process.env, FERRY_DEBUG: '' },
    stdio: 'ignore',
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const deadline = Date.now() + 60_000;
  try {
    for (;;) {
      const saved = loadCheckpoint(url);
      if (saved && saved.parts.size >= parts) break;
      if (Date.now() > deadline) assert.fail('the upload did not progress');
      if (child.exitCode !== null) assert.fail(`the upload ended (exit ${child.exitCode}) before ${parts} parts`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  const saved = loadCheckpoint(url)!;
  return { recorded: saved.parts.size, uploadId: saved.checkpoint.uploadId };
}

async function serverParts(key: string, uploadId: string): Promise<Map<number, string>> {
  const r = await s3.client.send(new ListPartsCommand({ Bucket: BUCKET, Key: key, UploadId: uploadId }));
  return new Map((r.Parts ?? []).map((p) => [p.PartNumber!, p.ETag!.replace(/"/g, '')]));
}

test('kill -9 early and mid-upload: the next run resends at most the parts in flight; the object is verified', async () => {
  const total = Math.ceil((120 << 20) / (5 << 20));
  for (const [label, at] of [
    ['early', 2],
    ['mid', 12],
  ] as const) {
    const key = `resume/${label}`;
    const url = `s3://${BUCKET}/${key}`;
    const { recorded, uploadId } = await killDuringUpload(url, at);
    const held = await serverParts(key, uploadId);
    const inFlightDone = held.size - recorded; // parts the server got whose record the kill prevented
    assert.ok(inFlightDone <= 3, `${inFlightDone} parts beyond the checkpoint`);
    const r = ferry({}, 'upload', '--json', big, url, '--part-size', '5M', '--concurrency', '3');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const d = doc(r);
    assert.equal(d.resumed, true);
    assert.equal(d.partsResumed, recorded, 'every recorded part the server holds is trusted');
    assert.equal(d.partsSent, total - recorded);
    const resent = d.partsSent - (total - held.size);
    console.log(`# resume after kill -9 (${label}): ${recorded} parts recorded, server held ${held.size}; this run sent ${d.partsSent} parts (${d.bytesSent} bytes), of which ${resent} re-sent (in flight at the kill)`);
    assert.ok(resent <= 3, 'at most the in-flight parts are sent twice');
    const out = join(dir, `resume-${label}`);
    await downloadObject(url, out);
    assert.equal(sha(out), sha(big));
    rmSync(out);
  }
});

test('a part tampered with on the server is detected and sent again', async () => {
  const key = 'resume/tampered';
  const url = `s3://${BUCKET}/${key}`;
  const { recorded, uploadId } = await killDuringUpload(url, 6);
  // Replace part 2 on the server with other bytes (same size).
  const junk = Buffer.alloc(5 << 20, 0x41);
  await s3.client.send(new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId: uploadId, PartNumber: 2, Body: junk, ContentMD5: createHash('md5').update(junk).digest('base64') }));
  const r = ferry({}, 'upload', '--json', big, url, '--part-size', '5M');
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const d = doc(r);
  assert.equal(d.partsResumed, recorded - 1, 'the tampered part is not trusted');
  assert.equal(ferry({}, 'verify', url).code, 0);
  const out = join(dir, 'tampered-back');
  await downloadObject(url, out);
  assert.equal(sha(out), sha(big));
  rmSync(out);
});

test('kill -9 right after Complete: the next run sends nothing, checks the object and writes the manifest', async () => {
  const url = `s3://${BUCKET}/resume/completed`;
  const first = ferry({ FERRY_FAULT: 'kill-after-complete' }, 'upload', '--json', raw, url, '--part-size', '5M', '--to', 'qcow2');
  assert.equal(first.signal, 'SIGKILL');
  assert.equal(ferry({}, 'verify', url).code, 9, 'no manifest yet: verify fails');
  const r = ferry({}, 'upload', '--json', raw, url, '--part-size', '5M', '--to', 'qcow2');
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const d = doc(r);
  assert.equal(d.resumed, true);
  assert.equal(d.bytesSent, 0);
  console.log(`# resume after kill -9 after Complete: sent ${d.bytesSent} bytes, ${d.partsResumed} parts checked`);
  assert.equal(ferry({}, 'verify', url).code, 0);
});

test('interrupted uploads can be listed and aborted (upload --abort, storage uploads, storage gc)', async () => {
  const key = 'abandoned/one';
  const url = `s3://${BUCKET}/${key}`;
  await killDuringUpload(url, 1);
  const list = doc(ferry({}, 'storage', 'uploads', '--json', `s3://${BUCKET}/abandoned/`));
  assert.ok(list.uploads.some((u: { key: string }) => u.key === key));
  const ab = ferry({}, 'upload', '--abort', '--json', big, url);
  assert.equal(ab.code, 0, ab.stdout + ab.stderr);
  assert.equal(loadCheckpoint(url), undefined);
  assert.ok(!doc(ferry({}, 'storage', 'uploads', '--json', `s3://${BUCKET}/abandoned/`)).uploads.some((u: { key: string }) => u.key === key));
  await killDuringUpload(`s3://${BUCKET}/abandoned/two`, 1);
  const dry = doc(ferry({}, 'storage', 'gc', '--json', '--older-than', '0s', '--dry-run', `s3://${BUCKET}/abandoned/`));
  assert.equal(dry.aborted.length, 1);
  const gc = doc(ferry({}, 'storage', 'gc', '--json', '--older-than', '0s', `s3://${BUCKET}/abandoned/`));
  assert.equal(gc.aborted.length, 1);
  assert.equal(doc(ferry({}, 'storage', 'uploads', '--json', `s3://${BUCKET}/abandoned/`)).uploads.length, 0);
});

test('a damaged image uploaded as-is is refused before the object exists, and nothing is kept to resume', async () => {
  // A qcow2 cut short: its header and tables are whole, the last data clusters are missing. As-is
  // uploads decode the content (for the manifest) while the bytes go up; the decoding finds it.
  const whole = join(dir, 'big.qcow2');
  execFileSync('qemu-img', ['convert', '-O', 'qcow2', big, whole]);
  const cut = join(dir, 'cut.qcow2');
  const bytes = readFileSync(whole);
  writeFileSync(cut, bytes.subarray(0, bytes.length - (30 << 20)));
  const key = 'damaged/cut.qcow2';
  const url = `s3://${BUCKET}/${key}`;
  const r = ferry({}, 'upload', '--json', cut, url, '--part-size', '5M');
  assert.equal(r.code, 2, r.stdout + r.stderr);
  const e = JSON.parse(r.stdout).error;
  assert.equal(e.code, 'IMAGE_TRUNCATED', r.stdout);
  assert.doesNotMatch(e.remedy, /resume/, 'running again cannot mend the image: no resume advice');
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  await assert.rejects(s3.client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key })), 'no object under the key');
  assert.ok(!doc(ferry({}, 'storage', 'uploads', '--json', `s3://${BUCKET}/damaged/`)).uploads.some((u: { key: string }) => u.key === key), 'its multipart upload was aborted');
  assert.equal(loadCheckpoint(url), undefined, 'no checkpoint left');
  rmSync(whole);
  rmSync(cut);
});

test('wrong credentials, missing bucket, missing object, unreachable endpoint: clear errors, no stack trace', async () => {
  const wrong = ferry({ AWS_SECRET_ACCESS_KEY: 'not-the-secret' }, 'upload', '--json', raw, `s3://${BUCKET}/x`);
  noStack(wrong);
  assert.equal(wrong.code, 8);
  assert.equal(doc(wrong).error.code, 'AUTH_FAILED');
  const noSource = ferry({ AWS_SECRET_ACCESS_KEY: 'not-the-secret' }, 'upload', '--json', join(dir, 'no-such-image'), `s3://${BUCKET}/x`);
  assert.equal(doc(noSource).error.code, 'FILE_NOT_FOUND', 'the local source is checked first');
  const bucket = ferry({}, 'upload', '--json', raw, 's3://no-such-bucket-here/x');
  assert.equal(bucket.code, 8);
  assert.equal(doc(bucket).error.code, 'BUCKET_NOT_FOUND');
  const missing = ferry({}, 'download', '--json', `s3://${BUCKET}/nothing/here`, join(dir, 'nothing'));
  assert.equal(doc(missing).error.code, 'OBJECT_NOT_FOUND');
  const infoMissing = ferry({}, 'image', 'info', '--json', `s3://${BUCKET}/nothing/here`);
  assert.equal(doc(infoMissing).error.code, 'OBJECT_NOT_FOUND');
  const port = await freePorts(1);
  const started = Date.now();
  const down = ferry({ AWS_ENDPOINT_URL: `http://127.0.0.1:${port}` }, 'upload', '--json', raw, `s3://${BUCKET}/x`);
  noStack(down);
  assert.equal(down.code, 8);
  assert.equal(doc(down).error.code, 'STORAGE_UNREACHABLE');
  console.log(`# unreachable endpoint reported after ${((Date.now() - started) / 1000).toFixed(1)} s (with retries)`);
  for (const r of [wrong, bucket, missing, down]) assert.ok(doc(r).error.remedy.length > 20);
});

/** An HTTP proxy in front of the S3 server that answers `503 SlowDown` to the first `n` requests. */
function slowDownProxy(n: number): Promise<{ server: Server; url: string; refused: () => number }> {
  const target = new URL(s3.endpoint);
  let refused = 0;
  const server = createServer((req, res) => {
    if (refused < n) {
      refused++;
      req.resume();
      res.writeHead(503, { 'content-type': 'application/xml' });
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>');
      return;
    }
    const fwd = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    fwd.on('error', () => res.destroy());
    req.pipe(fwd);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, refused: () => refused })));
}

test('throttling (503 SlowDown) is retried with backoff; endless throttling is reported', async () => {
  const some = await slowDownProxy(3);
  try {
    const r = await ferryAsync({ AWS_ENDPOINT_URL: some.url }, 'upload', '--json', raw, `s3://${BUCKET}/throttled`, '--to', 'qcow2');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(some.refused(), 3);
  } finally {
    some.server.close();
  }
  const always = await slowDownProxy(1e9);
  try {
    const r = await ferryAsync({ AWS_ENDPOINT_URL: always.url }, 'download', '--json', `s3://${BUCKET}/throttled`, join(dir, 'never'));
    noStack(r);
    assert.equal(r.code, 8);
    assert.equal(doc(r).error.code, 'STORAGE_THROTTLED');
    assert.ok(always.refused() >= 6, `only ${always.refused()} attempts`);
  } finally {
    always.server.close();
  }
});

test('download onto a full disk fails with TARGET_NO_SPACE and leaves nothing behind', () => {
  const mnt = join(dir, 'small-fs');
  mkdirSync(mnt);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mnt]);
  try {
    const r = ferry({}, 'download', '--json', `s3://${BUCKET}/asis/raw`, join(mnt, 'disk.raw'));
    noStack(r);
    assert.equal(r.code, 7);
    assert.equal(doc(r).error.code, 'TARGET_NO_SPACE');
    assert.deepEqual(readdirSync(mnt), []);
  } finally {
    execFileSync('umount', [mnt]);
  }
});

test('--bandwidth limits the upload rate (a 12 MiB upload at 4 MB/s cannot finish in under 2 s)', () => {
  const src = join(dir, 'rate.raw');
  writeFileSync(src, randomBytes(12 << 20));
  const started = Date.now();
  const r = ferry({}, 'upload', '--json', src, `file://${join(dir, 'rate-store')}/rate.raw`, '--bandwidth', '4M', '--part-size', '5M');
  const seconds = (Date.now() - started) / 1000;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  // The token bucket allows one second of burst: 12 MiB at 4 MB/s needs at least ~2.1 s.
  assert.ok(seconds >= 2, `took only ${seconds} s`);
  console.log(`# 12 MiB with --bandwidth 4M: ${seconds.toFixed(1)} s`);
});

test('part layout: uniform parts for Cloudflare R2 (it wants every part but the last the same size) and on request; a short part 1 elsewhere', () => {
  const uniform = (endpoint: string | undefined, env?: string) => {
    const saved = process.env.FERRY_UNIFORM_PARTS;
    if (env === undefined) delete process.env.FERRY_UNIFORM_PARTS;
    else process.env.FERRY_UNIFORM_PARTS = env;
    try {
      return new S3Store('b', endpoint ? { endpoint } : {}).uniformParts;
    } finally {
      if (saved === undefined) delete process.env.FERRY_UNIFORM_PARTS;
      else process.env.FERRY_UNIFORM_PARTS = saved;
    }
  };
  assert.equal(uniform('https://0123456789abcdef.r2.cloudflarestorage.com'), true);
  assert.equal(uniform('https://0123456789abcdef.eu.r2.cloudflarestorage.com/'), true);
  assert.equal(uniform('https://minio.example:9000'), false);
  assert.equal(uniform(undefined), false, 'AWS');
  assert.equal(uniform('https://r2.cloudflarestorage.com.example.org'), false, 'not an R2 host');
  assert.equal(uniform('https://minio.example:9000', '1'), true, 'FERRY_UNIFORM_PARTS=1');
  assert.equal(new FileStore('/nonexistent').uniformParts, true, 'the file:// store lays parts out by number');
});

test('a format whose tables outgrow a part (VMDK monolithicSparse of a 160 GiB disk) uploads to a one-part-size store; a too small --part-size is refused', () => {
  // 20 MiB of grain tables at the start (more than a 16 MiB part), rewritten at the end: they
  // must all be in part 1.
  const sparse = join(dir, 'tib.raw');
  writeFileSync(sparse, '');
  execFileSync('truncate', ['-s', '160G', sparse]);
  execFileSync('dd', [`of=${sparse}`, 'if=/dev/urandom', 'bs=1M', 'count=3', 'seek=100000', 'conv=notrunc', 'status=none']);
  const store = join(dir, 'tib-store');
  const up = ferry({}, 'upload', '--json', sparse, `file://${store}/tib.vmdk`, '--to', 'vmdk', '--subformat', 'monolithicSparse');
  assert.equal(up.code, 0, up.stdout + up.stderr);
  const object = doc(up).object as { partSize: number; parts: number };
  assert.ok(object.partSize >= 20 << 20, `part size ${object.partSize} holds the 20 MiB of tables`);
  assert.equal(qemuCompare(sparse, join(store, 'tib.vmdk'), 'vmdk'), 0);
  const small = ferry({}, 'upload', '--json', sparse, `file://${store}/tib2.vmdk`, '--to', 'vmdk', '--subformat', 'monolithicSparse', '--part-size', '16M');
  assert.equal(small.code, 64, small.stdout + small.stderr);
  assert.match(small.stderr + small.stdout, /USAGE[\s\S]*--part-size 21M or more/);
  noStack(small);
  rmSync(sparse);
  rmSync(store, { recursive: true, force: true });
});

test('download checks each part as it arrives: a byte changed on the server is named by its part, and no file is left', async () => {
  const url = `s3://${BUCKET}/changed.raw`;
  const up = ferry({}, 'upload', '--json', raw, url, '--part-size', '5M');
  assert.equal(up.code, 0, up.stdout + up.stderr);
  // The same size with one byte changed in the third part (bytes 10..15 MiB), the manifest kept.
  const body = readFileSync(raw);
  body[12 << 20] ^= 0x40;
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'changed.raw', Body: body }));
  const out = join(dir, 'changed-back.raw');
  const down = ferry({}, 'download', '--json', url, out);
  assert.equal(down.code, 9, down.stdout + down.stderr);
  assert.match(down.stdout + down.stderr, /CHECKSUM_MISMATCH[\s\S]*part 3 \(bytes 10485760\.\./);
  noStack(down);
  assert.equal(existsSync(out), false, 'no file under the final name');
  assert.deepEqual(readdirSync(dir).filter((n) => n.includes('changed-back')), [], 'no temporary file either');
  // An object without a manifest is checked against its ETag (one part: the MD5 of its bytes).
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'plain.raw', Body: body }));
  const plain = await downloadObject(`s3://${BUCKET}/plain.raw`, join(dir, 'plain-back.raw'));
  assert.equal(plain.verified, 'etag');
  assert.equal(sha(join(dir, 'plain-back.raw')), createHash('sha256').update(body).digest('hex'));
});

test('download of parts larger than a piece (40 MiB parts, fetched 16 MiB at a time) is bit-exact; a changed byte names its part', async () => {
  const url = `s3://${BUCKET}/large-parts.raw`;
  const up = ferry({}, 'upload', '--json', big, url, '--part-size', '40M');
  assert.equal(up.code, 0, up.stdout + up.stderr);
  assert.equal((doc(up).object as { parts: number }).parts, 4, 'a 5 MiB part 1, then 40 + 40 + 35 MiB');
  const out = join(dir, 'large-parts-back.raw');
  const down = ferry({}, 'download', '--json', url, out);
  assert.equal(down.code, 0, down.stdout + down.stderr);
  assert.equal(doc(down).verified, 'manifest');
  assert.equal(sha(out), sha(big));
  rmSync(out);
  // One byte changed in part 3 (bytes 45..85 MiB), in its last piece.
  const body = readFileSync(big);
  body[(85 << 20) - 7] ^= 1;
  await s3.client.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'large-parts.raw', Body: body }));
  const bad = ferry({}, 'download', '--json', url, out);
  assert.equal(bad.code, 9, bad.stdout + bad.stderr);
  assert.match(bad.stdout + bad.stderr, /CHECKSUM_MISMATCH[\s\S]*part 3 \(bytes 47185920\.\.89128960\)/);
  assert.equal(existsSync(out), false);
});

test('download checks the content before the file gets its name: a manifest whose content digest differs leaves no file', () => {
  const store = join(dir, 'cm-store');
  const url = `file://${store}/cm.raw`;
  assert.equal(ferry({}, 'upload', '--json', raw, url).code, 0);
  const mpath = join(store, 'cm.raw.ferry.json');
  const m = JSON.parse(readFileSync(mpath, 'utf8')) as { content: { digest: string; chunks: string[] } };
  m.content.chunks[3] = createHash('sha256').update('not this chunk').digest('hex');
  m.content.digest = createHash('sha256').update(Buffer.concat(m.content.chunks.map((c) => Buffer.from(c, 'hex')))).digest('hex');
  writeFileSync(mpath, JSON.stringify(m));
  const out = join(dir, 'cm-back.raw');
  const down = ferry({}, 'download', '--json', url, out);
  assert.equal(down.code, 9, down.stdout + down.stderr);
  assert.match(down.stdout + down.stderr, /CHECKSUM_MISMATCH[\s\S]*first in chunk 3 \(virtual bytes 12582912\.\./);
  noStack(down);
  assert.equal(existsSync(out), false, 'no file under the final name');
  assert.deepEqual(readdirSync(dir).filter((n) => n.includes('cm-back')), [], 'no temporary file either');
});

test("an output whose tables alone exceed S3's largest part (VMDK monolithicSparse of 48 TiB) is refused up front, by what it is", () => {
  const huge = join(dir, 'huge.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', huge, '48T']);
  for (const url of [`file://${join(dir, 'huge-store')}/h.vmdk`, `s3://${BUCKET}/h.vmdk`]) {
    const r = ferry({}, 'upload', '--json', huge, url, '--to', 'vmdk', '--subformat', 'monolithicSparse');
    assert.equal(r.code, 64, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /bytes of tables, more than one part can hold[\s\S]*streamOptimized/);
    noStack(r);
  }
});
