// The content digest (content-hash.ts) computed on the worker pool while a pipeline runs: chunks
// are assembled in a small shared arena (or handed over as they are when one stream chunk is one
// digest chunk) and hashed by the pool's workers, so the thread that drives the pipeline only
// copies.
import { BufferPool } from '../pipeline/buffer-pool.js';
import { streamVirtual, type VirtualChunk } from '../pipeline/virtual-stream.js';
import type { DiskImage } from '../image/types.js';
import { FerryError } from '../errors.js';
import type { WorkerPool } from '../pipeline/worker-pool.js';
import { ContentHasher, MANIFEST_CHUNK, type ContentDigest } from './content-hash.js';

/** SHA-256 on a worker of the pool (buffers not in a shared arena are handed over). */
function poolSha256(pool: WorkerPool): (data: Buffer) => Promise<Buffer> {
  return async (data) => (await pool.digest(data, ['sha256']))[0]!;
}

/**
 * Digests a hashing stream lets run on the pool before it waits (see ContentHasher.backlogBelow):
 * without a bound, a fast reader (a cached file) outruns workers busy with other jobs too (part
 * MD5s), and every chunk waiting for its hash holds a buffer (fresh ones once the arena is used
 * up): an as-is upload of the 1.7 GB reference qcow2 peaked at 510 MiB, 234 with the bound. 3
 * made imports ~0.1 s slower; 6 does not.
 */
export const HASHES_IN_FLIGHT = 6;

/** Content hashing with chunks assembled in a small arena and hashed on the pool. */
export function offloadedHasher(total: number, pool: WorkerPool | undefined): ContentHasher {
  if (!pool) return new ContentHasher(total);
  // The cells hashing (HASHES_IN_FLIGHT at most, when fed through hashing()) and the one filling.
  const cells = new BufferPool(MANIFEST_CHUNK, HASHES_IN_FLIGHT + 1);
  return new ContentHasher(total, { digest: poolSha256(pool), take: () => cells.take(MANIFEST_CHUNK), give: (b) => cells.give(b) });
}

/**
 * Hashes the virtual content of the chunks on their way to the writer. Whole 4 MiB chunks in the
 * shared arena are hashed on the pool, in parallel with their encoding (both only read them); the
 * chunk goes back to the stream's buffers only once both are done.
 */
export async function* hashing(chunks: AsyncGenerator<VirtualChunk>, hasher: ContentHasher, pool: WorkerPool | undefined): AsyncGenerator<VirtualChunk> {
  const digest = pool ? poolSha256(pool) : undefined;
  for await (const c of chunks) {
    await hasher.backlogBelow(HASHES_IN_FLIGHT);
    if (c.data) {
      const data = c.data.length === c.length ? c.data : c.data.subarray(0, c.length);
      const pending = digest && data.buffer instanceof SharedArrayBuffer ? hasher.dataAsync(c.offset, data, digest) : (hasher.data(c.offset, data), undefined);
      if (pending && c.release) {
        const release = c.release;
        c.release = (returned) => void pending.finally(() => release(returned)).catch(() => {});
      }
    } else hasher.zeros(c.offset, c.length); // (zeros may finish a chunk being assembled, too)
    yield c;
  }
}

/**
 * The content digest of an image, read in one pass (`total`: the virtual size the digest covers,
 * zeros past the image's end). With a pool the hashing runs on it.
 */
export async function digestImage(
  image: DiskImage,
  opts: { total?: number; pool?: WorkerPool; signal?: AbortSignal; onProgress?: (done: number) => void; maxInFlightBytes?: number } = {},
): Promise<ContentDigest> {
  const hasher = offloadedHasher(opts.total ?? image.virtualSize, opts.pool);
  const chunks = streamVirtual(image, { ...(opts.pool ? { pool: opts.pool, workers: opts.pool.size } : {}), ...(opts.maxInFlightBytes ? { maxInFlightBytes: opts.maxInFlightBytes } : {}) });
  for await (const c of hashing(chunks, hasher, opts.pool)) {
    if (opts.signal?.aborted) {
      await chunks.return(undefined);
      throw new FerryError('INTERRUPTED', `${image.name}: interrupted while hashing the disk content`, { remedy: 'Run the command again.' });
    }
    c.release?.();
    opts.onProgress?.(c.offset + c.length);
  }
  return hasher.result();
}
