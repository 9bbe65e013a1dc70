// qcow2 structural check with the verdicts of `qemu-img check` (clean / leaks only / corrupt):
// refcounts are rebuilt from the header, the active and snapshot L1/L2 tables, the snapshot table,
// the refcount table and blocks and the bitmaps, then compared with the stored ones (stored >
// computed = leak, stored < computed = corruption), and the COPIED flags of the active tables are
// verified. Memory is bounded by the file size (one byte per host cluster plus an overflow map);
// work on snapshot tables is bounded too, so hostile images cannot make the check run forever.
import { FerryError } from '../../errors.js';
import { readUpTo } from '../../io/byte-source.js';
import type { CheckProblem, CheckReport } from '../types.js';
import {
  COPIED_HI,
  L1_RESERVED_HI,
  L1_RESERVED_LO,
  L2_STD_RESERVED_HI,
  L2_STD_RESERVED_LO,
  REFT_RESERVED_LO,
  decodeL2,
  tableOffset,
  word,
  type L2Entry,
} from './entries.js';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAX_L1_BYTES, u64 } from './header.js';
import type { Qcow2Image } from './image.js';
import { REFCOUNT_UNREADABLE } from './refcounts.js';

/** Problems kept in the report (the counts are complete). */
const MAX_PROBLEMS = 100;
/** Host clusters a check handles (1 byte each in memory). */
const MAX_CHECK_CLUSTERS = 2 ** 27;

/** Computed refcounts per host cluster: a byte each, with an overflow map for counts ≥ 255. */
class ComputedRefcounts {
  private readonly bytes: Uint8Array;
  private readonly big = new Map<number, number>();
  /** Logical size (grows by one for references to the partial cluster just past the end). */
  nb: number;

  constructor(nbClusters: number) {
    this.nb = nbClusters;
    this.bytes = new Uint8Array(nbClusters + 1);
  }

  get(k: number): number {
    const b = this.bytes[k] ?? 0;
    return b === 255 ? (this.big.get(k) ?? 255) : b;
  }

  set(k: number, v: number): void {
    if (k >= this.nb) this.nb = k + 1;
    if (v >= 255) {
      this.bytes[k] = 255;
      this.big.set(k, v);
    } else {
      this.bytes[k] = v;
      this.big.delete(k);
    }
  }
}

/** True when the L2 entry at byte `at` is all zeros (unallocated, nothing to count or verify). */
function isEmptyEntry(table: Buffer, at: number, size: number): boolean {
  for (let i = at; i < at + size; i += 4) if (table.readUInt32BE(i) !== 0) return false;
  return true;
}

interface L2Ref {
  /** How many L1 entries (active and snapshots) point to this table. */
  times: number;
  /** References from the active L1 (for the allocation statistics and COPIED checks). */
  active: number;
  /** First referencing L1 index and table, for messages. */
  l1Index: number;
  owner: string;
}

class Checker {
  readonly problems: CheckProblem[] = [];
  corruptions = 0;
  leaks = 0;
  /** Highest byte referenced by any structure (for the truncation report). */
  maxReferencedEnd = 0;
  readonly stats = { allocatedClusters: 0, compressedClusters: 0, fragmentedClusters: 0 };
  private readonly cs: number;
  private readonly fileSize: number;
  readonly computed: ComputedRefcounts;

  constructor(private readonly img: Qcow2Image) {
    this.cs = img.header.clusterSize;
    this.fileSize = img.src.size;
    this.computed = new ComputedRefcounts(img.fileClusters);
  }

  problem(p: CheckProblem): void {
    if (p.severity === 'corruption') this.corruptions++;
    else if (p.severity === 'leak') this.leaks++;
    if (this.problems.length < MAX_PROBLEMS) this.problems.push(p);
  }

  /** Adds a reference to every host cluster of [offset, offset+size), as qemu's inc_refcounts_imrt. */
  inc(offset: number, size: number, field: string, times = 1): void {
    if (size <= 0) return;
    const end = offset + size;
    if (end > this.maxReferencedEnd) this.maxReferencedEnd = end;
    if (!Number.isSafeInteger(end) || end - this.fileSize >= this.cs) {
      for (let i = 0; i < times; i++) {
        this.problem({
          severity: 'corruption',
          message: `${field} at ${offset} (${size} bytes) lies beyond the end of the file (${this.fileSize} bytes) by one cluster or more`,
          offset,
          field,
        });
      }
      return;
    }
    const max = this.img.refcounts.max;
    const last = Math.floor((end - 1) / this.cs);
    for (let k = Math.floor(offset / this.cs); k <= last; k++) {
      const c = this.computed.get(k);
      const room = Math.max(0, Math.min(times, max - c));
      if (room < times) {
        for (let i = room; i < times; i++) {
          this.problem({
            severity: 'corruption',
            message: `refcount overflow for the cluster at ${k * this.cs} (${field}): more references than ${this.img.header.refcountBits}-bit refcounts can hold`,
            offset: k * this.cs,
            field,
          });
        }
      }
      this.computed.set(k, c + room);
    }
  }

