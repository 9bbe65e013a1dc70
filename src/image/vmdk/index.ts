// The VMDK driver (read-only): probing by content ('KDMV' / 'COWD' magic, or a text descriptor),
// and the opened image: map() over flat / ZERO / sparse / stream-compressed extents with the parent
// disk filling unallocated grains, info() and check(). Parsing lives in descriptor.ts / header.ts,
// grain lookup in sparse.ts, the stream footer in stream.ts, opening in open.ts, checks in check.ts.
import { FerryError } from '../../errors.js';
import type { ByteSource } from '../../io/byte-source.js';
import type { CheckReport, DiskImage, ImageDriver, ImageInfo, OpenContext, ProbeInput, Segment } from '../types.js';
import { checkVmdk } from './check.js';
import { looksLikeDescriptor } from './descriptor.js';
import { COWD_MAGIC, KDMV_MAGIC, isCompressed } from './header.js';
import type { VmdkState } from './model.js';
import { openVmdkState } from './open.js';
import { SegmentList } from './segments.js';

export class VmdkImage implements DiskImage {
  readonly format = 'vmdk' as const;
  readonly virtualSize: number;
  readonly name: string;

  constructor(private readonly s: VmdkState) {
    this.virtualSize = s.virtualSize;
    this.name = s.name;
  }

  /** Index of the extent holding virtual offset `offset` (binary search over starts). */
  private extentAt(offset: number): number {
    const ex = this.s.extents;
    let lo = 0;
    let hi = ex.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (ex[mid]!.start <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  async map(offset: number, length: number): Promise<Segment[]> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.virtualSize) {
      throw new FerryError('USAGE', `map of ${length} bytes at ${offset} is outside the ${this.virtualSize}-byte disk`, {
        remedy: 'Stay within the virtual size shown by `ferry image info`.',
      });
    }
    if (length === 0) return [];
    const end = offset + length;
    const own = new SegmentList();
    for (let i = this.extentAt(offset); i < this.s.extents.length; i++) {
      const e = this.s.extents[i]!;
      if (e.start >= end) break;
      const from = Math.max(offset, e.start);
      const to = Math.min(end, e.start + e.size);
      if (to <= from) continue;
      const rel = from - e.start;
      if (e.kind === 'flat') {
        own.push({ offset: from, length: to - from, kind: 'data', depth: 0, source: { type: 'host', file: e.file, offset: e.fileOffset + rel } });
      } else if (e.kind === 'zero') {
        own.zero(from, to - from, 'zero');
      } else {
        await e.sparse.map(rel, to - from, e.start, own);
      }
    }
    const parent = this.s.parent;
    if (!parent) return own.items;
    const out = new SegmentList();
    for (const seg of own.items) {
      if (seg.kind !== 'unallocated') {
        out.push(seg);
        continue;
      }
      const pEnd = Math.min(seg.offset + seg.length, parent.virtualSize);
      if (pEnd > seg.offset) {
        for (const p of await parent.map(seg.offset, pEnd - seg.offset)) out.push({ ...p, depth: p.depth + 1 });
      }
      if (pEnd < seg.offset + seg.length) out.zero(Math.max(seg.offset, pEnd), seg.offset + seg.length - Math.max(seg.offset, pEnd), 'unallocated');
    }
    return out.items;
  }

  private allFiles(): ByteSource[] {
    return [this.s.src, ...this.s.files];
  }

