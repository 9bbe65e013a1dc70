// Ferry's library API: everything the CLI does is available here. Open an image by content
// (openImage), read it (readVirtual, streamVirtual), map it (extents), check it (checkImage), hash it
// (checksumImage), and describe it (describeImage). Errors are FerryError values with stable codes.
//
// Example:
//   const img = await openImage('disk.vmdk');
//   try { console.log((await checksumImage(img)).sha256); } finally { await img.close(); }
export { FerryError, ErrorCodes, ExitCode, type ErrorCode } from './errors.js';
export { FileSource, SliceSource, type ByteSource, type ByteRange } from './io/byte-source.js';
export { openImage, detect, DEFAULT_MAX_CHAIN_DEPTH } from './image/open.js';
export { readVirtual, UnitCache } from './image/read.js';
export { extents, extentTotals, type Extent } from './image/extents.js';
export { readPartitionTable, type Partition, type PartitionTable } from './image/partitions.js';
export {
  describeImage,
  checkImage,
  mapImage,
  checksumImage,
  type InfoDocument,
  type CheckDocument,
  type MapDocument,
  type ChecksumDocument,
} from './image/inspect.js';
export { streamVirtual, type VirtualChunk, type StreamOptions } from './pipeline/virtual-stream.js';
export { checksumVirtual } from './pipeline/checksum.js';
export { deepCheck } from './pipeline/deep-check.js';
export type * from './image/types.js';
