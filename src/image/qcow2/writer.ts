// The qcow2 writer (v3 by default, v2 with compat=0.10): streams clusters to the end of the file in
// virtual order and builds the metadata around them.
//
// Layout: cluster 0 header, then the L1 table, then data clusters as they come. Compressed clusters
// are packed back to back at byte granularity (as qemu packs them), uncompressed ones are cluster
// aligned; each L2 table is written as soon as the disk range it maps is complete, so memory stays
// at one L2 table whatever the disk size. finish() appends the refcount blocks and the refcount
// table (sized to cover themselves), then writes the L1 table and the final header. Every cluster
// below the end has a refcount ≥ 1, so `qemu-img check` finds neither leaks nor errors. Zero
// clusters stay unallocated (they read as zeros: there is no backing file), as qemu-img convert does.
import { FerryError } from '../../errors.js';
import { WriteBatcher, type Sink } from '../../io/sink.js';
import type { UnitEncoding } from '../../pipeline/encode-job.js';
import { UNCOMPRESSED, badSpec, roundUp, type DataRun, type ImageWriter, type WriteSummary, type WriterContext } from '../writer.js';
import { MAX_L1_BYTES, QCOW2_MAGIC } from './header.js';

const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;
const INCOMPAT_COMPRESSION_TYPE = 1n << 3n;
/** 16-bit refcounts (refcount_order 4), qemu's default. */
const REFCOUNT_ORDER = 4;
const REFCOUNT_MAX = 0xffff;
const V3_HEADER_LENGTH = 112;

export const DEFAULT_CLUSTER_SIZE = 64 * 1024;

export class Qcow2Writer implements ImageWriter {
  readonly format = 'qcow2' as const;
  readonly subformat: string;
  readonly virtualSize: number;
  readonly unitSize: number;
  readonly encoding: UnitEncoding;
  readonly headBytes: number;
  private readonly sink: Sink;
  private readonly version: 2 | 3;
  private readonly clusterBits: number;
  private readonly cs: number;
  private readonly zstd: boolean;
  private readonly l2Entries: number;
  private readonly l1: Buffer;
  private readonly l1Offset: number;
  /** Bits of a compressed descriptor holding the host offset (the rest: extra sectors). */
  private readonly offsetBits: bigint;
  /** Refcount of each host cluster (grown on demand). */
  private refcounts = new Uint16Array(1024);
  /** Next free host byte. */
  private end: number;
  /** The L2 table being filled and the L1 index it belongs to. */
  private l2: Buffer | undefined;
  private l2Index = -1;
  private readonly out: WriteBatcher;

  constructor(ctx: WriterContext) {
    const { spec } = ctx;
    this.sink = ctx.sink;
    this.out = new WriteBatcher(ctx.sink);
    const sub = spec.subformat ?? 'v3';
    if (sub !== 'v3' && sub !== 'v2') {
      throw badSpec(`qcow2 has no subformat '${sub}'`, 'Use --subformat v3 (the default, compat=1.1) or v2 (compat=0.10).');
    }
    this.version = sub === 'v2' ? 2 : 3;
    this.subformat = sub;
    this.cs = spec.clusterSize ?? DEFAULT_CLUSTER_SIZE;
    this.clusterBits = Math.log2(this.cs);
    if (!Number.isInteger(this.clusterBits) || this.clusterBits < 9 || this.clusterBits > 21) {
      throw badSpec(`qcow2 cluster size ${this.cs} is not a power of two between 512 bytes and 2 MiB`, 'Pick a cluster size such as 64K (the default), 512, 4K, 1M or 2M.');
    }
    this.zstd = spec.compress === 'zstd';
    if (this.zstd && this.version === 2) {
      throw badSpec('zstd compression needs qcow2 v3', 'Drop --subformat v2, or use --compress zlib.');
    }
    this.virtualSize = roundUp(spec.alignSize ? roundUp(ctx.sourceSize, spec.alignSize) : ctx.sourceSize, 512);
    this.unitSize = this.cs;
    this.encoding = spec.compress
      ? { codec: this.zstd ? 'zstd' : 'deflate', rawAbove: this.cs - 1, padLast: true, ...(spec.compressLevel ? { level: spec.compressLevel } : {}) }
      : UNCOMPRESSED;
    this.l2Entries = this.cs / 8;
    const l1Size = Math.ceil(this.virtualSize / (this.l2Entries * this.cs));
    if (l1Size * 8 > MAX_L1_BYTES) {
      throw badSpec(
        `a ${this.virtualSize}-byte disk needs a ${l1Size * 8}-byte L1 table with ${this.cs}-byte clusters, above qemu's 32 MiB limit`,
        'Use a larger cluster size (--cluster-size 64K or more).',
      );
    }
    this.l1 = Buffer.alloc(l1Size * 8);
    this.l1Offset = this.cs;
    this.offsetBits = BigInt(62 - (this.clusterBits - 8));
    // Header cluster and L1 clusters.
    this.end = this.cs + roundUp(this.l1.length, this.cs);
    this.headBytes = this.end;
    for (let c = 0; c < this.end / this.cs; c++) this.ref(c);
  }

