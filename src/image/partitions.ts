// Partition tables of a virtual disk: MBR (four primary entries, extended/logical chain) and GPT
// (primary header at LBA 1 with CRC32-verified header and entry array, backup header fallback,
// 512- and 4096-byte sectors). Everything read from the disk is bounded by the disk size and sane
// maxima; garbage yields type 'none' (or a partial table) plus warnings, never an exception. Only
// errors reading the image itself (a damaged image) propagate, as FerryError values.
import { readVirtual } from './read.js';
import type { DiskImage } from './types.js';

export type PartitionTableType = 'mbr' | 'gpt' | 'none';

export interface Partition {
  /** 1-based number as Linux names it (MBR: 1–4 primary, 5… logical; GPT: entry slot + 1). */
  index: number;
  /** Byte offset on the virtual disk. */
  start: number;
  /** Length in bytes. */
  size: number;
  /** First sector (in units of the table's sector size). */
  startSector: number;
  /** Length in sectors. */
  sectors: number;
  /** GPT: type GUID (upper case); MBR: the type byte as two lower-case hex digits, e.g. "83". */
  type: string;
  /** MBR only: the type byte. */
  mbrType?: number;
  /** e.g. 'Linux filesystem', 'EFI System', 'HPFS/NTFS/exFAT'; 'unknown' when not in the list. */
  typeName: string;
  /** GPT: partition name; absent when empty. */
  name?: string;
  /** GPT: unique partition GUID. */
  guid?: string;
  /** MBR: status 0x80; GPT: legacy BIOS bootable attribute (bit 2). */
  bootable?: boolean;
  /** MBR: logical partition inside an extended partition. */
  logical?: boolean;
}

export interface PartitionTable {
  type: PartitionTableType;
  sectorSize: number;
  /** GPT disk GUID. */
  diskGuid?: string;
  /** MBR disk signature (bytes 440–443) as 8 hex digits, e.g. "5eed1234". */
  diskId?: string;
  /** GPT: which header was used. */
  header?: 'primary' | 'backup';
  partitions: Partition[];
  warnings: string[];
}

const MBR_SECTOR = 512;
const MAX_GPT_ENTRIES = 1024;
const MAX_GPT_ENTRY_SIZE = 512;
const MAX_LOGICAL = 256;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);

