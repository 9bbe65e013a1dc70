// The in-memory model of an opened VMDK: its extents laid end to end in the virtual disk (flat
// host ranges, ZERO extents, sparse extents), the descriptor, the files it consists of and an
// optional parent disk. Shared by open (index.ts), map and check (check.ts).
import type { ByteSource } from '../../io/byte-source.js';
import type { DiskImage } from '../types.js';
import type { Descriptor, ExtentLine } from './descriptor.js';
import type { SparseHeader } from './header.js';
import type { SparseExtent } from './sparse.js';

interface ExtentBase {
  /** Virtual byte offset where the extent starts. */
  start: number;
  /** Size in bytes. */
  size: number;
  /** The descriptor line it comes from (absent for a bare sparse file). */
  line?: ExtentLine;
}

export interface FlatExtentRec extends ExtentBase {
  kind: 'flat';
  file: ByteSource;
  /** Byte offset inside the file. */
  fileOffset: number;
}

export interface ZeroExtentRec extends ExtentBase {
  kind: 'zero';
}

export interface SparseExtentRec extends ExtentBase {
  kind: 'sparse';
  sparse: SparseExtent;
  /** The header at offset 0 of the file (differs from sparse.header when a stream footer is used). */
  primary: SparseHeader;
  /** True when the header at offset 0 defers to a stream footer (GD_AT_END). */
  usesFooter: boolean;
}

export type ExtentRec = FlatExtentRec | ZeroExtentRec | SparseExtentRec;

export interface VmdkState {
  /** The file the user named (descriptor file or monolithic sparse file). */
  src: ByteSource;
  name: string;
  createType: string;
  /** Where the descriptor came from: its own file, embedded in a sparse file, or none. */
  descriptorKind: 'file' | 'embedded' | 'none';
  descriptor?: Descriptor;
  extents: ExtentRec[];
  virtualSize: number;
  /** Extent files other than `src`, each once. */
  files: ByteSource[];
  parent?: DiskImage;
  warnings: string[];
}
