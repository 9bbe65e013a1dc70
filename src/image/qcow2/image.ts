// An opened qcow2 image: ties the header, the mapper, the stored refcounts and the snapshot table
// together, and answers info(). map() is the mapper's; check() lives in check.ts.
import type { ByteSource } from '../../io/byte-source.js';
import type { CheckReport, DiskImage, ImageInfo, Segment } from '../types.js';
import { checkImage } from './check.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  incompatibleNames,
  type Qcow2Header,
} from './header.js';
import { Qcow2Mapper } from './map.js';
import { StoredRefcounts } from './refcounts.js';
import { snapshotInfo, type SnapshotTable } from './snapshots.js';

export class Qcow2Image implements DiskImage {
  readonly format = 'qcow2' as const;
  readonly virtualSize: number;
  readonly refcounts: StoredRefcounts;
  readonly mapper: Qcow2Mapper;

  constructor(
    readonly src: ByteSource,
    readonly name: string,
    readonly header: Qcow2Header,
    readonly snapshotTable: SnapshotTable,
    readonly backing: DiskImage | undefined,
  ) {
    this.virtualSize = header.virtualSize;
    this.refcounts = new StoredRefcounts(src, header);
    this.mapper = new Qcow2Mapper(src, header, backing, () => this.detectPreallocation());
  }

  map(offset: number, length: number): Promise<Segment[]> {
    return this.mapper.map(offset, length);
  }

  /** Number of host clusters the file covers (the last one may be partial). */
  get fileClusters(): number {
    return Math.ceil(this.src.size / this.header.clusterSize);
  }

  /**
   * qemu's metadata-preallocation heuristic: many more clusters have a refcount than the file has
   * allocated storage for (real clusters × 10/9, at least real + 2).
   */
  private async detectPreallocation(): Promise<boolean> {
    if (!this.src.dataRanges) return false;
    let real = 0;
    for (const r of await this.src.dataRanges(0, this.src.size)) real += r.length;
    const realClusters = Math.floor(real / this.header.clusterSize);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const used = await this.refcounts.countUsed(this.fileClusters, threshold);
    return used >= threshold;
  }

  async info(): Promise<ImageInfo> {
    const h = this.header;
    const features: string[] = [];
    if (h.incompatible & INCOMPAT_DIRTY) features.push('dirty');
    if (h.incompatible & INCOMPAT_CORRUPT) features.push('corrupt');
    if (h.compatible & COMPAT_LAZY_REFCOUNTS) features.push('lazy_refcounts');
    if (h.extendedL2) features.push('extended_l2');
    if (h.compressionType === 1) features.push('compression_type_zstd');
    if (h.bitmaps) features.push('bitmaps');
    const warnings = [...h.warnings];
    let allocatedSize = this.src.size;
    try {
      const used = await this.refcounts.countUsed(this.fileClusters);
      allocatedSize = Math.min(this.src.size, used * h.clusterSize);
    } catch (err) {
      warnings.push(`the refcounts cannot be read (${(err as Error).message}); allocated size is the file size`);
    }
    const info: ImageInfo = {
      format: 'qcow2',
      subformat: h.version === 3 ? 'v3' : 'v2',
      virtualSize: h.virtualSize,
      fileSize: this.src.size,
      allocatedSize,
      clusterSize: h.clusterSize,
      compression: [h.compressionType === 1 ? 'zstd' : 'zlib'],
      snapshots: this.snapshotTable.snapshots.map(snapshotInfo),
      features,
      details: {
        compat: h.version === 3 ? '1.1' : '0.10',
        refcountBits: h.refcountBits,
        l1Size: h.l1Size,
        l1TableOffset: h.l1TableOffset,
        l2Entries: h.l2Entries,
        refcountTableOffset: h.refcountTableOffset,
        refcountTableClusters: h.refcountTableClusters,
        headerLength: h.headerLength,
        compressionType: h.compressionType === 1 ? 'zstd' : 'zlib',
        incompatibleFeatures: incompatibleNames(h.incompatible),
        lazyRefcounts: (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n,
        dirty: (h.incompatible & INCOMPAT_DIRTY) !== 0n,
        corrupt: (h.incompatible & INCOMPAT_CORRUPT) !== 0n,
        extendedL2: h.extendedL2,
        ...(h.extendedL2 ? { subclusterSize: h.subclusterSize } : {}),
        ...(h.bitmaps ? { bitmaps: h.bitmaps.count } : {}),
      },
    };
    if (h.backingFile !== undefined) {
      info.backing = { path: h.backingFile, ...(h.backingFormat !== undefined ? { format: h.backingFormat } : {}) };
    }
    if (warnings.length) info.warnings = warnings;
    return info;
  }

  check(): Promise<CheckReport> {
    return checkImage(this);
  }

  async close(): Promise<void> {
    try {
      if (this.backing) await this.backing.close();
    } finally {
      await this.src.close();
    }
  }
}