  private ref(cluster: number): void {
    if (cluster >= this.refcounts.length) {
      const grown = new Uint16Array(Math.max(cluster + 1, this.refcounts.length * 2));
      grown.set(this.refcounts);
      this.refcounts = grown;
    }
    this.refcounts[cluster]!++;
  }

  /** Allocates `n` whole clusters at the next cluster boundary; returns the host offset. */
  private allocClusters(n: number): number {
    const at = roundUp(this.end, this.cs);
    this.end = at + n * this.cs;
    for (let c = at / this.cs; c < this.end / this.cs; c++) this.ref(c);
    return at;
  }

  /** Allocates `len` bytes for a compressed cluster right after the previous allocation. */
  private allocBytes(len: number): number {
    let at = this.end;
    // A cluster's refcount must not overflow: start the next compressed cluster on a new one.
    if (at % this.cs !== 0 && this.refcounts[Math.floor(at / this.cs)]! >= REFCOUNT_MAX) at = roundUp(at, this.cs);
    this.end = at + len;
    for (let c = Math.floor(at / this.cs); c <= Math.floor((this.end - 1) / this.cs); c++) this.ref(c);
    return at;
  }

  private async setL2(vcluster: number, entry: bigint): Promise<void> {
    const l1Index = Math.floor(vcluster / this.l2Entries);
    if (l1Index !== this.l2Index) {
      await this.flushL2();
      this.l2 = Buffer.alloc(this.cs);
      this.l2Index = l1Index;
    }
    this.l2!.writeBigUInt64BE(entry, (vcluster % this.l2Entries) * 8);
  }

  /** Writes the current L2 table to a new cluster and points its L1 entry at it. */
  private async flushL2(): Promise<void> {
    if (!this.l2) return;
    const at = this.allocClusters(1);
    await this.out.put(this.l2, at);
    this.l1.writeBigUInt64BE(BigInt(at) | COPIED, this.l2Index * 8);
    this.l2 = undefined;
    this.l2Index = -1;
  }

