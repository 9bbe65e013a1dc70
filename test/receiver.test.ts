// The receiver against hostile senders (real TLS on 127.0.0.1, a file as the target disk): frames
// that point outside the disk, ranges outside their chunk, a chunk whose digest does not match,
// oversized frames and a hello without the token are refused, and the disk stays untouched; a
// mounted disk and a too-small disk are refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type TLSSocket } from 'node:tls';
import { startReceiver, type Receiver } from '../src/online/receiver.js';
import { FrameReader, CODEC_RAW, PROTOCOL_VERSION, chunkDigest, encodeDataHeader, frame, sendFrame } from '../src/online/wire.js';

const MiB = 1024 * 1024;
let dir = '';
let disk = '';
let rx: Receiver;
const events: { event: string; reason?: string }[] = [];
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
let original = '';

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-receiver-'));
  disk = join(dir, 'disk.img');
  writeFileSync(disk, randomBytes(4 * MiB));
  original = sha(readFileSync(disk));
  rx = await startReceiver({ listen: '127.0.0.1:0', disks: [{ name: 'd', path: disk }], token: 'secret-token', stateDir: join(dir, 'state'), onEvent: (e) => events.push(e as { event: string }) });
});

after(async () => {
  await rx?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function session(token = 'secret-token'): Promise<{ socket: TLSSocket; reader: FrameReader; welcome: string }> {
  const socket = await new Promise<TLSSocket>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: rx.port, rejectUnauthorized: false }, () => resolve(s));
    s.once('error', reject);
  });
  assert.equal(socket.getPeerX509Certificate()?.fingerprint256, rx.fingerprint);
  const reader = new FrameReader(socket);
  await sendFrame(socket, 'H', { version: PROTOCOL_VERSION, token, role: 'data', disks: [{ name: 'd', size: 4 * MiB }] });
  const w = await reader.next();
  return { socket, reader, welcome: w ? `${w.type}:${w.payload.toString()}` : 'closed' };
}

async function refused(body: Buffer): Promise<string> {
  const s = await session();
  assert.match(s.welcome, /^W:/);
  await sendFrame(s.socket, 'D', body);
  const r = await s.reader.next();
  s.socket.destroy();
  assert.equal(r?.type, 'E', 'an error frame');
  return (JSON.parse(r!.payload.toString()) as { code: string; message: string }).code;
}

test('hostile data frames are refused and nothing is written', async () => {
  const data = Buffer.alloc(MiB, 7);
  const ranges = [{ offset: 0, length: MiB }];
  const good = { disk: 0, offset: 0, length: MiB, codec: CODEC_RAW, digest: chunkDigest(ranges, data), ranges };
  // Past the end of the disk.
  assert.equal(await refused(Buffer.concat([encodeDataHeader({ ...good, offset: 4 * MiB }), data])), 'PROTOCOL_ERROR');
  // Not on the chunk grid.
  assert.equal(await refused(Buffer.concat([encodeDataHeader({ ...good, offset: 512 }), data])), 'PROTOCOL_ERROR');
  // A disk this connection did not open.
  assert.equal(await refused(Buffer.concat([encodeDataHeader({ ...good, disk: 3 }), data])), 'PROTOCOL_ERROR');
  // A range reaching out of its chunk.
  assert.equal(await refused(Buffer.concat([encodeDataHeader({ ...good, ranges: [{ offset: 512, length: MiB }] }), data])), 'PROTOCOL_ERROR');
  // Fewer bytes than the ranges claim.
  assert.equal(await refused(Buffer.concat([encodeDataHeader(good), data.subarray(0, 1000)])), 'PROTOCOL_ERROR');
  // Damaged in transit: the digest does not match.
  const damaged = Buffer.from(data);
  damaged[12345] ^= 1;
  assert.equal(await refused(Buffer.concat([encodeDataHeader(good), damaged])), 'CHECKSUM_MISMATCH');
  // An oversized frame header.
  const s = await session();
  const [head] = frame('D', Buffer.alloc(0));
  head!.writeUInt32BE(512 * MiB, 1);
  s.socket.write(head!);
  const closed = await s.reader.next().then(
    (f) => f?.type ?? 'closed',
    () => 'closed',
  );
  s.socket.destroy();
  assert.ok(closed === 'E' || closed === 'closed');
  assert.equal(sha(readFileSync(disk)), original, 'the disk is untouched');
});

