// `ferry migrate`: streams a running server's disks to a receiver (`ferry receive`) over TLS.
//
// Per round, each disk is mapped again (disk-map.ts: ext4 used blocks from the file system's own
// bitmaps; other content whole), cut into 1 MiB chunks, each chunk read (used ranges only, the
// rest as zeros), digested and packed (one zstd stream per connection, its window up to 64 MiB so
// repeats far apart are found), and — unless the receiver already holds a chunk with that digest —
// sent within the bandwidth limit, over one TLS stream by default (`streams` more for links where
// one TCP flow falls short; each stream has its own compression context), up to WINDOW chunks
// ahead of the receiver's acknowledgements; the receiver acknowledges each chunk once it is
// checked and written. The first round
// sends everything; later rounds only what changed; the last can freeze file systems (fsfreeze,
// thawed whatever happens) for a consistent cutover. A dropped connection is retried with backoff
// and the chunks in flight are sent again; a restarted sender learns from the receiver what it
// already holds. At the end the receiver flushes its disks and re-reads every chunk, and the
// digests are compared with what the source sent.
//
// Example:
//   await migrate({ target: '10.0.0.2:7878', token, fingerprint, disks: [{ source: '/dev/vda', name: 'root' }] });
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { connect, type TLSSocket } from 'node:tls';
import { hostname } from 'node:os';
import { FerryError } from '../errors.js';
import { openImage } from '../image/open.js';
import type { DiskImage } from '../image/types.js';
import { readVirtual } from '../image/read.js';
import { RateLimiter } from '../transfer/rate-limit.js';
import { mapDisk, type DiskMap, type RegionInfo } from './disk-map.js';
import { normaliseFingerprint } from './identity.js';
import { StreamPacker } from './pack.js';
import { clipRanges, type Range } from './ranges.js';
import { CHUNK_SIZE, FrameReader, PROTOCOL_VERSION, chunkDigest, streamWindowLog, decodeAck, decodeKnown, encodeDataHeader, json, protocolError, sendFrame, type Frame } from './wire.js';

const run = promisify(execFile);

export interface MigrateDisk {
  /** Source block device or raw file. */
  source: string;
  /** The receiver's name for the target disk. */
  name: string;
}

export interface MigrateOptions {
  /** The receiver: HOST:PORT. */
  target: string;
  token: string;
  /** The receiver's certificate fingerprint (SHA-256), as it printed it. */
  fingerprint: string;
  disks: MigrateDisk[];
  /** Bytes per second on the wire, all streams together. */
  bandwidth?: number;
  /** Rounds in all (default 1; each after the first sends only what changed). */
  rounds?: number;
  /** Parallel TLS streams (default 1: one compression context over the whole disk). */
  streams?: number;
  /** zstd level, or undefined for no compression (default 3). */
  level?: number | undefined;
  /** Mount points to freeze (fsfreeze) during the last round. */
  freeze?: string[];
  /** Shell command run before the last round (e.g. stopping services for the cutover); it must succeed. */
  beforeFinalRound?: string;
  /** Stop after the preflight. */
  dryRun?: boolean;
  /** How long to keep retrying a lost connection (default 600 s). */
  retrySeconds?: number;
  onEvent?: (e: MigrateEvent) => void;
  signal?: AbortSignal;
}

export type MigrateEvent =
  | { event: 'preflight'; disks: { name: string; source: string; size: number; used: number; regions: RegionInfo[] }[]; estimateSeconds?: number }
  | { event: 'progress'; round: number; chunksDone: number; chunks: number; bytesSent: number; dataBytes: number; rate: number; etaSeconds?: number }
  | { event: 'round'; round: number; seconds: number; chunks: number; chunksSent: number; bytesSent: number; dataBytes: number; frozen: boolean }
  | { event: 'reconnect'; attempt: number; reason: string };

export interface RoundReport {
  round: number;
  seconds: number;
  chunks: number;
  chunksSent: number;
  /** Bytes put on the wire (payloads, compressed). */
  bytesSent: number;
  /** Used bytes of the chunks sent (before compression). */
  dataBytes: number;
  frozen: boolean;
}

