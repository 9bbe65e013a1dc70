// Byte (or block) ranges: sorting and merging, for allocation maps and transfer plans.

export interface Range {
  offset: number;
  length: number;
}

/** Sorted, with overlapping and touching ranges joined; empty ranges dropped. */
export function mergeRanges(ranges: Range[]): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}

/** The parts of sorted, merged `ranges` inside [start, end). */
export function clipRanges(ranges: Range[], start: number, end: number): Range[] {
  const out: Range[] = [];
  // Binary search for the first range ending after start.
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid]!;
    if (r.offset + r.length <= start) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < ranges.length; i++) {
    const r = ranges[i]!;
    if (r.offset >= end) break;
    const s = Math.max(r.offset, start);
    const e = Math.min(r.offset + r.length, end);
    if (s < e) out.push({ offset: s, length: e - s });
  }
  return out;
}

export function totalLength(ranges: Range[]): number {
  let n = 0;
  for (const r of ranges) n += r.length;
  return n;
}
