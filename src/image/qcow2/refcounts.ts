// Stored qcow2 refcounts: the refcount table (≤ 8 MiB, only the part inside the file is read; the
// rest reads as zero, as in qemu) and refcount blocks (one cluster each, 1..64-bit entries, kept in
// a small LRU cache). Used by info (allocated size), map (metadata-preallocation detection) and check.
import { readExact, readUpTo, type ByteSource } from '../../io/byte-source.js';
import { TableCache } from './entries.js';
import type { Qcow2Header } from './header.js';

/** Refcount value returned when the refcount block cannot be used (misaligned offset). */
export const REFCOUNT_UNREADABLE = -1;

export class StoredRefcounts {
  /** The in-file part of the refcount table. */
  private table: Buffer | undefined;
  private readonly cache = new TableCache(8);
  /** Number of refcount table entries declared by the header. */
  readonly tableEntries: number;
  /** Refcount entries per refcount block. */
  readonly perBlock: number;
  /** Largest storable refcount (2^bits − 1; 2^64 − 1 is approximated). */
  readonly max: number;

  constructor(
    private readonly src: ByteSource,
    private readonly h: Qcow2Header,
  ) {
    this.tableEntries = (h.refcountTableClusters * h.clusterSize) / 8;
    this.perBlock = (h.clusterSize * 8) / h.refcountBits;
    this.max = 2 ** h.refcountBits - 1;
  }

  /** Bytes of the refcount table that lie past the end of the file (0 when all of it is inside). */
  get tableMissingBytes(): number {
    const end = this.h.refcountTableOffset + this.tableEntries * 8;
    return Math.max(0, end - Math.max(this.src.size, this.h.refcountTableOffset));
  }

  /** The in-file part of the refcount table (entries past it read as zero). */
  async loadTable(): Promise<Buffer> {
    this.table ??= await readUpTo(this.src, this.h.refcountTableOffset, this.tableEntries * 8);
    return this.table;
  }

  /** Raw refcount table entry `i` as (hi, lo); zero beyond the file. */
  async tableEntry(i: number): Promise<[number, number]> {
    const t = await this.loadTable();
    if (i * 8 + 8 > t.length) return [0, 0];
    return [t.readUInt32BE(i * 8), t.readUInt32BE(i * 8 + 4)];
  }

  /** Offset of refcount block `i` (reserved bits masked out like qemu's REFT_OFFSET_MASK). */
  async blockOffset(i: number): Promise<number> {
    const [hi, lo] = await this.tableEntry(i);
    return hi * 2 ** 32 + (lo - (lo & 0x1ff));
  }

  /** The refcount block `i`, or undefined when it is unallocated, or 'unreadable' when misaligned. */
  async block(i: number): Promise<Buffer | undefined | 'unreadable'> {
    const off = await this.blockOffset(i);
    if (off === 0) return undefined;
    if (!Number.isSafeInteger(off) || off % this.h.clusterSize !== 0) return 'unreadable';
    let b = this.cache.get(off);
    if (!b) {
      if (off >= this.src.size) {
        b = Buffer.alloc(this.h.clusterSize);
      } else if (off + this.h.clusterSize > this.src.size) {
        b = Buffer.alloc(this.h.clusterSize);
        (await readUpTo(this.src, off, this.h.clusterSize)).copy(b);
      } else {
        b = await readExact(this.src, off, this.h.clusterSize, `refcount block ${i}`);
      }
      this.cache.set(off, b);
    }
    return b;
  }

  /** Decodes entry `k` of a refcount block. */
  decode(b: Buffer, k: number): number {
    const bits = this.h.refcountBits;
    switch (bits) {
      case 64:
        return b.readUInt32BE(k * 8) * 2 ** 32 + b.readUInt32BE(k * 8 + 4);
      case 32:
        return b.readUInt32BE(k * 4);
      case 16:
        return b.readUInt16BE(k * 2);
      case 8:
        return b[k]!;
      default: {
        const bitPos = k * bits;
        return (b[bitPos >>> 3]! >>> (bitPos & 7)) & ((1 << bits) - 1);
      }
    }
  }

  /** Stored refcount of host cluster `cluster` (0 beyond the table), or REFCOUNT_UNREADABLE. */
  async get(cluster: number): Promise<number> {
    const i = Math.floor(cluster / this.perBlock);
    if (i >= this.tableEntries) return 0;
    const b = await this.block(i);
    if (b === undefined) return 0;
    if (b === 'unreadable') return REFCOUNT_UNREADABLE;
    return this.decode(b, cluster % this.perBlock);
  }

  /**
   * Counts host clusters in [0, nbClusters) with a refcount > 0, stopping once `stopAt` is reached.
   * Reads each refcount block once.
   */
  async countUsed(nbClusters: number, stopAt = Infinity): Promise<number> {
    let used = 0;
    for (let i = 0; i < this.tableEntries && i * this.perBlock < nbClusters && used < stopAt; i++) {
      const b = await this.block(i);
      if (b === undefined || b === 'unreadable') continue;
      const n = Math.min(this.perBlock, nbClusters - i * this.perBlock);
      for (let k = 0; k < n; k++) if (this.decode(b, k) !== 0) used++;
    }
    return used;
  }
}
