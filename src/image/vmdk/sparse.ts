// A sparse VMDK extent ('KDMV' hosted sparse, streamOptimized, or 'COWD' vmfsSparse): the grain
// directory (held in memory, bounded by the file size), grain tables (bounded LRU cache) and the
// translation of an extent-relative byte range into segments: unallocated (GTE 0), zeroed grain
// (GTE 1 with the zeroed-grain flag), host bytes, or a zlib-compressed grain after its marker.
import { constants as zc, inflateSync } from 'node:zlib';
import { corrupt } from '../../errors.js';
import { readExact, type ByteSource } from '../../io/byte-source.js';
import {
  FLAG_MARKERS,
  FLAG_ZERO_GRAIN,
  MAX_GD_ENTRIES,
  SECTOR,
  gdEntriesFor,
  isCompressed,
  validateGeometry,
  type SparseHeader,
} from './header.js';
import type { SegmentList } from './segments.js';

/** Grain tables kept in memory per extent. */
const GT_CACHE_TABLES = 1024;
/** Grain markers (compressed sizes) remembered per extent. */
const MARKER_CACHE = 65536;
/** Size of a grain marker: u64 LBA + u32 compressed size. */
export const MARKER_SIZE = 12;

export interface GrainMarker {
  /** Host offset of the compressed bytes (after the marker). */
  dataOffset: number;
  /** Number of compressed bytes. */
  size: number;
}

export class SparseExtent {
  readonly kind = 'sparse' as const;
  readonly grainBytes: number;
  /** Size of the extent in bytes (capacity × 512). */
  readonly sizeBytes: number;
  readonly compressed: boolean;
  readonly markers: boolean;
  readonly zeroGrain: boolean;
  readonly gdEntries: number;
  readonly numGTEsPerGT: number;
  private readonly gtCache = new Map<number, Uint32Array>();
  /** Per cached grain table: for each allocated grain sector, the next allocated one (or 0). */
  private readonly nextCache = new Map<number, Map<number, number>>();
  private readonly markerCache = new Map<number, GrainMarker>();
  private lastGrainUnit: number | undefined;

  private constructor(
    readonly file: ByteSource,
    readonly header: SparseHeader,
    /** Grain directory entries (sector offsets of grain tables, 0 = none). */
    readonly gd: Uint32Array,
  ) {
    this.grainBytes = header.grainSectors * SECTOR;
    this.sizeBytes = header.capacity * SECTOR;
    this.compressed = isCompressed(header);
    this.markers = header.kind === 'KDMV' && (header.flags & FLAG_MARKERS) !== 0;
    this.zeroGrain = header.kind === 'KDMV' && (header.flags & FLAG_ZERO_GRAIN) !== 0;
    this.gdEntries = gd.length;
    this.numGTEsPerGT = header.numGTEsPerGT;
  }

  /** Validates `header` against `file` and loads the grain directory. */
  static async open(file: ByteSource, header: SparseHeader): Promise<SparseExtent> {
    const where = file.name;
    validateGeometry(header, where);
    if (!Number.isSafeInteger(header.capacity * SECTOR)) {
      throw corrupt(`${where}: sparse header capacity ${header.capacity} sectors is impossible`, { field: 'capacity' });
    }
    const entries = gdEntriesFor(header);
    if (header.kind === 'COWD' && header.gdEntriesDeclared !== undefined && header.gdEntriesDeclared < entries) {
      throw corrupt(`${where}: the grain directory has ${header.gdEntriesDeclared} entries but the capacity needs ${entries}`, {
        field: 'numGDEntries',
      });
    }
    if (entries > MAX_GD_ENTRIES || entries * 4 > file.size) {
      throw corrupt(
        `${where}: sparse header capacity ${header.capacity} sectors with ${header.numGTEsPerGT} entries per grain table of ` +
          `${header.grainSectors}-sector grains needs a ${entries}-entry grain directory, impossible in a ${file.size}-byte file`,
        { field: 'capacity', capacity: header.capacity, gdEntries: entries, fileSize: file.size },
      );
    }
    if (header.gdOffset <= 0) {
      throw corrupt(`${where}: sparse header field gdOffset is ${header.gdOffset}: no grain directory`, { field: 'gdOffset' });
    }
    const gd = await readTable(file, header.gdOffset * SECTOR, entries, 'grain directory (gdOffset)');
    return new SparseExtent(file, header, gd);
  }

