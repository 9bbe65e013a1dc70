// The conversion engine, one pipeline for every source/target pair:
//   source extents (streamVirtual: zero runs skipped, data chunks aligned to the writer's units,
//   compressed sources decoded on the pool) → zero detection per unit → compression of the units
//   on the same worker pool (all cores, bounded queue) → the writer, in virtual order.
// The output is written under a temporary name and renamed into place only when complete (see
// io/sink.ts); any failure or interruption removes it; with `sync` it is on the disk before that. Memory is bounded by the readahead and
// encode windows, not by the disk size.
//
// Example:
//   const img = await openImage('disk.raw');
//   await convertImage(img, 'disk.qcow2', { format: 'qcow2', compress: 'zstd' });
import type { TransferListItem } from 'node:worker_threads';
import { realpath } from 'node:fs/promises';
import { FerryError } from '../errors.js';
import { freeSpace, openSink, type Sink } from '../io/sink.js';
import type { DiskImage } from '../image/types.js';
import type { DataRun, ImageWriter, WriteSpec, WriteSummary } from '../image/writer.js';
import { createWriter } from '../image/writers.js';
import { UNIT_COMPRESSED, UNIT_FIELDS, encodeChunk } from './encode-job.js';
import type { EncodeResult } from './pool-worker.js';
import { BufferPool, fromRef, refTo } from './buffer-pool.js';
import { streamVirtual, type VirtualChunk } from './virtual-stream.js';
import { defaultWorkers, WorkerPool } from './worker-pool.js';

export interface ConvertProgress {
  /** Virtual bytes done (written or skipped as zero). */
  position: number;
  total: number;
  /** Source data bytes read so far. */
  dataBytes: number;
}

export interface ConvertOptions {
  /** Replace an existing output file. */
  overwrite?: boolean;
  /**
   * Flush the output to stable storage before it gets its final name (default: files no, as
   * qemu-img; block devices yes). See SinkOptions.sync.
   */
  sync?: boolean;
  /** Worker threads for compression and decompression (default: all cores). */
  workers?: number;
  /** Bound on source bytes read ahead, and on bytes being encoded ahead of the writer (default 32 MiB each). */
  maxInFlightBytes?: number;
  /**
   * Zero runs shorter than this between data are read into the data chunks (see StreamOptions;
   * the writer's zero detection still skips them), so chunks stay whole: fewer, larger pieces for
   * the pool and for content hashing. Default 0.
   */
  minZeroRun?: number;
  onProgress?: (p: ConvertProgress) => void;
  /** Aborting stops the conversion with INTERRUPTED and removes the partial output. */
  signal?: AbortSignal;
  /** A worker pool to use (shared with the caller; not closed here). */
  pool?: WorkerPool;
  /** Sees (and may wrap) the source chunks on their way to the writer, e.g. to hash them. */
  wrapStream?: (chunks: AsyncGenerator<VirtualChunk>) => AsyncGenerator<VirtualChunk>;
  /** Runs after the output is complete and before it is committed: throwing discards it. */
  beforeCommit?: () => Promise<void>;
  /**
   * Resumable writing (raw output only): the output file is this fixed temporary path, kept when
   * the conversion fails so that a later run can resume (see SinkOptions.partialPath).
   */
  partialPath?: string;
  /** raw output only: the output already holds the content below this offset; start there. */
  resumeAt?: number;
  /**
   * Durable progress: every `every` bytes of data written, the output is flushed to stable storage
   * (in the background, while writing goes on) and then `save` learns the offset below which the
   * output is complete. A run resumed at that offset (resumeAt) loses nothing. `written` learns,
   * after each data chunk, the offset below which everything has been handed to the kernel (it
   * survives the process being killed, not a power loss).
   */
  checkpoint?: Checkpoint;
  /** Write into this sink instead of opening `dst` (e.g. a disk on a remote receiver). */
  sink?: Sink;
  /** Blocking writes on this thread (see SinkOptions.blockingWrites): for the CLI only. */
  blockingWrites?: boolean;
  /** Aligned pieces written with O_DIRECT (see SinkOptions.directWrites). */
  directWrites?: boolean;
}

export interface Checkpoint {
  every: number;
  save: (position: number) => void | Promise<void>;
  written?: (position: number) => void;
}