export interface MigrateReport {
  target: string;
  disks: { name: string; source: string; size: number; used: number; verified: boolean; checked: number; mismatches: number }[];
  rounds: RoundReport[];
  bytesSent: number;
  seconds: number;
  /** Virtual disk bytes migrated per second of wall time. */
  effectiveRate: number;
  dryRun: boolean;
  /** Peak resident memory of the migrating process, MiB (for fleet reports and benchmarks). */
  peakRssMiB?: number;
}

interface Conn {
  socket: TLSSocket;
  reader: FrameReader;
}

function parseTarget(t: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(t);
  if (!m) throw new FerryError('USAGE', `--target '${t}' is not HOST:PORT`, { remedy: 'For example --target 10.0.0.2:7878 (the address the receiver printed).' });
  return { host: m[1] ?? m[2]!, port: Number(m[3]) };
}

/** Opens a TLS connection to the receiver and checks its certificate against the pinned fingerprint. */
function dial(target: string, fingerprint: string): Promise<TLSSocket> {
  const { host, port } = parseTarget(target);
  const pinned = normaliseFingerprint(fingerprint);
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const timer = setTimeout(() => socket.destroy(new Error('ETIMEDOUT')), 15_000);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const got = socket.getPeerX509Certificate()?.fingerprint256 ?? '';
      if (got !== pinned) {
        socket.destroy();
        reject(
          new FerryError('FINGERPRINT_MISMATCH', `the receiver at ${target} presented certificate ${got}, not the expected ${pinned}`, {
            remedy: 'Check that you connect to the right machine and copy the fingerprint the receiver printed; a different one may mean someone is in between.',
          }),
        );
        return;
      }
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        new FerryError('RECEIVER_UNREACHABLE', `cannot reach the receiver at ${target} (${err.code ?? err.message})`, {
          remedy: 'Check that `ferry receive` runs there, the address and port, and firewalls between the machines.',
          cause: err,
        }),
      );
    });
  });
}

function remoteError(f: Frame): FerryError {
  const e = json<{ code: string; message: string; remedy: string }>(f);
  const code = (['TOKEN_REJECTED', 'TARGET_TOO_SMALL', 'TARGET_NOT_FOUND', 'TARGET_IN_USE', 'TARGET_NOT_WRITABLE', 'CHECKSUM_MISMATCH', 'PROTOCOL_ERROR'] as const).find((c) => c === e.code) ?? 'PROTOCOL_ERROR';
  return new FerryError(code, `receiver: ${e.message}`, { remedy: e.remedy });
}

export interface ReceiverConn extends Conn {
  /** Per disk of the hello: chunk offset → digest the receiver holds (control role only). */
  known: Map<number, string>[];
  welcome: { disks: { name: string; size: number; chunkSize: number }[]; maxWindowLog?: number };
  /** The next frame, which must be of `type` (an error frame becomes its error). */
  expect(type: Frame['type']): Promise<Frame>;
}

/** Connects and says hello; returns the connection and, for the control role, what the receiver holds. */
export async function connectReceiver(opts: Pick<MigrateOptions, 'target' | 'token' | 'fingerprint'>, role: 'control' | 'data', disks: { name: string; size: number }[]): Promise<ReceiverConn> {
  const socket = await dial(opts.target, opts.fingerprint);
  const reader = new FrameReader(socket);
  await sendFrame(socket, 'H', { version: PROTOCOL_VERSION, token: opts.token, role, disks, client: { host: hostname() } });
  const w = await reader.next();
  if (!w) throw new FerryError('RECEIVER_UNREACHABLE', `the receiver at ${opts.target} closed the connection`, { remedy: 'See the receiver\'s log.' });
  if (w.type === 'E') {
    socket.destroy();
    throw remoteError(w);
  }
  if (w.type !== 'W') throw protocolError(`expected a welcome, got '${w.type}'`);
  const welcome = json<ReceiverConn['welcome']>(w);
  const known = disks.map(() => new Map<number, string>());
  if (role === 'control') {
    let seen = 0;
    while (seen < disks.length) {
      const k = await reader.next();
      if (!k || k.type !== 'K') throw protocolError('expected the list of chunks the receiver holds');
      const { disk, known: entries } = decodeKnown(k.payload);
      if (!known[disk]) throw protocolError('a known-chunks frame names an unknown disk');
      for (const [o, d] of entries) known[disk]!.set(o, d);
      // The receiver sends full frames of 50 000 entries, then a shorter one per disk.
      if (entries.size < 50_000) seen++;
    }
  }
  const conn: ReceiverConn = { socket, reader, known, welcome, expect: (type) => expect(conn, type) };
  return conn;
}

