// An opened VHD: the layout decided at open time (which footer, virtual size rule, dynamic header,
// BAT, parent) and map()/info() over it. Dynamic disks map whole allocated blocks as data and unallocated ones
// as zero (qemu's vpc block status); differencing disks decide per sector by the block bitmap whether
// bytes come from this file or from the parent (depth + 1). Fixed disks are data throughout, as qemu
// reports them (data=true even over holes of a sparse file).
import { truncated } from '../../errors.js';
import { readExact, type ByteSource } from '../../io/byte-source.js';
import type { CheckReport, DiskImage, ImageInfo, Segment } from '../types.js';
import { checkVhd } from './check.js';
import { Bat, UNALLOCATED, type DynamicHeader } from './dynamic.js';
import { FOOTER_SIZE, VHD_EPOCH, checksumOk, type Footer } from './footer.js';
import type { SizeDecision } from './geometry.js';
import type { DecodedLocator } from './parent.js';

export interface DynamicLayout {
  header: DynamicHeader;
  bat: Bat;
  blockSize: number;
  bitmapSize: number;
}

export interface VhdLayout {
  subformat: 'fixed' | 'dynamic' | 'differencing';
  footer: Footer;
  /** The footer at the end of the file, if it carries the cookie. */
  endFooter?: Footer;
  /** The copy at offset 0, if it carries the cookie (dynamic/differencing). */
  headFooter?: Footer;
  size: SizeDecision;
  dynamic?: DynamicLayout;
  locators?: DecodedLocator[];
  warnings: string[];
}

const MAX_BITMAPS_CACHED = 64;

export class VhdImage implements DiskImage {
  readonly format = 'vpc' as const;
  readonly virtualSize: number;
  private readonly bitmaps = new Map<number, Buffer>();

  constructor(
    readonly src: ByteSource,
    readonly name: string,
    readonly layout: VhdLayout,
    readonly parent?: { image: DiskImage; reference: string },
  ) {
    this.virtualSize = layout.size.size;
  }

  get uuid(): string {
    return this.layout.footer.uuid;
  }

  async map(offset: number, length: number): Promise<Segment[]> {
    const end = Math.min(offset + length, this.virtualSize);
    const out: Segment[] = [];
    if (offset >= end) return out;
    if (this.layout.subformat === 'fixed') await this.mapFixed(offset, end, out);
    else await this.mapDynamic(offset, end, out);
    return out;
  }

  private async mapFixed(offset: number, end: number, out: Segment[]): Promise<void> {
    const dataEnd = this.src.size - FOOTER_SIZE;
    if (end > dataEnd) {
      throw truncated(`${this.name}: fixed VHD data for virtual bytes ${Math.max(offset, dataEnd)}..${end}`, this.virtualSize + FOOTER_SIZE, this.src.size, {
        virtualSize: this.virtualSize,
      });
    }
    // qemu reports a fixed VHD as data throughout (holes of a sparse file included: data=true, zero=true).
    push(out, { offset, length: end - offset, kind: 'data', depth: 0, source: { type: 'host', file: this.src, offset } });
  }

  private async mapDynamic(offset: number, end: number, out: Segment[]): Promise<void> {
    const dyn = this.layout.dynamic!;
    const bs = dyn.blockSize;
    let pos = offset;
    while (pos < end) {
      const bi = Math.floor(pos / bs);
      const blockEnd = Math.min((bi + 1) * bs, end);
      const entry = await dyn.bat.get(bi);
      if (entry === UNALLOCATED) {
        await this.fromBelow(pos, blockEnd, out);
      } else {
        const dataStart = entry * 512 + dyn.bitmapSize;
        const hostAt = (v: number) => dataStart + (v - bi * bs);
        if (!this.parent) {
          push(out, { offset: pos, length: blockEnd - pos, kind: 'data', depth: 0, source: { type: 'host', file: this.src, offset: hostAt(pos) } });
        } else {
          const bitmap = await this.bitmap(entry, dyn.bitmapSize);
          let p = pos;
          while (p < blockEnd) {
            const sector = Math.floor((p - bi * bs) / 512);
            const bit = sectorBit(bitmap, sector);
            let s = sector + 1;
            while (bi * bs + s * 512 < blockEnd && sectorBit(bitmap, s) === bit) s++;
            const runEnd = Math.min(bi * bs + s * 512, blockEnd);
            if (bit) push(out, { offset: p, length: runEnd - p, kind: 'data', depth: 0, source: { type: 'host', file: this.src, offset: hostAt(p) } });
            else await this.fromBelow(p, runEnd, out);
            p = runEnd;
          }
        }
      }
      pos = blockEnd;
    }
  }

