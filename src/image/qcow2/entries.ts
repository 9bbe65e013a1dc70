// qcow2 table entries: decoding of L1 entries, standard / compressed / extended L2 entries and
// refcount table entries from their big-endian 64-bit words (split into two u32 halves so no
// BigInt is needed on the hot path), and the classification of a (sub)cluster as qemu does.
import type { Qcow2Header } from './header.js';

const TWO32 = 2 ** 32;

/** Bits 9..55 of a 64-bit word given as (hi, lo): a cluster-table offset. May exceed 2^53 (caller checks). */
export function tableOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO32 + (lo - (lo & 0x1ff));
}

/** Reads the two halves of the 64-bit big-endian word at `at`. */
export function word(buf: Buffer, at: number): [number, number] {
  return [buf.readUInt32BE(at), buf.readUInt32BE(at + 4)];
}

export const L1_RESERVED_HI = 0x7f000000; // bits 56..62
export const L1_RESERVED_LO = 0x1ff; // bits 0..8
export const L2_STD_RESERVED_HI = 0x3f000000; // bits 56..61
export const L2_STD_RESERVED_LO = 0x1fe; // bits 1..8
export const COPIED_HI = 0x80000000; // bit 63
export const COMPRESSED_HI = 0x40000000; // bit 62
export const REFT_RESERVED_LO = 0x1ff;

export type ClusterType = 'compressed' | 'zero-plain' | 'zero-alloc' | 'normal' | 'unallocated';

/** A decoded L2 entry (standard part + optional extended bitmap). */
export interface L2Entry {
  hi: number;
  lo: number;
  /** Subcluster bitmap halves (extended L2 only, else 0): alloc = bits 0..31, zero = bits 32..63. */
  allocMask: number;
  zeroMask: number;
  type: ClusterType;
  /** Host offset (standard clusters) or compressed data offset. */
  offset: number;
  /** Compressed only: bytes the compressed data may occupy (upper bound, ends on a sector boundary). */
  csize: number;
}

/** Decodes entry `index` of the L2 table `table` (qemu's qcow2_get_cluster_type rules). */
export function decodeL2(h: Qcow2Header, table: Buffer, index: number): L2Entry {
  const at = index * h.l2EntrySize;
  const hi = table.readUInt32BE(at);
  const lo = table.readUInt32BE(at + 4);
  let zeroMask = 0;
  let allocMask = 0;
  if (h.extendedL2) {
    zeroMask = table.readUInt32BE(at + 8);
    allocMask = table.readUInt32BE(at + 12);
  }
  if (hi & COMPRESSED_HI) {
    const x = 70 - h.clusterBits; // 62 - (cluster_bits - 8)
    const hiBits = x - 32;
    const offset = (hi & ((1 << hiBits) - 1)) * TWO32 + (lo >>> 0);
    const sectors = ((hi >>> hiBits) & ((1 << (h.clusterBits - 8)) - 1)) + 1;
    const csize = sectors * 512 - (offset % 512);
    return { hi, lo, allocMask, zeroMask, type: 'compressed', offset, csize };
  }
  const offset = tableOffset(hi, lo);
  let type: ClusterType;
  if (lo & 1 && !h.extendedL2) type = offset ? 'zero-alloc' : 'zero-plain';
  else if (offset === 0) type = 'unallocated';
  else type = 'normal';
  return { hi, lo, allocMask, zeroMask, type, offset, csize: 0 };
}

/** What one subcluster (or whole cluster without extended L2) is, for reading. */
export type SubclusterKind = 'data' | 'zero' | 'unallocated' | 'compressed' | 'invalid';

/** qemu's qcow2_get_subcluster_type, collapsed to what a reader needs. */
export function subclusterKind(h: Qcow2Header, e: L2Entry, sc: number): SubclusterKind {
  if (e.type === 'compressed') return h.extendedL2 && (e.allocMask || e.zeroMask) ? 'invalid' : 'compressed';
  if (!h.extendedL2) {
    if (e.type === 'zero-plain' || e.type === 'zero-alloc') return 'zero';
    return e.type === 'normal' ? 'data' : 'unallocated';
  }
  const bit = 1 << sc;
  if (e.offset !== 0) {
    if ((e.zeroMask & e.allocMask) !== 0) return 'invalid';
    if (e.zeroMask & bit) return 'zero';
    if (e.allocMask & bit) return 'data';
    return 'unallocated';
  }
  if (e.allocMask !== 0) return 'invalid';
  return e.zeroMask & bit ? 'zero' : 'unallocated';
}

/** A bounded LRU cache of tables keyed by host offset. */
export class TableCache {
  private readonly map = new Map<number, Buffer>();
  constructor(private readonly capacity: number) {}

  get(offset: number): Buffer | undefined {
    const t = this.map.get(offset);
    if (t) {
      this.map.delete(offset);
      this.map.set(offset, t);
    }
    return t;
  }

  set(offset: number, table: Buffer): void {
    this.map.set(offset, table);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next().value as number;
      this.map.delete(oldest);
    }
  }
}