// ---- CRC32 (IEEE 802.3, reflected polynomial 0xEDB88320), table-driven ----
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC32 as used by GPT, zip and zlib. */
export function crc32(buf: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

// ---- type names ----
const GPT_TYPES: Record<string, string> = {
  'C12A7328-F81F-11D2-BA4B-00A0C93EC93B': 'EFI System',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '024DEE41-33E7-11D3-9D69-0008C781F39F': 'MBR partition scheme',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  '3B8F8425-20E0-4F3B-907F-1A25A76F98E8': 'Linux server data',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '44479540-F297-41B2-9AF7-D131D5F0458A': 'Linux root (x86)',
  'B921B045-1DF0-41C3-AF44-4C6F280D3FAE': 'Linux root (ARM-64)',
  '69DAD710-2CE4-4E3C-B16C-21A1D49ABED3': 'Linux root (ARM)',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'Linux extended boot',
  'CA7D7CCB-63ED-4C53-861C-1742536059CC': 'Linux LUKS',
  '8DA63339-0007-60C0-C436-083AC8230908': 'Linux reserved',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'Microsoft reserved',
  'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC': 'Windows recovery environment',
  '5808C8AA-7E8F-42E0-85D2-E1E90434CFB3': 'Microsoft LDM metadata',
  'AF9B60A0-1431-4F62-BC68-3311714A69AD': 'Microsoft LDM data',
  'E75CAF8F-F680-4CEE-AFA3-B001E56EFC2D': 'Microsoft Storage Spaces',
  '48465300-0000-11AA-AA11-00306543ECAC': 'Apple HFS/HFS+',
  '7C3457EF-0000-11AA-AA11-00306543ECAC': 'Apple APFS',
  '516E7CB4-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD data',
  '516E7CB6-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD UFS',
  '516E7CB5-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD swap',
  '516E7CBA-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD ZFS',
  '6A898CC3-1DD2-11B2-99A6-080020736631': 'Solaris /usr & Apple ZFS',
  'D3BFE2DE-3DAF-11DF-BA40-E3A556D89593': 'Intel Fast Flash',
};

const MBR_TYPES: Record<number, string> = {
  0x01: 'FAT12',
  0x04: 'FAT16 <32M',
  0x05: 'Extended',
  0x06: 'FAT16',
  0x07: 'HPFS/NTFS/exFAT',
  0x0b: 'W95 FAT32',
  0x0c: 'W95 FAT32 (LBA)',
  0x0e: 'W95 FAT16 (LBA)',
  0x0f: "W95 Ext'd (LBA)",
  0x11: 'Hidden FAT12',
  0x12: 'Compaq diagnostics',
  0x14: 'Hidden FAT16 <32M',
  0x16: 'Hidden FAT16',
  0x17: 'Hidden HPFS/NTFS',
  0x1b: 'Hidden W95 FAT32',
  0x1c: 'Hidden W95 FAT32 (LBA)',
  0x1e: 'Hidden W95 FAT16 (LBA)',
  0x27: 'Hidden NTFS WinRE',
  0x42: 'SFS',
  0x82: 'Linux swap / Solaris',
  0x83: 'Linux',
  0x85: 'Linux extended',
  0x86: 'NTFS volume set',
  0x87: 'NTFS volume set',
  0x8e: 'Linux LVM',
  0xa5: 'FreeBSD',
  0xa6: 'OpenBSD',
  0xa8: 'Darwin UFS',
  0xa9: 'NetBSD',
  0xaf: 'HFS / HFS+',
  0xbf: 'Solaris',
  0xee: 'GPT',
  0xef: 'EFI (FAT-12/16/32)',
  0xfb: 'VMware VMFS',
  0xfc: 'VMware VMKCORE',
  0xfd: 'Linux raid autodetect',
};

export function gptTypeName(guid: string): string {
  return GPT_TYPES[guid.toUpperCase()] ?? 'unknown';
}

export function mbrTypeName(type: number): string {
  return MBR_TYPES[type] ?? 'unknown';
}

/** Formats a 16-byte on-disk GUID (first three fields little-endian) as upper-case text. */
export function formatGuid(b: Buffer, at = 0): string {
  const hex = (from: number, to: number, reverse: boolean) => {
    const bytes = Array.from(b.subarray(at + from, at + to));
    if (reverse) bytes.reverse();
    return bytes.map((x) => x.toString(16).padStart(2, '0')).join('');
  };
  return `${hex(0, 4, true)}-${hex(4, 6, true)}-${hex(6, 8, true)}-${hex(8, 10, false)}-${hex(10, 16, false)}`.toUpperCase();
}

// ---- reading helpers ----

/** Reads [offset, offset+length) if it lies on the disk; undefined otherwise. */
async function readAt(image: DiskImage, offset: number, length: number): Promise<Buffer | undefined> {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > image.virtualSize) return undefined;
  return readVirtual(image, offset, length);
}

/** Reads a u64 LE field as a safe JS number, or undefined when it does not fit. */
function u64(b: Buffer, at: number): number | undefined {
  const v = b.readBigUInt64LE(at);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
}

// ---- GPT ----

interface GptHeader {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  numEntries: number;
  entrySize: number;
  entriesCrc: number;
}

type Parsed<T> = { ok: true; value: T } | { ok: false; why: string };

