// `ferry download`: an object to a local file with parallel range requests, written under a
// temporary name and renamed into place when complete and verified (io/sink.ts). All-zero ranges
// stay holes. With a Ferry manifest every range is one upload part, checked against the part's
// MD5 as it arrives (the damaged part is named), and the image's virtual content is checked
// against the manifest's digest at the end; without one, a single-part object's ETag (its MD5) is
// checked. The MD5s and the content check (decoding and SHA-256) run on a worker pool; ranges are
// received into a bounded shared arena, so memory does not grow with the object or the link.
//
// Example:
//   await downloadObject('s3://images/disk.qcow2', 'disk.qcow2');
import { createHash } from 'node:crypto';
import { dirname } from 'node:path';
import type { TransferListItem } from 'node:worker_threads';
import { BufferPool, refTo } from '../pipeline/buffer-pool.js';
import type { DigestResult } from '../pipeline/pool-worker.js';
import { defaultWorkers, WorkerPool } from '../pipeline/worker-pool.js';
import { FerryError } from '../errors.js';
import { isAllZero } from '../io/zero.js';
import { freeSpace, openSink } from '../io/sink.js';
import { openImage } from '../image/open.js';
import { parseLocation } from '../storage/location.js';
import { openStore, type StoreOptions } from '../storage/open-store.js';
import { checkContentAgainstManifest, readManifest, type Manifest } from './manifest.js';
import { digestImage } from './content-hash-pool.js';

