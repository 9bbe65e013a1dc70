// The library's image-level operations behind `ferry image info / check / map / checksum`: each
// opens nothing itself (it takes an opened DiskImage) and returns one plain document that the CLI
// prints as JSON or renders as text.
import { FerryError } from '../errors.js';
import { checksumVirtual, type ChecksumResult } from '../pipeline/checksum.js';
import { deepCheck } from '../pipeline/deep-check.js';
import { extents, MAP_WINDOW, type Extent } from './extents.js';
import { readPartitionTable, type PartitionTable } from './partitions.js';
import type { CheckProblem, CheckReport, DiskImage, ExtentKind, ImageInfo } from './types.js';

export interface InfoDocument extends ImageInfo {
  image: string;
  /** Virtual bytes per extent kind (data / zero / unallocated), from the map. */
  extents: Record<ExtentKind, number>;
  /** Virtual bytes stored in compressed clusters/grains. */
  compressedBytes: number;
  partitionTable: PartitionTable;
}

/** Everything `ferry image info` shows: the driver's facts, extent totals and the partition table. */
export async function describeImage(image: DiskImage): Promise<InfoDocument> {
  const info = await image.info();
  const totals: Record<ExtentKind, number> = { data: 0, zero: 0, unallocated: 0 };
  let compressedBytes = 0;
  for (let pos = 0; pos < image.virtualSize; pos += MAP_WINDOW) {
    for (const s of await image.map(pos, Math.min(MAP_WINDOW, image.virtualSize - pos))) {
      totals[s.kind] += s.length;
      if (s.source.type === 'compressed') compressedBytes += s.length;
    }
  }
  let partitionTable: PartitionTable;
  try {
    partitionTable = await readPartitionTable(image);
  } catch (err) {
    // The first sectors cannot be read (a damaged image): say so instead of failing `info`.
    const why = err instanceof FerryError ? err.message : String(err);
    partitionTable = { type: 'none', sectorSize: 512, partitions: [], warnings: [`the partition table cannot be read: ${why}`] };
  }
  return { image: image.name, ...info, extents: totals, compressedBytes, partitionTable };
}

export interface CheckDocument extends CheckReport {
  image: string;
  /** Present with --deep: every allocated unit was read and decoded (or the first failure). */
  deep?: { ok: true; dataBytes: number } | { ok: false; guestOffset: number; error: ReturnType<FerryError['toJSON']> };
}

export interface CheckImageOptions {
  deep?: boolean;
  onProgress?: (position: number, total: number) => void;
}

/**
 * Structural check, plus with `deep` a full read of every allocated unit. A deep failure makes the
 * verdict 'corrupt' and is listed first among the problems with its guest offset.
 */
export async function checkImage(image: DiskImage, opts: CheckImageOptions = {}): Promise<CheckDocument> {
  const report = await image.check();
  const doc: CheckDocument = { image: image.name, ...report, problems: [...report.problems] };
  if (!opts.deep) return doc;
  // Reading a structurally corrupt image may fail on the same damage; the deep pass still names
  // the first guest offset that cannot be read.
  const result = await deepCheck(image, { onProgress: (p) => opts.onProgress?.(p.position, p.total) });
  if (result.ok) {
    doc.deep = { ok: true, dataBytes: result.dataBytes };
  } else {
    doc.deep = { ok: false, guestOffset: result.guestOffset, error: result.error.toJSON() };
    const problem: CheckProblem = {
      severity: 'corruption',
      message: `deep check: ${result.error.message}`,
      guestOffset: result.guestOffset,
    };
    const host = result.error.details?.hostOffset;
    if (typeof host === 'number') problem.offset = host;
    doc.problems.unshift(problem);
    doc.corruptions += 1;
    doc.verdict = 'corrupt';
  }
  return doc;
}

export interface MapDocument {
  image: string;
  virtualSize: number;
  extents: Extent[];
}

/** The merged data / zero / unallocated extents of the whole disk. */
export async function mapImage(image: DiskImage): Promise<MapDocument> {
  const list: Extent[] = [];
  for await (const e of extents(image)) list.push(e);
  return { image: image.name, virtualSize: image.virtualSize, extents: list };
}

export interface ChecksumDocument extends ChecksumResult {
  image: string;
  format: string;
  virtualSize: number;
  algorithm: 'sha256';
}

/** SHA-256 of the virtual content in one streaming pass. */
export async function checksumImage(image: DiskImage, onProgress?: (position: number, total: number) => void): Promise<ChecksumDocument> {
  const r = await checksumVirtual(image, onProgress ? { onProgress: (position) => onProgress(position, image.virtualSize) } : {});
  return { image: image.name, format: image.format, virtualSize: image.virtualSize, algorithm: 'sha256', ...r };
}
