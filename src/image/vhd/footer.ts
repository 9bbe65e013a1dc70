// VHD hard disk footer: the 512-byte 'conectix' structure at the end of every VHD (and, for dynamic
// and differencing disks, its copy at offset 0). Parsing, the one's-complement checksum shared with
// the dynamic header, and the disk type codes. All fields are big-endian (VHD spec 1.0, "Hard Disk
// Footer Format").

export const FOOTER_SIZE = 512;
export const FOOTER_COOKIE = 'conectix';
export const VHD_VERSION = 0x00010000;
/** The footer's data_offset for a fixed disk ("no next structure"). */
export const NO_DATA_OFFSET = 0xffffffffffffffffn;
/** VHD timestamps count seconds from 2000-01-01T00:00:00Z. */
export const VHD_EPOCH = 946684800;

export const DiskType = { FIXED: 2, DYNAMIC: 3, DIFFERENCING: 4 } as const;

export interface Footer {
  /** Host offset the footer was read from. */
  at: number;
  cookieOk: boolean;
  features: number;
  version: number;
  /** Offset of the dynamic header (u64; NO_DATA_OFFSET for fixed disks). */
  dataOffset: bigint;
  timestamp: number;
  creatorApp: string;
  /** Raw 4 bytes of the creator application, for exact comparisons (e.g. "tap\0"). */
  creatorAppRaw: Buffer;
  creatorVersionMajor: number;
  creatorVersionMinor: number;
  creatorHostOs: string;
  originalSize: bigint;
  currentSize: bigint;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  diskType: number;
  checksum: number;
  computedChecksum: number;
  uuid: string;
  uuidRaw: Buffer;
  savedState: number;
  raw: Buffer;
}

/** One's complement of the byte sum of `buf`, with the 4-byte checksum field at `checksumAt` read as zero. */
export function vhdChecksum(buf: Buffer, checksumAt: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) {
    if (i >= checksumAt && i < checksumAt + 4) continue;
    sum = (sum + buf[i]!) >>> 0;
  }
  return ~sum >>> 0;
}

/** Printable form of a 4-byte tag ("qemu", "win ", "tap\0" shown as "tap\\0"). */
export function tagString(b: Buffer): string {
  let s = '';
  for (const c of b) s += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\${c === 0 ? '0' : 'x' + c.toString(16).padStart(2, '0')}`;
  return s;
}

export function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** Parses a 512-byte footer read at host offset `at` (the cookie is reported, not required). */
export function parseFooter(buf: Buffer, at: number): Footer {
  const creatorAppRaw = Buffer.from(buf.subarray(28, 32));
  const uuidRaw = Buffer.from(buf.subarray(68, 84));
  return {
    at,
    cookieOk: buf.toString('latin1', 0, 8) === FOOTER_COOKIE,
    features: buf.readUInt32BE(8),
    version: buf.readUInt32BE(12),
    dataOffset: buf.readBigUInt64BE(16),
    timestamp: buf.readUInt32BE(24),
    creatorApp: tagString(creatorAppRaw),
    creatorAppRaw,
    creatorVersionMajor: buf.readUInt16BE(32),
    creatorVersionMinor: buf.readUInt16BE(34),
    creatorHostOs: tagString(buf.subarray(36, 40)),
    originalSize: buf.readBigUInt64BE(40),
    currentSize: buf.readBigUInt64BE(48),
    cylinders: buf.readUInt16BE(56),
    heads: buf.readUInt8(58),
    sectorsPerTrack: buf.readUInt8(59),
    diskType: buf.readUInt32BE(60),
    checksum: buf.readUInt32BE(64),
    computedChecksum: vhdChecksum(buf, 64),
    uuid: formatUuid(uuidRaw),
    uuidRaw,
    savedState: buf.readUInt8(84),
    raw: Buffer.from(buf),
  };
}

export function checksumOk(f: Footer): boolean {
  return f.checksum === f.computedChecksum;
}

export function diskTypeName(t: number): 'fixed' | 'dynamic' | 'differencing' | undefined {
  return t === DiskType.FIXED ? 'fixed' : t === DiskType.DYNAMIC ? 'dynamic' : t === DiskType.DIFFERENCING ? 'differencing' : undefined;
}

export function hex32(n: number): string {
  return '0x' + (n >>> 0).toString(16).padStart(8, '0');
}
