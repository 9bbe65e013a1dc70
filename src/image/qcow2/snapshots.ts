// qcow2 internal snapshots: parsing of the snapshot table (variable-length entries: L1 location,
// id, name, dates, VM state size, extra data with the snapshot's disk size). Only the active L1 is
// read for the disk content; snapshot L1 tables are walked by check().
import { corrupt } from '../../errors.js';
import { readExact, type ByteSource } from '../../io/byte-source.js';
import type { SnapshotInfo } from '../types.js';
import { u64, type Qcow2Header } from './header.js';

const MAX_EXTRA_DATA = 1024;
const MAX_TABLE_BYTES = 64 * 1024 * 1024;

export interface Qcow2Snapshot {
  index: number;
  /** Host offset of this entry in the snapshot table. */
  entryOffset: number;
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  vmStateSize: number;
  virtualSize?: number;
  extraDataSize: number;
}

export interface SnapshotTable {
  snapshots: Qcow2Snapshot[];
  /** Bytes the table occupies. */
  size: number;
}

/** Reads and validates the snapshot table (qemu refuses to open images whose table is unreadable). */
export async function readSnapshots(src: ByteSource, h: Qcow2Header): Promise<SnapshotTable> {
  const snapshots: Qcow2Snapshot[] = [];
  let pos = h.snapshotsOffset;
  for (let i = 0; i < h.nbSnapshots; i++) {
    const entryOffset = pos;
    const fixed = await readExact(src, pos, 40, `snapshot table entry ${i}`);
    const idSize = fixed.readUInt16BE(12);
    const nameSize = fixed.readUInt16BE(14);
    const extraDataSize = fixed.readUInt32BE(36);
    if (extraDataSize > MAX_EXTRA_DATA) {
      throw corrupt(`${src.name}: snapshot table entry ${i} at offset ${pos} has ${extraDataSize} bytes of extra data (at most ${MAX_EXTRA_DATA})`, {
        field: 'snapshot extra_data_size',
        offset: pos,
      });
    }
    const rest = await readExact(src, pos + 40, extraDataSize + idSize + nameSize, `snapshot table entry ${i}`);
    const extra = rest.subarray(0, extraDataSize);
    const sn: Qcow2Snapshot = {
      index: i,
      entryOffset,
      l1TableOffset: u64(fixed, 0),
      l1Size: fixed.readUInt32BE(8),
      dateSec: fixed.readUInt32BE(16),
      dateNsec: fixed.readUInt32BE(20),
      vmClockNsec: u64(fixed, 24),
      vmStateSize: fixed.readUInt32BE(32),
      extraDataSize,
      id: rest.subarray(extraDataSize, extraDataSize + idSize).toString('utf8'),
      name: rest.subarray(extraDataSize + idSize).toString('utf8'),
    };
    if (extraDataSize >= 8) sn.vmStateSize = u64(extra, 0);
    if (extraDataSize >= 16) sn.virtualSize = u64(extra, 8);
    snapshots.push(sn);
    pos += Math.ceil((40 + extraDataSize + idSize + nameSize) / 8) * 8;
    if (pos - h.snapshotsOffset > MAX_TABLE_BYTES) {
      throw corrupt(`${src.name}: the snapshot table at ${h.snapshotsOffset} is larger than ${MAX_TABLE_BYTES} bytes`, {
        field: 'nb_snapshots',
        offset: h.snapshotsOffset,
      });
    }
  }
  return { snapshots, size: pos - h.snapshotsOffset };
}

export function snapshotInfo(sn: Qcow2Snapshot): SnapshotInfo {
  const out: SnapshotInfo = { id: sn.id, name: sn.name, date: sn.dateSec, vmStateSize: sn.vmStateSize };
  if (sn.virtualSize !== undefined) out.virtualSize = sn.virtualSize;
  return out;
}
