// `ferry import`: puts an image — an object in storage (s3://, cos://, file://) or a local file —
// onto a target disk (a raw file, created sparse, or a block device), streaming: range reads with
// readahead from the store, decoding on the fly, zero ranges skipped, no temporary copy.
//
// Preflight, before any byte is written, each failure with its own code: the object exists and is
// complete (size and ETag against the manifest the upload stored), the format is supported (an
// unsupported one is named: "VHDX is not VHD"), the image's structure is sound (Ferry's check,
// through range reads), the target is usable (exists or can be created, writable, large enough,
// not mounted or held by another program). Then the copy, hashing the content as it goes; with a
// manifest the digest must match (CHECKSUM_MISMATCH names the first damaged 4 MiB chunk, and a
// file target is discarded); without one, --verify re-reads the target and compares.
//
// Example:
//   await importImage('s3://images/disk.qcow2', '/dev/vdb');
import { stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { FerryError } from '../errors.js';
import { checkImage } from '../image/inspect.js';
import { openImage, openImageSource } from '../image/open.js';
import type { DiskImage, ImageFormat } from '../image/types.js';
import { compareImages } from '../pipeline/compare.js';
import { convertImage, type Checkpoint } from '../pipeline/convert.js';
import { streamVirtual, type VirtualChunk } from '../pipeline/virtual-stream.js';
import { WorkerPool } from '../pipeline/worker-pool.js';
import { isObjectUrl, parseLocation } from '../storage/location.js';
import { ObjectSource } from '../storage/object-source.js';
import { RemoteSink, parseRemoteTarget } from '../online/remote-sink.js';
import { openStore, type StoreOptions } from '../storage/open-store.js';
import type { ObjectStore } from '../storage/store.js';
import { hashing, offloadedHasher } from '../transfer/content-hash-pool.js';
import { MANIFEST_CHUNK, type ContentHasher } from '../transfer/content-hash.js';
import { checkContentAgainstManifest, checkObjectAgainstManifest, readManifest, type Manifest } from '../transfer/manifest.js';

export interface ImportOptions {
  /** Source format (default: detected from the content). */
  format?: ImageFormat;
  /** Without a manifest: re-read the target afterwards and compare it with the source. */
  verify?: boolean;
  /** Replace an existing target file. */
  overwrite?: boolean;
  store?: StoreOptions;
  workers?: number;
  onProgress?: (p: { position: number; total: number }) => void;
  signal?: AbortSignal;
  /** Resumable import (jobs): write a file target under this fixed temporary path, kept on failure. */
  partialPath?: string;
  /**
   * Resume: the target (or partialPath) already holds the content below `at`, written from the
   * source identified by `sourceId`; if the source is no longer that one, the copy starts over.
   */
  resume?: { at: number; sourceId: string | null };
  /** A target on a receiver (ferry://HOST:PORT/NAME): its token and certificate fingerprint. */
  remote?: { token: string; fingerprint: string };
  /** Phases after the preflight. */
  onPhase?: (phase: 'copying' | 'verifying') => void;
  /** Durable progress: see ConvertOptions.checkpoint. */
  checkpoint?: Checkpoint;
  /** Bound on bytes read ahead and on bytes waiting to be written (see ConvertOptions). */
  maxInFlightBytes?: number;
  /** Called once the source is open and checked (before any byte is written). */
  onPreflight?: (info: { format: string; virtualSize: number; sourceId: string; hasManifest: boolean; resumeAt: number }) => void | Promise<void>;
}

export interface ImportResult {
  source: string;
  target: string;
  format: string;
  virtualSize: number;
  /** Source data bytes read (zero ranges are not read). */
  dataBytes: number;
  /** Bytes fetched from the store (objects), and the range requests it took. */
  bytesFetched?: number;
  requests?: number;
  verified: 'manifest' | 'reread' | 'none';
  digest?: string;
  /** Offset the copy resumed at (0: from the start). */
  resumedAt: number;
  seconds: number;
}

interface Opened {
  image: DiskImage;
  manifest: Manifest | undefined;
  objectSource?: ObjectSource;
  store?: ObjectStore;
  /** What identifies this exact source content (an object's size and ETag; a file's size, mtime, inode). */
  sourceId: string;
}

/** Opens the source and runs the source-side preflight. */
async function openSource(source: string, opts: ImportOptions): Promise<Opened> {
  if (!isObjectUrl(source)) {
    const st = await stat(source).catch(() => undefined);
    const image = await openImage(source, opts.format ? { format: opts.format } : {});
    return { image, manifest: undefined, sourceId: st ? `file:${st.size}:${st.mtimeMs}:${st.ino}` : 'file:?' };
  }
  const loc = parseLocation(source);
  const store = openStore(loc, opts.store ?? {});
  try {
    const info = await store.head(loc.key);
    if (!info) {
      throw new FerryError('OBJECT_NOT_FOUND', `${loc.url}: no such object`, {
        remedy: 'Check the key (keys are case-sensitive); if the upload did not finish, run `ferry upload` again (it resumes).',
      });
    }
    const manifest = await readManifest(store, loc.key);
    if (manifest) checkObjectAgainstManifest(loc.url, info, manifest);
    const src = new ObjectSource(store, loc.key, info.size);
    const format = opts.format ?? (manifest?.image.format as ImageFormat | undefined);
    const image = await openImageSource(src, format ? { format } : {});
    if (manifest && image.virtualSize !== manifest.image.virtualSize) {
      await image.close();
      throw new FerryError('CHECKSUM_MISMATCH', `${loc.url}: the image's virtual size is ${image.virtualSize}, the manifest records ${manifest.image.virtualSize}`, {
        remedy: 'The object does not hold the uploaded disk: upload it again.',
      });
    }
    return { image, manifest, objectSource: src, store, sourceId: `object:${info.size}:${info.etag ?? ''}:${info.metadata['http-etag'] ?? ''}:${info.metadata['http-last-modified'] ?? ''}` };
  } catch (err) {
    store.close();
    throw err;
  }
}

/** The first problem of a damaged image as an error (the import stops before writing). */
async function preflightStructure(image: DiskImage): Promise<void> {
  const doc = await checkImage(image, { deep: false });
  if (doc.verdict === 'corrupt') {
    const first = doc.problems[0];
    throw new FerryError('IMAGE_CORRUPT', `${image.name}: the image is damaged: ${first?.message ?? 'structure check failed'} (${doc.problems.length} problem(s))`, {
      remedy: 'The upload or the export is damaged: run `ferry image check` on the original image, then upload it again.',
      details: { problems: doc.problems.slice(0, 10) },
    });
  }
}

export async function importImage(source: string, target: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const started = process.hrtime.bigint();
  const opened = await openSource(source, opts);
  const { image, manifest } = opened;
  const workers = opts.workers ?? availableParallelism();
  const pool = workers > 0 ? new WorkerPool(workers) : undefined;
  try {
    await preflightStructure(image);
    const remote = parseRemoteTarget(target);
    if (remote && !opts.remote) {
      throw new FerryError('USAGE', `${target}: a receiver's disk needs its token and certificate fingerprint`, { remedy: 'Pass --token (or FERRY_TOKEN) and --fingerprint as `ferry receive` printed them.' });
    }
    // Preflight of a remote target: reachable, the token accepted, the disk large enough.
    const remoteSink = remote ? await RemoteSink.open(remote, image.virtualSize, opts.remote!) : undefined;
    const resumeAt = !remote && opts.resume && opts.resume.sourceId === opened.sourceId ? Math.min(opts.resume.at, image.virtualSize) : 0;
    await opts.onPreflight?.({ format: image.format, virtualSize: image.virtualSize, sourceId: opened.sourceId, hasManifest: manifest !== undefined, resumeAt });
    opts.onPhase?.('copying');
    let hasher: ContentHasher | undefined;
    const check = async () => {
      opts.onPhase?.('verifying');
      if (!manifest || !hasher) return;
      checkContentAgainstManifest(await hasher.result(), manifest, source, 'The object was damaged in storage or in transit (the target was not kept): upload the image again from its source, then import again.');
    };
    const result = await convertImage(image, target, { format: 'raw' }, {
      ...(remoteSink ? { sink: remoteSink } : {}),
      ...(opts.overwrite ? { overwrite: true } : {}),
      ...(opts.partialPath ? { partialPath: opts.partialPath } : {}),
      // Jobs checkpoint (fdatasync every 32 MiB): the page cache would only cost a copy (SinkOptions.directWrites).
      ...(opts.checkpoint && !remoteSink ? { directWrites: true } : {}),
      ...(resumeAt ? { resumeAt } : {}),
      ...(opts.checkpoint && !remoteSink ? { checkpoint: opts.checkpoint } : {}),
      ...(opts.maxInFlightBytes ? { maxInFlightBytes: opts.maxInFlightBytes } : {}),
      // Whole 4 MiB chunks: hashed on the pool as they are, with no assembly copy.
      minZeroRun: MANIFEST_CHUNK,
      ...(pool ? { pool } : { workers: 0 }),
      ...(opts.signal ? { signal: opts.signal } : {}),
      ...(opts.onProgress ? { onProgress: (p) => opts.onProgress!({ position: p.position, total: p.total }) } : {}),
      ...(manifest
        ? {
            wrapStream: (chunks) => {
              hasher = offloadedHasher(manifest.content.chunks.length > 0 ? manifest.image.virtualSize : image.virtualSize, pool);
              return resumeAt ? hashingResumed(opts.partialPath ?? target, resumeAt, chunks, hasher, pool) : hashing(chunks, hasher, pool);
            },
          }
        : {}),
      beforeCommit: check,
    });
    // A remote target is always read back by the receiver and compared chunk by chunk (commit).
    let verified: ImportResult['verified'] = manifest ? 'manifest' : remoteSink ? 'reread' : 'none';
    if (!manifest && opts.verify && !remoteSink) {
      const written = await openImage(target, { format: 'raw' });
      try {
        const cmp = await compareImages(image, written);
        if (!cmp.identical) {
          throw new FerryError('CHECKSUM_MISMATCH', `${target}: the target differs from the source${cmp.firstDifference !== undefined ? ` at byte ${cmp.firstDifference}` : ''}`, {
            remedy: 'The target disk did not keep what was written (a failing device?): check the device and import again.',
            details: { offset: cmp.firstDifference },
          });
        }
      } finally {
        await written.close();
      }
      verified = 'reread';
    }
    return {
      source,
      target,
      format: image.format,
      virtualSize: image.virtualSize,
      dataBytes: result.dataBytes,
      ...(opened.objectSource ? { bytesFetched: opened.objectSource.stats.bytesFetched, requests: opened.objectSource.stats.requests } : {}),
      verified,
      ...(manifest ? { digest: manifest.content.digest } : {}),
      resumedAt: resumeAt,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } finally {
    await pool?.close();
    await image.close();
    opened.store?.close();
  }
}

/**
 * A resumed copy's content digest: the part written by the earlier run is hashed from the target
 * itself (so the digest proves what is on the disk), then the rest as it streams from the source.
 */
async function* hashingResumed(
  written: string,
  resumeAt: number,
  chunks: AsyncGenerator<VirtualChunk>,
  hasher: ContentHasher,
  pool: WorkerPool | undefined,
): AsyncGenerator<VirtualChunk> {
  const done = await openImage(written, { format: 'raw' });
  try {
    const prefix = streamVirtual(done, { offset: 0, length: Math.min(resumeAt, done.virtualSize), ...(pool ? { pool, workers: pool.size } : {}) });
    for await (const c of hashing(prefix, hasher, pool)) c.release?.();
  } finally {
    await done.close();
  }
  yield* hashing(chunks, hasher, pool);
}
