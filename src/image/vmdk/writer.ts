// The VMDK writer: streamOptimized (version 3, the form clouds and ESXi import) and
// monolithicSparse (version 1, as VMware Workstation and qemu write it). 64 KiB grains, 512-entry
// grain tables, the descriptor embedded at sector 1.
//
// streamOptimized follows VMware's stream layout: header with gdOffset = GD_AT_END, then each
// non-zero grain zlib-compressed behind a grain marker {LBA, size}; each grain table follows the
// grains it maps (behind a GT marker), then the grain directory (GD marker), the footer (a copy of
// the header with the real gdOffset, behind a footer marker) and the end-of-stream marker. Grain
// tables without grains are left out (their directory entry is 0). The file is written strictly
// front to back except the header, so memory holds one grain table and the directory.
//
// monolithicSparse preallocates the redundant and primary grain directories and tables (as qemu
// does); grains are appended uncompressed from the end of that overhead, and each grain table is
// written (to both copies) once its 32 MiB of the disk are done.
import { randomBytes } from 'node:crypto';
import { basename } from 'node:path';
import { WriteBatcher, type Sink } from '../../io/sink.js';
import type { UnitEncoding } from '../../pipeline/encode-job.js';
import { UNCOMPRESSED, badSpec, roundUp, type DataRun, type ImageWriter, type WriteSummary, type WriterContext } from '../writer.js';
import {
  COMPRESSION_DEFLATE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NL_DETECT,
  FLAG_RGD,
  GD_AT_END,
  KDMV_MAGIC,
  SECTOR,
} from './header.js';
import { MARKER_FOOTER, MARKER_GD, MARKER_GT } from './stream.js';

const GRAIN_SECTORS = 128;
const GRAIN = GRAIN_SECTORS * SECTOR;
const GTES = 512;
const GT_BYTES = GTES * 4;
const GT_SECTORS = GT_BYTES / SECTOR;
const DESCRIPTOR_OFFSET = 1;
const DESCRIPTOR_SECTORS = 20;

type Subformat = 'streamOptimized' | 'monolithicSparse';

interface HeaderFields {
  version: number;
  flags: number;
  capacity: number;
  descriptorSectors: number;
  rgdOffset: number;
  gdOffset: bigint;
  overHead: number;
  compress: boolean;
}

function sparseHeader(f: HeaderFields): Buffer {
  const h = Buffer.alloc(SECTOR);
  h.writeUInt32LE(KDMV_MAGIC, 0);
  h.writeUInt32LE(f.version, 4);
  h.writeUInt32LE(f.flags, 8);
  h.writeBigUInt64LE(BigInt(f.capacity), 12);
  h.writeBigUInt64LE(BigInt(GRAIN_SECTORS), 20);
  h.writeBigUInt64LE(BigInt(f.descriptorSectors ? DESCRIPTOR_OFFSET : 0), 28);
  h.writeBigUInt64LE(BigInt(f.descriptorSectors), 36);
  h.writeUInt32LE(GTES, 44);
  h.writeBigUInt64LE(BigInt(f.rgdOffset), 48);
  h.writeBigUInt64LE(f.gdOffset, 56);
  h.writeBigUInt64LE(BigInt(f.overHead), 64);
  h.writeUInt8(0, 72); // uncleanShutdown
  // The newline-detection characters: a transfer that mangles line ends is detectable.
  h.write('\n \r\n', 73, 'latin1');
  h.writeUInt16LE(f.compress ? COMPRESSION_DEFLATE : 0, 77);
  return h;
}

