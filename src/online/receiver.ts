// `ferry receive`: puts a machine in migration mode. A TLS 1.3 server (self-signed certificate,
// pinned by the sender through its fingerprint) that accepts senders presenting the token, and
// writes only the disks it was given (NAME=PATH): a block device (opened exclusively — a mounted
// disk is refused) or a file. Every chunk is decompressed within its declared bounds, checked
// against its digest, and written only inside its disk; what was written is recorded (SQLite,
// per target: chunk offset, range list, digest), which is what lets a sender resume after a
// dropped connection or a restart, and send only changed chunks in later rounds. Rejected clients
// (not TLS, wrong token) are logged with their address; tokens are never logged.
// Verification: the disk is flushed every 16 MiB written, and the chunks written before each flush
// are then re-read in the background and checked against their digests; the sender's final
// verify request re-reads only the chunks not checked that way (the last few, or rewritten ones).
import { constants, type FileHandle, open, stat } from 'node:fs/promises';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type TLSSocket, type Server } from 'node:tls';
import { fsExt, sqlite } from '../lazy-modules.js';
import { FerryError } from '../errors.js';
import { stateDir } from '../transfer/checkpoint.js';
import { canonicalTarget } from '../jobs/target-lock.js';
import { newToken, receiverIdentity, tokensEqual } from './identity.js';
import { StreamUnpacker, unpackChunk } from './pack.js';
import { mergeRanges, type Range } from './ranges.js';
import {
  CHUNK_SIZE,
  FrameReader,
  PROTOCOL_VERSION,
  STREAM_WINDOW_LOG_MAX,
  chunkDigest,
  decodeData,
  type DataHeader,
  encodeAck,
  encodeKnown,
  json,
  protocolError,
  rangeBytes,
  sendFrame,
  type Frame,
} from './wire.js';

export interface ReceiveDisk {
  name: string;
  path: string;
}

export interface ReceiverEvent {
  event: 'listening' | 'connected' | 'rejected' | 'disk-opened' | 'verified' | 'closed' | 'error';
  [key: string]: unknown;
}

export interface ReceiveOptions {
  /** host:port (port 0: any free port). */
  listen: string;
  disks: ReceiveDisk[];
  /** Default: a new random token (printed once by the CLI). */
  token?: string;
  /** Where the certificate and the record of written chunks live (default: the state directory). */
  stateDir?: string;
  onEvent?: (e: ReceiverEvent) => void;
}

export interface Receiver {
  address: string;
  port: number;
  fingerprint: string;
  token: string;
  close(): Promise<void>;
}

interface OpenDisk {
  name: string;
  path: string;
  target: string;
  handle: FileHandle;
  size: number;
  isDevice: boolean;
  /** Bytes written since the last flush began, and the flush running in the background. */
  unflushed: number;
  flushing?: Promise<void> | undefined;
  /** Chunks (offsets) written since the last background flush began. */
  pending: number[];
  /**
   * Per chunk: how many times a write of it began (`written`), and the count at which it was
   * re-read after a flush and found as written (`checked`; 0: never). Equal non-zero counts mean
   * the disk held the chunk's recorded content after its last write. 8 bytes per MiB of disk.
   */
  written: Uint32Array;
  checked: Uint32Array;
  /** The background re-reading of flushed chunks, in order. */
  verifying?: Promise<void> | undefined;
  /**
   * Chunks being written, and when that write ends. A chunk resent on a new connection may still
   * be in a dead connection's buffered frames: the two writes of it go one after the other, never
   * interleaved (each writes its ranges in several steps), so the disk holds one whole version and
   * the digest recorded last is that of the write that ended last.
   */
  writingChunks: Map<number, Promise<void>>;
}

/** Makes the per-chunk counters cover a disk of `size` bytes (it may have grown). */
function coverChunks(d: OpenDisk): void {
  const n = Math.ceil(d.size / CHUNK_SIZE);
  if (d.written.length >= n) return;
  const w = new Uint32Array(n);
  const c = new Uint32Array(n);
  w.set(d.written);
  c.set(d.checked);
  d.written = w;
  d.checked = c;
}

