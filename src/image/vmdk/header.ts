// Binary headers of VMDK sparse extents: the hosted sparse header ('KDMV', little-endian, also used
// as the streamOptimized footer) and the ESX vmfsSparse header ('COWD'). Parsing validates every
// field against the file size before anything is allocated from it.
import { corrupt, unsupportedFeature } from '../../errors.js';

export const SECTOR = 512;
export const KDMV_MAGIC = 0x564d444b; // "KDMV" read little-endian
export const COWD_MAGIC = 0x44574f43; // "COWD" read little-endian
export const GD_AT_END = 0xffffffffffffffffn;

export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;
export const COMPRESSION_DEFLATE = 1;

/** Largest grain Ferry accepts (VMware uses 64 KiB; qemu caps at 1 GiB, far beyond any real image). */
export const MAX_GRAIN_SIZE = 16 * 1024 * 1024;
/** Largest grain directory held in memory (entries): 8 Mi entries = 32 MiB. */
export const MAX_GD_ENTRIES = 8 * 1024 * 1024;

/** A parsed sparse header, with 64-bit fields reduced to safe numbers (sector units kept). */
export interface SparseHeader {
  kind: 'KDMV' | 'COWD';
  version: number;
  flags: number;
  /** Capacity in sectors. */
  capacity: number;
  /** Grain size in sectors. */
  grainSectors: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** Grain directory offset in sectors; -1 when GD_AT_END (streamOptimized: see the footer). */
  gdOffset: number;
  overHead: number;
  uncleanShutdown: number;
  compressAlgorithm: number;
  /** COWD only: number of grain directory entries declared by the header. */
  gdEntriesDeclared?: number;
  newlineCheckOk: boolean;
}

function u64(buf: Buffer, at: number, field: string, where: string, allowAllOnes = false): number {
  const v = buf.readBigUInt64LE(at);
  if (allowAllOnes && v === GD_AT_END) return -1;
  if (v > BigInt(Number.MAX_SAFE_INTEGER) / 512n) {
    throw corrupt(`${where}: sparse header field ${field} holds an impossible value (${v})`, { field, value: v.toString(), offset: at });
  }
  return Number(v);
}

/** Parses a 512-byte 'KDMV' header (at offset 0, or the streamOptimized footer). */
export function parseKdmvHeader(buf: Buffer, where: string): SparseHeader {
  if (buf.length < 80 || buf.readUInt32LE(0) !== KDMV_MAGIC) {
    throw corrupt(`${where}: no VMDK sparse header magic 'KDMV'`, { field: 'magic' });
  }
  const h: SparseHeader = {
    kind: 'KDMV',
    version: buf.readUInt32LE(4),
    flags: buf.readUInt32LE(8),
    capacity: u64(buf, 12, 'capacity', where),
    grainSectors: u64(buf, 20, 'grainSize', where),
    descriptorOffset: u64(buf, 28, 'descriptorOffset', where),
    descriptorSize: u64(buf, 36, 'descriptorSize', where),
    numGTEsPerGT: buf.readUInt32LE(44),
    rgdOffset: u64(buf, 48, 'rgdOffset', where),
    gdOffset: u64(buf, 56, 'gdOffset', where, true),
    overHead: u64(buf, 64, 'overHead', where),
    uncleanShutdown: buf[72]!,
    compressAlgorithm: buf.readUInt16LE(77),
    newlineCheckOk: buf[73] === 0x0a && buf[74] === 0x20 && buf[75] === 0x0d && buf[76] === 0x0a,
  };
  return h;
}

/** Parses the 'COWD' header of a vmfsSparse (ESX redo log) extent. */
export function parseCowdHeader(buf: Buffer, where: string): SparseHeader {
  if (buf.length < 32 || buf.readUInt32LE(0) !== COWD_MAGIC) {
    throw corrupt(`${where}: no vmfsSparse header magic 'COWD'`, { field: 'magic' });
  }
  return {
    kind: 'COWD',
    version: buf.readUInt32LE(4),
    flags: buf.readUInt32LE(8),
    capacity: buf.readUInt32LE(12),
    grainSectors: buf.readUInt32LE(16),
    descriptorOffset: 0,
    descriptorSize: 0,
    numGTEsPerGT: 4096,
    rgdOffset: 0,
    gdOffset: buf.readUInt32LE(20),
    gdEntriesDeclared: buf.readUInt32LE(24),
    overHead: 0,
    uncleanShutdown: 0,
    compressAlgorithm: 0,
    newlineCheckOk: true,
  };
}

/**
 * Validates the geometry fields of a header used to read an extent: version, grain size, grain table
 * size, compression. Throws IMAGE_CORRUPT / IMAGE_UNSUPPORTED_FEATURE naming the field.
 */
export function validateGeometry(h: SparseHeader, where: string): void {
  if (h.kind === 'KDMV' && (h.version < 1 || h.version > 3)) {
    throw unsupportedFeature(
      `${where}: VMDK sparse extent version ${h.version} is not supported (1–3 are)`,
      'Convert the disk with VMware tools (vmware-vdiskmanager -r IN -t 0 OUT.vmdk) or qemu-img, then retry.',
      { field: 'version', value: h.version },
    );
  }
  const g = h.grainSectors;
  if (g < 1 || (g & (g - 1)) !== 0 || g * SECTOR > MAX_GRAIN_SIZE) {
    throw corrupt(`${where}: sparse header field grainSize is ${g} sectors; it must be a power of two up to ${MAX_GRAIN_SIZE / SECTOR}`, {
      field: 'grainSize',
      value: g,
    });
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > (h.kind === 'COWD' ? 4096 : 512)) {
    throw corrupt(`${where}: sparse header field numGTEsPerGT is ${h.numGTEsPerGT}; VMDK grain tables hold at most 512 entries`, {
      field: 'numGTEsPerGT',
      value: h.numGTEsPerGT,
    });
  }
  if (h.capacity <= 0) {
    throw corrupt(`${where}: sparse header field capacity is 0 sectors`, { field: 'capacity', value: h.capacity });
  }
  if (h.kind === 'KDMV' && h.compressAlgorithm !== 0 && h.compressAlgorithm !== COMPRESSION_DEFLATE) {
    throw unsupportedFeature(
      `${where}: unknown grain compression algorithm ${h.compressAlgorithm} (only 1 = deflate exists)`,
      'The file is damaged or was written by an unknown tool; re-export the disk as streamOptimized or monolithicSparse.',
      { field: 'compressAlgorithm', value: h.compressAlgorithm },
    );
  }
}

/** Number of grain directory entries needed to cover the capacity. */
export function gdEntriesFor(h: SparseHeader): number {
  const perGt = h.numGTEsPerGT * h.grainSectors;
  return Math.ceil(h.capacity / perGt);
}

export function isCompressed(h: SparseHeader): boolean {
  return h.kind === 'KDMV' && h.compressAlgorithm === COMPRESSION_DEFLATE;
}
