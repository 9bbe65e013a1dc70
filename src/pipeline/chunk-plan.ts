// Chunk planning: turns an image's map() segments into the chunks streamVirtual delivers, walking
// the map in windows so memory stays bounded. Zero/unallocated runs become one chunk per maximal
// run of one kind (merged across map windows, never split at chunkSize); data runs are cut at the
// chunkSize grid of virtual offsets (a data chunk never crosses a multiple of chunkSize, so chunk
// boundaries are the same whatever the layout). Zero runs shorter than `minZeroRun` inside data are
// absorbed into the data chunk (read as zeros) instead of splitting it. With `align`, zero bytes
// that share an aligned block (a writer's cluster or grain) with data are absorbed too, so every
// data chunk starts and ends on a block boundary.
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
  /** Data chunks start and end on multiples of this (or the range's end); divides chunkSize. */
  align?: number;
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
  const align = o.align ?? 1;
  const baseWindow = Math.max(o.chunkSize * 4, 16 * 1024 * 1024);
  let window = baseWindow;
  /** Zero runs not yielded yet: the last ones may still be read as part of following data. */
  const zeros: ZeroItem[] = [];
  let data: DataItem | undefined;
  const cell = (off: number) => Math.floor(off / o.chunkSize);
  const alignDown = (off: number) => Math.floor(off / align) * align;
  /** Next multiple of `align` after `off` (off itself when aligned), capped at the end. */
  const alignUp = (off: number) => Math.min(end, Math.ceil(off / align) * align);

  /** Adds `seg` (data, or zero bytes read as part of data) to the data chunks, cut at the chunk grid. */
  function* addData(seg: Segment): Generator<PlanItem> {
    let at = seg.offset;
    const segEnd = seg.offset + seg.length;
    while (at < segEnd) {
      const cellEnd = (cell(at) + 1) * o.chunkSize;
      const stop = Math.min(segEnd, cellEnd);
      const piece = clipSegment(seg, at, stop - at);
      if (data && cell(data.offset) === cell(at) && data.offset + data.length === at) {
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

  /** Yields the pending zero runs that end at or before `limit`, and the part of one before it. */
  function* flushZeros(limit: number): Generator<PlanItem> {
    while (zeros.length > 0) {
      const z = zeros[0]!;
      if (z.offset >= limit) return;
      if (z.offset + z.length <= limit) {
        yield zeros.shift()!;
      } else {
        yield { type: 'zero', kind: z.kind, offset: z.offset, length: limit - z.offset };
        z.length -= limit - z.offset;
        z.offset = limit;
        return;
      }
    }
  }

  for (let pos = o.offset; pos < end; ) {
    const len = Math.min(window, end - pos);
    const segs = await image.map(pos, len);
    assertCovers(segs, pos, len, image.name);
    const allZero = segs.every((s) => s.source.type === 'zero');
    window = allZero ? Math.min(window * 2, MAX_MAP_WINDOW) : baseWindow;
    pos += len;

    for (const whole of segs) {
      let seg = whole;
      const isZero = seg.source.type === 'zero';
      if (isZero && !(data && seg.length < o.minZeroRun)) {
        if (data) {
          // Zeros sharing an aligned block with the data before them are read as part of it.
          const dataEnd = data.offset + data.length;
          const take = Math.min(seg.length, alignUp(dataEnd) - dataEnd);
          if (take > 0) {
            yield* addData(clipSegment(seg, seg.offset, take));
            if (take === seg.length) continue;
            seg = clipSegment(seg, seg.offset + take, seg.length - take);
          }
          if (data) {
            yield data;
            data = undefined;
          }
        }
        const kind = seg.kind === 'unallocated' ? 'unallocated' : 'zero';
        const last = zeros[zeros.length - 1];
        if (last && last.kind === kind) {
          last.length += seg.length;
        } else {
          zeros.push({ type: 'zero', kind, offset: seg.offset, length: seg.length });
          // Runs before the aligned block where the newest run starts can no longer join data
          // (the newest run itself stays pending: it may grow).
          yield* flushZeros(alignDown(seg.offset));
        }
        continue;
      }
      if (zeros.length > 0) {
        // Zeros sharing an aligned block with the data after them are read as part of it.
        yield* flushZeros(alignDown(seg.offset));
        for (const z of zeros.splice(0)) {
          yield* addData({ offset: z.offset, length: z.length, kind: z.kind, depth: 0, source: { type: 'zero' } });
        }
      }
      yield* addData(seg);
    }
  }
  if (data) yield data;
  yield* flushZeros(end);
}

type ZeroItem = Extract<PlanItem, { type: 'zero' }>;
type DataItem = Extract<PlanItem, { type: 'data' }>;
