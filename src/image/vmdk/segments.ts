// A small builder for map() output: appends segments in order and merges a new one into the last
// when they continue each other (same kind and depth, zero sources, or contiguous host bytes of the
// same file). Compressed segments are never merged (each is one grain).
import type { Segment } from '../types.js';

export class SegmentList {
  readonly items: Segment[] = [];

  push(seg: Segment): void {
    if (seg.length <= 0) return;
    const last = this.items[this.items.length - 1];
    if (last && last.kind === seg.kind && last.depth === seg.depth && last.offset + last.length === seg.offset) {
      const a = last.source;
      const b = seg.source;
      if (a.type === 'zero' && b.type === 'zero') {
        last.length += seg.length;
        return;
      }
      if (a.type === 'host' && b.type === 'host' && a.file === b.file && a.offset + last.length === b.offset) {
        last.length += seg.length;
        return;
      }
    }
    this.items.push({ ...seg, source: { ...seg.source } });
  }

  zero(offset: number, length: number, kind: 'zero' | 'unallocated'): void {
    this.push({ offset, length, kind, depth: 0, source: { type: 'zero' } });
  }
}
