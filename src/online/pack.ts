// Packing and unpacking a chunk for the wire: the bytes of its used ranges back to back, zstd-
// compressed when that pays (a quick probe skips data that will not shrink: random or already
// compressed blocks go raw, at line rate), and the chunk's digest (wire.ts chunkDigest).
// A data connection compresses its chunks as one zstd stream (StreamPacker / StreamUnpacker),
// flushed after each chunk: each chunk is compressed with the ones before it as context, which
// on the online benchmark's disk shrinks the data sent by ~8 % against 1 MiB chunks compressed
// one by one (simulated over its used blocks at level 3: 191.7 MB against 207.8 MB).
import { FerryError } from '../errors.js';
import { zstd, type ZstdCCtx, type ZstdDCtx } from '../lazy-modules.js';
import { decompressInto } from '../image/decompress.js';
import type { Range } from './ranges.js';
import { CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_STREAM, STREAM_WINDOW_LOG_MAX, chunkDigest, protocolError } from './wire.js';


let cctx: ZstdCCtx | undefined;
let outBuf: Buffer | undefined;
const PROBE = 4096;

export interface Packed {
  digest: Buffer;
  codec: number;
  payload: Buffer;
  /** Bytes of the used ranges (before compression). */
  rawBytes: number;
}

/** The used ranges' bytes of a zero-filled chunk, back to back (a view when there is one range). */
function gather(chunk: Buffer, ranges: Range[]): Buffer {
  if (ranges.length === 1) return chunk.subarray(ranges[0]!.offset, ranges[0]!.offset + ranges[0]!.length);
  let n = 0;
  for (const r of ranges) n += r.length;
  const out = Buffer.allocUnsafe(n);
  let at = 0;
  for (const r of ranges) at += chunk.copy(out, at, r.offset, r.offset + r.length);
  return out;
}

/** True when a sample of the data does not shrink (zstd level 1 on 3 slices saves under 3 %). */
function incompressible(data: Buffer): boolean {
  if (data.length < 8 * PROBE) return false;
  const sample = Buffer.concat([data.subarray(0, PROBE), data.subarray(data.length >> 1, (data.length >> 1) + PROBE), data.subarray(data.length - PROBE)]);
  cctx ??= new (zstd().CCtx)();
  const room = Buffer.allocUnsafe(zstd().compressBound(sample.length));
  return cctx.compress(room, sample, 1) > sample.length * 0.97;
}

/**
 * Packs a chunk whose digest is already known (chunkDigest): its used ranges' bytes, compressed
 * with zstd at `level` when that pays (undefined: never).
 */
export function packChunk(chunk: Buffer, ranges: Range[], level: number | undefined, digest: Buffer = chunkDigest(ranges, chunk)): Packed {
  const data = gather(chunk, ranges);
  if (level === undefined || incompressible(data)) return { digest, codec: CODEC_RAW, payload: data, rawBytes: data.length };
  cctx ??= new (zstd().CCtx)();
  const bound = zstd().compressBound(data.length);
  if (!outBuf || outBuf.length < bound) outBuf = Buffer.allocUnsafe(bound);
  const n = cctx.compress(outBuf, data, level);
  if (n >= data.length * 0.97) return { digest, codec: CODEC_RAW, payload: data, rawBytes: data.length };
  return { digest, codec: CODEC_ZSTD, payload: Buffer.from(outBuf.subarray(0, n)), rawBytes: data.length };
}

/**
 * One data connection's compressor: chunks go through one zstd stream (level `level`, a window of
 * 2^windowLog bytes, long-distance matching from 16 MiB up), flushed after each, so a chunk's
 * payload decodes only after the ones packed before it on the same connection. A new connection
 * needs a new packer (the receiver starts a new stream).
 */
export class StreamPacker {
  private readonly cctx: ZstdCCtx | undefined;
  private out = Buffer.alloc(0);

  constructor(level: number | undefined, windowLog = 23) {
    if (level === undefined) return;
    if (!Number.isInteger(windowLog) || windowLog < 10 || windowLog > STREAM_WINDOW_LOG_MAX) throw new RangeError(`windowLog ${windowLog} is outside 10..${STREAM_WINDOW_LOG_MAX}`);
    const z = zstd();
    this.cctx = new z.CCtx();
    this.cctx.setParameter(z.CParameter.compressionLevel, level);
    this.cctx.setParameter(z.CParameter.windowLog, windowLog);
    if (windowLog >= 24) this.cctx.setParameter(z.CParameter.enableLongDistanceMatching, 1);
  }

