// Which blocks of an ext2/3/4 file system hold anything: read from the file system's own block
// bitmaps (one per block group), so a migration sends used blocks only — free space, however much
// stale data it holds, is skipped. Groups whose bitmap was never initialised (BLOCK_UNINIT) count
// the metadata that lives in them (superblock and descriptor backups, reserved descriptor blocks,
// any group's bitmaps and inode table). Layouts this reader does not handle exactly (meta_bg,
// bigalloc, anything inconsistent) give `undefined`: the caller then treats the whole file system
// as used. Every read is bounded by the file system's size and the group count by the device.
//
// Example:
//   const used = await ext4UsedRanges(read, partition.start, partition.size);  // [{offset, length}…]
import type { Range } from './ranges.js';
import { mergeRanges, totalLength } from './ranges.js';

/** Reads `length` bytes at byte `offset` of the device. */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

const EXT_MAGIC = 0xef53;
const INCOMPAT_META_BG = 0x10;
const INCOMPAT_64BIT = 0x80;
const RO_COMPAT_SPARSE_SUPER = 0x1;
const RO_COMPAT_BIGALLOC = 0x200;
const COMPAT_SPARSE_SUPER2 = 0x200;
const BG_BLOCK_UNINIT = 0x2;

export interface Ext4Layout {
  blockSize: number;
  blocks: number;
  firstDataBlock: number;
  blocksPerGroup: number;
  groups: number;
  usedBlocks: number;
}

function isPowerOf(n: number, base: number): boolean {
  if (n < 1) return false;
  while (n % base === 0) n /= base;
  return n === 1;
}

/** True when `buf` (at least 2 KiB from the start of a partition) holds an ext2/3/4 superblock. */
export function looksLikeExt(superblockArea: Buffer): boolean {
  return superblockArea.length >= 2048 && superblockArea.readUInt16LE(1024 + 0x38) === EXT_MAGIC;
}

/**
 * The used byte ranges (relative to the device, i.e. `base` added) of the ext file system at
 * [base, base+size), or undefined when it cannot be mapped exactly.
 */