  async info(): Promise<ImageInfo> {
    const s = this.s;
    const d = s.descriptor;
    const f = d?.fields ?? {};
    let fileSize = 0;
    let allocated = 0;
    for (const file of this.allFiles()) {
      fileSize += file.size;
      if (file.dataRanges) for (const r of await file.dataRanges(0, file.size)) allocated += r.length;
      else allocated += file.size;
    }
    const sparse = s.extents.find((e) => e.kind === 'sparse');
    const compressed = s.extents.some((e) => e.kind === 'sparse' && isCompressed(e.sparse.header));
    const details: Record<string, unknown> = {
      createType: s.createType,
      descriptor: s.descriptorKind,
    };
    if (d?.version !== undefined) details['version'] = d.version;
    if (d?.cid !== undefined) details['CID'] = d.cid;
    if (d?.parentCid !== undefined) details['parentCID'] = d.parentCid;
    if (f['ddb.adapterType'] !== undefined) details['adapterType'] = f['ddb.adapterType'];
    if (f['ddb.virtualHWVersion'] !== undefined) details['hwVersion'] = f['ddb.virtualHWVersion'];
    if (f['ddb.toolsVersion'] !== undefined) details['toolsVersion'] = f['ddb.toolsVersion'];
    if (f['ddb.uuid'] !== undefined) details['uuid'] = f['ddb.uuid'];
    if (f['ddb.longContentID'] !== undefined) details['longContentID'] = f['ddb.longContentID'];
    if (f['ddb.geometry.cylinders'] !== undefined) {
      details['geometry'] = { cylinders: f['ddb.geometry.cylinders'], heads: f['ddb.geometry.heads'], sectors: f['ddb.geometry.sectors'] };
    }
    if (sparse && sparse.kind === 'sparse') {
      const h = sparse.sparse.header;
      details['sparseVersion'] = h.version;
      details['sparseFlags'] = `0x${h.flags.toString(16)}`;
      details['zeroedGrains'] = sparse.sparse.zeroGrain;
      if (sparse.usesFooter) details['streamFooter'] = true;
    }
    details['extents'] = s.extents.map((e) => ({
      type: e.line?.type ?? (e.kind === 'sparse' ? 'SPARSE' : e.kind.toUpperCase()),
      access: e.line?.access ?? 'RW',
      start: e.start,
      size: e.size,
      ...(e.kind === 'flat' ? { file: e.file.name, fileOffset: e.fileOffset } : {}),
      ...(e.kind === 'sparse' ? { file: e.sparse.file.name, grainSize: e.sparse.grainBytes, compressed: e.sparse.compressed } : {}),
    }));
    const warnings = [...s.warnings];
    if (s.extents.some((e) => e.kind === 'zero')) {
      warnings.push('the descriptor has ZERO extents (read as zeros); note that qemu ignores ZERO extent lines, so qemu-img sees a different disk');
    }
    if (s.extents.some((e) => e.kind === 'sparse' && e.primary.kind === 'KDMV' && e.primary.uncleanShutdown)) {
      warnings.push('the disk was not closed cleanly (uncleanShutdown flag set)');
    }
    return {
      format: 'vmdk',
      subformat: s.createType,
      virtualSize: this.virtualSize,
      fileSize,
      allocatedSize: allocated,
      ...(sparse && sparse.kind === 'sparse' ? { clusterSize: sparse.sparse.grainBytes } : {}),
      ...(compressed ? { compression: ['zlib'] } : {}),
      ...(d?.parentFileNameHint
        ? { backing: { path: d.parentFileNameHint, format: 'vmdk', ...(s.parent ? { resolvedPath: s.parent.name } : {}) } }
        : {}),
      ...(s.files.length ? { files: s.files.map((x) => x.name) } : {}),
      details,
      ...(warnings.length ? { warnings } : {}),
    };
  }

  check(): Promise<CheckReport> {
    return checkVmdk(this.s);
  }

  async close(): Promise<void> {
    for (const f of this.s.files) await f.close();
    if (this.s.parent) await this.s.parent.close();
    await this.s.src.close();
  }
}

export const vmdkDriver: ImageDriver = {
  format: 'vmdk',
  probe(input: ProbeInput): number {
    const { head } = input;
    if (head.length >= 512) {
      const magic = head.readUInt32LE(0);
      if (magic === KDMV_MAGIC) return 100;
      if (magic === COWD_MAGIC) return 95;
    }
    if (input.size <= 1024 * 1024 && looksLikeDescriptor(head)) return 95;
    return 0;
  },
  async open(src: ByteSource, ctx: OpenContext): Promise<DiskImage> {
    return new VmdkImage(await openVmdkState(src, ctx));
  },
};
