// The writing side of the image model: what a conversion asks for (WriteSpec), and the interface
// every format's writer implements. A writer receives the disk's non-zero units in increasing
// virtual order (already zero-detected and, for compressed outputs, compressed on the worker pool)
// and lays them out in its format; ranges it is not given read as zero. `finish()` writes the
// metadata that can only be known at the end (tables, footers, refcounts).
import { FerryError } from '../errors.js';
import type { Sink } from '../io/sink.js';
import type { UnitEncoding } from '../pipeline/encode-job.js';
import type { ImageFormat } from './types.js';

export type CompressionCodec = 'zlib' | 'zstd';

export interface WriteSpec {
  format: ImageFormat;
  /**
   * qcow2: 'v3' (default) or 'v2' (compat=0.10); vpc: 'dynamic' (default) or 'fixed';
   * vmdk: 'streamOptimized' (default) or 'monolithicSparse'; raw: none.
   */
  subformat?: string;
  /** qcow2: compress clusters (zlib or zstd). VMDK streamOptimized is always zlib-compressed. */
  compress?: CompressionCodec;
  /** Compression level (zlib 1–9, default 6; zstd 1–19, default 3, as qemu-img). */
  compressLevel?: number;
  /** qcow2 cluster size (512 B – 2 MiB, power of two; default 64 KiB). */
  clusterSize?: number;
  /** vpc: keep the exact virtual size (no CHS rounding). */
  exactSize?: boolean;
  /** Round the virtual size up to a multiple of this (e.g. 1 MiB for clouds that require it). */
  alignSize?: number;
  /** raw onto a block device: the device already reads as zeros, so zero ranges are not written. */
  targetIsZero?: boolean;
}

/** One run of output: `length` virtual bytes at `offset`, raw or as one compressed unit. */
export interface DataRun {
  offset: number;
  length: number;
  /** Raw bytes (`length` of them), or the compressed unit. */
  data: Buffer;
  compressed: boolean;
}

export interface WriteSummary {
  format: ImageFormat;
  subformat: string;
  virtualSize: number;
  /** Bytes of the output file(s). */
  fileSize: number;
}

export interface ImageWriter {
  readonly format: ImageFormat;
  readonly subformat: string;
  /** Virtual size of the output (may exceed the source's: CHS rounding, alignment). */
  readonly virtualSize: number;
  /** Zero detection and compression granularity; runs start on multiples of it. */
  readonly unitSize: number;
  /** Space is allocated in blocks of this many virtual bytes (VHD: 2 MiB), when larger than a unit. */
  readonly allocationUnit?: number;
  readonly encoding: UnitEncoding;
  /**
   * Bytes at the start of the output the writer may rewrite at any time (header, tables); past
   * them it writes in increasing order only (what lets an upload stream the output).
   */
  readonly headBytes: number;
  /**
   * Writes runs in increasing offset order (each call's runs follow the previous call's). When the
   * promise resolves the runs' buffers are no longer referenced (the caller reuses them).
   */
  write(runs: DataRun[]): Promise<void>;
  /** Writes the remaining metadata; the sink is committed by the caller afterwards. */
  finish(): Promise<WriteSummary>;
}

export const UNCOMPRESSED: UnitEncoding = { codec: 'none', rawAbove: Infinity, padLast: false };

export function badSpec(message: string, remedy: string): FerryError {
  return new FerryError('USAGE', message, { remedy });
}

/** Rounds `n` up to a multiple of `m`. */
export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** Context a writer factory gets. */
export interface WriterContext {
  sink: Sink;
  spec: WriteSpec;
  /** Virtual size of the source disk. */
  sourceSize: number;
  /**
   * raw only: the output already holds the disk's content below this offset (a resumed import):
   * writing continues there and nothing below it is touched.
   */
  resumeAt?: number;
}