  pack(chunk: Buffer, ranges: Range[], digest: Buffer = chunkDigest(ranges, chunk)): Packed {
    const data = gather(chunk, ranges);
    // No probe here (packChunk's): on the online benchmark's disk it sent 134 chunks raw, 40 MB
    // of them shared libraries and other data that compress well in context but not in three
    // 4 KiB samples (210.6 MB sent against 196.4 MB without it). zstd passes over data that will
    // not shrink quickly (random 1 MiB chunks: a few ms each), and such a chunk costs only the
    // stream's block headers over its raw size.
    if (!this.cctx) return { digest, codec: CODEC_RAW, payload: data, rawBytes: data.length };
    const z = zstd();
    const room = z.compressBound(data.length) + 1024;
    if (this.out.length < room) this.out = Buffer.allocUnsafe(room);
    let src = data;
    let produced = 0;
    for (;;) {
      const [left, written, read] = this.cctx.compressStream2(this.out.subarray(produced), src, z.EndDirective.flush);
      produced += written;
      src = src.subarray(read);
      if (left === 0 && src.length === 0) break;
      if (produced >= this.out.length) throw new Error('zstd stream output exceeds its bound');
    }
    // Sent compressed even when it did not shrink: the stream has taken these bytes.
    return { digest, codec: CODEC_ZSTD_STREAM, payload: Buffer.from(this.out.subarray(0, produced)), rawBytes: data.length };
  }
}

/** One data connection's decompressor: the receiving end of a StreamPacker. */
export class StreamUnpacker {
  private dctx: ZstdDCtx | undefined;

  /** `windowLogMax`: the largest window this connection was offered (the receiver's memory for it). */
  constructor(private readonly windowLogMax = STREAM_WINDOW_LOG_MAX) {}

  /** Decodes a chunk's payload into `out` (exactly its length, or a protocol error). */
  decode(payload: Buffer, out: Buffer): void {
    const z = zstd();
    if (!this.dctx) {
      this.dctx = new z.DCtx();
      this.dctx.setParameter(z.DParameter.windowLogMax, this.windowLogMax);
    }
    let src = payload;
    let produced = 0;
    while (src.length > 0) {
      const [, written, read] = this.dctx.decompressStream(out.subarray(produced), src);
      produced += written;
      src = src.subarray(read);
      if (written === 0 && read === 0) throw protocolError(`a chunk decompresses to more than its ${out.length} bytes`);
    }
    if (produced !== out.length) throw protocolError(`a chunk decompresses to ${produced} bytes, not its ${out.length}`);
  }
}

/**
 * Unpacks a received chunk into `chunk` (zero-filled first), checking sizes and the digest: the
 * bytes of its ranges, decompressed within the bound of their total length.
 */
export function unpackChunk(chunk: Buffer, length: number, ranges: Range[], codec: number, payload: Buffer, digest: Buffer, stream?: StreamUnpacker): void {
  let total = 0;
  for (const r of ranges) total += r.length;
  let data = payload;
  if (codec === CODEC_ZSTD_STREAM) {
    if (!stream) throw protocolError('a chunk of a compressed stream where none is open');
    data = Buffer.allocUnsafe(total);
    try {
      stream.decode(payload, data);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw protocolError(`a chunk does not decompress to its ${total} bytes: ${(err as Error).message}`);
    }
  } else if (codec === CODEC_ZSTD) {
    const out = Buffer.allocUnsafe(total);
    try {
      decompressInto('zstd', payload, out, 'a received chunk');
    } catch (err) {
      throw protocolError(`a chunk does not decompress to its ${total} bytes: ${(err as Error).message}`);
    }
    data = out;
  } else if (payload.length !== total) {
    throw protocolError(`a chunk carries ${payload.length} bytes for ranges of ${total}`);
  }
  const view = chunk.subarray(0, length);
  view.fill(0);
  let at = 0;
  for (const r of ranges) at += data.copy(view, r.offset, at, at + r.length);
  if (!chunkDigest(ranges, view).equals(digest)) {
    throw new FerryError('CHECKSUM_MISMATCH', 'a chunk arrived damaged (its digest does not match its content)', {
      remedy: 'The data was altered in transit; the sender sends it again. If this repeats, check the network path and memory of both machines.',
    });
  }
}
