// qcow2 guest → host mapping: the active L1 table (read once, ≤ 32 MiB and inside the file), L2
// tables loaded lazily into a bounded LRU cache, classification of clusters and subclusters as
// qemu's block-status does (data / zero / unallocated / compressed), metadata-preallocation holes,
// and the hand-off of unallocated ranges to the backing image (depth + 1).
import { FerryError, corrupt, truncated } from '../../errors.js';
import { readExact, type ByteSource } from '../../io/byte-source.js';
import type { Codec, DiskImage, ExtentKind, Segment, SegmentSource } from '../types.js';
import { COMPRESSED_HI, TableCache, decodeL2, subclusterKind, tableOffset, word } from './entries.js';
import type { Qcow2Header } from './header.js';

/** Memory budget for cached L2 tables. */
const L2_CACHE_BYTES = 32 * 1024 * 1024;

const ZERO: SegmentSource = { type: 'zero' };

/** Accumulates segments, merging a run with the previous one when they continue each other. */
class SegmentList {
  readonly list: Segment[] = [];

  push(offset: number, length: number, kind: ExtentKind, source: SegmentSource, depth = 0): void {
    if (length <= 0) return;
    const last = this.list[this.list.length - 1];
    if (last && last.kind === kind && last.depth === depth && last.offset + last.length === offset) {
      const ls = last.source;
      if (ls.type === 'zero' && source.type === 'zero') {
        last.length += length;
        return;
      }
      if (ls.type === 'host' && source.type === 'host' && ls.file === source.file && ls.offset + last.length === source.offset) {
        last.length += length;
        return;
      }
    }
    this.list.push({ offset, length, kind, depth, source });
  }
}

export class Qcow2Mapper {
  private l1: Buffer | undefined;
  private readonly l2Cache: TableCache;
  private preallocated: Promise<boolean> | undefined;
  readonly codec: Codec;

  constructor(
    private readonly src: ByteSource,
    private readonly h: Qcow2Header,
    private readonly backing: DiskImage | undefined,
    /** Detects metadata preallocation (qemu's heuristic), computed once on first need. */
    private readonly detectPreallocation: () => Promise<boolean>,
  ) {
    this.l2Cache = new TableCache(Math.max(4, Math.floor(L2_CACHE_BYTES / h.clusterSize)));
    this.codec = h.compressionType === 1 ? 'zstd' : 'deflate';
  }

  /** The active L1 table; throws IMAGE_TRUNCATED when it extends past the end of the file. */
  async loadL1(): Promise<Buffer> {
    if (!this.l1) {
      const bytes = this.h.l1Size * 8;
      if (this.h.l1TableOffset + bytes > this.src.size) {
        throw truncated(`${this.src.name}: L1 table (l1_table_offset ${this.h.l1TableOffset}, ${this.h.l1Size} entries)`, this.h.l1TableOffset + bytes, this.src.size, {
          field: 'l1_table_offset',
          offset: this.h.l1TableOffset,
        });
      }
      this.l1 = bytes === 0 ? Buffer.alloc(0) : await readExact(this.src, this.h.l1TableOffset, bytes, 'L1 table');
    }
    return this.l1;
  }

  /** The L2 table at `offset` (named by its L1 index in errors). */
  async loadL2(offset: number, l1Index: number): Promise<Buffer> {
    const cs = this.h.clusterSize;
    if (!Number.isSafeInteger(offset) || offset % cs !== 0) {
      throw corrupt(`${this.src.name}: L1 entry ${l1Index} points to an L2 table at ${offset}, which is not aligned to the ${cs}-byte cluster size`, {
        field: 'L1 entry',
        l1Index,
        offset,
      });
    }
    let t = this.l2Cache.get(offset);
    if (!t) {
      if (offset + cs > this.src.size) {
        throw truncated(`${this.src.name}: L2 table at offset ${offset} (L1 entry ${l1Index})`, offset + cs, this.src.size, { field: 'L1 entry', l1Index, offset });
      }
      t = await readExact(this.src, offset, cs, `L2 table (L1 entry ${l1Index})`);
      this.l2Cache.set(offset, t);
    }
    return t;
  }