  async run(): Promise<void> {
    const img = this.img;
    const h = img.header;
    if (h.incompatible & INCOMPAT_CORRUPT) {
      this.problem({ severity: 'warning', message: 'the image is marked corrupt (incompatible feature bit 1)', field: 'incompatible_features' });
    }
    if (h.incompatible & INCOMPAT_DIRTY) {
      this.problem({
        severity: 'warning',
        message: 'the image is dirty (lazy refcounts were not written back): refcount mismatches below may come from that',
        field: 'incompatible_features',
      });
    }
    for (const sn of img.snapshotTable.snapshots) {
      if (h.version === 3 && sn.extraDataSize < 16) {
        this.problem({
          severity: 'corruption',
          message: `snapshot table entry ${sn.index} (id ${sn.id}) is incomplete: a v3 image needs 16 bytes of extra data, it has ${sn.extraDataSize}`,
          offset: sn.entryOffset,
          field: 'snapshot extra_data_size',
        });
      }
    }

    this.inc(0, this.cs, 'header');
    const l2Refs = new Map<number, L2Ref>();
    await this.walkL1(h.l1TableOffset, h.l1Size, 'active L1 table', true, l2Refs);
    // Snapshot L1 tables: together they normally fit in the file; more means hostile overlap.
    let budget = this.fileSize + MAX_L1_BYTES;
    for (const sn of img.snapshotTable.snapshots) {
      const owner = `L1 table of snapshot ${sn.id} (${sn.name})`;
      if (!Number.isSafeInteger(sn.l1TableOffset) || sn.l1TableOffset % this.cs !== 0) {
        this.problem({ severity: 'corruption', message: `${owner}: offset ${sn.l1TableOffset} is not cluster aligned`, offset: sn.entryOffset, field: 'snapshot l1_table_offset' });
        continue;
      }
      if (sn.l1Size * 8 > MAX_L1_BYTES) {
        this.problem({ severity: 'corruption', message: `${owner}: ${sn.l1Size} entries is too large`, offset: sn.entryOffset, field: 'snapshot l1_size' });
        continue;
      }
      budget -= sn.l1Size * 8;
      if (budget < 0) {
        this.problem({
          severity: 'corruption',
          message: `the snapshot L1 tables together are larger than the file; stopped walking them at snapshot ${sn.id}`,
          offset: sn.entryOffset,
          field: 'snapshot l1_size',
        });
        break;
      }
      await this.walkL1(sn.l1TableOffset, sn.l1Size, owner, false, l2Refs);
    }
    for (const [offset, ref] of l2Refs) await this.walkL2(offset, ref);

    this.inc(h.snapshotsOffset, img.snapshotTable.size, 'snapshot table');
    this.inc(h.refcountTableOffset, h.refcountTableClusters * this.cs, 'refcount table');
    await this.walkBitmaps();
    await this.checkRefblocks();
    const highest = await this.compare();
    await this.checkCopiedFlags();
    this.imageEndOffset = (highest + 1) * this.cs;
  }

  imageEndOffset = 0;

  private async walkL1(offset: number, size: number, owner: string, active: boolean, l2Refs: Map<number, L2Ref>): Promise<void> {
    this.inc(offset, size * 8, owner);
    if (size === 0 || offset >= this.fileSize) return;
    const l1 = await readUpTo(this.img.src, offset, size * 8);
    for (let i = 0; i + 8 <= l1.length; i += 8) {
      const [hi, lo] = word(l1, i);
      if (hi === 0 && lo === 0) continue;
      const l1Index = i / 8;
      const entryAt = offset + i;
      if (hi & L1_RESERVED_HI || lo & L1_RESERVED_LO) {
        this.problem({ severity: 'corruption', message: `${owner} entry ${l1Index} has reserved bits set`, offset: entryAt, field: 'L1 entry' });
      }
      const l2 = tableOffset(hi, lo);
      if (l2 % this.cs !== 0) {
        // Still referenced (qemu counts it), but its contents are not walked.
        this.inc(l2, this.cs, `L2 table (${owner} entry ${l1Index})`);
        this.problem({
          severity: 'corruption',
          message: `${owner} entry ${l1Index}: L2 table offset ${l2} is not cluster aligned`,
          offset: entryAt,
          field: 'L1 entry',
        });
        continue;
      }
      const ref = l2Refs.get(l2);
      if (ref) {
        ref.times++;
        if (active) ref.active++;
      } else {
        l2Refs.set(l2, { times: 1, active: active ? 1 : 0, l1Index, owner });
      }
    }
  }

