// The raw driver: the virtual disk is the file itself. Holes of a sparse file (SEEK_DATA/SEEK_HOLE)
// are reported as zero extents, as `qemu-img map` does. Probed last, as the fallback.
import type { ByteSource } from '../io/byte-source.js';
import type { CheckReport, DiskImage, ImageDriver, ImageInfo, Segment } from './types.js';

export class RawImage implements DiskImage {
  readonly format = 'raw' as const;
  readonly virtualSize: number;

  constructor(
    private readonly src: ByteSource,
    readonly name: string,
  ) {
    this.virtualSize = src.size;
  }

  async map(offset: number, length: number): Promise<Segment[]> {
    const end = offset + length;
    const ranges = this.src.dataRanges ? await this.src.dataRanges(offset, length) : [{ offset, length }];
    const out: Segment[] = [];
    let pos = offset;
    const zero = (to: number) => {
      if (to > pos) out.push({ offset: pos, length: to - pos, kind: 'zero', depth: 0, source: { type: 'zero' } });
    };
    for (const r of ranges) {
      const start = Math.max(r.offset, pos);
      const stop = Math.min(r.offset + r.length, end);
      if (stop <= start) continue;
      zero(start);
      out.push({ offset: start, length: stop - start, kind: 'data', depth: 0, source: { type: 'host', file: this.src, offset: start } });
      pos = stop;
    }
    zero(end);
    return out;
  }

  async info(): Promise<ImageInfo> {
    let allocated = 0;
    if (this.src.dataRanges) for (const r of await this.src.dataRanges(0, this.src.size)) allocated += r.length;
    else allocated = this.src.size;
    const warnings: string[] = [];
    if (this.src.size % 512 !== 0) warnings.push(`size ${this.src.size} is not a multiple of 512 bytes: the last sector is partial`);
    return {
      format: 'raw',
      subformat: 'raw',
      virtualSize: this.virtualSize,
      fileSize: this.src.size,
      allocatedSize: allocated,
      ...(warnings.length ? { warnings } : {}),
    };
  }

  async check(): Promise<CheckReport> {
    return { format: 'raw', verdict: 'clean', corruptions: 0, leaks: 0, problems: [] };
  }

  close(): Promise<void> {
    return this.src.close();
  }
}

export const rawDriver: ImageDriver = {
  format: 'raw',
  probe: () => 1,
  open: async (src, ctx) => new RawImage(src, ctx.path),
};