/** Written bytes after which a background flush starts (so the final one finds little to do). */
const FLUSH_EVERY = 16 * 1024 * 1024;

/**
 * Counts written bytes; when a background flush starts, returns the chunks written before it
 * (to re-read once it is done: the final verification then finds them checked already).
 */
function wrote(d: OpenDisk, n: number): number[] | undefined {
  d.unflushed += n;
  if (d.unflushed < FLUSH_EVERY || d.flushing) return undefined;
  d.unflushed = 0;
  const batch = d.pending;
  d.pending = [];
  d.flushing = d.handle
    .datasync()
    .catch(() => {}) // the final, awaited flush reports errors
    .finally(() => (d.flushing = undefined));
  return batch;
}

const SEEK_END = 2;
const HELLO_TIMEOUT_MS = 15_000;
/** How long a connection that got an error frame stays open (for the error to be read). */
const FAIL_GRACE_MS = 2000;
/** Memory for all data connections' decompression windows together. */
const DECODER_BUDGET = 256 * 1024 * 1024;

function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) throw new FerryError('USAGE', `--listen '${listen}' is not HOST:PORT`, { remedy: 'For example --listen 0.0.0.0:7878 or --listen 10.0.0.2:7878.' });
  return { host: m[1] ?? m[2] ?? '0.0.0.0', port: Number(m[3]) };
}

async function openDisk(d: ReceiveDisk): Promise<OpenDisk> {
  let st;
  try {
    st = await stat(d.path);
  } catch {
    throw new FerryError('TARGET_NOT_FOUND', `disk ${d.name}: ${d.path} does not exist`, { remedy: 'Give an existing block device (or file) for each --disk NAME=PATH.' });
  }
  const isDevice = st.isBlockDevice();
  if (!isDevice && !st.isFile()) throw new FerryError('TARGET_NOT_WRITABLE', `disk ${d.name}: ${d.path} is neither a block device nor a file`, { remedy: 'Give a block device or a file.' });
  let handle: FileHandle;
  try {
    // O_EXCL on a block device: refused (EBUSY) while it is mounted or held exclusively.
    handle = await open(d.path, constants.O_RDWR | (isDevice ? constants.O_EXCL : 0));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') throw new FerryError('TARGET_IN_USE', `disk ${d.name}: ${d.path} is in use (mounted, or held by another program)`, { remedy: 'Unmount it and stop what uses it; the receiver writes only disks nothing else uses.' });
    throw new FerryError('TARGET_NOT_WRITABLE', `disk ${d.name}: cannot open ${d.path} for writing (${code})`, { remedy: 'Run the receiver as root (block devices) or fix the permissions.' });
  }
  const size = isDevice ? Number(fsExt().seekSync(handle.fd, 0, SEEK_END)) : st.size;
  return { name: d.name, path: d.path, target: await canonicalTarget(d.path), handle, size, isDevice, unflushed: 0, pending: [], written: new Uint32Array(0), checked: new Uint32Array(0), writingChunks: new Map() };
}