function descriptor(sub: Subformat, capacity: number, extentName: string): Buffer {
  const cylinders = Math.min(16383, Math.floor(capacity / (16 * 63)));
  const text = [
    '# Disk DescriptorFile',
    'version=1',
    `CID=${randomBytes(4).toString('hex')}`,
    'parentCID=ffffffff',
    `createType="${sub}"`,
    '',
    '# Extent description',
    `RW ${capacity} SPARSE "${extentName.replace(/"/g, '')}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.virtualHWVersion = "4"',
    `ddb.geometry.cylinders = "${cylinders}"`,
    'ddb.geometry.heads = "16"',
    'ddb.geometry.sectors = "63"',
    'ddb.adapterType = "ide"',
    `ddb.uuid = "${[...randomBytes(16)].map((b) => b.toString(16).padStart(2, '0')).join(' ')}"`,
    '',
  ].join('\n');
  const buf = Buffer.alloc(DESCRIPTOR_SECTORS * SECTOR);
  if (Buffer.byteLength(text) > buf.length) {
    throw badSpec(`the VMDK descriptor would exceed ${buf.length} bytes (file name too long?)`, 'Use a shorter output file name.');
  }
  buf.write(text, 0, 'utf8');
  return buf;
}

/** A metadata marker sector: {numSectors u64, size 0 u32, type u32}, padded to 512 bytes. */
function metadataMarker(sectors: number, type: number): Buffer {
  const m = Buffer.alloc(SECTOR);
  m.writeBigUInt64LE(BigInt(sectors), 0);
  m.writeUInt32LE(type, 12);
  return m;
}

export class VmdkWriter implements ImageWriter {
  readonly format = 'vmdk' as const;
  readonly subformat: Subformat;
  readonly virtualSize: number;
  readonly unitSize = GRAIN;
  readonly encoding: UnitEncoding;
  readonly headBytes: number;
  private readonly sink: Sink;
  private readonly out: WriteBatcher;
  private readonly capacity: number;
  private readonly gd: Uint32Array;
  private readonly extentName: string;
  /** monolithicSparse: sector offsets of the primary and redundant grain tables. */
  private readonly gtBase = { primary: 0, redundant: 0, gdOffset: 0, rgdOffset: 0 };
  private readonly overHead: number;
  private gt = new Uint32Array(GTES);
  private gtIndex = -1;
  private gtUsed = false;
  /** Next free byte. */
  private end: number;

  constructor(ctx: WriterContext) {
    const { spec } = ctx;
    const sub = spec.subformat ?? 'streamOptimized';
    if (sub !== 'streamOptimized' && sub !== 'monolithicSparse') {
      throw badSpec(`Ferry does not write VMDK subformat '${sub}'`, 'Use --subformat streamOptimized (the default) or monolithicSparse.');
    }
    if (spec.compress === 'zstd') throw badSpec('VMDK grains are compressed with zlib only', 'Drop --compress zstd (streamOptimized is always zlib-compressed).');
    this.subformat = sub;
    this.sink = ctx.sink;
    this.out = new WriteBatcher(ctx.sink);
    const size = spec.alignSize ? roundUp(ctx.sourceSize, spec.alignSize) : ctx.sourceSize;
    this.capacity = Math.ceil(size / SECTOR);
    this.virtualSize = this.capacity * SECTOR;
    this.extentName = basename(ctx.sink.path);
    const gdEntries = Math.ceil(this.capacity / (GTES * GRAIN_SECTORS));
    this.gd = new Uint32Array(gdEntries);
    if (sub === 'streamOptimized') {
      this.encoding = { codec: 'zlib', rawAbove: Infinity, padLast: true, ...(spec.compressLevel ? { level: spec.compressLevel } : {}) };
      this.overHead = GRAIN_SECTORS;
    } else {
      this.encoding = UNCOMPRESSED;
      const gdSectors = Math.ceil((gdEntries * 4) / SECTOR);
      const rgd = DESCRIPTOR_OFFSET + DESCRIPTOR_SECTORS;
      const rgts = rgd + gdSectors;
      const gd = rgts + gdEntries * GT_SECTORS;
      const gts = gd + gdSectors;
      this.gtBase.rgdOffset = rgd;
      this.gtBase.redundant = rgts;
      this.gtBase.gdOffset = gd;
      this.gtBase.primary = gts;
      this.overHead = roundUp(gts + gdEntries * GT_SECTORS, GRAIN_SECTORS);
    }
    this.end = this.overHead * SECTOR;
    this.headBytes = this.end;
  }

  async write(runs: DataRun[]): Promise<void> {
    for (const r of runs) {
      if (r.compressed) {
        await this.grainEntry(r.offset / GRAIN);
        const rec = Buffer.alloc(roundUp(12 + r.data.length, SECTOR));
        rec.writeBigUInt64LE(BigInt(r.offset / SECTOR), 0);
        rec.writeUInt32LE(r.data.length, 8);
        r.data.copy(rec, 12);
        await this.out.put(rec, this.end);
        this.end += rec.length;
        continue;
      }
      // Uncompressed (monolithicSparse): consecutive grains, appended contiguously.
      const grains = Math.ceil(r.length / GRAIN);
      for (let i = 0; i < grains; i++) await this.grainEntry(r.offset / GRAIN + i, i * GRAIN_SECTORS);
      await this.out.put(r.data, this.end);
      this.end += grains * GRAIN;
    }
    // The runs' buffers are the caller's again when this returns: write them out now.
    await this.out.flush();
  }

  /**
   * Records where grain `grain` starts: at the current end of the file, which is computed after
   * the previous grain table was written out (a stream writes it where the grain would go).
   */
  private async grainEntry(grain: number, sectorAfterEnd = 0): Promise<void> {
    const index = Math.floor(grain / GTES);
    if (index !== this.gtIndex) {
      await this.flushGt();
      this.gtIndex = index;
    }
    this.gt[grain % GTES] = this.end / SECTOR + sectorAfterEnd;
    this.gtUsed = true;
  }

  private async flushGt(): Promise<void> {
    if (this.gtIndex < 0 || !this.gtUsed) return;
    const table = littleEndian(this.gt);
    if (this.subformat === 'streamOptimized') {
      await this.out.put(metadataMarker(GT_SECTORS, MARKER_GT), this.end);
      this.gd[this.gtIndex] = this.end / SECTOR + 1;
      await this.out.put(table, this.end + SECTOR);
      this.end += SECTOR + GT_BYTES;
    } else {
      await this.out.put(table, (this.gtBase.primary + this.gtIndex * GT_SECTORS) * SECTOR);
      await this.out.put(table, (this.gtBase.redundant + this.gtIndex * GT_SECTORS) * SECTOR);
    }
    this.gt = new Uint32Array(GTES);
    this.gtUsed = false;
  }

  async finish(): Promise<WriteSummary> {
    await this.flushGt();
    const desc = descriptor(this.subformat, this.capacity, this.extentName);
    const gdBytes = roundUp(this.gd.length * 4, SECTOR);
    let fileSize: number;
    if (this.subformat === 'streamOptimized') {
      const gdSectors = gdBytes / SECTOR;
      const gd = Buffer.alloc(gdBytes);
      littleEndian(this.gd).copy(gd);
      await this.out.put(metadataMarker(gdSectors, MARKER_GD), this.end);
      const gdOffset = this.end / SECTOR + 1;
      await this.out.put(gd, this.end + SECTOR);
      this.end += SECTOR + gdBytes;
      const fields: HeaderFields = {
        version: 3,
        flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: this.capacity,
        descriptorSectors: DESCRIPTOR_SECTORS,
        rgdOffset: 0,
        gdOffset: BigInt(gdOffset),
        overHead: this.overHead,
        compress: true,
      };
      await this.out.put(metadataMarker(1, MARKER_FOOTER), this.end);
      await this.out.put(sparseHeader(fields), this.end + SECTOR);
      await this.out.put(Buffer.alloc(SECTOR), this.end + 2 * SECTOR); // end-of-stream marker
      this.end += 3 * SECTOR;
      await this.out.flush();
      await this.sink.write(Buffer.concat([sparseHeader({ ...fields, gdOffset: GD_AT_END }), desc]), 0);
      fileSize = this.end;
    } else {
      await this.out.flush();
      const gdFor = (base: number) => {
        const b = Buffer.alloc(gdBytes);
        for (let i = 0; i < this.gd.length; i++) b.writeUInt32LE(base + i * GT_SECTORS, i * 4);
        return b;
      };
      const header = sparseHeader({
        version: 1,
        flags: FLAG_NL_DETECT | FLAG_RGD,
        capacity: this.capacity,
        descriptorSectors: DESCRIPTOR_SECTORS,
        rgdOffset: this.gtBase.rgdOffset,
        gdOffset: BigInt(this.gtBase.gdOffset),
        overHead: this.overHead,
        compress: false,
      });
      await this.sink.write(Buffer.concat([header, desc]), 0);
      await this.sink.write(gdFor(this.gtBase.redundant), this.gtBase.rgdOffset * SECTOR);
      await this.sink.write(gdFor(this.gtBase.primary), this.gtBase.gdOffset * SECTOR);
      fileSize = Math.max(this.end, this.overHead * SECTOR);
    }
    await this.sink.truncate(fileSize);
    return { format: 'vmdk', subformat: this.subformat, virtualSize: this.virtualSize, fileSize };
  }
}

/** A table of u32 entries as little-endian bytes. */
function littleEndian(t: Uint32Array): Buffer {
  const b = Buffer.alloc(t.length * 4);
  for (let i = 0; i < t.length; i++) b.writeUInt32LE(t[i]!, i * 4);
  return b;
}