test('a wrong token is refused and logged; a good chunk is written and acknowledged', async () => {
  const bad = await session('guess');
  assert.match(bad.welcome, /^E:.*TOKEN_REJECTED/);
  bad.socket.destroy();
  assert.ok(events.some((e) => e.event === 'rejected' && e.reason === 'wrong token'));
  const data = randomBytes(MiB);
  const ranges = [{ offset: 4096, length: MiB - 8192 }];
  const zeroFilled = Buffer.alloc(MiB);
  data.copy(zeroFilled, 4096, 4096, MiB - 4096);
  const s = await session();
  await sendFrame(s.socket, 'D', Buffer.concat([encodeDataHeader({ disk: 0, offset: MiB, length: MiB, codec: CODEC_RAW, digest: chunkDigest(ranges, zeroFilled), ranges }), data.subarray(4096, MiB - 4096)]));
  const ack = await s.reader.next();
  s.socket.destroy();
  assert.equal(ack?.type, 'A');
  const now = readFileSync(disk);
  assert.ok(now.subarray(MiB + 4096, 2 * MiB - 4096).equals(data.subarray(4096, MiB - 4096)), 'the used range was written');
});

test('an unknown disk name, a too-small block device and a mounted disk are refused', async () => {
  const s = await new Promise<TLSSocket>((resolve, reject) => {
    const c = connect({ host: '127.0.0.1', port: rx.port, rejectUnauthorized: false }, () => resolve(c));
    c.once('error', reject);
  });
  const reader = new FrameReader(s);
  // A file target grows to the source size; a name the receiver does not have is refused.
  await sendFrame(s, 'H', { version: PROTOCOL_VERSION, token: 'secret-token', role: 'data', disks: [{ name: 'nope', size: MiB }] });
  const f = await reader.next();
  s.destroy();
  assert.equal(f?.type, 'E');
  assert.match(f!.payload.toString(), /TARGET_NOT_FOUND/);
  // A block device smaller than the source disk.
  const small = join(dir, 'small.img');
  writeFileSync(small, Buffer.alloc(MiB));
  const dev = execFileSync('losetup', ['--find', '--show', small], { encoding: 'utf8' }).trim();
  try {
    const rx2 = await startReceiver({ listen: '127.0.0.1:0', disks: [{ name: 's', path: dev }], token: 't', stateDir: join(dir, 'state3') });
    try {
      const c = await new Promise<TLSSocket>((resolve, reject) => {
        const x = connect({ host: '127.0.0.1', port: rx2.port, rejectUnauthorized: false }, () => resolve(x));
        x.once('error', reject);
      });
      const r = new FrameReader(c);
      await sendFrame(c, 'H', { version: PROTOCOL_VERSION, token: 't', role: 'data', disks: [{ name: 's', size: 4 * MiB }] });
      const e = await r.next();
      c.destroy();
      assert.equal(e?.type, 'E');
      assert.match(e!.payload.toString(), /TARGET_TOO_SMALL/);
    } finally {
      await rx2.close();
    }
  } finally {
    execFileSync('losetup', ['-d', dev]);
  }
  // A mounted block device: O_EXCL refuses it.
  const fsFile = join(dir, 'fs.img');
  writeFileSync(fsFile, Buffer.alloc(8 * MiB));
  execFileSync('mkfs.ext4', ['-q', '-F', fsFile]);
  const fsDev = execFileSync('losetup', ['--find', '--show', fsFile], { encoding: 'utf8' }).trim();
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  try {
    execFileSync('mount', [fsDev, mnt]);
    try {
      await assert.rejects(startReceiver({ listen: '127.0.0.1:0', disks: [{ name: 'm', path: fsDev }], token: 't', stateDir: join(dir, 'state2') }), (err: Error & { code?: string }) => err.code === 'TARGET_IN_USE');
    } finally {
      execFileSync('umount', [mnt]);
    }
  } finally {
    execFileSync('losetup', ['-d', fsDev]);
  }
});

