// Content comparison of two virtual disks (`ferry image compare`, like `qemu-img compare`): both
// are streamed side by side on the same chunk grid; ranges that are zero in both are not read, a
// data range against a zero range is checked for zeros, and the first differing byte is reported.
// Images of different sizes are equal when the larger one's extra part reads as zeros, unless
// `strict` is set.
import { isAllZero } from './encode-job.js';
import { streamVirtual, type VirtualChunk } from './virtual-stream.js';
import type { DiskImage } from '../image/types.js';

export interface CompareResult {
  identical: boolean;
  /** First virtual offset whose bytes differ (absent when identical or when only sizes differ). */
  firstDifference?: number;
  sizeA: number;
  sizeB: number;
  /** Why the images are not identical. */
  reason?: 'content' | 'size';
  /** Virtual bytes compared. */
  compared: number;
}

export interface CompareOptions {
  strict?: boolean;
  onProgress?: (position: number, total: number) => void;
}

const CHUNK = 4 * 1024 * 1024;

/** A cursor over a chunk stream that hands out pieces of a requested length. */
class Cursor {
  private chunk: VirtualChunk | undefined;
  private done = false;

  constructor(private readonly it: AsyncGenerator<VirtualChunk>) {}

  /** The piece at `pos`: up to `max` bytes; `data` undefined for zeros. */
  async piece(pos: number, max: number): Promise<{ length: number; data: Buffer | undefined }> {
    while (!this.chunk || this.chunk.offset + this.chunk.length <= pos) {
      if (this.done) throw new Error(`stream ended before ${pos}`);
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        continue;
      }
      this.chunk?.release?.(); // its pieces have been compared
      this.chunk = r.value;
    }
    const c = this.chunk;
    const from = pos - c.offset;
    const length = Math.min(max, c.length - from);
    return { length, data: c.data?.subarray(from, from + length) };
  }

  async close(): Promise<void> {
    await this.it.return(undefined);
  }
}

/** Offset of the first non-zero byte of `buf` (which is known not to be all zero). */
function firstNonZero(buf: Buffer): number {
  let lo = 0;
  let hi = buf.length;
  // Halve with memcmp-backed checks, then scan the last small window.
  while (hi - lo > 4096) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (!isAllZero(buf.subarray(lo, mid))) hi = mid;
    else lo = mid;
  }
  for (let i = lo; i < hi; i++) if (buf[i] !== 0) return i;
  return hi;
}

function firstDiff(a: Buffer, b: Buffer): number {
  let lo = 0;
  let hi = a.length;
  while (hi - lo > 4096) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (!a.subarray(lo, mid).equals(b.subarray(lo, mid))) hi = mid;
    else lo = mid;
  }
  for (let i = lo; i < hi; i++) if (a[i] !== b[i]) return i;
  return hi;
}

export async function compareImages(a: DiskImage, b: DiskImage, opts: CompareOptions = {}): Promise<CompareResult> {
  const sizeA = a.virtualSize;
  const sizeB = b.virtualSize;
  const base = { sizeA, sizeB };
  if (opts.strict && sizeA !== sizeB) return { ...base, identical: false, reason: 'size', compared: 0 };
  const common = Math.min(sizeA, sizeB);
  const total = Math.max(sizeA, sizeB);
  const ca = new Cursor(streamVirtual(a, { chunkSize: CHUNK }));
  const cb = new Cursor(streamVirtual(b, { chunkSize: CHUNK }));
  let pos = 0;
  try {
    while (pos < common) {
      const pa = await ca.piece(pos, common - pos);
      const pb = await cb.piece(pos, pa.length);
      const len = pb.length;
      const da = pa.data?.subarray(0, len);
      const db = pb.data;
      if (da && db) {
        if (!da.equals(db)) return { ...base, identical: false, reason: 'content', firstDifference: pos + firstDiff(da, db), compared: pos };
      } else if (da || db) {
        const d = (da ?? db)!;
        if (!isAllZero(d)) return { ...base, identical: false, reason: 'content', firstDifference: pos + firstNonZero(d), compared: pos };
      }
      pos += len;
      opts.onProgress?.(pos, total);
    }
    // The larger image's extra part must read as zeros.
    const rest = sizeA > sizeB ? ca : cb;
    while (pos < total) {
      const p = await rest.piece(pos, total - pos);
      if (p.data && !isAllZero(p.data)) return { ...base, identical: false, reason: 'content', firstDifference: pos + firstNonZero(p.data), compared: pos };
      pos += p.length;
      opts.onProgress?.(pos, total);
    }
  } finally {
    await Promise.all([ca.close(), cb.close()]);
  }
  return { ...base, identical: true, compared: total };
}
