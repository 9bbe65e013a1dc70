// The registry of image writers: picks the writer for a WriteSpec and checks the combination of
// options before anything is written (a wrong option is a USAGE error, not a half-written file).
import { FerryError } from '../errors.js';
import { Qcow2Writer } from './qcow2/writer.js';
import { RawWriter } from './raw-writer.js';
import { VhdWriter } from './vhd/writer.js';
import { VmdkWriter } from './vmdk/writer.js';
import { badSpec, type ImageWriter, type WriteSpec, type WriterContext } from './writer.js';
import type { Sink } from '../io/sink.js';

/** Subformat names accepted per format (qemu's names), the first one being the default. */
export const WRITE_SUBFORMATS: Record<string, readonly string[]> = {
  raw: ['raw'],
  qcow2: ['v3', 'v2'],
  vpc: ['dynamic', 'fixed'],
  vmdk: ['streamOptimized', 'monolithicSparse'],
};

export function createWriter(ctx: WriterContext): ImageWriter {
  const { spec, sink } = ctx;
  if (spec.alignSize !== undefined && (!Number.isSafeInteger(spec.alignSize) || spec.alignSize < 512 || spec.alignSize % 512 !== 0)) {
    throw badSpec(`--align-size must be a positive multiple of 512 bytes, not ${spec.alignSize}`, 'For example --align-size 1M (what Azure requires).');
  }
  if (spec.compress && spec.format !== 'qcow2' && !(spec.format === 'vmdk' && spec.compress === 'zlib')) {
    throw badSpec(`--compress is not available for ${spec.format} output`, 'Compression is a qcow2 option (zlib or zstd); VMDK streamOptimized is always zlib-compressed.');
  }
  if (spec.compressLevel !== undefined) {
    const max = spec.compress === 'zstd' ? 19 : 9;
    if (!Number.isInteger(spec.compressLevel) || spec.compressLevel < 1 || spec.compressLevel > max) {
      throw badSpec(`compression level ${spec.compressLevel} is out of range`, `Give a level from 1 (fastest) to ${max} (smallest) for ${spec.compress ?? 'zlib'}.`);
    }
    if (!spec.compress && !(spec.format === 'vmdk' && (spec.subformat ?? 'streamOptimized') === 'streamOptimized')) {
      throw badSpec('--level applies to compressed output only', 'Add --compress zlib|zstd (qcow2), or drop --level.');
    }
  }
  if (spec.exactSize && spec.format !== 'vpc') {
    throw badSpec('--exact-size applies to VHD (vpc) output only', 'Other formats always keep the exact size (rounded up to whole 512-byte sectors).');
  }
  if (spec.targetIsZero && !sink.isBlockDevice) {
    throw badSpec('--target-is-zero applies when writing raw onto a block device', 'Drop it: a new file always reads as zeros.');
  }
  if (sink.isBlockDevice && spec.format !== 'raw') {
    throw new FerryError('TARGET_NOT_WRITABLE', `${sink.path}: Ferry writes only raw disks onto block devices, not ${spec.format} images`, {
      remedy: 'Use --to raw to put the disk onto the device, or write the image to a file.',
    });
  }
  if (ctx.resumeAt && spec.format !== 'raw') throw badSpec(`a ${spec.format} output cannot be resumed`, 'Only raw outputs (import targets) resume; convert again from the start.');
  switch (spec.format) {
    case 'raw':
      if (spec.subformat && spec.subformat !== 'raw') throw badSpec(`raw has no subformat '${spec.subformat}'`, 'Drop --subformat.');
      return new RawWriter(ctx);
    case 'qcow2':
      return new Qcow2Writer(ctx);
    case 'vpc':
      return new VhdWriter(ctx);
    case 'vmdk':
      return new VmdkWriter(ctx);
  }
}

/**
 * The bytes at the start of `spec`'s output that its writer rewrites at the end (ImageWriter.
 * headBytes: header and tables), known before anything is written — e.g. to size the first part
 * of an upload. The writer is built against a sink that refuses all I/O.
 */
export function headBytesFor(spec: WriteSpec, sourceSize: number, path: string): number {
  const refuse = (): Promise<never> => Promise.reject(new FerryError('INTERNAL', 'headBytesFor: the measuring writer tried to write', { remedy: 'This is a bug in Ferry; please report it.' }));
  const sink: Sink = { path, isBlockDevice: false, deviceSize: undefined, write: refuse, writev: refuse, truncate: refuse, reserve: refuse, commit: refuse, abort: () => Promise.resolve() };
  return createWriter({ sink, spec, sourceSize }).headBytes;
}
