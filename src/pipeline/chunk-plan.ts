// Chunk planning: turns an image's map() segments into the chunks streamVirtual delivers, walking
// the map in windows so memory stays bounded. Zero/unallocated runs become one chunk per maximal
// run of one kind (merged across map windows, never split at chunkSize); data runs are cut at the
// chunkSize grid of virtual offsets (a data chunk never crosses a multiple of chunkSize, so chunk
// boundaries are the same whatever the layout). Zero runs shorter than `minZeroRun` inside data are
// absorbed into the data chunk (read as zeros) instead of splitting it.
import { assertCovers } from '../image/read.js';
import type { DiskImage, Segment } from '../image/types.js';

export type PlanItem =
  | { type: 'zero'; kind: 'zero' | 'unallocated'; offset: number; length: number }
  | { type: 'data'; offset: number; length: number; segments: Segment[] };

export interface PlanOptions {
  offset: number;
  length: number;
  chunkSize: number;
  minZeroRun: number;
}

/** Largest map() window: after all-zero windows the window doubles up to this. */
export const MAX_MAP_WINDOW = 256 * 1024 * 1024;

/** The part [off, off+len) of `seg` as a segment of its own. */
export function clipSegment(seg: Segment, off: number, len: number): Segment {
  if (off === seg.offset && len === seg.length) return seg;
  const d = off - seg.offset;
  const s = seg.source;
  const source =
    s.type === 'zero' ? s : s.type === 'host' ? { ...s, offset: s.offset + d } : { ...s, skip: s.skip + d };
  return { offset: off, length: len, kind: seg.kind, depth: seg.depth, source };
}

export async function* planChunks(image: DiskImage, o: PlanOptions): AsyncGenerator<PlanItem> {
  const end = o.offset + o.length;
  const baseWindow = Math.max(o.chunkSize * 4, 16 * 1024 * 1024);
  let window = baseWindow;
  let zero: Extract<PlanItem, { type: 'zero' }> | undefined;
  let data: Extract<PlanItem, { type: 'data' }> | undefined;
  const cell = (off: number) => Math.floor(off / o.chunkSize);

  for (let pos = o.offset; pos < end; ) {
    const len = Math.min(window, end - pos);
    const segs = await image.map(pos, len);
    assertCovers(segs, pos, len, image.name);
    const allZero = segs.every((s) => s.source.type === 'zero');
    window = allZero ? Math.min(window * 2, MAX_MAP_WINDOW) : baseWindow;
    pos += len;

    for (const seg of segs) {
      const isZero = seg.source.type === 'zero';
      if (isZero && !(data && seg.length < o.minZeroRun)) {
        if (data) {
          yield data;
          data = undefined;
        }
        const kind = seg.kind === 'unallocated' ? 'unallocated' : 'zero';
        if (zero && zero.kind === kind) {
          zero.length += seg.length;
        } else {
          if (zero) yield zero;
          zero = { type: 'zero', kind, offset: seg.offset, length: seg.length };
        }
        continue;
      }
      if (zero) {
        yield zero;
        zero = undefined;
      }
      // Data (or an absorbed short zero run): cut at the chunkSize grid.
      let at = seg.offset;
      const segEnd = seg.offset + seg.length;
      while (at < segEnd) {
        const cellEnd = (cell(at) + 1) * o.chunkSize;
        const stop = Math.min(segEnd, cellEnd);
        const piece = clipSegment(seg, at, stop - at);
        if (data && cell(data.offset) === cell(at)) {
          data.segments.push(piece);
          data.length += piece.length;
        } else {
          if (data) yield data;
          data = { type: 'data', offset: at, length: piece.length, segments: [piece] };
        }
        if (stop === cellEnd) {
          yield data;
          data = undefined;
        }
        at = stop;
      }
    }
  }
  if (data) yield data;
  if (zero) yield zero;
}
