// The VHD (vpc) writer, fixed and dynamic.
//
// Size: by default the virtual size is rounded up to a whole CHS geometry, as `qemu-img convert
// -O vpc` does (Virtual PC sizes disks by geometry); with exactSize the geometry is set to the
// maximum 65535/16/255 so readers take the footer's current_size, which then is the exact size (as
// qemu's force_size; what Hyper-V and Azure want, with alignSize 1 MiB for Azure).
// Fixed: the data at its offset (zeros stay holes), then the footer.
// Dynamic: footer copy, dynamic header and BAT up front; 2 MiB blocks (sector bitmap + data)
// appended as the first non-zero data of each block arrives; BAT and footers written by finish().
import { randomBytes } from 'node:crypto';
import { WriteBatcher, type Sink } from '../../io/sink.js';
import { UNCOMPRESSED, badSpec, roundUp, type DataRun, type ImageWriter, type WriteSummary, type WriterContext } from '../writer.js';
import { DYN_COOKIE, DYN_HEADER_SIZE, DYN_VERSION, UNALLOCATED } from './dynamic.js';
import { DiskType, FOOTER_COOKIE, FOOTER_SIZE, NO_DATA_OFFSET, VHD_EPOCH, VHD_VERSION, vhdChecksum } from './footer.js';
import { MAX_GEOMETRY_SECTORS, MAX_SECTORS } from './geometry.js';