export interface DownloadOptions {
  overwrite?: boolean;
  /** Ranges in flight (default 8, fewer when parts are large: at most 64 MiB in flight). */
  concurrency?: number;
  /** Worker threads for the MD5s and the content check (default: all cores). */
  workers?: number;
  /** Check against the manifest (default true). */
  verify?: boolean;
  store?: StoreOptions;
  onProgress?: (p: { done: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface DownloadResult {
  source: string;
  path: string;
  size: number;
  /** What was checked: 'manifest' (parts and content), 'etag' (single-part MD5) or 'none'. */
  verified: 'manifest' | 'etag' | 'none';
  content?: { digest: string };
  seconds: number;
}

const PIECE = 16 * 1024 * 1024;
/** Bytes of ranges in flight by default (each range is held whole until written and checked). */
const IN_FLIGHT_BYTES = 64 * 1024 * 1024;
/** Read-ahead of the content check (decoding on the pool). */
const CHECK_IN_FLIGHT = 16 * 1024 * 1024;

/** The ranges to fetch: the manifest's parts (each checkable by MD5), else 16 MiB pieces. */
function ranges(size: number, m: Manifest | undefined): { offset: number; length: number; md5?: string; part?: number }[] {
  const out: { offset: number; length: number; md5?: string; part?: number }[] = [];
  if (m && m.object.size === size && m.object.partMd5.length > 0) {
    let offset = 0;
    m.object.partMd5.forEach((md5, i) => {
      const len = Math.min(i === 0 ? m.object.firstPartSize : m.object.partSize, size - offset);
      out.push({ offset, length: len, md5, part: i + 1 });
      offset += len;
    });
    if (offset === size) return out;
    out.length = 0; // the manifest does not describe this object's layout
  }
  for (let offset = 0; offset < size; offset += PIECE) out.push({ offset, length: Math.min(PIECE, size - offset) });
  return out;
}

/** MD5 of `data` on the pool (shared arena ranges are read in place), or on this thread. */
async function md5Of(data: Buffer, pool: WorkerPool | undefined): Promise<string> {
  if (!pool || !(data.buffer instanceof SharedArrayBuffer)) return createHash('md5').update(data).digest('hex');
  const transfer: TransferListItem[] = [];
  const r = await pool.run<DigestResult>({ type: 'digest', input: refTo(data, transfer), algorithms: ['md5'] }, transfer);
  return Buffer.from(r.digests[0]!).toString('hex');
}

export async function downloadObject(src: string, dest: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
  const started = process.hrtime.bigint();
  const loc = parseLocation(src);
  const store = openStore(loc, { maxSockets: (opts.concurrency ?? 8) + 2, ...opts.store });
  const workers = opts.workers ?? defaultWorkers();
  const pool = workers > 0 ? new WorkerPool(workers) : undefined;
  try {
    const info = await store.head(loc.key);
    if (!info) {
      throw new FerryError('OBJECT_NOT_FOUND', `${loc.url}: no such object`, { remedy: 'Check the key (keys are case-sensitive); if it was being uploaded, run the upload again.' });
    }
    const manifest = opts.verify === false ? undefined : await readManifest(store, loc.key);
    if (manifest && manifest.object.size !== info.size) {
      throw new FerryError('UPLOAD_INCOMPLETE', `${loc.url}: the object is ${info.size} bytes, but its manifest records ${manifest.object.size}`, {
        remedy: 'The object was truncated or replaced after the upload: upload the image again.',
        details: { size: info.size, expected: manifest.object.size },
      });
    }
    const free = await freeSpace(dirname(dest));
    if (free !== undefined && free < info.size) {
      throw new FerryError('TARGET_NO_SPACE', `${dest}: the object is ${info.size} bytes, but only ${free} bytes are free there`, {
        remedy: 'Free space on the target file system, or download elsewhere.',
        details: { required: info.size, free },
      });
    }
    const sink = await openSink(dest, { overwrite: opts.overwrite ?? false });
    try {
      const work = ranges(info.size, manifest);
      const largest = Math.max(1, ...work.map((r) => r.length));
      const concurrency = Math.max(1, Math.min(opts.concurrency ?? 8, opts.concurrency ? Infinity : Math.floor(IN_FLIGHT_BYTES / largest), work.length));
      // A range is received into a slot of the arena, checked and written from there.
      const slots = new BufferPool(largest, concurrency);
      let next = 0;
      let done = 0;
      const whole = !manifest && !info.etag.includes('-') && /^[0-9a-f]{32}$/.test(info.etag) ? createHash('md5') : undefined;
      // With a whole-object MD5 to check, ranges must be hashed in order: fetch in parallel, hash in order.
      const fetched = new Map<number, Buffer>();
      let hashedUpTo = 0;
      const worker = async () => {
        while (next < work.length) {
          if (opts.signal?.aborted) throw new FerryError('INTERRUPTED', 'the download was interrupted; the partial file was removed', { remedy: 'Run the command again.' });
          const i = next++;
          const r = work[i]!;
          // Kept whole only when the in-order MD5 needs it later; else a slot, given back below.
          const slot = whole ? undefined : slots.tryTake(r.length);
          const buf = slot ?? Buffer.allocUnsafeSlow(r.length);
          try {
            const got = store.getRangeInto ? await store.getRangeInto(loc.key, r.offset, buf, opts.signal) : (await store.getRange(loc.key, r.offset, r.length, opts.signal)).copy(buf);
            if (got !== r.length) {
              throw new FerryError('UPLOAD_INCOMPLETE', `${loc.url}: the object ended early (at ${r.offset + got} of ${info.size} bytes)`, { remedy: 'The object changed during the download; run it again.' });
            }
            if (r.md5 && (await md5Of(buf, pool)) !== r.md5) {
              throw new FerryError('CHECKSUM_MISMATCH', `${loc.url}: part ${r.part} (bytes ${r.offset}..${r.offset + r.length}) does not match the MD5 the upload recorded`, {
                remedy: 'The object was damaged or altered in storage: upload the image again from its source.',
                details: { part: r.part, offset: r.offset, length: r.length },
              });
            }
            if (!isAllZero(buf)) await sink.write(buf, r.offset);
          } finally {
            if (slot) slots.give(slot);
          }
          if (whole) {
            fetched.set(i, buf);
            while (fetched.has(hashedUpTo)) {
              whole.update(fetched.get(hashedUpTo)!);
              fetched.delete(hashedUpTo++);
            }
          }
          done += r.length;
          opts.onProgress?.({ done, total: info.size });
        }
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
      await sink.truncate(info.size);
      let verified: DownloadResult['verified'] = 'none';
      if (whole) {
        const got = whole.digest('hex');
        if (got !== info.etag) {
          throw new FerryError('CHECKSUM_MISMATCH', `${loc.url}: the downloaded bytes have MD5 ${got}, but the object's ETag is ${info.etag}`, {
            remedy: 'The transfer was damaged: download again.',
          });
        }
        verified = 'etag';
      }
      await sink.commit();
      let content: { digest: string } | undefined;
      if (manifest) {
        content = { digest: await verifyContent(dest, manifest, loc.url, pool) };
        verified = 'manifest';
      }
      return { source: loc.url, path: dest, size: info.size, verified, ...(content ? { content } : {}), seconds: Number(process.hrtime.bigint() - started) / 1e9 };
    } catch (err) {
      await sink.abort();
      throw err;
    }
  } finally {
    store.close();
    await pool?.close();
  }
}

/** Checks the virtual content of a local image against a manifest; returns the digest. */
export async function verifyContent(path: string, manifest: Manifest, what: string, pool?: WorkerPool): Promise<string> {
  const image = await openImage(path, { format: manifest.image.format as 'raw' });
  try {
    if (image.virtualSize !== manifest.image.virtualSize) {
      throw new FerryError('CHECKSUM_MISMATCH', `${what}: the image's virtual size is ${image.virtualSize}, its manifest records ${manifest.image.virtualSize}`, {
        remedy: 'The object does not hold the uploaded disk: upload it again.',
      });
    }
    const r = await digestImage(image, { total: manifest.image.virtualSize, maxInFlightBytes: CHECK_IN_FLIGHT, ...(pool ? { pool } : {}) });
    checkContentAgainstManifest(r, manifest, what, 'The object was damaged in storage or in transit: upload the image again from its source.');
    return r.digest;
  } finally {
    await image.close();
  }
}
