// `ferry upload`: puts a disk image into object storage in one pass — read, (convert, compress on
// all cores,) hash, and multipart-upload as the bytes are produced — then proves the result and
// stores the manifest beside it.
//
//   as-is:     the image file's own bytes (any format), holes read as zeros;
//   converted: --to FORMAT / --compress: the conversion engine's writer writes into an ObjectSink.
//
// Resume: the checkpoint (transfer/checkpoint.ts) names the upload; on the next run the output is
// produced again (conversion is deterministic), and every part whose MD5 equals both the
// checkpoint's record and the ETag the server lists (ListParts) is not sent again. An upload is
// only ever adopted through the checkpoint, never found by key. A run killed after Complete finds
// its object by the token in the metadata, checks it, and only writes the manifest.
//
// Example:
//   const r = await uploadImage('disk.raw', 's3://images/disk.qcow2', { to: 'qcow2', compress: 'zstd' });
import { randomBytes, createHash } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import { FerryError, fromSystemError } from '../errors.js';
import { FileSource } from '../io/byte-source.js';
import { openImage } from '../image/open.js';
import type { DiskImage, ImageFormat } from '../image/types.js';
import type { CompressionCodec, WriteSpec } from '../image/writer.js';
import { createWriter, headBytesFor } from '../image/writers.js';
import { chunkSizeFor, writeChunks } from '../pipeline/convert.js';
import { streamVirtual } from '../pipeline/virtual-stream.js';
import { defaultWorkers, WorkerPool } from '../pipeline/worker-pool.js';
import { FileStore } from '../storage/file-store.js';
import { parseLocation } from '../storage/location.js';
import { openStore, type StoreOptions } from '../storage/open-store.js';
import { multipartEtag, type ObjectStore } from '../storage/store.js';
import { crc64Combine } from '../storage/crc64.js';
import { loadCheckpoint, recordPart, removeCheckpoint, sameSettings, saveCheckpoint, type SourceIdentity, type UploadCheckpoint } from './checkpoint.js';
import { ContentHasher, type ContentDigest } from './content-hash.js';
import { digestImage, HASHES_IN_FLIGHT, hashing, offloadedHasher } from './content-hash-pool.js';
import { META, writeManifest, type Manifest } from './manifest.js';
import { FIRST_PART_MIN, ObjectSink } from './object-sink.js';
import { RateLimiter } from './rate-limit.js';
import { toolVersion } from '../version.js';

const MIB = 1024 * 1024;
export const MIN_PART = 5 * MIB;
export const MAX_PART = 5 * 1024 * 1024 * 1024;
export const MAX_PARTS = 10_000;
/**
 * Default part size. Every part is a request with its own cost on the server (Swift: ~11 ms of
 * CPU per part measured here, whatever its size): 16 MiB parts instead of 8 took Swift's CPU to
 * store the zstd-compressed reference disk (1.06 GB) from 3.7 to 2.8-3.1 s and Ferry's upload from
 * 5.0 to 4.6 s. Memory: the parts in flight are held (IN_FLIGHT_PARTS_BYTES bounds them).
 */
const DEFAULT_PART = 16 * 1024 * 1024;
/**
 * Part bytes in flight by default (memory: each part in flight holds a buffer). 48 MiB: three
 * 16 MiB parts, as-is as when converting (a raw upload of the 4 GiB reference disk to Swift: 11.1 s
 * and 220-224 MiB peak with 3 in flight, 10.8-11.1 s and 245-257 MiB with 4).
 */
const IN_FLIGHT_PARTS_BYTES = 48 * 1024 * 1024;
/** Failures of the source image: the upload is abandoned (its parts removed), not kept to resume. */
const SOURCE_FAULTS: readonly string[] = ['IMAGE_CORRUPT', 'IMAGE_TRUNCATED', 'IMAGE_UNSUPPORTED_FEATURE'];
/**
 * Readahead of the content digest that runs beside an as-is upload of a compressed image (the
 * stream's default, 64 MiB, held ~100 MiB more at the peak for no gain in speed here: 1.06 GB zstd
 * qcow2 to a file:// store in 4.0-4.2 s either way, peak RSS 370-390 MiB instead of 470).
 */