const SECTOR = 512;
const BLOCK_SIZE = 2 * 1024 * 1024;
const BITMAP_SIZE = 512; // 4096 sectors per block → 512 bytes, already sector aligned
const BAT_OFFSET = 3 * SECTOR; // footer copy (512) + dynamic header (1024)
const CREATOR_APP = 'frry';

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** CHS geometry for `sectors`, by the algorithm of the VHD specification (appendix). */
export function chsFor(sectors: number): Geometry {
  const total = Math.min(sectors, MAX_GEOMETRY_SECTORS);
  let spt: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

const product = (g: Geometry) => g.cylinders * g.heads * g.sectorsPerTrack;

/** Virtual size and geometry of a new VHD for `size` bytes (see the module comment). */
export function vhdLayoutSize(size: number, exact: boolean): { sectors: number; geometry: Geometry } {
  const wanted = Math.ceil(size / SECTOR);
  let geometry: Geometry;
  if (exact) {
    geometry = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
  } else {
    // The smallest geometry that holds the disk: try the sector counts from `wanted` upwards.
    const start = Math.min(MAX_GEOMETRY_SECTORS, wanted);
    geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
    for (let i = 0; start > product(geometry); i++) geometry = chsFor(start + i);
  }
  const sectors = product(geometry) === MAX_GEOMETRY_SECTORS ? wanted : product(geometry);
  if (sectors > MAX_SECTORS) {
    throw badSpec(`a VHD can hold at most 2040 GiB; this disk needs ${sectors * SECTOR} bytes`, 'Convert to qcow2 or VMDK instead (`--to qcow2`).');
  }
  return { sectors, geometry };
}

export class VhdWriter implements ImageWriter {
  readonly format = 'vpc' as const;
  readonly subformat: 'fixed' | 'dynamic';
  readonly virtualSize: number;
  readonly unitSize = 64 * 1024;
  readonly allocationUnit = BLOCK_SIZE;
  readonly encoding = UNCOMPRESSED;
  readonly headBytes: number = 0;
  private readonly sink: Sink;
  private readonly out: WriteBatcher;
  private readonly footer: Buffer;
  private readonly bat: Uint32Array | undefined;
  private readonly batBytes: number;
  /** Dynamic: next free byte for a block. */
  private end = 0;

  constructor(ctx: WriterContext) {
    const { spec } = ctx;
    const sub = spec.subformat ?? 'dynamic';
    if (sub !== 'fixed' && sub !== 'dynamic') {
      throw badSpec(`VHD has no subformat '${sub}' Ferry writes`, 'Use --subformat dynamic (the default) or fixed.');
    }
    this.subformat = sub;
    this.sink = ctx.sink;
    // Fixed: data at its own offsets (sparse), so reserve exactly; dynamic: blocks are appended.
    this.out = new WriteBatcher(ctx.sink, sub === 'fixed' ? 'exact' : 'ahead');
    const base = spec.alignSize ? roundUp(ctx.sourceSize, spec.alignSize) : ctx.sourceSize;
    const exact = spec.exactSize === true || spec.alignSize !== undefined;
    const { sectors, geometry } = vhdLayoutSize(base, exact);
    this.virtualSize = sectors * SECTOR;
    this.footer = makeFooter(this.virtualSize, geometry, sub);
    if (sub === 'dynamic') {
      const entries = Math.ceil(this.virtualSize / BLOCK_SIZE);
      this.bat = new Uint32Array(entries).fill(UNALLOCATED);
      this.batBytes = roundUp(entries * 4, SECTOR);
      this.end = BAT_OFFSET + this.batBytes;
      this.headBytes = this.end;
    } else {
      this.bat = undefined;
      this.batBytes = 0;
    }
  }

  async write(runs: DataRun[]): Promise<void> {
    if (!this.bat) {
      for (const r of runs) await this.out.put(r.data, r.offset);
      await this.out.flush();
      return;
    }
    for (const r of runs) {
      let pos = r.offset;
      const runEnd = r.offset + r.length;
      while (pos < runEnd) {
        const block = Math.floor(pos / BLOCK_SIZE);
        const stop = Math.min(runEnd, (block + 1) * BLOCK_SIZE);
        let start = this.bat[block]!;
        if (start === UNALLOCATED) {
          start = this.end / SECTOR;
          this.bat[block] = start;
          this.end += BITMAP_SIZE + BLOCK_SIZE;
          // Every sector of an allocated block is marked present (as qemu does).
          await this.out.put(Buffer.alloc(BITMAP_SIZE, 0xff), start * SECTOR);
        }
        const at = start * SECTOR + BITMAP_SIZE + (pos - block * BLOCK_SIZE);
        await this.out.put(r.data.subarray(pos - r.offset, stop - r.offset), at);
        pos = stop;
      }
    }
    // The runs' buffers are the caller's again when this returns: write them out now.
    await this.out.flush();
  }

  async finish(): Promise<WriteSummary> {
    await this.out.flush();
    let fileSize: number;
    if (!this.bat) {
      fileSize = this.virtualSize + FOOTER_SIZE;
      await this.sink.write(this.footer, this.virtualSize);
    } else {
      const bat = Buffer.alloc(this.batBytes, 0xff);
      for (let i = 0; i < this.bat.length; i++) bat.writeUInt32BE(this.bat[i]!, i * 4);
      await this.sink.write(this.footer, 0);
      await this.sink.write(makeDynamicHeader(this.bat.length), FOOTER_SIZE);
      await this.sink.write(bat, BAT_OFFSET);
      fileSize = this.end + FOOTER_SIZE;
      await this.sink.write(this.footer, this.end);
    }
    await this.sink.truncate(fileSize);
    return { format: 'vpc', subformat: this.subformat, virtualSize: this.virtualSize, fileSize };
  }
}

function makeFooter(size: number, g: Geometry, sub: 'fixed' | 'dynamic'): Buffer {
  const f = Buffer.alloc(FOOTER_SIZE);
  f.write(FOOTER_COOKIE, 0, 'latin1');
  f.writeUInt32BE(2, 8); // features: "reserved" bit, always set
  f.writeUInt32BE(VHD_VERSION, 12);
  f.writeBigUInt64BE(sub === 'fixed' ? NO_DATA_OFFSET : BigInt(FOOTER_SIZE), 16);
  f.writeUInt32BE(Math.max(0, Math.floor(Date.now() / 1000) - VHD_EPOCH) >>> 0, 24);
  f.write(CREATOR_APP, 28, 'latin1');
  f.writeUInt32BE(0x00010000, 32); // creator version 1.0
  f.write('Wi2k', 36, 'latin1'); // creator host OS: the value qemu and most tools write
  f.writeBigUInt64BE(BigInt(size), 40); // original size
  f.writeBigUInt64BE(BigInt(size), 48); // current size
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(sub === 'fixed' ? DiskType.FIXED : DiskType.DYNAMIC, 60);
  randomBytes(16).copy(f, 68);
  f.writeUInt32BE(vhdChecksum(f, 64), 64);
  return f;
}

function makeDynamicHeader(entries: number): Buffer {
  const h = Buffer.alloc(DYN_HEADER_SIZE);
  h.write(DYN_COOKIE, 0, 'latin1');
  h.writeBigUInt64BE(NO_DATA_OFFSET, 8);
  h.writeBigUInt64BE(BigInt(BAT_OFFSET), 16);
  h.writeUInt32BE(DYN_VERSION, 24);
  h.writeUInt32BE(entries, 28);
  h.writeUInt32BE(BLOCK_SIZE, 32);
  h.writeUInt32BE(vhdChecksum(h, 36), 36);
  return h;
}