  /** Loads the redundant grain directory, if the header declares one. */
  async loadRgd(): Promise<Uint32Array | undefined> {
    if (this.header.kind !== 'KDMV' || this.header.rgdOffset === 0 || (this.header.flags & 2) === 0) return undefined;
    return readTable(this.file, this.header.rgdOffset * SECTOR, this.gdEntries, 'redundant grain directory (rgdOffset)');
  }

  /** Reads the grain table at `sector` (no cache); throws IMAGE_CORRUPT if it lies beyond EOF. */
  async readGtAt(sector: number, field: string): Promise<Uint32Array> {
    const offset = sector * SECTOR;
    const bytes = this.numGTEsPerGT * 4;
    if (offset + bytes > this.file.size) {
      throw corrupt(`${this.file.name}: ${field} points to a grain table at host offset ${offset}, beyond the end of the ${this.file.size}-byte file`, {
        field,
        offset,
        fileSize: this.file.size,
      });
    }
    return readTable(this.file, offset, this.numGTEsPerGT, field);
  }

  /** The grain table for directory entry `gdIndex`, or undefined when none is allocated. */
  async gt(gdIndex: number): Promise<Uint32Array | undefined> {
    const sector = this.gd[gdIndex]!;
    if (sector === 0) return undefined;
    const hit = this.gtCache.get(gdIndex);
    if (hit) {
      this.gtCache.delete(gdIndex);
      this.gtCache.set(gdIndex, hit);
      return hit;
    }
    const gt = await this.readGtAt(sector, `grain directory entry ${gdIndex}`);
    if (this.gtCache.size >= GT_CACHE_TABLES) {
      const oldest = this.gtCache.keys().next().value!;
      this.gtCache.delete(oldest);
      this.nextCache.delete(oldest);
    }
    this.gtCache.set(gdIndex, gt);
    return gt;
  }

  /**
   * Where the compressed grain at `sector` must end at the latest: the next grain of the same
   * table in file order (grains do not overlap), else two grains' worth, else the end of the file.
   */
  private grainBound(gdIndex: number, gt: Uint32Array, sector: number, dataOffset: number): number {
    let next = this.nextCache.get(gdIndex);
    if (!next) {
      const sectors = [...new Set(gt.filter((e) => e > 1 || (e === 1 && !this.zeroGrain)))].sort((a, b) => a - b);
      next = new Map();
      for (let i = 0; i < sectors.length; i++) next.set(sectors[i]!, sectors[i + 1] ?? 0);
      this.nextCache.set(gdIndex, next);
    }
    const after = next.get(sector) ?? 0;
    let limit = dataOffset + 2 * this.grainBytes + 4096;
    if (after > sector) limit = Math.min(limit, after * SECTOR);
    return Math.max(0, Math.min(limit, this.file.size) - dataOffset);
  }

  /** Reads and validates the marker of the compressed grain `grainIndex` stored at `sector`. */
  async marker(sector: number, grainIndex: number): Promise<GrainMarker> {
    const hit = this.markerCache.get(sector);
    if (hit) return hit;
    const offset = sector * SECTOR;
    const name = this.file.name;
    let m: GrainMarker;
    if (!this.markers) {
      // Compressed grains without markers: the stream starts at the sector; its length is bounded.
      m = { dataOffset: offset, size: Math.max(0, Math.min(2 * this.grainBytes + 4096, this.file.size - offset)) };
    } else {
      const buf = await readExact(this.file, offset, MARKER_SIZE, `grain marker of grain ${grainIndex}`);
      const lba = buf.readBigUInt64LE(0);
      const size = buf.readUInt32LE(8);
      const expected = BigInt(grainIndex) * BigInt(this.header.grainSectors);
      if (size === 0) {
        throw corrupt(`${name}: the grain table entry of grain ${grainIndex} points at host offset ${offset}, which holds a metadata marker, not a grain`, {
          field: 'grain marker size',
          offset,
        });
      }
      if (lba !== expected) {
        throw corrupt(`${name}: the grain marker at host offset ${offset} is for sector ${lba}, but the grain table maps sector ${expected} there`, {
          field: 'grain marker lba',
          offset,
          expected: expected.toString(),
          actual: lba.toString(),
        });
      }
      if (size > 2 * this.grainBytes + 4096) {
        throw corrupt(`${name}: the grain marker at host offset ${offset} declares ${size} compressed bytes for a ${this.grainBytes}-byte grain`, {
          field: 'grain marker size',
          offset,
        });
      }
      m = { dataOffset: offset + MARKER_SIZE, size };
    }
    if (this.markerCache.size >= MARKER_CACHE) this.markerCache.clear();
    this.markerCache.set(sector, m);
    return m;
  }