const DIGEST_IN_FLIGHT = 16 * 1024 * 1024;

export interface UploadOptions {
  /** Convert to this format while uploading (default: upload the file as it is). */
  to?: ImageFormat;
  subformat?: string;
  /** Compress (qcow2; implies --to qcow2 when no format is given). */
  compress?: CompressionCodec;
  clusterSize?: number;
  /** Compression level (zstd 1–19, zlib 1–9). */
  compressLevel?: number;
  exactSize?: boolean;
  alignSize?: number;
  /** Source format (default: detected). */
  format?: ImageFormat;
  allowBacking?: boolean;
  partSize?: number;
  /** Parts in flight (default: 6 as-is, 3 when converting, fewer for large parts: 48 MiB of parts at most, so 3 with the default 16 MiB). */
  concurrency?: number;
  /** Bytes per second (default: unlimited). */
  bandwidth?: number;
  /** Worker threads for compression and hashing (default: all cores). */
  workers?: number;
  /** Bound on source bytes read ahead and on bytes being encoded (default 8 MiB each). */
  maxInFlightBytes?: number;
  store?: StoreOptions;
  onProgress?: (p: UploadProgress) => void;
  signal?: AbortSignal;
}

export interface UploadProgress {
  /** Source bytes processed (virtual bytes when converting, file bytes as-is). */
  position: number;
  total: number;
  /** Bytes sent to the store and acknowledged. */
  sent: number;
}

export interface UploadResult {
  dest: string;
  source: { image: string; format: string; virtualSize: number };
  object: { size: number; etag: string; parts: number; partSize: number; format: string; subformat?: string };
  content: { algorithm: string; digest: string; chunks: number };
  /** Bytes sent in this run (parts the server already held are not counted). */
  bytesSent: number;
  partsSent: number;
  /** Parts the server already held from an interrupted run. */
  partsResumed: number;
  resumed: boolean;
  manifest: string;
  seconds: number;
}

function interrupted(): FerryError {
  return new FerryError('INTERRUPTED', 'the upload was interrupted; what was sent stays on the server', {
    remedy: 'Run the same command again: it resumes and sends only the missing parts (`ferry upload --abort DEST` discards it).',
  });
}

/** Part size for an object of at most `maxBytes`: 16 MiB, or more so that 10,000 parts hold it. */
export function choosePartSize(maxBytes: number): number {
  return Math.max(DEFAULT_PART, Math.ceil(maxBytes / (MAX_PARTS - 10) / MIB) * MIB);
}