export async function startReceiver(opts: ReceiveOptions): Promise<Receiver> {
  const { host, port } = parseListen(opts.listen);
  if (opts.disks.length === 0) throw new FerryError('USAGE', 'no disk to receive', { remedy: 'Give at least one --disk NAME=PATH.' });
  const names = new Set<string>();
  for (const d of opts.disks) {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(d.name) || names.has(d.name)) throw new FerryError('USAGE', `disk name '${d.name}' is invalid or repeated`, { remedy: 'Names are 1–64 letters, digits, dots, dashes or underscores, each used once.' });
    names.add(d.name);
  }
  const dir = opts.stateDir ?? join(stateDir(), 'receiver');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const identity = await receiverIdentity(dir);
  const token = opts.token ?? newToken();
  const emit = (e: ReceiverEvent) => opts.onEvent?.(e);
  const disks: OpenDisk[] = [];
  try {
    for (const d of opts.disks) disks.push(await openDisk(d));
  } catch (err) {
    for (const d of disks) await d.handle.close();
    throw err;
  }
  for (const d of disks) emit({ event: 'disk-opened', disk: d.name, path: d.path, size: d.size });

  const db = new (sqlite())(join(dir, 'written.db'), { timeout: 10_000 });
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec('CREATE TABLE IF NOT EXISTS chunks (target TEXT NOT NULL, offset INTEGER NOT NULL, ranges BLOB NOT NULL, digest BLOB NOT NULL, PRIMARY KEY (target, offset))');
  const record = db.prepare('INSERT OR REPLACE INTO chunks (target, offset, ranges, digest) VALUES (?, ?, ?, ?)');
  const forget = db.prepare('DELETE FROM chunks WHERE target = ? AND offset = ?');
  const knownOf = db.prepare('SELECT offset, digest FROM chunks WHERE target = ? ORDER BY offset');
  const rangesOf = db.prepare('SELECT ranges, digest FROM chunks WHERE target = ? AND offset = ?');

  const sockets = new Set<TLSSocket>();
  const server: Server = createServer({ cert: identity.cert, key: identity.key, minVersion: 'TLSv1.3' }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    void serve(socket).catch((err: unknown) => {
      emit({ event: 'error', remote: socket.remoteAddress, message: (err as Error).message });
      socket.destroy();
    });
  });
  server.on('tlsClientError', (err, socket) => {
    emit({ event: 'rejected', remote: socket.remoteAddress, reason: `not a TLS client, or the TLS handshake failed (${(err as NodeJS.ErrnoException).code ?? err.message})` });
  });

  let dataConnections = 0;
  const fail = async (socket: TLSSocket, err: FerryError) => {
    await sendFrame(socket, 'E', { code: err.code, message: err.message, remedy: err.remedy }).catch(() => {});
    socket.end();
    // A sender may still be writing frames it sent ahead, which nobody reads now: the connection
    // goes away shortly after the error (its writes then fail, and it reads the error sent).
    setTimeout(() => socket.destroy(), FAIL_GRACE_MS).unref();
  };

  async function serve(socket: TLSSocket): Promise<void> {
    const reader = new FrameReader(socket);
    const timer = setTimeout(() => socket.destroy(), HELLO_TIMEOUT_MS);
    const hello = await reader.next();
    clearTimeout(timer);
    if (!hello) return;
    if (hello.type !== 'H') throw protocolError('the first frame is not a hello');
    const h = json<{ version: number; token: string; role: string; disks: { name: string; size: number }[] }>(hello);
    if (typeof h.token !== 'string' || !tokensEqual(h.token, token)) {
      emit({ event: 'rejected', remote: socket.remoteAddress, reason: 'wrong token' });
      return fail(socket, new FerryError('TOKEN_REJECTED', 'the receiver rejected the token', { remedy: 'Use the token the receiver printed when it started (or the one it was given with --token).' }));
    }
    if (h.version !== PROTOCOL_VERSION) return fail(socket, protocolError(`protocol version ${h.version} is not ${PROTOCOL_VERSION}`));
    if (!Array.isArray(h.disks) || h.disks.length === 0) return fail(socket, protocolError('the hello names no disk'));
    const mapped: OpenDisk[] = [];
    for (const want of h.disks) {
      const d = disks.find((x) => x.name === want.name);
      if (!d) return fail(socket, new FerryError('TARGET_NOT_FOUND', `the receiver has no disk named '${want.name}'`, { remedy: `It has: ${disks.map((x) => x.name).join(', ')}.` }));
      if (!Number.isSafeInteger(want.size) || want.size <= 0) return fail(socket, protocolError('a disk size in the hello is not a positive integer'));
      if (want.size > d.size) {
        if (d.isDevice) {
          return fail(socket, new FerryError('TARGET_TOO_SMALL', `disk ${d.name}: ${d.path} holds ${d.size} bytes, the source disk ${want.size}`, { remedy: 'Give a target disk at least as large as the source.' }));
        }
        await d.handle.truncate(want.size);
        d.size = want.size;
      }
      mapped.push(d);
    }
    emit({ event: 'connected', remote: socket.remoteAddress, role: h.role, disks: mapped.map((d) => d.name) });
    // Data connections share a budget for their decompressors' windows: each is offered at most
    // its share (64 MiB for one, 16 MiB each for sixteen), and the sender compresses within it.
    const windowLog = h.role === 'data' ? Math.min(STREAM_WINDOW_LOG_MAX, Math.max(20, Math.floor(Math.log2(DECODER_BUDGET / (dataConnections + 1))))) : undefined;
    await sendFrame(socket, 'W', { receiver: { version: PROTOCOL_VERSION }, disks: mapped.map((d) => ({ name: d.name, size: d.size, chunkSize: CHUNK_SIZE })), ...(windowLog ? { maxWindowLog: windowLog } : {}) });
    if (h.role === 'control') {
      for (let i = 0; i < mapped.length; i++) {
        const rows = knownOf.all(mapped[i]!.target) as { offset: number; digest: Buffer }[];
        for (let at = 0; at < rows.length || at === 0; at += 50_000) {
          await sendFrame(socket, 'K', encodeKnown(i, rows.slice(at, at + 50_000)));
          if (rows.length === 0) break;
        }
      }
    }
    const chunk = Buffer.allocUnsafe(CHUNK_SIZE);
    // This connection's compressed stream: its chunks are decoded in the order they arrive.
    const stream = new StreamUnpacker(windowLog);
    if (h.role === 'data') dataConnections++;
    try {
      for (let f = await reader.next(); f; f = await reader.next()) {
        try {
          await handle(socket, f, mapped, chunk, stream);
        } catch (err) {
          if (err instanceof FerryError) return fail(socket, err);
          throw err;
        }
      }
    } finally {
      if (h.role === 'data') dataConnections--;
    }
    emit({ event: 'closed', remote: socket.remoteAddress, role: h.role });
  }

  /** Digest (hex) of what the disk holds in a chunk's recorded ranges (read into `buf`). */
  async function readDigest(d: OpenDisk, offset: number, rangeList: Buffer, buf: Buffer): Promise<string> {
    const ranges: Range[] = [];
    for (let i = 0; i + 8 <= rangeList.length; i += 8) ranges.push({ offset: rangeList.readUInt32BE(i), length: rangeList.readUInt32BE(i + 4) });
    const view = buf.subarray(0, Math.min(CHUNK_SIZE, d.size - offset));
    view.fill(0);
    for (const r of ranges) await d.handle.read(view, r.offset, r.length, offset + r.offset);
    return chunkDigest(ranges, view).toString('hex');
  }

  /**
   * Re-reads chunks once a background flush that followed them is done, and marks those found
   * holding their recorded content — unless a write of the chunk began meanwhile (then the final
   * check re-reads it). Failures leave chunks to the final check, which reports them.
   */
  async function verifyFlushed(d: OpenDisk, batch: number[]): Promise<void> {
    const buf = Buffer.allocUnsafe(CHUNK_SIZE);
    for (const offset of batch) {
      const i = offset / CHUNK_SIZE;
      const generation = d.written[i]!;
      try {
        const row = rangesOf.get(d.target, offset) as { ranges: Buffer; digest: Buffer } | undefined;
        if (!row) continue;
        const got = await readDigest(d, offset, row.ranges, buf);
        if (d.written[i] === generation && got === row.digest.toString('hex')) d.checked[i] = generation;
      } catch {
        return;
      }
    }
  }

  /** Writes a decoded chunk's ranges and records its digest (see writingChunks: one writer per chunk). */
  async function writeChunk(d: OpenDisk, h: DataHeader, chunk: Buffer): Promise<void> {
    // The chunk is being rewritten: until it is on the disk, it is not known.
    forget.run(d.target, h.offset);
    coverChunks(d);
    d.written[h.offset / CHUNK_SIZE]!++;
    for (const r of mergeRanges(h.ranges)) {
      await d.handle.write(chunk, r.offset, r.length, h.offset + r.offset);
      const batch = wrote(d, r.length);
      if (batch) {
        const flushed = d.flushing;
        d.verifying = (d.verifying ?? Promise.resolve())
          .then(async () => {
            await flushed;
            await verifyFlushed(d, batch);
          })
          .catch(() => {}); // left to the final check
      }
    }
    record.run(d.target, h.offset, rangeBytes(h.ranges), h.digest);
    d.pending.push(h.offset);
  }

  async function handle(socket: TLSSocket, f: Frame, mapped: OpenDisk[], chunk: Buffer, stream: StreamUnpacker): Promise<void> {
    if (f.type === 'D') {
      const { header: h, payload } = decodeData(f.payload);
      const d = mapped[h.disk];
      if (!d) throw protocolError(`data for disk #${h.disk}, which this connection did not open`);
      if (h.offset % CHUNK_SIZE !== 0 || h.offset + h.length > d.size) throw protocolError(`data outside disk ${d.name} (offset ${h.offset}, ${h.length} bytes)`);
      unpackChunk(chunk, h.length, h.ranges, h.codec, payload, h.digest, stream);
      const index = h.offset / CHUNK_SIZE;
      for (let busy = d.writingChunks.get(index); busy; busy = d.writingChunks.get(index)) await busy;
      let done!: () => void;
      d.writingChunks.set(index, new Promise<void>((resolve) => (done = resolve)));
      try {
        await writeChunk(d, h, chunk);
      } finally {
        d.writingChunks.delete(index);
        done();
      }
      await sendFrame(socket, 'A', encodeAck(h.disk, h.offset));
    } else if (f.type === 'S') {
      for (const d of mapped) {
        await d.flushing;
        await d.handle.datasync();
        d.unflushed = 0;
        await d.verifying;
      }
      await sendFrame(socket, 's', {});
    } else if (f.type === 'V') {
      const v = json<{ disk: number; chunks: [number, string][] }>(f);
      const d = mapped[v.disk];
      if (!d || !Array.isArray(v.chunks)) throw protocolError('a verify request names no open disk');
      const mismatches: { offset: number; reason: string }[] = [];
      for (const [offset, want] of v.chunks) {
        const row = rangesOf.get(d.target, offset) as { ranges: Buffer; digest: Buffer } | undefined;
        if (!row) {
          mismatches.push({ offset, reason: 'never written' });
          continue;
        }
        // Re-read after a background flush and found as recorded, not written since, and the
        // record is what the sender asks about.
        const i = offset / CHUNK_SIZE;
        if (Number.isInteger(i) && i < d.written.length && d.written[i] !== 0 && d.checked[i] === d.written[i] && row.digest.toString('hex') === want) continue;
        const got = await readDigest(d, offset, row.ranges, chunk);
        if (got !== want) {
          const held = got === row.digest.toString('hex');
          mismatches.push({ offset, reason: held ? 'the source changed since it was sent' : 'the disk does not hold what was written' });
          // The record no longer says what the disk holds (replaced or overwritten since): forget
          // it, so the next run sends the chunk again.
          if (!held) forget.run(d.target, offset);
        }
      }
      emit({ event: 'verified', disk: d.name, chunks: v.chunks.length, mismatches: mismatches.length });
      await sendFrame(socket, 'R', { checked: v.chunks.length, mismatches: mismatches.slice(0, 100), mismatchCount: mismatches.length });
    } else {
      throw protocolError(`unexpected '${f.type}' frame`);
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new FerryError('USAGE', `cannot listen on ${opts.listen}: ${err.code ?? err.message}`, { remedy: 'Choose a free port and an address of this machine.' })),
    );
    server.listen(port, host, () => resolve());
  });
  const addr = server.address() as { address: string; port: number };
  emit({ event: 'listening', address: `${addr.address}:${addr.port}`, fingerprint: identity.fingerprint });
  return {
    address: `${addr.address}:${addr.port}`,
    port: addr.port,
    fingerprint: identity.fingerprint,
    token,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      for (const d of disks) {
        await d.handle.datasync().catch(() => {});
        await d.handle.close().catch(() => {});
      }
      db.close();
    },
  };
}