async function readGptHeader(image: DiskImage, lba: number, sectorSize: number): Promise<Parsed<GptHeader>> {
  const totalSectors = Math.floor(image.virtualSize / sectorSize);
  if (lba < 1 || lba >= totalSectors) return { ok: false, why: `LBA ${lba} is outside the disk` };
  const b = await readAt(image, lba * sectorSize, sectorSize);
  if (!b) return { ok: false, why: `LBA ${lba} is outside the disk` };
  if (b.toString('latin1', 0, 8) !== 'EFI PART') return { ok: false, why: `no 'EFI PART' signature at LBA ${lba}` };
  const headerSize = b.readUInt32LE(12);
  if (headerSize < 92 || headerSize > sectorSize) return { ok: false, why: `header size ${headerSize} at LBA ${lba} is not within 92..${sectorSize}` };
  const stored = b.readUInt32LE(16);
  const copy = Buffer.from(b.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  const computed = crc32(copy);
  if (computed !== stored) {
    return { ok: false, why: `header CRC32 at LBA ${lba} is 0x${stored.toString(16).padStart(8, '0')}, computed 0x${computed.toString(16).padStart(8, '0')}` };
  }
  const myLba = u64(b, 24);
  const alternateLba = u64(b, 32);
  const firstUsable = u64(b, 40);
  const lastUsable = u64(b, 48);
  const entriesLba = u64(b, 72);
  if (myLba === undefined || alternateLba === undefined || firstUsable === undefined || lastUsable === undefined || entriesLba === undefined) {
    return { ok: false, why: `header at LBA ${lba} holds LBAs beyond 2^53` };
  }
  if (myLba !== lba) return { ok: false, why: `header at LBA ${lba} says it is at LBA ${myLba}` };
  const numEntries = b.readUInt32LE(80);
  const entrySize = b.readUInt32LE(84);
  if (entrySize < 128 || entrySize > MAX_GPT_ENTRY_SIZE || entrySize % 8 !== 0) {
    return { ok: false, why: `entry size ${entrySize} at LBA ${lba} is not a multiple of 8 within 128..${MAX_GPT_ENTRY_SIZE}` };
  }
  if (numEntries > MAX_GPT_ENTRIES) return { ok: false, why: `header at LBA ${lba} claims ${numEntries} entries (more than ${MAX_GPT_ENTRIES})` };
  const arraySectors = Math.ceil((numEntries * entrySize) / sectorSize);
  if (entriesLba < 1 || entriesLba + arraySectors > totalSectors) {
    return { ok: false, why: `entry array at LBA ${entriesLba} (${arraySectors} sectors) lies outside the ${totalSectors}-sector disk` };
  }
  if (firstUsable > lastUsable || lastUsable >= totalSectors) {
    return { ok: false, why: `usable range ${firstUsable}..${lastUsable} at LBA ${lba} does not fit the ${totalSectors}-sector disk` };
  }
  return {
    ok: true,
    value: { myLba, alternateLba, firstUsable, lastUsable, diskGuid: formatGuid(b, 56), entriesLba, numEntries, entrySize, entriesCrc: b.readUInt32LE(88) },
  };
}

async function readGptEntries(image: DiskImage, h: GptHeader, sectorSize: number): Promise<Parsed<Buffer>> {
  const len = h.numEntries * h.entrySize;
  if (len === 0) return { ok: true, value: Buffer.alloc(0) };
  const buf = await readAt(image, h.entriesLba * sectorSize, len);
  if (!buf) return { ok: false, why: `entry array at LBA ${h.entriesLba} lies outside the disk` };
  const computed = crc32(buf);
  if (computed !== h.entriesCrc) {
    return {
      ok: false,
      why: `entry array CRC32 (LBA ${h.entriesLba}) is 0x${h.entriesCrc.toString(16).padStart(8, '0')}, computed 0x${computed.toString(16).padStart(8, '0')}`,
    };
  }
  return { ok: true, value: buf };
}

async function readGptCopy(image: DiskImage, lba: number, sectorSize: number): Promise<Parsed<{ header: GptHeader; entries: Buffer }>> {
  const h = await readGptHeader(image, lba, sectorSize);
  if (!h.ok) return h;
  const e = await readGptEntries(image, h.value, sectorSize);
  if (!e.ok) return e;
  return { ok: true, value: { header: h.value, entries: e.value } };
}

function parseGptEntries(h: GptHeader, entries: Buffer, sectorSize: number, totalSectors: number, warnings: string[]): Partition[] {
  const parts: Partition[] = [];
  for (let i = 0; i < h.numEntries; i++) {
    const e = entries.subarray(i * h.entrySize, (i + 1) * h.entrySize);
    if (e.subarray(0, 16).every((x) => x === 0)) continue;
    const type = formatGuid(e, 0);
    const first = u64(e, 32);
    const last = u64(e, 40);
    if (first === undefined || last === undefined || last < first) {
      warnings.push(`GPT entry ${i + 1}: impossible range ${e.readBigUInt64LE(32)}..${e.readBigUInt64LE(40)}; skipped`);
      continue;
    }
    if (first < h.firstUsable || last > h.lastUsable) warnings.push(`GPT entry ${i + 1}: sectors ${first}..${last} lie outside the usable range ${h.firstUsable}..${h.lastUsable}`);
    if (last >= totalSectors) warnings.push(`GPT entry ${i + 1}: ends at sector ${last}, beyond the end of the disk (${totalSectors} sectors)`);
    const attrs = e.readBigUInt64LE(48);
    let name = e.toString('utf16le', 56, Math.min(e.length, 128));
    const nul = name.indexOf('\0');
    if (nul >= 0) name = name.slice(0, nul);
    const sectors = last - first + 1;
    parts.push({
      index: i + 1,
      start: first * sectorSize,
      size: sectors * sectorSize,
      startSector: first,
      sectors,
      type,
      typeName: gptTypeName(type),
      guid: formatGuid(e, 16),
      ...(name ? { name } : {}),
      ...((attrs & 4n) !== 0n ? { bootable: true } : {}),
    });
  }
  return parts;
}

async function readGpt(image: DiskImage, sectorSize: number, warnings: string[]): Promise<PartitionTable | undefined> {
  const totalSectors = Math.floor(image.virtualSize / sectorSize);
  const primary = await readGptCopy(image, 1, sectorSize);
  let used: { header: GptHeader; entries: Buffer } | undefined;
  let which: 'primary' | 'backup' = 'primary';
  // Where the backup should be: the primary's alternate LBA when the header itself is sound, else the last sector.
  let backupLba = totalSectors - 1;
  if (primary.ok) {
    used = primary.value;
    backupLba = primary.value.header.alternateLba;
    const backup = await readGptHeader(image, backupLba, sectorSize);
    if (!backup.ok) warnings.push(`the backup GPT header is damaged or missing (${backup.why}); the primary is fine`);
  } else {
    const ph = await readGptHeader(image, 1, sectorSize);
    if (ph.ok && ph.value.alternateLba > 1 && ph.value.alternateLba < totalSectors) backupLba = ph.value.alternateLba;
    let backup = await readGptCopy(image, backupLba, sectorSize);
    if (!backup.ok && backupLba !== totalSectors - 1) backup = await readGptCopy(image, totalSectors - 1, sectorSize);
    if (!backup.ok) {
      warnings.push(`no valid GPT: primary header: ${primary.why}; backup header: ${backup.why}`);
      return undefined;
    }
    warnings.push(`the primary GPT is damaged (${primary.why}); using the backup GPT at LBA ${backup.value.header.myLba}`);
    used = backup.value;
    which = 'backup';
  }
  const partitions = parseGptEntries(used.header, used.entries, sectorSize, totalSectors, warnings);
  return { type: 'gpt', sectorSize, diskGuid: used.header.diskGuid, header: which, partitions, warnings };
}

// ---- MBR ----

interface MbrEntry {
  status: number;
  type: number;
  lba: number;
  count: number;
}

function mbrEntries(sector: Buffer): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const at = 446 + i * 16;
    out.push({ status: sector[at]!, type: sector[at + 4]!, lba: sector.readUInt32LE(at + 8), count: sector.readUInt32LE(at + 12) });
  }
  return out;
}