  /** Bytes not present in this layer: zero for a dynamic disk, the parent's for a differencing disk. */
  private async fromBelow(start: number, end: number, out: Segment[]): Promise<void> {
    if (!this.parent) {
      push(out, { offset: start, length: end - start, kind: 'zero', depth: 0, source: { type: 'zero' } });
      return;
    }
    const p = this.parent.image;
    const inParentEnd = Math.min(end, Math.max(start, p.virtualSize));
    if (inParentEnd > start) {
      for (const s of await p.map(start, inParentEnd - start)) push(out, { ...s, depth: s.depth + 1 });
    }
    if (end > inParentEnd) push(out, { offset: inParentEnd, length: end - inParentEnd, kind: 'unallocated', depth: 1, source: { type: 'zero' } });
  }

  private async bitmap(entry: number, size: number): Promise<Buffer> {
    const hit = this.bitmaps.get(entry);
    if (hit) return hit;
    const buf = await readExact(this.src, entry * 512, size, `sector bitmap of the block at sector ${entry}`);
    if (this.bitmaps.size >= MAX_BITMAPS_CACHED) this.bitmaps.delete(this.bitmaps.keys().next().value!);
    this.bitmaps.set(entry, buf);
    return buf;
  }

  async info(): Promise<ImageInfo> {
    const l = this.layout;
    const f = l.footer;
    let allocated = 0;
    if (this.src.dataRanges) for (const r of await this.src.dataRanges(0, this.src.size)) allocated += r.length;
    else allocated = this.src.size;
    const details: Record<string, unknown> = {
      creatorApplication: f.creatorApp,
      creatorVersion: `${f.creatorVersionMajor}.${f.creatorVersionMinor}`,
      creatorHostOs: f.creatorHostOs,
      geometry: { cylinders: f.cylinders, heads: f.heads, sectorsPerTrack: f.sectorsPerTrack },
      geometrySize: l.size.geometrySectors * 512,
      currentSize: f.currentSize.toString(),
      originalSize: f.originalSize.toString(),
      sizeRule: l.size.rule,
      sizeRuleReason: l.size.reason,
      uuid: f.uuid,
      savedState: f.savedState !== 0,
      timestamp: new Date((VHD_EPOCH + f.timestamp) * 1000).toISOString(),
      features: f.features,
      footerUsed: f.at === 0 ? 'copy at offset 0' : 'footer at end of file',
      footerChecksumOk: checksumOk(f),
    };
    if (l.dynamic) {
      const h = l.dynamic.header;
      details.dynamicHeaderOffset = h.at;
      details.batOffset = h.tableOffset.toString();
      details.maxTableEntries = h.maxTableEntries;
      details.blockSize = h.blockSize;
      details.dynamicHeaderChecksumOk = h.checksum === h.computedChecksum;
    }
    if (l.subformat === 'differencing' && l.dynamic) {
      const h = l.dynamic.header;
      details.parentUuid = h.parentUuid;
      details.parentName = h.parentName;
      details.parentTimestamp = new Date((VHD_EPOCH + h.parentTimestamp) * 1000).toISOString();
      details.parentLocators = (l.locators ?? []).map((x) => ({ platform: x.platform, path: x.path, problem: x.problem }));
    }
    const backingPath = this.parent?.reference ?? (l.dynamic && l.subformat === 'differencing' ? l.dynamic.header.parentName : undefined);
    return {
      format: 'vpc',
      subformat: l.subformat,
      virtualSize: this.virtualSize,
      fileSize: this.src.size,
      allocatedSize: allocated,
      ...(l.dynamic ? { clusterSize: l.dynamic.blockSize } : {}),
      ...(backingPath !== undefined ? { backing: { path: backingPath, format: 'vpc', ...(this.parent ? { resolvedPath: this.parent.image.name } : {}) } } : {}),
      ...(f.savedState ? { features: ['saved_state'] } : {}),
      details,
      ...(l.warnings.length ? { warnings: [...l.warnings] } : {}),
    };
  }

  check(): Promise<CheckReport> {
    return checkVhd(this.src, this.layout);
  }

  async close(): Promise<void> {
    try {
      if (this.parent) await this.parent.image.close();
    } finally {
      await this.src.close();
    }
  }
}

/** Bit for `sector` in a VHD block bitmap: most significant bit of byte 0 is sector 0. */
function sectorBit(bitmap: Buffer, sector: number): number {
  return (bitmap[sector >> 3]! >> (7 - (sector & 7))) & 1;
}

/** Appends `s`, merging it into the previous segment when it continues it. */
function push(out: Segment[], s: Segment): void {
  const prev = out[out.length - 1];
  if (prev && prev.kind === s.kind && prev.depth === s.depth && prev.offset + prev.length === s.offset) {
    const a = prev.source;
    const b = s.source;
    if ((a.type === 'zero' && b.type === 'zero') || (a.type === 'host' && b.type === 'host' && a.file === b.file && a.offset + prev.length === b.offset)) {
      prev.length += s.length;
      return;
    }
  }
  out.push(s);
}
