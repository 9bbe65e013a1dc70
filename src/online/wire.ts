// The online-migration wire protocol, spoken inside TLS between `ferry migrate` (the sender) and
// `ferry receive` (the receiver). Frames: 1 byte type, 4 bytes big-endian payload length, payload
// (at most MAX_FRAME). Control frames carry JSON; data frames are binary:
//
//   'H' hello      sender → receiver   {version, token, role: 'control'|'data', disks: [{name, size}]}
//   'W' welcome    receiver → sender   {disks: [{name, size, chunkSize}], receiver}
//   'K' known      receiver → sender   [u16 disk][u32 count] count × (u64 chunk offset, 32-byte digest)
//   'D' data       sender → receiver   [u16 disk][u64 offset][u32 chunk length][u8 codec][32 digest]
//                                      [u32 ranges][ranges × (u32 start, u32 length) in the chunk]
//                                      [payload: the ranges' bytes back to back: raw, one zstd frame,
//                                       or (codec 2) the next flushed piece of the connection's zstd
//                                       stream — one stream per data connection, begun with it, so
//                                       a chunk is compressed with the chunks sent before it as
//                                       context; the receiver decodes a connection's chunks in order]
//   'A' ack        receiver → sender   [u16 disk][u64 offset]  (written and its digest checked)
//   'V' verify     sender → receiver   {disk, chunks: [[offset, digestHex]…]} → 'R' {mismatches, checked}
//   'S' sync       sender → receiver   {} → 's' {} once every disk is flushed to stable storage
//   'E' error      either way          {code, message, remedy}
//
// A chunk's digest covers its range list and its bytes with the unused parts as zeros, so equal
// digests mean the same blocks are used and hold the same bytes (what lets the receiver's record
// of what it wrote decide what need not be sent again: incremental rounds and resumes).
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import { FerryError } from '../errors.js';
import type { Range } from './ranges.js';

export const PROTOCOL_VERSION = 3;
export const CHUNK_SIZE = 1024 * 1024;
/** Bound on any frame: a chunk's data plus its header and a full range list. */
export const MAX_FRAME = CHUNK_SIZE + 64 * 1024 + 8 * (CHUNK_SIZE / 512);
export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;
export const CODEC_ZSTD_STREAM = 2;
/** Largest window of a connection's zstd stream (64 MiB: what the receiver holds per connection at most). */
export const STREAM_WINDOW_LOG_MAX = 26;

/**
 * The window for a stream that will carry about `bytes` (a quarter of a stream's share, within
 * 1–64 MiB): a window as long as the data finds repeats far apart — files copied twice, the same
 * libraries in several places (the online benchmark's disk: 193 MB at 8 MiB, 185 MB at 64 MiB with
 * long-distance matching) — while a small disk costs no more memory than it needs.
 */
export function streamWindowLog(bytes: number, streams: number): number {
  const want = Math.floor(Math.log2(Math.max(1, bytes / 4 / Math.max(1, streams))));
  return Math.min(STREAM_WINDOW_LOG_MAX, Math.max(20, want));
}

export type FrameType = 'H' | 'W' | 'K' | 'D' | 'A' | 'V' | 'R' | 'S' | 's' | 'E';

export interface Frame {
  type: FrameType;
  payload: Buffer;
}

export function protocolError(message: string): FerryError {
  return new FerryError('PROTOCOL_ERROR', message, {
    remedy: 'Make sure both sides run the same Ferry version and that nothing but Ferry answers on that address.',
  });
}

/** Encodes one frame. */
export function frame(type: FrameType, payload: Buffer | object): Buffer[] {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(JSON.stringify(payload));
  const head = Buffer.allocUnsafe(5);
  head.write(type, 0, 'latin1');
  head.writeUInt32BE(body.length, 1);
  return [head, body];
}