  /** Walks one L2 table once, counting its references `ref.times` times (qemu walks it per reference). */
  private async walkL2(offset: number, ref: L2Ref): Promise<void> {
    const h = this.img.header;
    const cs = this.cs;
    const what = `L2 table at ${offset} (${ref.owner} entry ${ref.l1Index})`;
    this.inc(offset, cs, what, ref.times);
    if (!Number.isSafeInteger(offset) || offset >= this.fileSize || offset + cs - this.fileSize >= cs) return;
    const table = Buffer.alloc(cs);
    (await readUpTo(this.img.src, offset, cs)).copy(table);
    const t = ref.times;
    let nextContiguous = 0;
    for (let i = 0; i < h.l2Entries; i++) {
      if (isEmptyEntry(table, i * h.l2EntrySize, h.l2EntrySize)) continue;
      const e = decodeL2(h, table, i);
      const entryAt = offset + i * h.l2EntrySize;
      const guestOffset = ref.active ? (ref.l1Index * h.l2Entries + i) * cs : undefined;
      const corrupt = (message: string) => {
        for (let k = 0; k < t; k++) {
          this.problem({ severity: 'corruption', message: `${what}, entry ${i}: ${message}`, offset: entryAt, field: 'L2 entry', ...(guestOffset !== undefined ? { guestOffset } : {}) });
        }
      };
      if (e.type !== 'compressed' && (e.hi & L2_STD_RESERVED_HI || e.lo & L2_STD_RESERVED_LO)) corrupt('reserved bits are set');
      switch (e.type) {
        case 'compressed':
          if (e.hi & COPIED_HI) corrupt('the COPIED flag is set on a compressed cluster');
          if (h.extendedL2 && (e.allocMask || e.zeroMask)) {
            corrupt('a compressed cluster has a non-zero subcluster bitmap');
            break;
          }
          this.inc(e.offset, e.csize, `compressed data (${what}, entry ${i})`, t);
          if (ref.active) {
            this.stats.allocatedClusters += ref.active;
            this.stats.compressedClusters += ref.active;
            this.stats.fragmentedClusters += ref.active;
          }
          break;
        case 'normal':
        case 'zero-alloc': {
          if ((e.zeroMask & e.allocMask) !== 0) corrupt('the subcluster bitmap marks subclusters both allocated and zero');
          if (!Number.isSafeInteger(e.offset) || e.offset % cs !== 0) corrupt(`host cluster offset ${e.offset} is not cluster aligned`);
          if (ref.active) {
            this.stats.allocatedClusters += ref.active;
            if (nextContiguous && e.offset !== nextContiguous) this.stats.fragmentedClusters += ref.active;
            nextContiguous = e.offset + cs;
          }
          this.inc(e.offset, cs, `data cluster (${what}, entry ${i})`, t);
          break;
        }
        case 'unallocated':
          if (h.extendedL2 && e.allocMask !== 0) corrupt('an unallocated cluster has subclusters marked allocated');
          break;
        default:
          break;
      }
    }
  }