export interface ConvertResult {
  source: { image: string; format: string; virtualSize: number };
  output: WriteSummary & { path: string };
  /** Source data bytes read (zero/unallocated ranges are not read). */
  dataBytes: number;
  /** Output units stored compressed / raw. */
  units: { compressed: number; raw: number };
  seconds: number;
}

const DEFAULT_IN_FLIGHT = 32 * 1024 * 1024;
/**
 * The windows when nothing is compressed on the way out: data read is written while it is still in
 * the CPU's cache (a 32 MiB window plus the chunks waiting for the writer overflow a 32 MiB L3, and
 * the kernel's copy into the page cache then runs from DRAM: measured 1.5 s against 0.9 s for the
 * 4 GiB reference disk to qcow2, before the VM page-cache effect described in io/sink.ts was
 * known; re-tested with the current write path, 8, 16 and 32 MiB were indistinguishable; with blocking
 * writes, 16 MiB 1.07 s against 8 MiB 1.12 s, medians of 6 alternating runs). A compressed source keeps room for chunks decoding on the pool.
 */
const PLAIN_IN_FLIGHT = 16 * 1024 * 1024;
const DECODING_IN_FLIGHT = 16 * 1024 * 1024;
const MIN_CHUNK = 4 * 1024 * 1024;

/** Whether the source stores (some of) its first GiB compressed: it then decodes on the pool. */
async function decodesOnPool(image: DiskImage): Promise<boolean> {
  const segs = await image.map(0, Math.min(image.virtualSize, 1024 * 1024 * 1024));
  return segs.some((s) => s.source.type === 'compressed');
}

/** Bytes read/encoded ahead of the writer: the caller's choice, else by the encodings in and out. */
function inFlightWindow(writer: ImageWriter, opts: Pick<ConvertOptions, 'maxInFlightBytes'>, decoding: boolean): number {
  if (opts.maxInFlightBytes) return opts.maxInFlightBytes;
  if (writer.encoding.codec !== 'none') return DEFAULT_IN_FLIGHT;
  return decoding ? DECODING_IN_FLIGHT : PLAIN_IN_FLIGHT;
}

function interrupted(): FerryError {
  return new FerryError('INTERRUPTED', 'the conversion was interrupted; the partial output was removed', {
    remedy: 'Run the command again to convert from the start.',
  });
}

/** Refuses to write over the image being read. */
async function refuseSameFile(image: DiskImage, dst: string): Promise<void> {
  let a: string;
  let b: string;
  try {
    [a, b] = await Promise.all([realpath(image.name), realpath(dst)]);
  } catch {
    return; // the output does not exist yet (or the source is inside a container)
  }
  if (a === b) {
    throw new FerryError('USAGE', `${dst} is the image being converted; Ferry will not write over its own input`, {
      remedy: 'Give a different output path.',
    });
  }
}

/** Bytes an uncompressed output needs at least: the source's data (for a free-space preflight). */
async function minimumOutputBytes(image: DiskImage): Promise<number> {
  let data = 0;
  const window = 1024 * 1024 * 1024;
  for (let pos = 0; pos < image.virtualSize; pos += window) {
    for (const s of await image.map(pos, Math.min(window, image.virtualSize - pos))) if (s.source.type !== 'zero') data += s.length;
  }
  return data;
}