/** Writes a frame, resolving once the socket has taken it (back-pressure). */
export function sendFrame(socket: Socket, type: FrameType, payload: Buffer | object): Promise<void> {
  const [head, body] = frame(type, payload);
  return new Promise((resolve, reject) => {
    // Settles once: written (the callback, or 'drain' for a full buffer), or failed — including a
    // connection closed while waiting for 'drain', which would otherwise never come (and with no
    // handle left, the process would end with the migration unfinished).
    let settled = false;
    const done = (err?: Error | null) => {
      if (settled) return;
      settled = true;
      socket.off('drain', onDrain);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(Object.assign(new Error('the connection closed while sending'), { code: 'ECONNRESET' }));
    socket.cork();
    socket.write(head!);
    const ok = socket.write(body!, (err) => done(err ?? null));
    socket.uncork();
    if (ok) return done();
    socket.on('drain', onDrain);
    socket.on('close', onClose);
  });
}

/**
 * Reads frames from a socket, one at a time, with a bound on frame size. `next()` resolves to the
 * next frame, or undefined at the end of the stream.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      if (this.buffered > MAX_FRAME * 2) socket.pause();
      this.wake?.();
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake?.();
    });
    socket.on('error', (err) => {
      this.error = err;
      this.wake?.();
    });
  }

  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    if (this.buffered <= MAX_FRAME) this.socket.resume();
    return out;
  }

  private async need(n: number): Promise<boolean> {
    while (this.buffered < n) {
      if (this.error) throw this.error;
      if (this.ended) return false;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
    return true;
  }

  async next(): Promise<Frame | undefined> {
    if (!(await this.need(5))) {
      if (this.buffered > 0) throw protocolError('the connection ended inside a frame');
      return undefined;
    }
    const head = this.take(5);
    const type = head.toString('latin1', 0, 1) as FrameType;
    const length = head.readUInt32BE(1);
    if (!'HWKDAVRSsE'.includes(type)) throw protocolError(`unknown frame type 0x${head[0]!.toString(16)}`);
    if (length > MAX_FRAME) throw protocolError(`a frame of ${length} bytes exceeds the limit of ${MAX_FRAME}`);
    if (!(await this.need(length))) throw protocolError('the connection ended inside a frame');
    return { type, payload: this.take(length) };
  }
}

export function json<T>(f: Frame): T {
  try {
    return JSON.parse(f.payload.toString('utf8')) as T;
  } catch {
    throw protocolError(`a '${f.type}' frame does not hold JSON`);
  }
}

export interface DataHeader {
  disk: number;
  offset: number;
  length: number;
  codec: number;
  digest: Buffer;
  ranges: Range[];
}

/** Serialises a data frame's header (the payload follows it). */
export function encodeDataHeader(h: DataHeader): Buffer {
  const buf = Buffer.allocUnsafe(2 + 8 + 4 + 1 + 32 + 4 + 8 * h.ranges.length);
  let at = buf.writeUInt16BE(h.disk, 0);
  at = buf.writeBigUInt64BE(BigInt(h.offset), at);
  at = buf.writeUInt32BE(h.length, at);
  at = buf.writeUInt8(h.codec, at);
  at += h.digest.copy(buf, at);
  at = buf.writeUInt32BE(h.ranges.length, at);
  for (const r of h.ranges) {
    at = buf.writeUInt32BE(r.offset, at);
    at = buf.writeUInt32BE(r.length, at);
  }
  return buf;
}

/** Parses a data frame; every field is checked against the chunk's bounds. */
export function decodeData(p: Buffer): { header: DataHeader; payload: Buffer } {
  if (p.length < 51) throw protocolError('a data frame is too short');
  const disk = p.readUInt16BE(0);
  const offset = Number(p.readBigUInt64BE(2));
  const length = p.readUInt32BE(10);
  const codec = p.readUInt8(14);
  const digest = p.subarray(15, 47);
  const count = p.readUInt32BE(47);
  if (length === 0 || length > CHUNK_SIZE || !Number.isSafeInteger(offset)) throw protocolError(`a data frame has a bad chunk (offset ${offset}, length ${length})`);
  if (codec !== CODEC_RAW && codec !== CODEC_ZSTD && codec !== CODEC_ZSTD_STREAM) throw protocolError(`a data frame has an unknown codec ${codec}`);
  if (count > length / 512 + 1 || 51 + 8 * count > p.length) throw protocolError(`a data frame has a bad range count ${count}`);
  const ranges: Range[] = [];
  let end = 0;
  for (let i = 0; i < count; i++) {
    const r = { offset: p.readUInt32BE(51 + 8 * i), length: p.readUInt32BE(55 + 8 * i) };
    if (r.offset < end || r.length === 0 || r.offset + r.length > length) throw protocolError('a data frame has overlapping or out-of-chunk ranges');
    end = r.offset + r.length;
    ranges.push(r);
  }
  return { header: { disk, offset, length, codec, digest, ranges }, payload: p.subarray(51 + 8 * count) };
}

/** The range list as the digest covers it. */
export function rangeBytes(ranges: Range[]): Buffer {
  const b = Buffer.allocUnsafe(8 * ranges.length);
  ranges.forEach((r, i) => {
    b.writeUInt32BE(r.offset, 8 * i);
    b.writeUInt32BE(r.length, 8 * i + 4);
  });
  return b;
}

/** A chunk's digest: SHA-256 of its range list, then of its bytes (unused parts as zeros). */
export function chunkDigest(ranges: Range[], zeroFilled: Buffer): Buffer {
  return createHash('sha256').update(rangeBytes(ranges)).update(zeroFilled).digest();
}

export function encodeKnown(disk: number, entries: { offset: number; digest: Buffer }[]): Buffer {
  const buf = Buffer.allocUnsafe(6 + 40 * entries.length);
  buf.writeUInt16BE(disk, 0);
  buf.writeUInt32BE(entries.length, 2);
  entries.forEach((e, i) => {
    buf.writeBigUInt64BE(BigInt(e.offset), 6 + 40 * i);
    e.digest.copy(buf, 14 + 40 * i);
  });
  return buf;
}

export function decodeKnown(p: Buffer): { disk: number; known: Map<number, string> } {
  if (p.length < 6) throw protocolError('a known-chunks frame is too short');
  const disk = p.readUInt16BE(0);
  const count = p.readUInt32BE(2);
  if (6 + 40 * count !== p.length) throw protocolError('a known-chunks frame has a bad length');
  const known = new Map<number, string>();
  for (let i = 0; i < count; i++) known.set(Number(p.readBigUInt64BE(6 + 40 * i)), p.toString('hex', 14 + 40 * i, 46 + 40 * i));
  return { disk, known };
}

export function encodeAck(disk: number, offset: number): Buffer {
  const b = Buffer.allocUnsafe(10);
  b.writeUInt16BE(disk, 0);
  b.writeBigUInt64BE(BigInt(offset), 2);
  return b;
}

export function decodeAck(p: Buffer): { disk: number; offset: number } {
  if (p.length !== 10) throw protocolError('an ack frame has a bad length');
  return { disk: p.readUInt16BE(0), offset: Number(p.readBigUInt64BE(2)) };
}