async function identity(path: string): Promise<SourceIdentity> {
  try {
    const st = await stat(path);
    return { path: await realpath(path), size: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
  } catch (err) {
    throw fromSystemError(err, path);
  }
}

interface Plan {
  asIs: boolean;
  spec: WriteSpec | undefined;
  settings: Record<string, unknown>;
  partSize: number;
}

function plan(image: DiskImage, fileSize: number, opts: UploadOptions, uniformParts: boolean): Plan {
  const asIs = opts.to === undefined && opts.compress === undefined && opts.subformat === undefined && opts.clusterSize === undefined;
  const spec: WriteSpec | undefined = asIs
    ? undefined
    : {
        format: opts.to ?? 'qcow2',
        ...(opts.subformat ? { subformat: opts.subformat } : {}),
        ...(opts.compress ? { compress: opts.compress } : {}),
        ...(opts.clusterSize ? { clusterSize: opts.clusterSize } : {}),
        ...(opts.compressLevel ? { compressLevel: opts.compressLevel } : {}),
        ...(opts.exactSize ? { exactSize: true } : {}),
        ...(opts.alignSize ? { alignSize: opts.alignSize } : {}),
      };
  // Most an output can be: the file itself, or the virtual size plus metadata.
  const maxBytes = asIs ? fileSize : Math.ceil(image.virtualSize * 1.01) + 64 * 1024 * 1024;
  // Part 1 holds the output's header and tables (rewritten at the end): on a store whose parts
  // must all be the same size, no part can be smaller than that (VMDK monolithicSparse keeps
  // 128 MiB of grain tables there for a 1 TiB disk).
  const headBytes = spec ? headBytesFor(spec, image.virtualSize, 'measure') : 0;
  const fitted = uniformParts ? Math.max(choosePartSize(maxBytes), Math.ceil(headBytes / MIB) * MIB) : choosePartSize(maxBytes);
  if (headBytes > MAX_PART) {
    throw new FerryError('USAGE', `a ${spec!.format} output of this ${image.virtualSize}-byte disk starts with ${headBytes} bytes of tables, more than one part can hold (5 GiB)`, {
      remedy: spec!.format === 'vmdk' ? 'Upload it as streamOptimized VMDK (the default), or as qcow2.' : 'Upload it in another format (--to qcow2).',
    });
  }
  const partSize = opts.partSize ?? fitted;
  if (partSize < MIN_PART || partSize > MAX_PART) {
    throw new FerryError('USAGE', `part size ${partSize} is outside S3's limits (5 MiB – 5 GiB)`, { remedy: 'Give --part-size between 5M and 5G, or leave it out.' });
  }
  if (uniformParts && partSize < headBytes) {
    throw new FerryError('USAGE', `this store needs parts of one size, and the ${spec!.format} output's header and tables (${headBytes} bytes) must fit in part 1: --part-size ${partSize} is too small`, {
      remedy: `Give --part-size ${Math.ceil(headBytes / MIB)}M or more, or leave it out to have it chosen.`,
    });
  }
  // +1: part 1 may be shorter than the others (object-sink.ts FIRST_PART_MIN).
  if (Math.ceil(maxBytes / partSize) + 1 > MAX_PARTS) {
    throw new FerryError('USAGE', `with ${partSize}-byte parts this upload could need more than ${MAX_PARTS} parts`, {
      remedy: `Give a larger --part-size (at least ${choosePartSize(maxBytes)} bytes), or leave it out to have it chosen.`,
    });
  }
  // Part 1's size depends on the store (uniform parts or not): a checkpoint made the other way is not resumed.
  const settings = { tool: toolVersion(), asIs, spec: spec ?? null, partSize, firstPartMin: FIRST_PART_MIN, ...(uniformParts ? { uniformParts: true } : {}) };
  return { asIs, spec, settings, partSize };
}

export async function uploadImage(src: string, dest: string, opts: UploadOptions = {}): Promise<UploadResult> {
  const started = process.hrtime.bigint();
  const loc = parseLocation(dest);
  // The source first (local, cheap), then the store: credentials and bucket, before any work.
  const image = await openImage(src, { ...(opts.format ? { format: opts.format } : {}), ...(opts.allowBacking ? { allowBacking: true } : {}) });
  try {
    const store = openStore(loc, { maxSockets: (opts.concurrency ?? 8) + 4, ...opts.store });
    try {
      if (store instanceof FileStore) await store.ensure();
      await store.probe();
      const source = await identity(src);
      try {
        return await runUpload(image, source, store, loc.key, loc.url, opts, started);
      } catch (err) {
        if (err instanceof RestartUpload) return await runUpload(image, source, store, loc.key, loc.url, opts, started);
        throw err;
      }
    } finally {
      store.close();
    }
  } finally {
    await image.close();
  }
}

/** Thrown when a completed object turned out not to match: start a fresh upload. */
class RestartUpload extends Error {}

async function runUpload(image: DiskImage, source: SourceIdentity, store: ObjectStore, key: string, url: string, opts: UploadOptions, started: bigint): Promise<UploadResult> {
  const p = plan(image, source.size, opts, store.uniformParts ?? false);
  const workers = opts.workers ?? defaultWorkers();
  // Converting already keeps the cores busy: fewer parts in flight, less memory.
  const concurrency = opts.concurrency ?? Math.max(2, Math.min(p.asIs ? 6 : 3, Math.floor(IN_FLIGHT_PARTS_BYTES / p.partSize)));

  // Resume what the checkpoint names, if it is the same source with the same settings.
  let held = new Map<number, string>();
  let verifyOnly = false;
  let checkpoint: UploadCheckpoint | undefined;
  const saved = loadCheckpoint(url);
  if (saved) {
    const c = saved.checkpoint;
    const same = c.source.path === source.path && c.source.size === source.size && c.source.mtimeMs === source.mtimeMs && c.source.ino === source.ino && sameSettings(c.settings, p.settings);
    if (!same) {
      await store.abort(key, c.uploadId).catch(() => {}); // our own stale upload
      removeCheckpoint(url);
    } else {
      const onServer = await store.listParts(key, c.uploadId);
      if (onServer) {
        for (const sp of onServer) {
          const mine = saved.parts.get(sp.partNumber);
          // Trusted only when the server's ETag (its MD5 of what it holds) is what we recorded.
          if (mine && mine.md5 === sp.etag && mine.size === sp.size) held.set(sp.partNumber, sp.etag);
        }
        checkpoint = c;
      } else {
        const info = await store.head(key);
        if (info && info.metadata[META.token] === c.token && saved.parts.size > 0) {
          held = new Map([...saved.parts].map(([n, r]) => [n, r.md5]));
          verifyOnly = true;
          checkpoint = c;
        } else {
          removeCheckpoint(url); // the upload is gone (aborted or expired): start again
        }
      }
    }
  }
  const resumed = checkpoint !== undefined;
  if (!checkpoint) {
    const token = randomBytes(16).toString('hex');
    const format = p.spec?.format ?? image.format;
    const uploadId = await store.createMultipart(key, { [META.token]: token, [META.format]: format, [META.virtualSize]: String(image.virtualSize) }, p.partSize);
    checkpoint = { version: 1, dest: url, uploadId, token, partSize: p.partSize, headBytes: 0, source, settings: p.settings, created: new Date().toISOString() };
    saveCheckpoint(checkpoint);
  }

  const total = p.asIs ? source.size : image.virtualSize;
  let position = 0;
  let sentBytes = 0;
  const report = () => opts.onProgress?.({ position, total, sent: sentBytes });
  const cp = checkpoint;
  const pool = workers > 0 ? new WorkerPool(workers) : undefined;
  const sink = new ObjectSink({
    store,
    key,
    uploadId: cp.uploadId,
    partSize: p.partSize,
    concurrency,
    held,
    verifyOnly,
    crc64: store.reportsCrc64 === true,
    ...(pool ? { pool } : {}),
    ...(opts.bandwidth ? { limiter: new RateLimiter(opts.bandwidth) } : {}),
    onPart: (s) => recordPart(url, s.partNumber, s.md5, s.size),
    onSent: (n) => {
      sentBytes += n;
      report();
    },
  });
  let content: ContentDigest;
  let outFormat: string;
  let outSubformat: string | undefined;
  let outVirtual = image.virtualSize;
  try {
    if (p.asIs) {
      const rawAsIs = image.format === 'raw' && image.virtualSize === source.size;
      const hasher = rawAsIs ? offloadedHasher(source.size, pool) : undefined;
      // Any other format: its virtual content is hashed (decoded on the pool) while the file's
      // bytes go up, two reads of the same file side by side (one after the other took the sum of
      // both). The first to fail stops the other (its error is the one reported), and a damaged
      // image is found before the object is completed.
      if (opts.signal?.aborted) throw interrupted();
      const both = new AbortController();
      const signal = opts.signal ? AbortSignal.any([opts.signal, both.signal]) : both.signal;
      let firstError: { error: unknown } | undefined;
      const failed = (error: unknown): never => {
        firstError ??= { error };
        both.abort();
        throw error;
      };
      const digesting = rawAsIs ? undefined : digestImage(image, { ...(pool ? { pool } : {}), signal, maxInFlightBytes: DIGEST_IN_FLIGHT }).catch(failed);
      const copying = copyFile(source.path, sink, hasher, (pos) => {
        position = pos;
        report();
      }, signal).catch(failed);
      const [copied, digested] = await Promise.allSettled([copying, digesting]);
      if (opts.signal?.aborted) throw interrupted();
      if (copied.status === 'rejected' || digested.status === 'rejected') throw (firstError ?? { error: new Error('the upload failed') }).error;
      content = hasher ? await hasher.result() : digested.value!;
      await sink.commit();
      outFormat = image.format;
    } else {
      const writer = createWriter({ sink, spec: p.spec!, sourceSize: image.virtualSize });
      sink.setHeadBytes(writer.headBytes);
      const hasher = offloadedHasher(writer.virtualSize, pool); // the output reads as zeros past the source's end
      const window = opts.maxInFlightBytes ?? 8 * 1024 * 1024;
      const stream = streamVirtual(image, { chunkSize: chunkSizeFor(writer), align: writer.unitSize, workers, heldChunks: Math.ceil(window / chunkSizeFor(writer)) + 2, maxInFlightBytes: window, ...(pool ? { pool } : {}) });
      await writeChunks(hashing(stream, hasher, pool), image.virtualSize, writer, pool, {
        maxInFlightBytes: window,
        onProgress: (pr) => {
          position = pr.position;
          report();
        },
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      const summary = await writer.finish();
      if (opts.signal?.aborted) throw interrupted();
      await sink.commit();
      content = await hasher.result();
      outFormat = summary.format;
      outSubformat = summary.subformat;
      outVirtual = summary.virtualSize;
    }
  } catch (err) {
    await sink.abort();
    await pool?.close();
    if (verifyOnly && err instanceof FerryError && err.code === 'UPLOAD_INCOMPLETE') {
      removeCheckpoint(url);
      throw new RestartUpload();
    }
    if (opts.signal?.aborted) throw interrupted();
    // The image itself is damaged: running again cannot help, so nothing is kept to resume — the
    // multipart upload is aborted, or, when this run only checked an upload completed by an
    // earlier one (verifyOnly; its token proved it ours), that object is deleted.
    if (err instanceof FerryError && SOURCE_FAULTS.includes(err.code)) {
      let left = '';
      try {
        if (verifyOnly) await store.delete(key);
        else await store.abort(key, cp.uploadId);
        removeCheckpoint(url);
      } catch {
        left = verifyOnly
          ? ` The object ${url}, completed by an earlier run from this damaged image, could not be deleted now: delete it before anything imports it.`
          : ` What was uploaded could not be removed from the server now: remove it later with \`ferry upload --abort SOURCE ${url}\` (or \`ferry storage gc\`).`;
      }
      throw new FerryError(err.code, err.message, { remedy: `${err.remedy}${left}`, ...(err.details ? { details: err.details } : {}), cause: err });
    }
    if (err instanceof FerryError && err.code !== 'INTERNAL') {
      throw new FerryError(err.code, err.message, {
        remedy: `${err.remedy} What was uploaded stays on the server: run the same command again to resume.`,
        ...(err.details ? { details: err.details } : {}),
        cause: err,
      });
    }
    throw err;
  }
  await pool?.close();
  // Fault injection for the resume tests: die as if killed right after Complete.
  if (process.env.FERRY_FAULT === 'kill-after-complete') process.kill(process.pid, 'SIGKILL');

  // Prove the result: the object the server assembled is the one we sent.
  const parts = sink.parts;
  const md5 = (b: Buffer) => createHash('md5').update(b).digest();
  const expectedEtag = multipartEtag(parts.map((x) => Buffer.from(x.md5, 'hex')), md5);
  const info = await store.head(key);
  if (!info) {
    throw new FerryError('UPLOAD_INCOMPLETE', `${url}: the server accepted the upload but the object is not there`, { remedy: 'Run the upload again.' });
  }
  if (info.size !== sink.objectSize || (info.etag.includes('-') && info.etag !== expectedEtag)) {
    removeCheckpoint(url);
    throw new FerryError('CHECKSUM_MISMATCH', `${url}: the stored object (${info.size} bytes, ETag ${info.etag}) is not what was sent (${sink.objectSize} bytes, ETag ${expectedEtag})`, {
      remedy: 'Another writer replaced the object during the upload, or the server mangled it: upload again, and make sure nothing else writes this key.',
    });
  }
  // COS: the object's CRC-64 must be the one of the bytes sent.
  if (info.crc64 && parts.every((x) => x.crc64 !== undefined)) {
    let crc = parts[0]!.crc64!;
    for (const x of parts.slice(1)) crc = crc64Combine(crc, x.crc64!, x.size);
    if (BigInt(info.crc64) !== crc) {
      removeCheckpoint(url);
      throw new FerryError('CHECKSUM_MISMATCH', `${url}: the server's CRC-64 of the object (${info.crc64}) is not the one of the bytes sent (${crc})`, {
        remedy: 'The object was damaged on its way or replaced during the upload: upload again.',
      });
    }
  }
  const manifest: Manifest = {
    ferry: 'manifest',
    version: 1,
    tool: `ferry ${toolVersion()}`,
    created: new Date().toISOString(),
    object: { key, size: sink.objectSize, etag: info.etag || expectedEtag, partSize: p.partSize, firstPartSize: sink.headSize, partMd5: parts.map((x) => x.md5) },
    image: { format: outFormat, ...(outSubformat ? { subformat: outSubformat } : {}), virtualSize: outVirtual },
    content,
    source: { name: image.name, format: image.format, virtualSize: image.virtualSize },
  };
  await writeManifest(store, manifest);
  removeCheckpoint(url);
  const sentParts = parts.filter((x) => x.sent);
  return {
    dest: url,
    source: { image: image.name, format: image.format, virtualSize: image.virtualSize },
    object: { size: sink.objectSize, etag: manifest.object.etag, parts: parts.length, partSize: p.partSize, format: outFormat, ...(outSubformat ? { subformat: outSubformat } : {}) },
    content: { algorithm: content.algorithm, digest: content.digest, chunks: content.chunks.length },
    bytesSent: sink.bytesSent,
    partsSent: sentParts.length,
    partsResumed: parts.length - sentParts.length,
    resumed,
    manifest: `${url}.ferry.json`,
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
}

/** Copies a file's bytes into the sink in order; holes (sparse ranges) become zeros. */
async function copyFile(path: string, sink: ObjectSink, hasher: ContentHasher | undefined, onProgress: (pos: number) => void, signal?: AbortSignal): Promise<void> {
  const src = await FileSource.open(path);
  const piece = 4 * 1024 * 1024;
  const buf = Buffer.allocUnsafe(piece);
  try {
    const size = src.size;
    const ranges = src.dataRanges ? await src.dataRanges(0, size) : [{ offset: 0, length: size }];
    let pos = 0;
    for (const r of ranges) {
      if (r.offset > pos) {
        await hasher?.backlogBelow(HASHES_IN_FLIGHT);
        hasher?.zeros(pos, r.offset - pos);
      }
      for (let at = r.offset; at < r.offset + r.length; at += piece) {
        if (signal?.aborted) throw interrupted();
        const n = Math.min(piece, r.offset + r.length - at);
        let got = 0;
        while (got < n) {
          const k = await src.read(buf, got, n - got, at + got);
          if (k === 0) throw new FerryError('IO_ERROR', `${path}: the file shrank while it was read`, { remedy: 'Do not modify the image during the upload; run again.' });
          got += k;
        }
        await hasher?.backlogBelow(HASHES_IN_FLIGHT);
        hasher?.data(at, buf.subarray(0, n));
        await sink.write(buf.subarray(0, n), at);
        onProgress(at + n);
      }
      pos = r.offset + r.length;
    }
    if (pos < size) hasher?.zeros(pos, size - pos);
    await sink.truncate(size);
    onProgress(size);
  } finally {
    await src.close();
  }
}
