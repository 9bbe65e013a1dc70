// `ferry download`: an object to a local file with parallel range requests, written under a
// temporary name and renamed into place when complete and verified (io/sink.ts). All-zero ranges
// stay holes. With a Ferry manifest every range is one upload part, checked against the part's
// MD5 as it arrives (the damaged part is named), and the image's virtual content is checked
// against the manifest's digest at the end; without one, a single-part object's ETag (its MD5) is
// checked. The content is checked before the file gets its final name: a damaged download never
// stands where the caller expects the disk.
//
// Ranges are fetched in pieces of at most 16 MiB, `concurrency` at a time, each received into a
// slot of a shared arena (straight from the response where the store can: S3, file://) and
// written from there: memory is concurrency × 16 MiB (64 MiB by default) whatever the part size.
// A part of one piece gets its MD5 on the worker pool; a larger part (or a single-part object's
// ETag) is hashed on this thread, its pieces in order (each piece waits in its slot for the ones
// before it). The content check (decoding and SHA-256) runs on the pool.
//
// Example:
//   await downloadObject('s3://images/disk.qcow2', 'disk.qcow2');
import { createHash, type Hash } from 'node:crypto';
import { dirname } from 'node:path';
import { BufferPool } from '../pipeline/buffer-pool.js';
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
  /** Pieces (of at most 16 MiB) in flight (default: 64 MiB of them, at most 8). */
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
/** Bytes of pieces in flight by default (each is held until written and checked). */
const IN_FLIGHT_BYTES = 64 * 1024 * 1024;
/** Read-ahead of the content check (decoding on the pool). */
const CHECK_IN_FLIGHT = 16 * 1024 * 1024;

/** A range whose MD5 is known: an upload part (from the manifest), or a single-part object. */
interface Checked {
  offset: number;
  length: number;
  md5: string;
  /** The upload part (absent: the whole object, checked by its ETag). */
  part?: number;
  /** Ranges of more than one piece: the MD5 so far, and the chain that feeds it the pieces in order. */
  hash?: Hash;
  chain: Promise<void>;
}

interface Piece {
  offset: number;
  length: number;
  check?: Checked;
  /** The last piece of its checked range. */
  last: boolean;
}

/**
 * The pieces to fetch: the manifest's parts (each checked by its MD5), or the object as one range
 * checked by its ETag (`etag`: a single-part object's MD5), or unchecked; cut into ≤ 16 MiB.
 */
function plan(size: number, m: Manifest | undefined, etag: string | undefined): Piece[] {
  const checked: Checked[] = [];
  if (m && m.object.size === size && m.object.partMd5.length > 0) {
    let offset = 0;
    m.object.partMd5.forEach((md5, i) => {
      const length = Math.min(i === 0 ? m.object.firstPartSize : m.object.partSize, size - offset);
      checked.push({ offset, length, md5, part: i + 1, chain: Promise.resolve() });
      offset += length;
    });
    if (offset !== size) checked.length = 0; // the manifest does not describe this object's layout
  } else if (etag && size > 0) {
    checked.push({ offset: 0, length: size, md5: etag, chain: Promise.resolve() });
  }
  const pieces: Piece[] = [];
  if (checked.length === 0) {
    for (let offset = 0; offset < size; offset += PIECE) pieces.push({ offset, length: Math.min(PIECE, size - offset), last: true });
    return pieces;
  }
  for (const c of checked) {
    if (c.length > PIECE) c.hash = createHash('md5');
    for (let at = 0; at < c.length; at += PIECE) pieces.push({ offset: c.offset + at, length: Math.min(PIECE, c.length - at), check: c, last: at + PIECE >= c.length });
  }
  return pieces;
}

function mismatch(url: string, c: Checked): FerryError {
  return c.part === undefined
    ? new FerryError('CHECKSUM_MISMATCH', `${url}: the downloaded bytes do not have the MD5 of the object's ETag (${c.md5})`, { remedy: 'The transfer was damaged: download again.' })
    : new FerryError('CHECKSUM_MISMATCH', `${url}: part ${c.part} (bytes ${c.offset}..${c.offset + c.length}) does not match the MD5 the upload recorded`, {
        remedy: 'The object was damaged or altered in storage: upload the image again from its source.',
        details: { part: c.part, offset: c.offset, length: c.length },
      });
}

