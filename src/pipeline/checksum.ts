// SHA-256 of a whole virtual disk (or a range of it) in one streaming pass over streamVirtual:
// data chunks are hashed as they arrive, zero/unallocated runs are fed from one shared zero buffer.
import { createHash } from 'node:crypto';
import { streamVirtual, type StreamOptions } from './virtual-stream.js';
import type { DiskImage } from '../image/types.js';

export interface ChecksumResult {
  /** Hex SHA-256 of the virtual content. */
  sha256: string;
  /** Virtual bytes hashed. */
  bytes: number;
  /** Bytes that came from data chunks (the rest were zero/unallocated runs). */
  dataBytes: number;
}

const ZEROS = Buffer.alloc(1024 * 1024);

export interface ChecksumOptions extends StreamOptions {
  /** Called after each chunk with the virtual position reached. */
  onProgress?: (position: number) => void;
}

export async function checksumVirtual(image: DiskImage, opts: ChecksumOptions = {}): Promise<ChecksumResult> {
  const { onProgress, ...stream } = opts;
  const hash = createHash('sha256');
  let bytes = 0;
  let dataBytes = 0;
  for await (const c of streamVirtual(image, stream)) {
    if (c.data) {
      hash.update(c.data);
      c.release?.();
      dataBytes += c.length;
    } else {
      for (let left = c.length; left > 0; left -= ZEROS.length) {
        hash.update(left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left));
      }
    }
    bytes += c.length;
    onProgress?.(c.offset + c.length);
  }
  return { sha256: hash.digest('hex'), bytes, dataBytes };
}
