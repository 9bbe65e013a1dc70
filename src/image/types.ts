// The disk-image model every driver implements: a disk is a virtual size, a map of segments
// (where each virtual range's bytes come from: zeros, host bytes, or a compressed unit), a
// structural check, and descriptive info. Reading, extents, checksums and conversion are built
// once on top of `map()` (see read.ts / extents.ts), not in each driver.
import type { ByteSource } from '../io/byte-source.js';

export type ImageFormat = 'raw' | 'qcow2' | 'vpc' | 'vmdk';
export const SUPPORTED_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2', 'vpc', 'vmdk'];

/** What a range of the virtual disk is, in `qemu-img map` terms. */
export type ExtentKind =
  | 'data' // allocated, holds data          (qemu-img map: data=true)
  | 'zero' // allocated/marked as reading zero (qemu-img map: data=false, zero=true, present=true)
  | 'unallocated'; // not allocated anywhere in the chain, reads as zero (present=false)

/** Compression codecs found in images. */
export type Codec =
  | 'deflate' // raw deflate, no header (qcow2 "zlib" clusters)
  | 'zlib' // zlib stream with header (VMDK grains)
  | 'zstd'; // zstd frames (qcow2 compression_type=1)

export type SegmentSource =
  | { type: 'zero' }
  | { type: 'host'; file: ByteSource; offset: number }
  | {
      type: 'compressed';
      file: ByteSource;
      /** Host offset of the compressed bytes. */
      offset: number;
      /** Number of compressed bytes available (an upper bound is fine: decoding stops at unitSize). */
      length: number;
      codec: Codec;
      /** Decompressed size of the whole unit (cluster or grain). */
      unitSize: number;
      /** Where this segment's first byte lies inside the decompressed unit. */
      skip: number;
    };

/** One run of the virtual disk and where its bytes come from. */
export interface Segment {
  /** Virtual offset. */
  offset: number;
  length: number;
  kind: ExtentKind;
  /** 0 = the opened image; 1 = its backing file/parent; … */
  depth: number;
  source: SegmentSource;
}

export interface SnapshotInfo {
  id: string;
  name: string;
  virtualSize?: number;
  /** Seconds since the epoch. */
  date?: number;
  vmStateSize?: number;
}

/** Descriptive facts about an opened image, for `ferry image info`. */
export interface ImageInfo {
  format: ImageFormat;
  /** e.g. qcow2 "v3", vpc "dynamic" | "fixed" | "differencing", vmdk createType. */
  subformat: string;
  virtualSize: number;
  /** Size of the image file(s) on the host, in bytes. */
  fileSize: number;
  /** Host bytes holding data or metadata (excludes holes of sparse files where known). */
  allocatedSize?: number;
  clusterSize?: number;
  /** Codecs used by compressed clusters/grains, if any are present or declared. */
  compression?: string[];
  backing?: { path: string; format?: string; resolvedPath?: string };
  snapshots?: SnapshotInfo[];
  /** Extra files the image consists of (VMDK extents), resolved and confined. */
  files?: string[];
  /** Feature flags and other format-specific facts, e.g. "dirty", "lazy_refcounts", "extended_l2". */
  features?: string[];
  /** Format-specific fields worth showing (refcount width, creator, uuid…). */
  details?: Record<string, unknown>;
  warnings?: string[];
}

export type CheckSeverity = 'corruption' | 'leak' | 'warning';

export interface CheckProblem {
  severity: CheckSeverity;
  message: string;
  /** Host (file) offset the problem lies at, when known. */
  offset?: number;
  /** Virtual (guest) offset affected, when known. */
  guestOffset?: number;
  /** The header/table field at fault, when known. */
  field?: string;
}

export interface CheckReport {
  format: ImageFormat;
  verdict: 'clean' | 'leaks' | 'corrupt';
  corruptions: number;
  leaks: number;
  /** Up to a bounded number of problems, most important first. */
  problems: CheckProblem[];
  /** Counts for the report, e.g. allocated clusters, fragmented clusters. */
  stats?: Record<string, number>;
}

export interface CheckOptions {
  /** Read and decompress every allocated unit (done by the shared deep-check code, not drivers). */
  deep?: boolean;
}

/** An opened disk image (read-only). */
export interface DiskImage {
  readonly format: ImageFormat;
  readonly virtualSize: number;
  /** Host path of the (top) image file. */
  readonly name: string;
  /**
   * Maps [offset, offset+length) of the virtual disk. The returned segments are in order, adjacent,
   * non-empty and cover the range exactly; backing layers are already resolved (depth > 0).
   */
  map(offset: number, length: number): Promise<Segment[]>;
  info(): Promise<ImageInfo>;
  /** Structural check of the metadata (no data decompression). Never throws for damage: reports it. */
  check(): Promise<CheckReport>;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** Force a format instead of detecting it. */
  format?: ImageFormat;
  /** Follow backing files / differencing parents (confined to the image's directory). */
  allowBacking?: boolean;
  /** Maximum backing chain length (default 16). */
  maxChainDepth?: number;
}

/** What a driver's probe sees: the first 64 KiB, the last 1 KiB, and the file size. */
export interface ProbeInput {
  head: Buffer;
  tail: Buffer;
  size: number;
}

/** Services a driver gets when opening: confined file access and backing-chain opening. */
export interface OpenContext {
  /** Host path of the file being opened (for messages and confinement). */
  path: string;
  options: Required<Pick<OpenOptions, 'allowBacking' | 'maxChainDepth'>>;
  /** 0 for the image the user named, 1 for its backing file, … */
  depth: number;
  /**
   * Opens a file referenced by the image (VMDK extent) relative to the image's directory; refuses
   * absolute paths and paths escaping the directory (IMAGE_PATH_REFUSED).
   */
  openReferencedFile(reference: string, what: string): Promise<ByteSource>;
  /**
   * Opens a backing file / parent image. Refused unless allowBacking (IMAGE_BACKING_REFUSED),
   * confined like openReferencedFile, depth-limited (IMAGE_CHAIN_TOO_DEEP).
   */
  openBacking(reference: string, format: ImageFormat | undefined, what: string): Promise<DiskImage>;
}

export interface ImageDriver {
  readonly format: ImageFormat;
  /** 0 = not this format; 100 = certain. */
  probe(input: ProbeInput): number;
  open(src: ByteSource, ctx: OpenContext): Promise<DiskImage>;
}