function mbrPartition(index: number, e: MbrEntry, start: number, logical: boolean): Partition {
  return {
    index,
    start: start * MBR_SECTOR,
    size: e.count * MBR_SECTOR,
    startSector: start,
    sectors: e.count,
    type: e.type.toString(16).padStart(2, '0'),
    mbrType: e.type,
    typeName: mbrTypeName(e.type),
    ...(e.status === 0x80 ? { bootable: true } : {}),
    ...(logical ? { logical: true } : {}),
  };
}

async function readLogicals(image: DiskImage, ext: MbrEntry, totalSectors: number, warnings: string[]): Promise<Partition[]> {
  const out: Partition[] = [];
  const seen = new Set<number>();
  let ebr = ext.lba;
  const extEnd = ext.lba + ext.count;
  for (let n = 0; ; n++) {
    if (n >= MAX_LOGICAL) {
      warnings.push(`the extended partition chain has more than ${MAX_LOGICAL} logical partitions; stopped there`);
      break;
    }
    if (seen.has(ebr)) {
      warnings.push(`the extended partition chain loops back to sector ${ebr}; stopped there`);
      break;
    }
    seen.add(ebr);
    if (ebr >= totalSectors || ebr < ext.lba || ebr >= extEnd) {
      warnings.push(`extended boot record at sector ${ebr} lies outside the extended partition or the disk; stopped there`);
      break;
    }
    const b = await readAt(image, ebr * MBR_SECTOR, MBR_SECTOR);
    if (!b || b[510] !== 0x55 || b[511] !== 0xaa) {
      warnings.push(`extended boot record at sector ${ebr} has no 0x55AA signature; stopped there`);
      break;
    }
    const [first, link] = mbrEntries(b) as [MbrEntry, MbrEntry, MbrEntry, MbrEntry];
    if (first.type !== 0 && first.count > 0) {
      const start = ebr + first.lba;
      if (start + first.count > totalSectors) warnings.push(`logical partition ${5 + out.length} ends beyond the end of the disk`);
      out.push(mbrPartition(5 + out.length, first, start, true));
    }
    if (link.type === 0 || link.count === 0 || !EXTENDED_TYPES.has(link.type)) break;
    ebr = ext.lba + link.lba;
  }
  return out;
}