  /**
   * Decoded size of the grain `grainIndex`: the grain size, except for a last grain cut by the
   * capacity, whose decoded length depends on the writer (qemu compresses only the part inside the
   * disk; others compress a whole grain). That one grain is decoded once to find out.
   */
  private async unitSize(grainIndex: number, m: GrainMarker): Promise<number> {
    const start = grainIndex * this.grainBytes;
    if (start + this.grainBytes <= this.sizeBytes) return this.grainBytes;
    const partial = this.sizeBytes - start;
    if (this.lastGrainUnit !== undefined) return this.lastGrainUnit;
    let unit = partial;
    try {
      const avail = Math.max(0, Math.min(m.size, this.file.size - m.dataOffset));
      const raw = await readExact(this.file, m.dataOffset, avail, `compressed grain ${grainIndex}`);
      const out = inflateSync(raw, { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: this.grainBytes });
      if (out.length >= partial) unit = out.length;
    } catch {
      unit = partial; // reading the grain will report the damage
    }
    this.lastGrainUnit = unit;
    return unit;
  }

  /** Appends the segments of extent-relative [rel, rel+len) at virtual offset base+rel. */
  async map(rel: number, len: number, base: number, out: SegmentList): Promise<void> {
    const end = rel + len;
    const spanBytes = this.numGTEsPerGT * this.grainBytes;
    let pos = rel;
    while (pos < end) {
      const gi = Math.floor(pos / this.grainBytes);
      const gdIndex = Math.floor(gi / this.numGTEsPerGT);
      const gt = gdIndex < this.gdEntries ? await this.gt(gdIndex) : undefined;
      if (!gt) {
        const stop = Math.min(end, (gdIndex + 1) * spanBytes);
        out.zero(base + pos, stop - pos, 'unallocated');
        pos = stop;
        continue;
      }
      const grainStart = gi * this.grainBytes;
      const stop = Math.min(end, grainStart + this.grainBytes);
      const n = stop - pos;
      const e = gt[gi % this.numGTEsPerGT]!;
      if (e === 0) out.zero(base + pos, n, 'unallocated');
      else if (e === 1 && this.zeroGrain) out.zero(base + pos, n, 'zero');
      else if (this.compressed) {
        // The marker is not read here (one tiny read per grain would dominate): the compressed
        // bytes follow it, and their length is bounded by the next grain. check() validates markers.
        const dataOffset = e * SECTOR + (this.markers ? MARKER_SIZE : 0);
        const m: GrainMarker = { dataOffset, size: this.grainBound(gdIndex, gt, e, dataOffset) };
        const unitSize = await this.unitSize(gi, m);
        out.push({
          offset: base + pos,
          length: n,
          kind: 'data',
          depth: 0,
          source: { type: 'compressed', file: this.file, offset: m.dataOffset, length: m.size, codec: 'zlib', unitSize, skip: pos - grainStart },
        });
      } else {
        out.push({ offset: base + pos, length: n, kind: 'data', depth: 0, source: { type: 'host', file: this.file, offset: e * SECTOR + (pos - grainStart) } });
      }
      pos = stop;
    }
  }
}

/** Reads `entries` little-endian u32 at `offset`. */
export async function readTable(file: ByteSource, offset: number, entries: number, what: string): Promise<Uint32Array> {
  const buf = await readExact(file, offset, entries * 4, what);
  const out = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) out[i] = buf.readUInt32LE(i * 4);
  return out;
}
