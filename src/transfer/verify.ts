// `ferry verify`: proves that an object in storage still holds the disk that was uploaded, without
// writing anything: its size and ETag against the manifest, then its virtual content — read
// through the image driver with range requests — against the manifest's content digest, naming the
// first damaged chunk.
import { FerryError } from '../errors.js';
import type { ImageFormat } from '../image/types.js';
import { openImageSource } from '../image/open.js';
import { parseLocation } from '../storage/location.js';
import { ObjectSource } from '../storage/object-source.js';
import { openStore, type StoreOptions } from '../storage/open-store.js';
import { checkContentAgainstManifest, checkObjectAgainstManifest, readManifest } from './manifest.js';
import { digestImage } from './content-hash-pool.js';
import { defaultWorkers, WorkerPool } from '../pipeline/worker-pool.js';

/** Range reads ahead of the hashing (several requests in flight). */
const VERIFY_IN_FLIGHT = 32 * 1024 * 1024;

export interface VerifyResult {
  object: string;
  format: string;
  virtualSize: number;
  size: number;
  chunks: number;
  digest: string;
  bytesFetched: number;
  seconds: number;
}

export async function verifyObject(url: string, opts: { store?: StoreOptions; onProgress?: (p: { done: number; total: number }) => void } = {}): Promise<VerifyResult> {
  const started = process.hrtime.bigint();
  const loc = parseLocation(url);
  const store = openStore(loc, opts.store ?? {});
  try {
    const info = await store.head(loc.key);
    if (!info) throw new FerryError('OBJECT_NOT_FOUND', `${loc.url}: no such object`, { remedy: 'Check the key; if it was being uploaded, run the upload again.' });
    const m = await readManifest(store, loc.key);
    if (!m) {
      throw new FerryError('CHECKSUM_MISMATCH', `${loc.url}: there is no Ferry manifest (${loc.key}.ferry.json) to verify against`, {
        remedy: 'Objects uploaded with `ferry upload` have one; for others, upload again with Ferry, or compare with the source using `ferry image checksum`.',
      });
    }
    checkObjectAgainstManifest(loc.url, info, m);
    const src = new ObjectSource(store, loc.key, info.size);
    const image = await openImageSource(src, { format: m.image.format as ImageFormat });
    // Decoding and hashing on the pool (the thread that drives the reads only copies).
    const workers = defaultWorkers();
    const pool = workers > 0 ? new WorkerPool(workers) : undefined;
    try {
      const r = await digestImage(image, { total: m.image.virtualSize, ...(pool ? { pool } : {}), maxInFlightBytes: VERIFY_IN_FLIGHT, onProgress: (done) => opts.onProgress?.({ done, total: image.virtualSize }) });
      checkContentAgainstManifest(r, m, loc.url, 'The object was damaged in storage: upload the image again from its source.');
      return { object: loc.url, format: m.image.format, virtualSize: m.image.virtualSize, size: info.size, chunks: r.chunks.length, digest: r.digest, bytesFetched: src.stats.bytesFetched, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
    } finally {
      await pool?.close();
      await image.close();
    }
  } finally {
    store.close();
  }
}