async function detectGptSectorSize(image: DiskImage): Promise<number | undefined> {
  for (const ss of [512, 4096]) {
    const b = await readAt(image, ss, 8);
    if (b && b.toString('latin1') === 'EFI PART') return ss;
  }
  return undefined;
}

/**
 * Reads the partition table of `image`. Never throws for a damaged or absent table: the result is
 * then type 'none' (or the part that could be read) with warnings explaining what was wrong.
 */
export async function readPartitionTable(image: DiskImage): Promise<PartitionTable> {
  const warnings: string[] = [];
  const none = (why?: string): PartitionTable => {
    if (why) warnings.push(why);
    return { type: 'none', sectorSize: MBR_SECTOR, partitions: [], warnings };
  };
  const s0 = await readAt(image, 0, MBR_SECTOR);
  if (!s0) return none(`the disk (${image.virtualSize} bytes) is smaller than one sector`);
  const totalSectors = Math.floor(image.virtualSize / MBR_SECTOR);
  const hasSig = s0[510] === 0x55 && s0[511] === 0xaa;
  const entries = mbrEntries(s0);
  const protective = hasSig && entries.some((e) => e.type === 0xee);

  if (protective || !hasSig) {
    // A GPT without (valid) protective MBR is still a GPT; try it first.
    const ss = await detectGptSectorSize(image);
    if (ss !== undefined || protective) {
      const gpt = await readGpt(image, ss ?? 512, warnings);
      if (gpt) {
        if (!protective) gpt.warnings.push('the disk has a GPT but no protective MBR');
        return gpt;
      }
      return none(protective ? 'the MBR is a protective MBR (type 0xEE) but no valid GPT was found' : undefined);
    }
    return none();
  }

  const bad = entries.findIndex((e) => e.status !== 0x00 && e.status !== 0x80);
  if (bad >= 0) return none(`sector 0 has a boot signature but MBR entry ${bad + 1} has status byte 0x${entries[bad]!.status.toString(16)}: not a partition table (perhaps a filesystem boot sector)`);

  const partitions: Partition[] = [];
  let extended: MbrEntry | undefined;
  entries.forEach((e, i) => {
    if (e.type === 0 || e.count === 0) return;
    if (e.lba === 0) {
      warnings.push(`MBR entry ${i + 1} starts at sector 0 (over the MBR itself)`);
    }
    if (e.lba + e.count > totalSectors) warnings.push(`MBR entry ${i + 1} (sectors ${e.lba}..${e.lba + e.count - 1}) ends beyond the end of the disk (${totalSectors} sectors)`);
    partitions.push(mbrPartition(i + 1, e, e.lba, false));
    if (EXTENDED_TYPES.has(e.type)) {
      if (extended) warnings.push(`MBR entry ${i + 1} is a second extended partition; ignored its logical partitions`);
      else extended = e;
    }
  });
  if (extended) partitions.push(...(await readLogicals(image, extended, totalSectors, warnings)));
  return { type: 'mbr', sectorSize: MBR_SECTOR, diskId: s0.readUInt32LE(440).toString(16).padStart(8, '0'), partitions, warnings };
}