test('ferry import onto a receiver\'s disk (ferry://HOST:PORT/NAME): written, read back and compared', async () => {
  const raw = join(dir, 'src.raw');
  const img = Buffer.alloc(6 * MiB);
  randomBytes(MiB).copy(img, 512 * 1024); // data across a chunk boundary, zeros elsewhere
  randomBytes(MiB).copy(img, 4 * MiB);
  writeFileSync(raw, img);
  const qcow2 = join(dir, 'src.qcow2');
  execFileSync('qemu-img', ['convert', '-O', 'qcow2', raw, qcow2]);
  writeFileSync(disk, Buffer.alloc(4 * MiB, 0xee)); // stale bytes the import must overwrite (zeros too)
  const bin = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
  const run = (...args: string[]) =>
    new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const c = spawn(process.execPath, [bin, ...args], { env: { ...process.env, FERRY_STATE_DIR: join(dir, 'jobs'), FERRY_DEBUG: '' } });
      let stdout = '';
      c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      c.on('close', (code) => resolve({ code, stdout }));
    });
  const r = await run('import', '--json', qcow2, '--target', `ferry://127.0.0.1:${rx.port}/d`, '--fingerprint', rx.fingerprint, '--token', 'secret-token');
  assert.equal(r.code, 0, r.stdout);
  assert.equal((JSON.parse(r.stdout) as { verified: string }).verified, 'reread');
  assert.equal(sha(readFileSync(disk).subarray(0, 6 * MiB)), sha(img), 'the receiver\'s disk holds the image');
  const bad = await run('import', '--json', qcow2, '--target', `ferry://127.0.0.1:${rx.port}/d`, '--fingerprint', rx.fingerprint, '--token', 'wrong-token');
  assert.equal(bad.code, 10);
  assert.equal((JSON.parse(bad.stdout) as { error: { code: string } }).error.code, 'TOKEN_REJECTED');
});

test('a sender writing ahead of its acknowledgements gets the error of a bad chunk and the connection ends (no hang); data connections are offered a window within the budget', async () => {
  const s = await session();
  const welcome = JSON.parse(s.welcome.slice(2)) as { maxWindowLog?: number };
  assert.equal(welcome.maxWindowLog, 26, 'one data connection: a 64 MiB window');
  const second = await session();
  assert.equal((JSON.parse(second.welcome.slice(2)) as { maxWindowLog?: number }).maxWindowLog, 26, 'two: 256 MiB / 2 is still above the cap');
  second.socket.destroy();
  const ranges = [{ offset: 0, length: MiB }];
  const good = randomBytes(MiB);
  const frameFor = (offset: number, damaged: boolean) => {
    const data = damaged ? Buffer.from(good).fill(7, 0, 16) : good;
    return Buffer.concat([encodeDataHeader({ disk: 0, offset, length: MiB, codec: CODEC_RAW, digest: chunkDigest(ranges, good), ranges }), data]);
  };
  const closed = new Promise<number>((resolve) => s.socket.once('close', () => resolve(Date.now())));
  s.socket.on('error', () => {});
  // 32 frames written without reading a reply; the second one is damaged.
  const started = Date.now();
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 32; i++) writes.push(sendFrame(s.socket, 'D', frameFor((i % 4) * MiB, i === 1)).catch(() => {}));
  const end = await Promise.race([closed, new Promise<number>((resolve) => setTimeout(() => resolve(-1), 15_000))]);
  assert.notEqual(end, -1, 'the receiver ended the connection');
  assert.ok(end - started < 10_000, `ended after ${end - started} ms`);
  await Promise.all(writes);
  const first = await s.reader.next();
  const then = await s.reader.next();
  assert.equal(first?.type, 'A');
  assert.equal(then?.type, 'E');
  assert.equal((JSON.parse(then!.payload.toString()) as { code: string }).code, 'CHECKSUM_MISMATCH');
});