const open = connectReceiver;

/** Waits for the next frame of a given type (an 'E' frame becomes its error). */
async function expect(c: Conn, type: Frame['type']): Promise<Frame> {
  const f = await c.reader.next();
  if (!f) throw new FerryError('RECEIVER_UNREACHABLE', 'the receiver closed the connection', { remedy: 'See the receiver\'s log; run the migration again to resume.' });
  if (f.type === 'E') throw remoteError(f);
  if (f.type !== type) throw protocolError(`expected '${type}', got '${f.type}'`);
  return f;
}

interface ChunkJob {
  disk: number;
  offset: number;
  length: number;
  ranges: Range[];
}

interface SourceDisk {
  name: string;
  source: string;
  image: DiskImage;
  map: DiskMap;
  /** Digest of each chunk as last sent or found on the receiver. */
  digests: Map<number, string>;
}

function chunksOf(map: DiskMap, disk: number): ChunkJob[] {
  const jobs: ChunkJob[] = [];
  for (let offset = 0; offset < map.size; offset += CHUNK_SIZE) {
    const length = Math.min(CHUNK_SIZE, map.size - offset);
    const ranges = clipRanges(map.ranges, offset, offset + length).map((r) => ({ offset: r.offset - offset, length: r.length }));
    if (ranges.length) jobs.push({ disk, offset, length, ranges });
  }
  return jobs;
}

async function readChunk(image: DiskImage, job: ChunkJob): Promise<Buffer> {
  const buf = Buffer.alloc(job.length);
  for (const r of job.ranges) (await readVirtual(image, job.offset + r.offset, r.length)).copy(buf, r.offset);
  return buf;
}

/** Freezes file systems; the returned function thaws them (idempotent, also on exit signals). */
async function freezeAll(mounts: string[]): Promise<() => Promise<void>> {
  const frozen: string[] = [];
  const thaw = async () => {
    while (frozen.length) {
      const m = frozen.pop()!;
      await run('fsfreeze', ['-u', m]).catch(() => {});
    }
  };
  const onSignal = () => void thaw();
  process.once('exit', () => {
    for (const m of frozen) void run('fsfreeze', ['-u', m]).catch(() => {});
  });
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    for (const m of mounts) {
      await run('sync', ['-f', m]).catch(() => {});
      await run('fsfreeze', ['-f', m]);
      frozen.push(m);
    }
  } catch (err) {
    await thaw();
    throw new FerryError('USAGE', `cannot freeze ${mounts.join(', ')}: ${(err as Error).message}`, { remedy: 'Give mount points of file systems that support freezing (ext4, XFS), and run as root.' });
  }
  return async () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await thaw();
  };
}

