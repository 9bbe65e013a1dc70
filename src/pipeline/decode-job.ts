// One data chunk's assembly plan ("decode job"): which input buffers to copy, which compressed
// units to decode and where each piece lands in the chunk's output buffer. The same function runs
// in a worker thread (compressed chunks) or on the main thread (host-only chunks, workers: 0), so
// both paths produce the same bytes and the same errors.
import { FerryError, type ErrorCode, ErrorCodes } from '../errors.js';
import { decompressInto } from '../image/decompress.js';
import type { Codec } from '../image/types.js';

/** Copy `len` bytes of input `buf` at `from` to output offset `to`. */
export interface CopyOp {
  t: 'copy';
  buf: number;
  from: number;
  len: number;
  to: number;
}

/** Zero-fill `len` output bytes at `to` (a short zero run absorbed into a data chunk). */
export interface FillOp {
  t: 'fill';
  len: number;
  to: number;
}

/** Decode the unit held in input `buf` [from, from+avail), copy [skip, skip+len) of it to `to`. */
export interface UnitOp {
  t: 'unit';
  buf: number;
  from: number;
  avail: number;
  codec: Codec;
  unitSize: number;
  skip: number;
  len: number;
  to: number;
  /** Index into DecodeJob.names: the host file, for messages. */
  file: number;
  /** Host offset of the compressed bytes and virtual offset of the unit's first byte. */
  hostOffset: number;
  guestOffset: number;
}

export type DecodeOp = CopyOp | FillOp | UnitOp;

/** A failure as it crosses the thread boundary; revived into a FerryError on the main thread. */
export interface DecodeFailure {
  code: string;
  message: string;
  remedy?: string;
  details?: Record<string, unknown>;
}

type Input = ArrayBuffer | Buffer;

function view(input: Input, from: number, len: number): Buffer {
  if (input instanceof ArrayBuffer) return Buffer.from(input, from, len);
  return input.subarray(from, from + len);
}

/** Scratch space for partly used units (one per thread). */
let scratch: Buffer | undefined;

/**
 * Runs a job: returns the chunk's bytes in a buffer of its own (transferable). Decoding errors
 * are IMAGE_CORRUPT FerryErrors whose details carry file, hostOffset and guestOffset.
 */
export function runDecodeJob(inputs: Input[], outLength: number, ops: DecodeOp[], names: string[], into?: Buffer): Buffer {
  const out = into ? into.subarray(0, outLength) : Buffer.allocUnsafeSlow(outLength);
  let lastKey = -1;
  let lastBuf = -1;
  let lastUnit: Buffer | undefined;
  for (const op of ops) {
    if (op.t === 'copy') {
      view(inputs[op.buf]!, op.from, op.len).copy(out, op.to);
    } else if (op.t === 'fill') {
      out.fill(0, op.to, op.to + op.len);
    } else {
      const name = names[op.file] ?? '?';
      const where = `${name}: compressed unit at host offset ${op.hostOffset} (guest offset ${op.guestOffset})`;
      if (op.skip === 0 && op.len === op.unitSize) {
        // The whole unit lands in the chunk: decode it in place.
        try {
          decompressInto(op.codec, view(inputs[op.buf]!, op.from, op.avail), out.subarray(op.to, op.to + op.len), where);
        } catch (err) {
          throw withOffsets(err, name, op.hostOffset, op.guestOffset);
        }
        continue;
      }
      // Part of a unit: decode it into scratch space; several segments of one unit (qcow2
      // subclusters, a unit split by the chunk grid) decode it once.
      if (!lastUnit || lastKey !== op.from || lastBuf !== op.buf) {
        if (!scratch || scratch.length < op.unitSize) scratch = Buffer.allocUnsafeSlow(op.unitSize);
        lastUnit = scratch.subarray(0, op.unitSize);
        try {
          decompressInto(op.codec, view(inputs[op.buf]!, op.from, op.avail), lastUnit, where);
        } catch (err) {
          lastUnit = undefined;
          throw withOffsets(err, name, op.hostOffset, op.guestOffset);
        }
        lastKey = op.from;
        lastBuf = op.buf;
      }
      if (op.skip + op.len > lastUnit.length) {
        throw new FerryError('INTERNAL', `compressed segment exceeds its unit (${op.skip}+${op.len} > ${lastUnit.length})`, {
          remedy: 'This is a bug in Ferry; please report it with the output of `ferry image info --json`.',
          details: { file: name, hostOffset: op.hostOffset, guestOffset: op.guestOffset },
        });
      }
      lastUnit.copy(out, op.to, op.skip, op.skip + op.len);
    }
  }
  return out;
}

function withOffsets(err: unknown, file: string, hostOffset: number, guestOffset: number): FerryError {
  if (err instanceof FerryError) {
    return new FerryError(err.code, err.message, {
      remedy: err.remedy,
      details: { ...err.details, file, hostOffset, guestOffset },
    });
  }
  return new FerryError('IMAGE_CORRUPT', `${file}: compressed unit at host offset ${hostOffset} (guest offset ${guestOffset}): ${String(err)}`, {
    remedy: 'The image is damaged. Re-export or re-download it from its origin.',
    details: { file, hostOffset, guestOffset },
  });
}

/** Flattens an error for postMessage. */
export function describeFailure(err: unknown): DecodeFailure {
  if (err instanceof FerryError) {
    return { code: err.code, message: err.message, remedy: err.remedy, ...(err.details ? { details: err.details } : {}) };
  }
  return { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
}

/** Re-creates the FerryError a worker reported. */
export function reviveFailure(f: DecodeFailure): FerryError {
  const code: ErrorCode = f.code in ErrorCodes ? (f.code as ErrorCode) : 'INTERNAL';
  return new FerryError(code, f.message, {
    remedy: f.remedy ?? 'This is a bug in Ferry; please report it.',
    ...(f.details ? { details: f.details } : {}),
  });
}
