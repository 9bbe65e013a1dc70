// An empty virtual disk of a given size (every byte unallocated): the source `ferry image create`
// converts from, so creating an image is the same code path as converting one.
import type { CheckReport, DiskImage, ImageInfo, Segment } from './types.js';

export class EmptyImage implements DiskImage {
  readonly format = 'raw' as const;
  readonly name = '(empty disk)';

  constructor(readonly virtualSize: number) {}

  async map(offset: number, length: number): Promise<Segment[]> {
    return length > 0 ? [{ offset, length, kind: 'unallocated', depth: 0, source: { type: 'zero' } }] : [];
  }

  async info(): Promise<ImageInfo> {
    return { format: 'raw', subformat: 'empty', virtualSize: this.virtualSize, fileSize: 0, allocatedSize: 0 };
  }

  async check(): Promise<CheckReport> {
    return { format: 'raw', verdict: 'clean', corruptions: 0, leaks: 0, problems: [] };
  }

  async close(): Promise<void> {}
}