async function runHook(command: string): Promise<void> {
  try {
    await run('sh', ['-c', command], { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    throw new FerryError('HOOK_FAILED', `the command before the final round failed (exit ${e.code ?? '?'}): ${(e.stderr ?? '').trim().slice(0, 300)}`, {
      remedy: 'Fix the command (it runs with sh -c on the source), or run without --before-final-round.',
    });
  }
}

export async function migrate(opts: MigrateOptions): Promise<MigrateReport> {
  const started = Date.now();
  const rounds = opts.rounds ?? 1;
  const streams = opts.streams ?? 1;
  const level = 'level' in opts ? opts.level : 3;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 100) throw new FerryError('USAGE', `--rounds must be 1 to 100, not ${rounds}`, { remedy: 'For example --rounds 2.' });
  if (!Number.isInteger(streams) || streams < 1 || streams > 32) throw new FerryError('USAGE', `--streams must be 1 to 32, not ${streams}`, { remedy: 'For example --streams 4.' });
  const limiter = opts.bandwidth ? new RateLimiter(opts.bandwidth) : undefined;
  const emit = (e: MigrateEvent) => opts.onEvent?.(e);

  const sources: SourceDisk[] = [];
  try {
    for (const d of opts.disks) {
      const image = await openImage(d.source, { format: 'raw' });
      sources.push({ name: d.name, source: d.source, image, map: await mapDisk(image), digests: new Map() });
    }
    const hello = sources.map((s) => ({ name: s.name, size: s.image.virtualSize }));
    let control = await open(opts, 'control', hello);
    sources.forEach((s, i) => (s.digests = control.known[i]!));
    const used = sources.reduce((n, s) => n + s.map.used, 0);
    emit({
      event: 'preflight',
      disks: sources.map((s) => ({ name: s.name, source: s.source, size: s.image.virtualSize, used: s.map.used, regions: s.map.regions })),
      ...(opts.bandwidth ? { estimateSeconds: used / opts.bandwidth } : {}),
    });
    const report: MigrateReport = {
      target: opts.target,
      disks: sources.map((s) => ({ name: s.name, source: s.source, size: s.image.virtualSize, used: s.map.used, verified: false, checked: 0, mismatches: 0 })),
      rounds: [],
      bytesSent: 0,
      seconds: 0,
      effectiveRate: 0,
      dryRun: !!opts.dryRun,
    };
    if (opts.dryRun) {
      control.socket.end();
      return report;
    }

    for (let round = 1; round <= rounds; round++) {
      const last = round === rounds;
      if (last && opts.beforeFinalRound) await runHook(opts.beforeFinalRound);
      const thaw = last && opts.freeze?.length ? await freezeAll(opts.freeze) : undefined;
      try {
        {
          for (const s of sources) {
            // A mounted file system writes file data around the block device's page cache: drop
            // that cache so this round reads what is on the disk now.
            await run('blockdev', ['--flushbufs', s.source]).catch(() => {});
            s.map = await mapDisk(s.image);
          }
        }
        const r = await sendRound(opts, sources, hello, round, streams, level, limiter, emit);
        r.frozen = !!thaw;
        report.rounds.push(r);
        report.bytesSent += r.bytesSent;
        emit({ event: 'round', ...r });
      } finally {
        await thaw?.();
      }
    }

    // Verification: the receiver flushes and compares every chunk's digest with what its disk
    // holds (re-read after a flush: most chunks in the background during the transfer).
    if (control.socket.destroyed) control = await open(opts, 'control', hello);
    await sendFrame(control.socket, 'S', {});
    await expect(control, 's');
    for (let i = 0; i < sources.length; i++) {
      const s = sources[i]!;
      const chunks = chunksOf(s.map, i).map((c) => [c.offset, s.digests.get(c.offset) ?? ''] as [number, string]);
      await sendFrame(control.socket, 'V', { disk: i, chunks });
      const r = json<{ checked: number; mismatchCount: number; mismatches: { offset: number; reason: string }[] }>(await expect(control, 'R'));
      report.disks[i] = { ...report.disks[i]!, verified: r.mismatchCount === 0, checked: r.checked, mismatches: r.mismatchCount };
      if (r.mismatchCount > 0) {
        control.socket.destroy();
        throw new FerryError('CHECKSUM_MISMATCH', `disk ${s.name}: ${r.mismatchCount} chunk(s) on the target differ from what was sent (first at byte ${r.mismatches[0]?.offset}: ${r.mismatches[0]?.reason})`, {
          remedy: 'Run the migration again: it sends what differs. If it repeats, check the target disk.',
          details: { mismatches: r.mismatches.slice(0, 10) },
        });
      }
    }
    control.socket.end();
    report.seconds = (Date.now() - started) / 1000;
    report.effectiveRate = sources.reduce((n, s) => n + s.image.virtualSize, 0) / report.seconds;
    report.peakRssMiB = Math.round(process.resourceUsage().maxRSS / 1024);
    return report;
  } finally {
    for (const s of sources) await s.image.close();
  }
}

/** A data connection, with what its acknowledgement reader found (the error that ended it) and its waiter. */
type DataConn = ReceiverConn & { failure?: unknown; wake?: (() => void) | undefined };

/** Chunks a data stream may have sent but not yet had acknowledged (FERRY_MIGRATE_WINDOW: experiments). */
const WINDOW = Math.max(1, Number(process.env.FERRY_MIGRATE_WINDOW) || 32);

/** One round: every mapped chunk whose digest the receiver does not hold is sent. */
async function sendRound(
  opts: MigrateOptions,
  sources: SourceDisk[],
  hello: { name: string; size: number }[],
  round: number,
  streams: number,
  level: number | undefined,
  limiter: RateLimiter | undefined,
  emit: (e: MigrateEvent) => void,
): Promise<RoundReport> {
  const started = Date.now();
  const all = sources.flatMap((s, i) => chunksOf(s.map, i));
  const queue = [...all];
  const retry: ChunkJob[] = [];
  let chunksDone = 0;
  let chunksSent = 0;
  let bytesSent = 0;
  let dataBytes = 0;
  let lastEmit = 0;
  let failure: unknown;
  const deadline = () => Date.now() + (opts.retrySeconds ?? 600) * 1000;

  const progress = (force = false) => {
    const now = Date.now();
    if (!force && now - lastEmit < 1000) return;
    lastEmit = now;
    const secs = Math.max(0.001, (now - started) / 1000);
    const rate = bytesSent / secs;
    const left = all.length - chunksDone;
    emit({ event: 'progress', round, chunksDone, chunks: all.length, bytesSent, dataBytes, rate, ...(chunksDone > 0 ? { etaSeconds: (left * secs) / chunksDone } : {}) });
  };

  // Each stream takes runs of consecutive chunks: its compressor then has neighbouring data as
  // context (a stream sees one run after another, not every fourth chunk). A stream keeps up to
  // WINDOW chunks sent but not yet acknowledged, so the link stays busy while the receiver writes
  // and acknowledges (one chunk at a time would leave it idle a round trip per chunk: on a 100 ms
  // WAN link, 4 streams × 1 MiB per round trip is 40 MB/s at most).
  const RUN = 16;
  const windowLog = streamWindowLog(sources.reduce((n, s) => n + s.map.used, 0), streams);
  const worker = async (n: number) => {
    /**
     * The data connection: its acknowledgements are read as they come (a reader of their own), so
     * a refusal ('E') is seen at once — even while this stream waits to write into a full socket
     * — and ends the connection (a pending write then fails) with the receiver's own error.
     */
    let conn: DataConn | undefined;
    let packer: StreamPacker | undefined;
    let run: ChunkJob[] = [];
    /** Sent on this connection, acknowledgement awaited (in order). */
    let inflight: { job: ChunkJob; digest: string; rawBytes: number }[] = [];
    const next = (): ChunkJob | undefined => {
      if (run.length === 0) run = queue.splice(0, RUN);
      return run.shift();
    };
    let giveUpAt = deadline();
    let attempt = 0;
    /** An acknowledgement: the oldest chunk in flight is on the receiver's disk. */
    const acknowledged = (payload: Buffer) => {
      const ack = decodeAck(payload);
      const p = inflight[0];
      if (!p || ack.disk !== p.job.disk || ack.offset !== p.job.offset) throw protocolError('an acknowledgement for another chunk');
      inflight.shift();
      sources[p.job.disk]!.digests.set(p.job.offset, p.digest);
      chunksDone++;
      chunksSent++;
      dataBytes += p.rawBytes;
      attempt = 0;
      giveUpAt = deadline();
      progress();
    };
    const readAcks = async (c: DataConn) => {
      try {
        for (;;) {
          const f = await c.reader.next();
          // A connection given up on: its late frames must not settle chunks in flight on the next.
          if (conn !== c) return;
          if (!f) throw new FerryError('RECEIVER_UNREACHABLE', 'the receiver closed the connection', { remedy: 'See the receiver\'s log; run the migration again to resume.' });
          if (f.type === 'E') throw remoteError(f);
          if (f.type !== 'A') throw protocolError(`expected 'A', got '${f.type}'`);
          acknowledged(f.payload);
          c.wake?.();
        }
      } catch (err) {
        c.failure ??= err;
        c.socket.destroy();
        c.wake?.();
      }
    };
    /** Waits until fewer than `limit` chunks are in flight (or the connection failed: throws its error). */
    const inflightBelow = async (limit: number) => {
      const c = conn!;
      while (inflight.length >= limit) {
        if (c.failure) throw c.failure;
        await new Promise<void>((r) => (c.wake = r));
        c.wake = undefined;
      }
      if (c.failure && inflight.length > 0) throw c.failure;
    };
    /**
     * After a failure on the connection: requeues what was in flight (and `unsent`) and waits
     * before the next attempt; true when the migration must stop instead (a refusal, or retries
     * exhausted). The receiver's own error, when it sent one, is the one that counts.
     */
    const connectionLost = async (localError: unknown, unsent: ChunkJob[]): Promise<boolean> => {
      const err = conn?.failure instanceof FerryError && conn.failure.code !== 'RECEIVER_UNREACHABLE' ? conn.failure : localError;
      conn?.socket.destroy();
      conn = undefined;
      packer = undefined;
      // What was in flight on the lost connection is sent again (on a new stream).
      const lost = [...inflight.map((p) => p.job), ...unsent];
      inflight = [];
      const fe = err instanceof FerryError ? err : undefined;
      // Refusals are final; a lost connection is retried (the chunks go back in the queue).
      if (fe && !['RECEIVER_UNREACHABLE', 'PROTOCOL_ERROR'].includes(fe.code)) {
        failure ??= err;
        return true;
      }
      if (!fe && (err as Error)?.name === 'AbortError') throw err;
      retry.push(...lost);
      if (Date.now() > giveUpAt) {
        failure ??= err;
        return true;
      }
      attempt++;
      emit({ event: 'reconnect', attempt, reason: (err as Error).message });
      await new Promise((r) => setTimeout(r, Math.min(10_000, 250 * 2 ** Math.min(attempt, 6))));
      return false;
    };
    while (!failure) {
      if (opts.signal?.aborted) throw new FerryError('INTERRUPTED', 'the migration was interrupted', { remedy: 'Run the same command again: it resumes, sending only what the receiver does not hold.' });
      const job = retry.shift() ?? next();
      if (!job) {
        if (inflight.length === 0) break;
        // Nothing left to send: wait for the acknowledgements of what is in flight.
        try {
          await inflightBelow(1);
        } catch (err) {
          if (await connectionLost(err, [])) break;
        }
        continue;
      }
      const s = sources[job.disk]!;
      const data = await readChunk(s.image, job);
      // The digest first: a chunk the receiver already holds is neither compressed nor sent.
      const digestBytes = chunkDigest(job.ranges, data);
      const digest = digestBytes.toString('hex');
      if (s.digests.get(job.offset) === digest) {
        chunksDone++;
        progress();
        continue;
      }
      let sent = false;
      try {
        if (!conn) {
          const c: DataConn = await open(opts, 'data', hello);
          conn = c;
          // The receiver starts a new stream with each connection, and offers it a window.
          const offered = Number.isInteger(c.welcome.maxWindowLog) ? Math.max(10, c.welcome.maxWindowLog!) : 23;
          packer = new StreamPacker(level, Math.min(windowLog, offered));
          void readAcks(c);
        }
        if (conn.failure) throw conn.failure;
        const packed = packer!.pack(data, job.ranges, digestBytes);
        const header = encodeDataHeader({ disk: job.disk, offset: job.offset, length: job.length, codec: packed.codec, digest: packed.digest, ranges: job.ranges });
        const body = Buffer.concat([header, packed.payload]);
        await limiter?.take(body.length, opts.signal);
        inflight.push({ job, digest, rawBytes: packed.rawBytes });
        sent = true;
        await sendFrame(conn.socket, 'D', body);
        bytesSent += body.length; // everything put on the wire, resent chunks included
        await inflightBelow(WINDOW);
      } catch (err) {
        if (await connectionLost(err, sent ? [] : [job])) break;
      }
    }
    conn?.socket.end();
    void n;
  };
  await Promise.all(Array.from({ length: streams }, (_, i) => worker(i)));
  if (failure) throw failure;
  progress(true);
  return { round, seconds: (Date.now() - started) / 1000, chunks: all.length, chunksSent, bytesSent, dataBytes, frozen: false };
}