  private async walkBitmaps(): Promise<void> {
    const bm = this.img.header.bitmaps;
    if (!bm) return;
    const src = this.img.src;
    const dirOk =
      Number.isSafeInteger(bm.directoryOffset) &&
      bm.directoryOffset % this.cs === 0 &&
      bm.directorySize <= 64 * 1024 * 1024 &&
      bm.directoryOffset + bm.directorySize <= this.fileSize;
    if (!dirOk) {
      this.problem({ severity: 'corruption', message: `the bitmap directory (${bm.directorySize} bytes at ${bm.directoryOffset}) cannot be read`, offset: bm.directoryOffset, field: 'bitmaps extension' });
      return;
    }
    const dir = await readUpTo(src, bm.directoryOffset, bm.directorySize);
    this.inc(bm.directoryOffset, bm.directorySize, 'bitmap directory');
    let pos = 0;
    for (let n = 0; n < bm.count && pos + 24 <= dir.length; n++) {
      const tableOff = u64(dir, pos);
      const tableSize = dir.readUInt32BE(pos + 8);
      const nameSize = dir.readUInt16BE(pos + 18);
      const extra = dir.readUInt32BE(pos + 20);
      const name = dir.subarray(pos + 24 + extra, pos + 24 + extra + nameSize).toString('utf8');
      pos += Math.ceil((24 + extra + nameSize) / 8) * 8;
      const field = `bitmap '${name}' table`;
      if (!Number.isSafeInteger(tableOff) || tableOff % this.cs !== 0 || tableOff + tableSize * 8 > this.fileSize) {
        this.problem({ severity: 'corruption', message: `${field} (${tableSize} entries at ${tableOff}) is misaligned or past the end of the file`, offset: tableOff, field });
        continue;
      }
      this.inc(tableOff, tableSize * 8, field);
      const table = await readUpTo(src, tableOff, tableSize * 8);
      for (let i = 0; i + 8 <= table.length; i += 8) {
        const [hi, lo] = word(table, i);
        const off = tableOffset(hi, lo);
        const bad = hi & 0xff000000 || lo & 0x1fe || (off !== 0 && (lo & 1 || off % this.cs !== 0));
        if (bad) {
          this.problem({ severity: 'corruption', message: `${field} entry ${i / 8} is invalid`, offset: tableOff + i, field });
          continue;
        }
        if (off !== 0) this.inc(off, this.cs, `${field} entry ${i / 8}`);
      }
    }
  }

  private async checkRefblocks(): Promise<void> {
    const rc = this.img.refcounts;
    const table = await rc.loadTable();
    for (let i = 0; i * 8 + 8 <= table.length; i++) {
      const [hi, lo] = word(table, i * 8);
      if (hi === 0 && lo === 0) continue;
      const at = this.img.header.refcountTableOffset + i * 8;
      if (lo & REFT_RESERVED_LO) {
        this.problem({ severity: 'corruption', message: `refcount table entry ${i} has reserved bits set`, offset: at, field: 'refcount table entry' });
        continue;
      }
      const off = hi * 2 ** 32 + (lo - (lo & 0x1ff));
      if (off % this.cs !== 0) {
        this.problem({ severity: 'corruption', message: `refcount block ${i} at ${off} is not cluster aligned`, offset: at, field: 'refcount table entry' });
        continue;
      }
      const cluster = Math.floor(off / this.cs);
      if (!Number.isSafeInteger(off) || cluster >= this.computed.nb) {
        if (off + this.cs > this.maxReferencedEnd) this.maxReferencedEnd = Number.isSafeInteger(off) ? off + this.cs : this.maxReferencedEnd;
        this.problem({ severity: 'corruption', message: `refcount block ${i} at ${off} lies outside the file (${this.fileSize} bytes)`, offset: at, field: 'refcount table entry' });
        continue;
      }
      this.inc(off, this.cs, `refcount block ${i}`);
      const c = this.computed.get(cluster);
      if (c !== 1) {
        this.problem({
          severity: 'corruption',
          message: `refcount block ${i} at ${off} is referenced ${c} times (it overlaps other metadata or data)`,
          offset: off,
          field: 'refcount table entry',
        });
      }
    }
  }

  /** Compares stored and computed refcounts; returns the highest used cluster index. */
  private async compare(): Promise<number> {
    const rc = this.img.refcounts;
    let highest = 0;
    const nb = this.computed.nb;
    for (let blockIndex = 0; blockIndex * rc.perBlock < nb; blockIndex++) {
      const first = blockIndex * rc.perBlock;
      const count = Math.min(rc.perBlock, nb - first);
      const block = blockIndex < rc.tableEntries ? await rc.block(blockIndex) : undefined;
      for (let j = 0; j < count; j++) {
        const k = first + j;
        const computed = this.computed.get(k);
        if (block === 'unreadable') {
          if (computed > 0) {
            this.problem({ severity: 'corruption', message: `cannot get the refcount of the cluster at ${k * this.cs}: its refcount block is misaligned`, offset: k * this.cs, field: 'refcount' });
          }
          continue;
        }
        const stored = block ? rc.decode(block, j) : 0;
        if (stored > 0 || computed > 0) highest = k;
        if (stored === computed) continue;
        if (stored < computed) {
          this.problem({
            severity: 'corruption',
            message: `the cluster at ${k * this.cs} has refcount ${stored} but is referenced ${computed} times`,
            offset: k * this.cs,
            field: 'refcount',
          });
        } else {
          this.problem({
            severity: 'leak',
            message: `leaked cluster at ${k * this.cs}: refcount ${stored}, referenced ${computed} times`,
            offset: k * this.cs,
            field: 'refcount',
          });
        }
      }
    }
    return highest;
  }

