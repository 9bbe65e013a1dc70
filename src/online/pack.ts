// Packing and unpacking a chunk for the wire: the bytes of its used ranges back to back, zstd-
// compressed when that pays (a quick probe skips data that will not shrink: random or already
// compressed blocks go raw, at line rate), and the chunk's digest (wire.ts chunkDigest).
import { FerryError } from '../errors.js';
import { zstd, type ZstdCCtx } from '../lazy-modules.js';
import { decompressInto } from '../image/decompress.js';
import type { Range } from './ranges.js';
import { CODEC_RAW, CODEC_ZSTD, chunkDigest, protocolError } from './wire.js';


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
 * Unpacks a received chunk into `chunk` (zero-filled first), checking sizes and the digest: the
 * bytes of its ranges, decompressed within the bound of their total length.
 */
export function unpackChunk(chunk: Buffer, length: number, ranges: Range[], codec: number, payload: Buffer, digest: Buffer): void {
  let total = 0;
  for (const r of ranges) total += r.length;
  let data = payload;
  if (codec === CODEC_ZSTD) {
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
