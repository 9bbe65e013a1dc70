// Extents: the data / zero / unallocated map of a virtual disk, derived from map() in windows so
// memory stays bounded, with adjacent runs of the same kind and depth merged (as `qemu-img map`).
import type { DiskImage, ExtentKind } from './types.js';

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
  depth: number;
}

/** Window size for walking the map: bounds the segments held at once. */
export const MAP_WINDOW = 256 * 1024 * 1024;

/** Yields the merged extents of [offset, offset+length) (default: the whole disk). */
export async function* extents(image: DiskImage, offset = 0, length = image.virtualSize - offset): AsyncGenerator<Extent> {
  let pending: Extent | undefined;
  const end = offset + length;
  for (let pos = offset; pos < end; ) {
    const len = Math.min(MAP_WINDOW, end - pos);
    for (const s of await image.map(pos, len)) {
      if (pending && pending.kind === s.kind && pending.depth === s.depth && pending.offset + pending.length === s.offset) {
        pending.length += s.length;
      } else {
        if (pending) yield pending;
        pending = { offset: s.offset, length: s.length, kind: s.kind, depth: s.depth };
      }
    }
    pos += len;
  }
  if (pending) yield pending;
}

/** Totals per kind, e.g. for `info`'s allocated figures. */
export async function extentTotals(image: DiskImage): Promise<Record<ExtentKind, number>> {
  const totals: Record<ExtentKind, number> = { data: 0, zero: 0, unallocated: 0 };
  for await (const e of extents(image)) totals[e.kind] += e.length;
  return totals;
}
