// Decoding of one compressed unit (qcow2 cluster, VMDK grain) with bounded output: never more
// than the unit's size is produced, trailing bytes after the stream are ignored (qcow2 pads to
// sectors), and any decoding failure becomes an IMAGE_CORRUPT error naming the host offset.
// decompressInto decodes straight into the caller's buffer (deflate through the native addon's
// inflateInto when it is built, zstd through zstd-napi's streaming context).
import { constants as zc, inflateRawSync, inflateSync } from 'node:zlib';
import { corrupt } from '../errors.js';
import { ferryNative, zstd } from '../lazy-modules.js';
import type { Codec } from './types.js';

let zstdContext: InstanceType<ReturnType<typeof zstd>['DCtx']> | undefined;

function decodeZstd(input: Buffer, unitSize: number, into?: Buffer): Buffer {
  zstdContext ??= new (zstd().DCtx)();
  const dctx = zstdContext;
  dctx.reset(zstd().ResetDirective.sessionOnly);
  const out = into ?? Buffer.alloc(unitSize);
  let produced = 0;
  let consumed = 0;
  // Several frames may follow each other; stop as soon as one unit of output is there.
  while (produced < unitSize && consumed < input.length) {
    const [, wrote, read] = dctx.decompressStream(out.subarray(produced), input.subarray(consumed));
    produced += wrote;
    consumed += read;
    if (wrote === 0 && read === 0) break;
  }
  return out.subarray(0, produced);
}

/**
 * Decompresses one unit. Returns exactly `unitSize` bytes, or throws IMAGE_CORRUPT (`where` names
 * the unit, e.g. "cluster at host offset 0x50000").
 */
export function decompressUnit(codec: Codec, input: Buffer, unitSize: number, where: string): Buffer {
  let out: Buffer;
  try {
    const opts = { finishFlush: zc.Z_SYNC_FLUSH, maxOutputLength: unitSize };
    if (codec === 'deflate') out = inflateRawSync(input, opts);
    else if (codec === 'zlib') out = inflateSync(input, opts);
    else out = decodeZstd(input, unitSize);
  } catch (err) {
    throw corrupt(`${where}: compressed data cannot be decoded (${codec}): ${(err as Error).message}`, {
      codec,
    });
  }
  if (out.length !== unitSize) {
    throw corrupt(`${where}: compressed data decodes to ${out.length} bytes instead of ${unitSize} (${codec})`, {
      codec,
      expected: unitSize,
      actual: out.length,
    });
  }
  return out;
}

/**
 * Decompresses one unit into `dest` (exactly dest.length bytes, the unit's size), or throws
 * IMAGE_CORRUPT like decompressUnit.
 */
export function decompressInto(codec: Codec, input: Buffer, dest: Buffer, where: string): void {
  const unitSize = dest.length;
  let produced: number;
  try {
    if (codec === 'zstd') produced = decodeZstd(input, unitSize, dest).length;
    else if (ferryNative()?.inflateInto) produced = ferryNative()!.inflateInto!(input, dest, codec === 'zlib');
    else {
      decompressUnit(codec, input, unitSize, where).copy(dest);
      return;
    }
  } catch (err) {
    throw corrupt(`${where}: compressed data cannot be decoded (${codec}): ${(err as Error).message}`, { codec });
  }
  if (produced !== unitSize) {
    throw corrupt(`${where}: compressed data decodes to ${produced} bytes instead of ${unitSize} (${codec})`, {
      codec,
      expected: unitSize,
      actual: produced,
    });
  }
}