export async function convertImage(image: DiskImage, dst: string, spec: WriteSpec, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const started = process.hrtime.bigint();
  if (opts.signal?.aborted) throw interrupted();
  await refuseSameFile(image, dst);
  const resumeAt = opts.resumeAt ?? 0;
  const sink = opts.sink ?? await openSink(dst, {
    overwrite: opts.overwrite ?? false,
    ...(opts.sync !== undefined ? { sync: opts.sync } : {}),
    ...(opts.partialPath ? { partialPath: opts.partialPath } : {}),
    ...(opts.blockingWrites ? { blockingWrites: true } : {}),
    ...(opts.directWrites ? { directWrites: true } : {}),
  });
  let pool: WorkerPool | undefined;
  try {
    const writer = createWriter({ sink, spec, sourceSize: image.virtualSize, ...(resumeAt ? { resumeAt } : {}) });
    // A kept partial file: only what is below resumeAt is known good; the rest is written again.
    if (opts.partialPath) await sink.truncate(resumeAt);
    if (writer.encoding.codec === 'none' && !sink.isBlockDevice && !resumeAt) await preflightSpace(image, sink);
    const workers = opts.pool ? opts.pool.size : (opts.workers ?? defaultWorkers());
    if (!opts.pool) pool = workers > 0 ? new WorkerPool(workers) : undefined;
    const stats = await pump(image, writer, opts.pool ?? pool, workers, opts, sink);
    const summary = await writer.finish();
    if (opts.signal?.aborted) throw interrupted();
    await opts.beforeCommit?.();
    await sink.commit();
    return {
      source: { image: image.name, format: image.format, virtualSize: image.virtualSize },
      output: { ...summary, path: dst },
      dataBytes: stats.dataBytes,
      units: stats.units,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    await sink.abort();
    throw err;
  } finally {
    await pool?.close();
  }
}

async function preflightSpace(image: DiskImage, sink: Sink): Promise<void> {
  const free = await freeSpace(sink.path);
  if (free === undefined) return;
  const need = await minimumOutputBytes(image);
  if (need > free) {
    throw new FerryError('TARGET_NO_SPACE', `${sink.path}: the output needs at least ${need} bytes (the source's data), but only ${free} bytes are free there`, {
      remedy: 'Free space on the target file system, write elsewhere, or write a compressed output (--to qcow2 --compress zstd).',
      details: { required: need, free },
    });
  }
}

/** Chunk size for a writer: about 4 MiB, a whole number of its units. */
export function chunkSizeFor(writer: ImageWriter): number {
  return Math.ceil(MIN_CHUNK / writer.unitSize) * writer.unitSize;
}

/** Streams the source through encoding into the writer. */
async function pump(image: DiskImage, writer: ImageWriter, pool: WorkerPool | undefined, workers: number, opts: ConvertOptions, sink: Sink) {
  // The consumer holds chunks until they are written: up to the encode window's worth.
  const window = inFlightWindow(writer, opts, writer.encoding.codec === 'none' && (await decodesOnPool(image)));
  const heldChunks = Math.ceil(window / chunkSizeFor(writer)) + 4;
  const from = opts.resumeAt ?? 0;
  const stream = streamVirtual(image, {
    chunkSize: chunkSizeFor(writer),
    align: writer.unitSize,
    workers,
    heldChunks,
    maxInFlightBytes: window,
    ...(opts.minZeroRun ? { minZeroRun: opts.minZeroRun } : {}),
    ...(from ? { offset: from, length: image.virtualSize - from } : {}),
    ...(pool ? { pool } : {}),
  });
  const { checkpoint, ...rest } = opts;
  const flush = () => sink.flush?.() ?? Promise.resolve();
  return writeChunks(opts.wrapStream ? opts.wrapStream(stream) : stream, image.virtualSize, writer, pool, { ...rest, maxInFlightBytes: window, ...(checkpoint ? { checkpoint: { ...checkpoint, flush } } : {}) });
}

/** Flushes and records durable progress, one flush at a time, in the background. */
class Checkpointer {
  private last = 0;
  private inFlight: Promise<void> | undefined;
  private error: unknown;

  constructor(
    private readonly cfg: Checkpoint & { flush: () => Promise<void> },
    from: number,
  ) {
    this.last = from;
  }

  /** Everything below `position` has been handed to the output. */
  written(position: number): void {
    if (this.error) throw this.error;
    this.cfg.written?.(position);
    if (this.inFlight || position - this.last < this.cfg.every) return;
    this.last = position;
    this.inFlight = this.cfg
      .flush()
      .then(() => this.cfg.save(position))
      .catch((err: unknown) => {
        this.error ??= err;
      })
      .finally(() => {
        this.inFlight = undefined;
      });
  }

  async settle(): Promise<void> {
    await this.inFlight;
    if (this.error) throw this.error;
  }
}

/**
 * Encodes data chunks (aligned to the writer's units, in increasing order) and hands the runs to
 * the writer in order; zero chunks are skipped. Closes `chunks` when done or failed.
 */
export async function writeChunks(
  chunks: AsyncGenerator<VirtualChunk>,
  total: number,
  writer: ImageWriter,
  pool: WorkerPool | undefined,
  opts: Pick<ConvertOptions, 'maxInFlightBytes' | 'onProgress' | 'signal' | 'resumeAt'> & {
    checkpoint?: Checkpoint & { flush: () => Promise<void> };
  },
) {
  const checkpoints = opts.checkpoint ? new Checkpointer(opts.checkpoint, opts.resumeAt ?? 0) : undefined;
  const unit = writer.unitSize;
  const maxInFlight = opts.maxInFlightBytes ?? (writer.encoding.codec === 'none' ? DECODING_IN_FLIGHT : DEFAULT_IN_FLIGHT);
  const enc = writer.encoding;
  const compress = enc.codec !== 'none' && pool !== undefined; // else everything on this thread
  const units = { compressed: 0, raw: 0 };
  let dataBytes = 0;

  const toRuns = (offset: number, data: Buffer, recs: number[], out: Buffer): DataRun[] => {
    const runs: DataRun[] = [];
    for (let i = 0; i < recs.length; i += UNIT_FIELDS) {
      const [at, len, kind, from, n] = [recs[i]!, recs[i + 1]!, recs[i + 2]!, recs[i + 3]!, recs[i + 4]!];
      if (kind === UNIT_COMPRESSED) {
        units.compressed++;
        runs.push({ offset: offset + at, length: len, data: out.subarray(from, from + n), compressed: true });
      } else {
        units.raw += Math.ceil(len / unit);
        runs.push({ offset: offset + at, length: len, data: data.subarray(at, at + len), compressed: false });
      }
    }
    return runs;
  };

  // Room for compressed output, from a shared arena like the stream's chunks.
  // (a chunk's compressed units never exceed it by more than ~1/1000, plus the last padded unit)
  const outSlots = new BufferPool(chunkSizeFor(writer) + Math.max(unit, chunkSizeFor(writer) / 16), Math.ceil(maxInFlight / chunkSizeFor(writer)) + 4);

  /** Encodes a data chunk; `done` hands its buffers back once the runs are written. */
  const encode = (c: VirtualChunk): Promise<{ runs: DataRun[]; done: () => void }> => {
    const data = c.data!;
    if (!compress) {
      // Zero detection (and, with no worker pool, compression) on this thread.
      const e = encodeChunk(data, unit, enc);
      return Promise.resolve({ runs: toRuns(c.offset, data, e.units, e.out), done: () => c.release?.() });
    }
    const transfer: TransferListItem[] = [];
    const input = refTo(data, transfer); // shared arena range, or the chunk's own buffer (transferred)
    const room = outSlots.tryTake(outSlots.slotSize);
    const out = room ? refTo(room, transfer) : undefined;
    return pool!.run<EncodeResult>({ type: 'encode', input, ...(out ? { out } : {}), unitSize: unit, encoding: enc }, transfer).then((r) => {
      const chunk = fromRef(r.input);
      const packed = fromRef(r.out);
      return {
        runs: toRuns(c.offset, chunk, r.units, packed),
        done: () => {
          c.release?.(chunk);
          outSlots.give(room);
        },
      };
    });
  };

  // Writing runs as its own chain of promises, so reading and encoding go on while the writer
  // waits for the disk; `pending` bounds the bytes read but not yet written.
  let pending = 0;
  let failure: { error: unknown } | undefined;
  let chain: Promise<void> = Promise.resolve();
  let wake: (() => void) | undefined;
  const settle = (cost: number) => {
    pending -= cost;
    wake?.();
  };
  const enqueue = (cost: number, end: number, encoded: Promise<{ runs: DataRun[]; done: () => void }>) => {
    pending += cost;
    encoded.catch(() => {}); // observed by the chain
    chain = chain.then(async () => {
      try {
        if (failure) return;
        const { runs, done } = await encoded;
        // Writers have written (not just queued) a call's runs when it returns: the buffer is free.
        if (runs.length) await writer.write(runs);
        done();
        checkpoints?.written(end);
      } catch (error) {
        failure ??= { error };
      } finally {
        settle(cost);
      }
    });
  };

  let position = 0;
  try {
    for await (const c of chunks) {
      if (opts.signal?.aborted) throw interrupted();
      if (failure) throw failure.error;
      if (c.data) {
        dataBytes += c.length;
        enqueue(c.length, c.offset + c.length, encode(c));
        while (pending > maxInFlight && !failure) await new Promise<void>((r) => (wake = r));
      }
      position = c.offset + c.length;
      opts.onProgress?.({ position, total, dataBytes });
    }
    await chain;
    if (failure) throw failure.error;
    await checkpoints?.settle();
  } finally {
    // On failure, let queued writes and jobs settle before the pool closes under them.
    failure ??= { error: undefined };
    await chain;
    await chunks.return(undefined);
  }
  return { dataBytes, units };
}
