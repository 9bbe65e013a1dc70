// What of a source disk must be sent: the disk is split into regions — each partition, and the
// space outside partitions (partition tables, boot code, gaps) — and each region is either mapped
// exactly (an ext2/3/4 file system: its used blocks, from its own bitmaps) or sent whole (any other
// content; all-zero pieces are still skipped on the wire). A bare file system without a partition
// table is one region. The map is taken again at every round, so blocks allocated meanwhile count.
import type { DiskImage } from '../image/types.js';
import { readPartitionTable } from '../image/partitions.js';
import { readVirtual } from '../image/read.js';
import { ext4UsedRanges } from './ext4-map.js';
import { mergeRanges, totalLength, type Range } from './ranges.js';

export interface RegionInfo {
  /** e.g. "partition 1 (ext4: 38% used)" or "outside partitions". */
  what: string;
  offset: number;
  length: number;
  /** Bytes that will be read and sent (before zero detection and compression). */
  used: number;
  /** How the used part was found. */
  method: 'ext4-bitmap' | 'whole';
}

export interface DiskMap {
  size: number;
  /** Sorted, merged byte ranges to send. */
  ranges: Range[];
  used: number;
  regions: RegionInfo[];
}

/** Maps `image` (a block device or raw file opened as a raw image). */
export async function mapDisk(image: DiskImage): Promise<DiskMap> {
  const size = image.virtualSize;
  const read = (offset: number, length: number) => readVirtual(image, offset, Math.max(0, Math.min(length, size - offset)));
  const regions: RegionInfo[] = [];
  const ranges: Range[] = [];
  const filesystem = async (offset: number, length: number, label: string) => {
    const ext = await ext4UsedRanges(read, offset, length).catch(() => undefined);
    if (ext) {
      const used = totalLength(ext.ranges);
      ranges.push(...ext.ranges);
      regions.push({ what: `${label} (ext4, ${((100 * used) / length).toFixed(0)}% used)`, offset, length, used, method: 'ext4-bitmap' });
    } else {
      ranges.push({ offset, length });
      regions.push({ what: label, offset, length, used: length, method: 'whole' });
    }
  };
  const table = await readPartitionTable(image);
  if (table.type === 'none' || table.partitions.length === 0) {
    await filesystem(0, size, 'whole disk');
  } else {
    // An extended partition's container is not mapped itself: its logical partitions are, and the
    // boot records between them count as outside.
    const extended = (t?: number) => t === 0x05 || t === 0x0f || t === 0x85;
    const parts = [...table.partitions].filter((p) => p.size > 0 && p.start + p.size <= size && !extended(p.mbrType)).sort((a, b) => a.start - b.start);
    let pos = 0;
    const outside: Range[] = [];
    for (const p of parts) {
      if (p.start > pos) outside.push({ offset: pos, length: p.start - pos });
      pos = Math.max(pos, p.start + p.size);
    }
    if (pos < size) outside.push({ offset: pos, length: size - pos });
    for (const p of parts) await filesystem(p.start, p.size, `partition ${p.index}`);
    const out = mergeRanges(outside);
    ranges.push(...out);
    regions.push({ what: 'outside partitions', offset: 0, length: size, used: totalLength(out), method: 'whole' });
  }
  const merged = mergeRanges(ranges);
  return { size, ranges: merged, used: totalLength(merged), regions };
}