  /** Maps [offset, offset+length) of the virtual disk, backing layers resolved. */
  async map(offset: number, length: number): Promise<Segment[]> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.h.virtualSize) {
      throw new FerryError('USAGE', `${this.src.name}: map of ${length} bytes at ${offset} is outside the ${this.h.virtualSize}-byte disk`, {
        remedy: 'Ask for ranges within the virtual size shown by `ferry image info`.',
      });
    }
    if (length === 0) return [];
    const own = await this.mapOwn(offset, length);
    const out = new SegmentList();
    const prealloc = own.some((s) => s.source.type === 'host') ? await this.isPreallocated() : false;
    for (const s of own) {
      if (s.kind === 'unallocated') await this.fromBacking(s, out);
      else if (s.source.type === 'host') await this.hostRun(s, s.source, prealloc, out);
      else out.push(s.offset, s.length, s.kind, s.source);
    }
    return out.list;
  }

  private isPreallocated(): Promise<boolean> {
    this.preallocated ??= this.detectPreallocation().catch(() => false);
    return this.preallocated;
  }

  /**
   * A data run at `src.offset`. With metadata preallocation, holes of the host file (and bytes past
   * its end) stay 'data' extents — allocated, as qemu-img map says (data=true, zero=true) — whose
   * bytes are zeros, read without I/O (streaming skips them). Otherwise the part of
   * the last, partially written host cluster past the end of the file reads as zeros (qemu allows
   * that); clusters wholly past the end stay host runs, so reading them reports the truncation.
   */
  private async hostRun(s: Segment, src: Extract<SegmentSource, { type: 'host' }>, prealloc: boolean, out: SegmentList): Promise<void> {
    const eof = this.src.size;
    const inFile = Math.max(0, Math.min(s.length, eof - src.offset));
    if (prealloc && this.src.dataRanges) {
      let pos = 0;
      if (inFile > 0) {
        for (const r of await this.src.dataRanges(src.offset, inFile)) {
          const a = Math.max(r.offset - src.offset, pos);
          const b = Math.min(r.offset + r.length - src.offset, inFile);
          if (b <= a) continue;
          out.push(s.offset + pos, a - pos, 'data', ZERO);
          out.push(s.offset + a, b - a, 'data', { type: 'host', file: src.file, offset: src.offset + a });
          pos = b;
        }
      }
      out.push(s.offset + pos, s.length - pos, 'data', ZERO);
      return;
    }
    if (inFile === s.length || inFile === 0) {
      out.push(s.offset, s.length, 'data', src);
      return;
    }
    const cs = this.h.clusterSize;
    const tail = Math.min(s.length, Math.ceil(eof / cs) * cs - src.offset);
    out.push(s.offset, inFile, 'data', src);
    out.push(s.offset + inFile, tail - inFile, 'data', ZERO);
    out.push(s.offset + tail, s.length - tail, 'data', { type: 'host', file: src.file, offset: src.offset + tail });
  }

  private async fromBacking(s: Segment, out: SegmentList): Promise<void> {
    const end = s.offset + s.length;
    let pos = s.offset;
    if (this.backing) {
      const bEnd = Math.min(end, this.backing.virtualSize);
      if (pos < bEnd) {
        for (const b of await this.backing.map(pos, bEnd - pos)) out.push(b.offset, b.length, b.kind, b.source, b.depth + 1);
        pos = bEnd;
      }
    }
    out.push(pos, end - pos, 'unallocated', ZERO);
  }

  /** This layer's own answer: unallocated ranges are left for the backing file. */
  private async mapOwn(offset: number, length: number): Promise<Segment[]> {
    const h = this.h;
    const cs = h.clusterSize;
    const span = cs * h.l2Entries;
    const end = offset + length;
    const l1 = await this.loadL1();
    const out = new SegmentList();
    let pos = offset;
    while (pos < end) {
      const l1Index = Math.floor(pos / span);
      const l2Stop = Math.min(end, (l1Index + 1) * span);
      const [hi, lo] = l1Index < h.l1Size ? word(l1, l1Index * 8) : [0, 0];
      const l2Offset = tableOffset(hi, lo);
      if (l2Offset === 0) {
        out.push(pos, l2Stop - pos, 'unallocated', ZERO);
        pos = l2Stop;
        continue;
      }
      const table = await this.loadL2(l2Offset, l1Index);
      if (!h.extendedL2) pos = this.mapStandardRuns(table, pos, l2Stop, out);
      while (pos < l2Stop) {
        const vc = Math.floor(pos / cs);
        const l2Index = vc % h.l2Entries;
        const cStart = vc * cs;
        const cEnd = Math.min(l2Stop, cStart + cs);
        this.mapCluster(decodeL2(h, table, l2Index), pos, cEnd, cStart, l2Offset, l2Index, out);
        pos = cEnd;
      }
    }
    return out.list;
  }

  /**
   * The hot path for tables without extended L2 entries: walks the entries from `pos` and merges
   * clusters that continue each other (contiguous host data, zero, unallocated) into one segment
   * each, without an object per entry. Returns where it stopped: `l2Stop`, or the first cluster it
   * leaves to mapCluster (a compressed cluster, or one with an error to report).
   */
  private mapStandardRuns(table: Buffer, pos: number, l2Stop: number, out: SegmentList): number {
    const h = this.h;
    const cs = h.clusterSize;
    let runStart = pos;
    let runKind: ExtentKind | undefined;
    let runHost = 0; // data runs: host offset of runStart
    const flush = (to: number): void => {
      if (runKind === undefined || to <= runStart) return;
      out.push(runStart, to - runStart, runKind, runKind === 'data' ? { type: 'host', file: this.src, offset: runHost } : ZERO);
    };
    while (pos < l2Stop) {
      const vc = Math.floor(pos / cs);
      const at = (vc % h.l2Entries) * 8;
      const hi = table.readUInt32BE(at);
      const lo = table.readUInt32BE(at + 4);
      if (hi & COMPRESSED_HI) break;
      const cStart = vc * cs;
      const offset = tableOffset(hi, lo);
      // Misaligned offsets and v2 zero flags are errors: mapCluster reports them.
      if (offset !== 0 && (!Number.isSafeInteger(offset) || offset % cs !== 0)) break;
      let kind: ExtentKind;
      if (lo & 1) {
        if (h.version < 3) break;
        kind = 'zero';
      } else {
        kind = offset === 0 ? 'unallocated' : 'data';
      }
      const host = kind === 'data' ? offset + (pos - cStart) : 0;
      if (kind !== runKind || (kind === 'data' && runHost + (pos - runStart) !== host)) {
        flush(pos);
        runStart = pos;
        runKind = kind;
        runHost = host;
      }
      pos = Math.min(l2Stop, cStart + cs);
    }
    flush(pos);
    return pos;
  }

  private mapCluster(
    e: ReturnType<typeof decodeL2>,
    pos: number,
    cEnd: number,
    cStart: number,
    l2Offset: number,
    l2Index: number,
    out: SegmentList,
  ): void {
    const h = this.h;
    const where = `L2 table at ${l2Offset}, entry ${l2Index} (guest offset ${cStart})`;
    const fail = (msg: string) => corrupt(`${this.src.name}: ${where}: ${msg}`, { field: 'L2 entry', offset: l2Offset + l2Index * h.l2EntrySize, guestOffset: cStart });
    if (e.type === 'compressed') {
      if (h.extendedL2 && (e.allocMask || e.zeroMask)) throw fail('a compressed cluster with a non-zero subcluster bitmap');
      out.push(pos, cEnd - pos, 'data', {
        type: 'compressed',
        file: this.src,
        offset: e.offset,
        length: e.csize,
        codec: this.codec,
        unitSize: h.clusterSize,
        skip: pos - cStart,
      });
      return;
    }
    if (e.offset !== 0 && (!Number.isSafeInteger(e.offset) || e.offset % h.clusterSize !== 0)) {
      throw fail(`host cluster offset ${e.offset} is not aligned to the ${h.clusterSize}-byte cluster size`);
    }
    const scs = h.subclusterSize;
    let p = pos;
    while (p < cEnd) {
      const sc = Math.floor((p - cStart) / scs);
      const stop = h.extendedL2 ? Math.min(cEnd, cStart + (sc + 1) * scs) : cEnd;
      const kind = subclusterKind(h, e, sc);
      switch (kind) {
        case 'invalid':
          throw fail('an invalid subcluster allocation bitmap (a subcluster both allocated and zero, or allocated without a host offset)');
        case 'zero':
          if (h.version < 3) throw fail('a zero-cluster flag in a version 2 image');
          out.push(p, stop - p, 'zero', ZERO);
          break;
        case 'data':
          out.push(p, stop - p, 'data', { type: 'host', file: this.src, offset: e.offset + (p - cStart) });
          break;
        default:
          out.push(p, stop - p, 'unallocated', ZERO);
      }
      p = stop;
    }
  }
}