  async write(runs: DataRun[]): Promise<void> {
    for (const r of runs) {
      if (r.offset % this.cs !== 0) throw new FerryError('INTERNAL', `qcow2 writer: run at ${r.offset} is not cluster aligned`, { remedy: 'This is a bug in Ferry; please report it.' });
      if (r.compressed) {
        const at = this.allocBytes(r.data.length);
        const sectors = BigInt(Math.floor((at + r.data.length - 1) / 512) - Math.floor(at / 512));
        await this.out.put(r.data, at);
        await this.setL2(r.offset / this.cs, COMPRESSED | (sectors << this.offsetBits) | BigInt(at));
        continue;
      }
      // Raw: whole clusters (the last one of the disk may be partial; it is zero-padded on disk).
      const clusters = Math.ceil(r.length / this.cs);
      const first = r.offset / this.cs;
      for (let i = 0; i < clusters; i++) {
        // L2 tables are allocated between data clusters, so allocate cluster by cluster.
        const at = this.allocClusters(1);
        const piece = r.data.subarray(i * this.cs, Math.min(r.length, (i + 1) * this.cs));
        await this.out.put(piece, at);
        await this.setL2(first + i, BigInt(at) | COPIED);
      }
    }
    // The runs' buffers are the caller's again when this returns: write them out now.
    await this.out.flush();
  }

  async finish(): Promise<WriteSummary> {
    await this.flushL2();
    await this.out.flush();
    const cs = this.cs;
    const used = Math.ceil(this.end / cs);
    // Refcount blocks + table must also count themselves: iterate to a fixed point.
    const perBlock = (cs * 8) >> REFCOUNT_ORDER;
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = used + blocks + tableClusters;
      const b = Math.ceil(total / perBlock);
      const t = Math.ceil((b * 8) / cs);
      if (b === blocks && t === tableClusters) break;
      blocks = b;
      tableClusters = t;
    }
    const firstBlock = used;
    const tableAt = (used + blocks) * cs;
    for (let c = used; c < used + blocks + tableClusters; c++) this.ref(c);
    const table = Buffer.alloc(tableClusters * cs);
    for (let b = 0; b < blocks; b++) {
      const block = Buffer.alloc(cs);
      const from = b * perBlock;
      const to = Math.min(from + perBlock, this.refcounts.length);
      for (let c = from; c < to; c++) {
        const n = this.refcounts[c]!;
        if (n) block.writeUInt16BE(n, (c - from) * 2);
      }
      const at = (firstBlock + b) * cs;
      await this.sink.write(block, at);
      table.writeBigUInt64BE(BigInt(at), b * 8);
    }
    await this.sink.write(table, tableAt);
    await this.sink.write(this.l1, this.l1Offset);
    await this.sink.write(this.header(tableAt, tableClusters), 0);
    const fileSize = tableAt + table.length;
    await this.sink.truncate(fileSize);
    return { format: 'qcow2', subformat: this.subformat, virtualSize: this.virtualSize, fileSize };
  }

  private header(refcountTableOffset: number, refcountTableClusters: number): Buffer {
    const h = Buffer.alloc(this.version === 3 ? V3_HEADER_LENGTH + 8 : 72 + 8);
    h.writeUInt32BE(QCOW2_MAGIC, 0);
    h.writeUInt32BE(this.version, 4);
    // backing_file_offset (8) and backing_file_size (16) stay 0.
    h.writeUInt32BE(this.clusterBits, 20);
    h.writeBigUInt64BE(BigInt(this.virtualSize), 24);
    // crypt_method (32) 0.
    h.writeUInt32BE(this.l1.length / 8, 36);
    h.writeBigUInt64BE(BigInt(this.l1Offset), 40);
    h.writeBigUInt64BE(BigInt(refcountTableOffset), 48);
    h.writeUInt32BE(refcountTableClusters, 56);
    // nb_snapshots (60) and snapshots_offset (64) stay 0.
    if (this.version === 3) {
      h.writeBigUInt64BE(this.zstd ? INCOMPAT_COMPRESSION_TYPE : 0n, 72);
      // compatible_features (80), autoclear_features (88): none.
      h.writeUInt32BE(REFCOUNT_ORDER, 96);
      h.writeUInt32BE(V3_HEADER_LENGTH, 100);
      h[104] = this.zstd ? 1 : 0;
    }
    // The header extension area ends with the end-of-extensions marker (type 0, length 0), which
    // the zero-filled 8 bytes after the header already are.
    return h;
  }
}