/** MD5 of `data` on the pool (shared arena ranges are read in place), or on this thread. */
async function md5Of(data: Buffer, pool: WorkerPool | undefined): Promise<string> {
  if (!pool || !(data.buffer instanceof SharedArrayBuffer)) return createHash('md5').update(data).digest('hex');
  return (await pool.digest(data, ['md5']))[0]!.toString('hex');
}

export async function downloadObject(src: string, dest: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
  const started = process.hrtime.bigint();
  const loc = parseLocation(src);
  const store = openStore(loc, { maxSockets: (opts.concurrency ?? 8) + 2, ...opts.store });
  let pool: WorkerPool | undefined;
  try {
    const workers = opts.workers ?? defaultWorkers();
    pool = workers > 0 ? new WorkerPool(workers) : undefined;
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
      const etag = !manifest && !info.etag.includes('-') && /^[0-9a-f]{32}$/.test(info.etag) ? info.etag : undefined;
      const pieces = plan(info.size, manifest, etag);
      const largest = pieces.reduce((m, p) => Math.max(m, p.length), 1);
      const concurrency = Math.max(1, Math.min(opts.concurrency ?? Math.min(8, Math.floor(IN_FLIGHT_BYTES / largest)), pieces.length));
      const slots = new BufferPool(largest, concurrency);
      // The first failure stops the other fetches; all of them settle before the sink is removed.
      const stop = new AbortController();
      const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
      let failure: { error: unknown } | undefined;
      let next = 0;
      let done = 0;
      const fetchInto = async (p: Piece, buf: Buffer): Promise<void> => {
        const got = store.getRangeInto ? await store.getRangeInto(loc.key, p.offset, buf, signal) : (await store.getRange(loc.key, p.offset, p.length, signal)).copy(buf);
        if (got !== p.length) {
          throw new FerryError('UPLOAD_INCOMPLETE', `${loc.url}: the object ended early (at ${p.offset + got} of ${info.size} bytes)`, { remedy: 'The object changed during the download; run it again.' });
        }
      };
      const worker = async () => {
        while (next < pieces.length && !failure) {
          if (opts.signal?.aborted) throw new FerryError('INTERRUPTED', 'the download was interrupted; the partial file was removed', { remedy: 'Run the command again.' });
          const p = pieces[next++]!;
          const slot = slots.tryTake(p.length);
          const buf = slot ?? Buffer.allocUnsafeSlow(p.length);
          try {
            const fetched = fetchInto(p, buf);
            fetched.catch(() => {}); // observed below or through the chain
            const c = p.check;
            if (c?.hash) {
              // Pieces are taken in order, so links are added in order: this one hashes this
              // piece once it is here and every piece before it has been hashed.
              const hash = c.hash;
              c.chain = c.chain.then(() => fetched).then(() => {
                hash.update(buf);
                if (p.last && hash.digest('hex') !== c.md5) throw mismatch(loc.url, c);
              });
              await c.chain;
            } else {
              await fetched;
              if (c && (await md5Of(buf, pool)) !== c.md5) throw mismatch(loc.url, c);
            }
            if (!isAllZero(buf)) await sink.write(buf, p.offset);
          } finally {
            if (slot) slots.give(slot);
          }
          done += p.length;
          opts.onProgress?.({ done, total: info.size });
        }
      };
      await Promise.all(
        Array.from({ length: concurrency }, () =>
          worker().catch((error: unknown) => {
            failure ??= { error };
            stop.abort();
          }),
        ),
      );
      if (failure) throw failure.error;
      await sink.truncate(info.size);
      if (etag && info.size === 0 && createHash('md5').digest('hex') !== etag) {
        throw new FerryError('CHECKSUM_MISMATCH', `${loc.url}: the object is empty, but its ETag (${etag}) is not the MD5 of nothing`, { remedy: 'Check the object on the server.' });
      }
      let verified: DownloadResult['verified'] = etag ? 'etag' : 'none';
      let content: { digest: string } | undefined;
      if (manifest) {
        // Checked under its temporary name: a mismatch removes it.
        content = { digest: await verifyContent(sink.tempPath ?? sink.path, manifest, loc.url, pool) };
        verified = 'manifest';
      }
      await sink.commit();
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
