// The dynamic disk header ('cxsparse', 1024 bytes, usually at offset 512) of dynamic and
// differencing VHDs: block size, BAT location and size, and the parent fields (unique id, name,
// eight platform locators). Also the Block Allocation Table reader, which loads the big-endian u32
// entries lazily in bounded pages so huge disks never need the whole table in memory.
import { readExact, readUpTo, type ByteSource } from '../../io/byte-source.js';
import { formatUuid, tagString, vhdChecksum } from './footer.js';

export const DYN_HEADER_SIZE = 1024;
export const DYN_COOKIE = 'cxsparse';
export const DYN_VERSION = 0x00010000;
export const UNALLOCATED = 0xffffffff;

export interface ParentLocator {
  index: number;
  platform: string;
  platformCode: number;
  dataSpace: number;
  dataLength: number;
  dataOffset: bigint;
}

export interface DynamicHeader {
  at: number;
  cookieOk: boolean;
  dataOffset: bigint;
  tableOffset: bigint;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  computedChecksum: number;
  parentUuid: string;
  parentUuidRaw: Buffer;
  parentTimestamp: number;
  parentName: string;
  locators: ParentLocator[];
}

/** Decodes a UTF-16 string, stopping at the first NUL character. */
export function decodeUtf16(buf: Buffer, bigEndian: boolean): string {
  const n = buf.length & ~1;
  const le = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 2) {
    le[i] = bigEndian ? buf[i + 1]! : buf[i]!;
    le[i + 1] = bigEndian ? buf[i]! : buf[i + 1]!;
  }
  const s = le.toString('utf16le');
  const nul = s.indexOf('\0');
  return nul >= 0 ? s.slice(0, nul) : s;
}

export function parseDynamicHeader(buf: Buffer, at: number): DynamicHeader {
  const parentUuidRaw = Buffer.from(buf.subarray(40, 56));
  const locators: ParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const o = 576 + i * 24;
    const code = buf.readUInt32BE(o);
    if (code === 0) continue;
    locators.push({
      index: i,
      platform: tagString(buf.subarray(o, o + 4)),
      platformCode: code,
      dataSpace: buf.readUInt32BE(o + 4),
      dataLength: buf.readUInt32BE(o + 8),
      dataOffset: buf.readBigUInt64BE(o + 16),
    });
  }
  return {
    at,
    cookieOk: buf.toString('latin1', 0, 8) === DYN_COOKIE,
    dataOffset: buf.readBigUInt64BE(8),
    tableOffset: buf.readBigUInt64BE(16),
    version: buf.readUInt32BE(24),
    maxTableEntries: buf.readUInt32BE(28),
    blockSize: buf.readUInt32BE(32),
    checksum: buf.readUInt32BE(36),
    computedChecksum: vhdChecksum(buf, 36),
    parentUuid: formatUuid(parentUuidRaw),
    parentUuidRaw,
    parentTimestamp: buf.readUInt32BE(56),
    parentName: decodeUtf16(buf.subarray(64, 576), true),
    locators,
  };
}

/** Bytes of the per-block sector bitmap: one bit per sector, padded to a whole sector. */
export function bitmapSize(blockSize: number): number {
  return Math.ceil(blockSize / (8 * 512) / 512) * 512;
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

const PAGE_ENTRIES = 16384; // 64 KiB of BAT per page
const MAX_PAGES = 256; // at most 16 MiB of BAT cached per image

/** Lazy, bounded reader of the BAT. */
export class Bat {
  private readonly pages = new Map<number, Uint32Array>();

  constructor(
    private readonly src: ByteSource,
    /** Host offset of the table. */
    readonly offset: number,
    /** Entries held in the table (max_table_entries). */
    readonly entries: number,
  ) {}

  /** Entry `i`, or UNALLOCATED past the table. Throws IMAGE_TRUNCATED when the table is cut off. */
  async get(i: number): Promise<number> {
    if (i < 0 || i >= this.entries) return UNALLOCATED;
    const page = await this.page(Math.floor(i / PAGE_ENTRIES), true);
    return page[i % PAGE_ENTRIES]!;
  }

  /** Loads page `p`; with strict=false a short read returns only the entries present. */
  async page(p: number, strict: boolean): Promise<Uint32Array> {
    const cached = this.pages.get(p);
    if (cached) return cached;
    const first = p * PAGE_ENTRIES;
    const count = Math.min(PAGE_ENTRIES, this.entries - first);
    const at = this.offset + first * 4;
    const buf = strict ? await readExact(this.src, at, count * 4, `BAT entries ${first}..${first + count - 1}`) : await readUpTo(this.src, at, count * 4);
    const n = buf.length >> 2;
    const out = new Uint32Array(n);
    for (let k = 0; k < n; k++) out[k] = buf.readUInt32BE(k * 4);
    if (strict || n === count) {
      if (this.pages.size >= MAX_PAGES) this.pages.delete(this.pages.keys().next().value!);
      this.pages.set(p, out);
    }
    return out;
  }

  get pageEntries(): number {
    return PAGE_ENTRIES;
  }
}