export async function ext4UsedRanges(read: ReadAt, base: number, size: number): Promise<{ ranges: Range[]; layout: Ext4Layout } | undefined> {
  if (size < 2048) return undefined;
  const sb = await read(base + 1024, 1024);
  if (sb.length < 1024 || sb.readUInt16LE(0x38) !== EXT_MAGIC) return undefined;
  const logBlock = sb.readUInt32LE(0x18);
  if (logBlock > 6) return undefined; // block sizes 1 KiB – 64 KiB
  const blockSize = 1024 << logBlock;
  const incompat = sb.readUInt32LE(0x60);
  const roCompat = sb.readUInt32LE(0x64);
  const compat = sb.readUInt32LE(0x5c);
  if (incompat & INCOMPAT_META_BG || roCompat & RO_COMPAT_BIGALLOC) return undefined;
  const is64 = (incompat & INCOMPAT_64BIT) !== 0;
  const blocks = sb.readUInt32LE(0x04) + (is64 ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
  const firstDataBlock = sb.readUInt32LE(0x14);
  const blocksPerGroup = sb.readUInt32LE(0x20);
  const inodesPerGroup = sb.readUInt32LE(0x28);
  const inodeSize = sb.readUInt16LE(0x58) || 128;
  const descSize = is64 ? sb.readUInt16LE(0xfe) : 32;
  const reservedGdt = sb.readUInt16LE(0xce);
  if (blocks * blockSize > size || blocks <= firstDataBlock) return undefined;
  if (blocksPerGroup === 0 || blocksPerGroup > blockSize * 8 || descSize < 32 || descSize > 1024 || (descSize & (descSize - 1)) !== 0) return undefined;
  const groups = Math.ceil((blocks - firstDataBlock) / blocksPerGroup);
  if (groups > 1 << 24) return undefined;
  const inodeTableBlocks = Math.ceil((inodesPerGroup * inodeSize) / blockSize);
  const gdtBlocks = Math.ceil((groups * descSize) / blockSize);
  const backups2 = compat & COMPAT_SPARSE_SUPER2 ? [sb.readUInt32LE(0x24c), sb.readUInt32LE(0x250)] : undefined;
  const hasBackup = (g: number): boolean => {
    if (g === 0) return true;
    if (backups2) return g === backups2[0] || g === backups2[1];
    if (!(roCompat & RO_COMPAT_SPARSE_SUPER)) return true;
    return g === 1 || isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
  };

  // The group descriptor table follows the superblock's block.
  const gdt = await read(base + (firstDataBlock + 1) * blockSize, gdtBlocks * blockSize);
  if (gdt.length < groups * descSize) return undefined;
  const at64 = (lo: number, hi: number) => lo + (is64 ? hi * 2 ** 32 : 0);
  const desc = (g: number) => {
    const o = g * descSize;
    return {
      blockBitmap: at64(gdt.readUInt32LE(o), is64 ? gdt.readUInt32LE(o + 0x20) : 0),
      inodeBitmap: at64(gdt.readUInt32LE(o + 4), is64 ? gdt.readUInt32LE(o + 0x24) : 0),
      inodeTable: at64(gdt.readUInt32LE(o + 8), is64 ? gdt.readUInt32LE(o + 0x28) : 0),
      flags: gdt.readUInt16LE(o + 0x12),
    };
  };

  // Metadata blocks of every group, wherever they live (flex_bg packs them together).
  const meta: Range[] = [];
  for (let g = 0; g < groups; g++) {
    const d = desc(g);
    for (const b of [d.blockBitmap, d.inodeBitmap]) {
      if (b >= blocks) return undefined;
      meta.push({ offset: b, length: 1 });
    }
    if (d.inodeTable + inodeTableBlocks > blocks) return undefined;
    meta.push({ offset: d.inodeTable, length: inodeTableBlocks });
  }
  const metaMerged = mergeRanges(meta);

  const used: Range[] = [];
  const add = (first: number, count: number) => {
    if (count > 0) used.push({ offset: first, length: count });
  };
  // Blocks before the first group (the boot block of 1 KiB-block file systems).
  add(0, firstDataBlock);
  for (let g = 0; g < groups; g++) {
    const first = firstDataBlock + g * blocksPerGroup;
    const count = Math.min(blocksPerGroup, blocks - first);
    const d = desc(g);
    if (d.flags & BG_BLOCK_UNINIT) {
      if (hasBackup(g)) add(first, Math.min(count, 1 + gdtBlocks + reservedGdt));
      for (const m of metaMerged) {
        const s = Math.max(m.offset, first);
        const e = Math.min(m.offset + m.length, first + count);
        if (s < e) add(s, e - s);
      }
      continue;
    }
    const bitmap = await read(base + d.blockBitmap * blockSize, blockSize);
    if (bitmap.length < Math.ceil(count / 8)) return undefined;
    let runStart = -1;
    for (let i = 0; i < count; i++) {
      const byte = bitmap[i >> 3]!;
      // Whole bytes at once where possible.
      if ((i & 7) === 0 && i + 8 <= count && (byte === 0 || byte === 0xff)) {
        if (byte === 0xff) {
          if (runStart < 0) runStart = i;
        } else if (runStart >= 0) {
          add(first + runStart, i - runStart);
          runStart = -1;
        }
        i += 7;
        continue;
      }
      const bit = (byte >> (i & 7)) & 1;
      if (bit && runStart < 0) runStart = i;
      else if (!bit && runStart >= 0) {
        add(first + runStart, i - runStart);
        runStart = -1;
      }
    }
    if (runStart >= 0) add(first + runStart, count - runStart);
  }
  const merged = mergeRanges(used);
  const ranges = merged.map((r) => ({ offset: base + r.offset * blockSize, length: r.length * blockSize }));
  return { ranges, layout: { blockSize, blocks, firstDataBlock, blocksPerGroup, groups, usedBlocks: totalLength(merged) } };
}