  /** The COPIED flag of active L1/L2 entries must be set exactly when the stored refcount is 1. */
  private async checkCopiedFlags(): Promise<void> {
    const img = this.img;
    const h = img.header;
    if (h.l1TableOffset >= this.fileSize) return;
    const l1 = await readUpTo(img.src, h.l1TableOffset, h.l1Size * 8);
    for (let i = 0; i + 8 <= l1.length; i += 8) {
      const [hi, lo] = word(l1, i);
      const l2 = tableOffset(hi, lo);
      if (l2 === 0) continue;
      const l1Index = i / 8;
      const refcount = await img.refcounts.get(Math.floor(l2 / this.cs));
      if (refcount === REFCOUNT_UNREADABLE) continue;
      if ((refcount === 1) !== ((hi & COPIED_HI) !== 0)) {
        this.problem({
          severity: 'corruption',
          message: `active L1 entry ${l1Index}: the COPIED flag is ${hi & COPIED_HI ? 'set' : 'clear'} but the L2 table's refcount is ${refcount}`,
          offset: h.l1TableOffset + i,
          field: 'L1 entry',
        });
      }
      if (l2 % this.cs !== 0 || l2 >= this.fileSize) continue;
      const table = Buffer.alloc(this.cs);
      (await readUpTo(img.src, l2, this.cs)).copy(table);
      for (let j = 0; j < h.l2Entries; j++) {
        if (isEmptyEntry(table, j * h.l2EntrySize, h.l2EntrySize)) continue;
        const e: L2Entry = decodeL2(h, table, j);
        if (e.type !== 'normal' && e.type !== 'zero-alloc') continue;
        const rc = await img.refcounts.get(Math.floor(e.offset / this.cs));
        if (rc === REFCOUNT_UNREADABLE) continue;
        if ((rc === 1) !== ((e.hi & COPIED_HI) !== 0)) {
          this.problem({
            severity: 'corruption',
            message: `active L2 table at ${l2}, entry ${j}: the COPIED flag is ${e.hi & COPIED_HI ? 'set' : 'clear'} but the data cluster's refcount is ${rc}`,
            offset: l2 + j * h.l2EntrySize,
            guestOffset: (l1Index * h.l2Entries + j) * this.cs,
            field: 'L2 entry',
          });
        }
      }
    }
  }
}

/** Runs the check; never throws for damage (an unexpected failure is reported as corruption). */
export async function checkImage(img: Qcow2Image): Promise<CheckReport> {
  const h = img.header;
  const fileSize = img.src.size;
  const base = { format: 'qcow2' as const };
  if (img.fileClusters > MAX_CHECK_CLUSTERS) {
    return {
      ...base,
      verdict: 'corrupt',
      corruptions: 1,
      leaks: 0,
      problems: [
        {
          severity: 'corruption',
          message: `the file has ${img.fileClusters} clusters of ${h.clusterSize} bytes, more than Ferry checks (${MAX_CHECK_CLUSTERS})`,
          field: 'cluster_bits',
        },
      ],
    };
  }
  const c = new Checker(img);
  try {
    await c.run();
  } catch (err) {
    const e = err instanceof FerryError ? err : undefined;
    c.problem({ severity: 'corruption', message: `the check could not complete: ${e ? e.message : String(err)}`, field: 'check' });
  }
  const problems = c.problems.slice();
  // Truncation: structures point past the end of the file.
  if (c.maxReferencedEnd - fileSize >= h.clusterSize) {
    problems.unshift({
      severity: 'corruption',
      message: `the file is truncated: its metadata references bytes up to ${c.maxReferencedEnd}, but the file has ${fileSize} bytes`,
      offset: fileSize,
      field: 'file size',
    });
    if (problems.length > MAX_PROBLEMS) problems.pop();
  }
  const verdict = c.corruptions > 0 ? 'corrupt' : c.leaks > 0 ? 'leaks' : 'clean';
  return {
    ...base,
    verdict,
    corruptions: c.corruptions,
    leaks: c.leaks,
    problems,
    stats: {
      ...c.stats,
      totalClusters: Math.ceil(h.virtualSize / h.clusterSize),
      imageEndOffset: c.imageEndOffset,
      fileSize,
      ...(c.maxReferencedEnd > fileSize ? { expectedMinimumSize: c.maxReferencedEnd } : {}),
    },
  };
}
