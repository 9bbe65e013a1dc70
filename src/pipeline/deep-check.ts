// Deep check: reads and decompresses every allocated unit of an image through streamVirtual
// (zero/unallocated runs are skipped, nothing is read for them) and reports the first failure in
// virtual order with its guest offset. Structure checks cannot see damaged compressed data; this can.
import { FerryError } from '../errors.js';
import type { DiskImage } from '../image/types.js';
import { streamVirtual, type StreamOptions } from './virtual-stream.js';

export interface DeepCheckProgress {
  /** Virtual bytes covered so far (data and zero runs). */
  position: number;
  total: number;
  /** Data bytes read and decoded so far. */
  dataBytes: number;
}

export interface DeepCheckOptions extends Pick<StreamOptions, 'workers' | 'chunkSize' | 'maxInFlightBytes'> {
  onProgress?: (p: DeepCheckProgress) => void;
}

export type DeepCheckResult = { ok: true; dataBytes: number } | { ok: false; guestOffset: number; error: FerryError };

export async function deepCheck(image: DiskImage, opts: DeepCheckOptions = {}): Promise<DeepCheckResult> {
  const { onProgress, ...stream } = opts;
  let position = 0;
  let dataBytes = 0;
  try {
    for await (const c of streamVirtual(image, stream)) {
      position = c.offset + c.length;
      if (c.data) dataBytes += c.length;
      c.release?.();
      onProgress?.({ position, total: image.virtualSize, dataBytes });
    }
  } catch (err) {
    const error =
      err instanceof FerryError
        ? err
        : new FerryError('INTERNAL', `unexpected failure while reading ${image.name}: ${String(err)}`, {
            remedy: 'This is a bug in Ferry; please report it.',
            cause: err,
          });
    const g = error.details?.guestOffset;
    // Chunks arrive in order, so a failure without a known offset lies in the chunk after `position`.
    const guestOffset = typeof g === 'number' ? g : position;
    return { ok: false, guestOffset, error };
  }
  return { ok: true, dataBytes };
}
