// The streaming read engine: delivers a virtual disk range as ordered chunks (data with bytes,
// zero/unallocated runs without), with bounded readahead (several chunks' host reads in flight,
// limited by maxInFlightBytes), coalesced host reads, and compressed units decoded on a
// worker_threads pool, one message per chunk with its buffers transferred, results re-ordered.
//
// Chunking (see chunk-plan.ts): data chunks are at most chunkSize and never cross a multiple of
// chunkSize; a zero or unallocated run is ONE chunk however long (1 TiB of unallocated space is a
// single chunk), except that runs shorter than minZeroRun inside data are read as zeros within the
// data chunk.
//
// Example:
//   for await (const c of streamVirtual(image)) if (c.data) await sink.write(c.offset, c.data);
import { FerryError, truncated } from '../errors.js';
import type { ByteSource } from '../io/byte-source.js';
import type { DiskImage } from '../image/types.js';
import { planChunks, type PlanItem } from './chunk-plan.js';
import { runDecodeJob, type DecodeOp } from './decode-job.js';
import type { TransferListItem } from 'node:worker_threads';
import { BufferPool, fromRef, refTo } from './buffer-pool.js';
import type { DecodeResult } from './pool-worker.js';
import { defaultWorkers, WorkerPool } from './worker-pool.js';

export interface VirtualChunk {
  /** Virtual offset. */
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'unallocated';
  /** The chunk's bytes (data chunks only); a buffer of its own, the consumer may keep it. */
  data?: Buffer;
  /**
   * Data chunks: hands the buffer back for reuse once the consumer is done with `data` (optional;
   * without it the buffer is garbage collected). After a transfer to a worker and back, pass the
   * buffer that came back.
   */
  release?: (returned?: Buffer) => void;
}

export interface StreamOptions {
  offset?: number;
  /** Default: to the end of the disk. */
  length?: number;
  /** Virtual bytes per data chunk (default 4 MiB). */
  chunkSize?: number;
  /** Decompression workers (default: all cores); 0 decodes on the calling thread. */
  workers?: number;
  /** Bound on bytes held by chunks being read/decoded ahead of the consumer (default 64 MiB). */
  maxInFlightBytes?: number;
  /** Zero runs shorter than this inside data are read into the data chunk (default 0: never). */
  minZeroRun?: number;
  /**
   * Data chunks start and end on multiples of this (default 1): zero bytes sharing an aligned
   * block with data are read into the data chunk. A writer's unit size (cluster, grain).
   */
  align?: number;
  /** A pool to decode on (shared with other work; not closed by the stream). */
  pool?: WorkerPool;
  /** Chunks the consumer may hold (not yet released) beyond the readahead (default 8). */
  heldChunks?: number;
}

export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
export const DEFAULT_MAX_IN_FLIGHT = 64 * 1024 * 1024;
/** Host ranges closer than this are read with one read (the gap is read and dropped). */
const READ_GAP = 32 * 1024;
/** Bound on queued chunks (zero chunks cost no memory but still count here). */
const MAX_QUEUED = 256;

interface ReadRange {
  file: ByteSource;
  offset: number;
  end: number;
  /** Virtual offset of the first byte needed from it, for messages. */
  guest: number;
}

interface ChunkPlan {
  reads: ReadRange[];
  ops: DecodeOp[];
  names: string[];
  compressed: boolean;
  /** Bytes of input read for this chunk. */
  inputBytes: number;
}

function usage(message: string): FerryError {
  return new FerryError('USAGE', message, { remedy: 'Pass offsets and sizes within the disk and positive sizes.' });
}

/** Builds the reads and assembly ops of a data chunk. */
export function planReads(item: Extract<PlanItem, { type: 'data' }>): ChunkPlan {
  const reads: ReadRange[] = [];
  const ops: DecodeOp[] = [];
  const names: string[] = [];
  const nameIndex = new Map<ByteSource, number>();
  let compressed = false;
  /** Returns [read index, offset in it] for host bytes [off, off+len) of `file`. */
  const need = (file: ByteSource, off: number, len: number, guest: number): [number, number] => {
    const last = reads[reads.length - 1];
    // Ranges reaching past the end of the file stay separate, so the truncation error names the
    // first segment that is really missing.
    if (last && last.file === file && off >= last.offset && off <= last.end + READ_GAP && off + len <= file.size && last.end <= file.size) {
      last.end = Math.max(last.end, off + len);
      return [reads.length - 1, off - last.offset];
    }
    reads.push({ file, offset: off, end: off + len, guest });
    return [reads.length - 1, 0];
  };
  for (const seg of item.segments) {
    const to = seg.offset - item.offset;
    const s = seg.source;
    if (s.type === 'zero') {
      ops.push({ t: 'fill', len: seg.length, to });
    } else if (s.type === 'host') {
      const prev = ops[ops.length - 1];
      const [buf, from] = need(s.file, s.offset, seg.length, seg.offset);
      if (prev && prev.t === 'copy' && prev.buf === buf && prev.from + prev.len === from && prev.to + prev.len === to) {
        prev.len += seg.length;
      } else {
        ops.push({ t: 'copy', buf, from, len: seg.length, to });
      }
    } else {
      compressed = true;
      // As readVirtual: the compressed length is an upper bound, clipped at the end of the file
      // (a unit starting beyond the end is a truncation, reported by the read).
      const avail = s.offset > s.file.size ? 0 : Math.min(s.length, s.file.size - s.offset);
      const guestOffset = seg.offset - s.skip;
      // A unit starting past the end gets an empty range there, which readRange reports as truncated.
      const [buf, from] = need(s.file, s.offset, avail, guestOffset);
      let fi = nameIndex.get(s.file);
      if (fi === undefined) {
        fi = names.push(s.file.name) - 1;
        nameIndex.set(s.file, fi);
      }
      ops.push({
        t: 'unit', buf, from, avail, codec: s.codec, unitSize: s.unitSize, skip: s.skip, len: seg.length, to,
        file: fi, hostOffset: s.offset, guestOffset,
      });
    }
  }
  let inputBytes = 0;
  for (const r of reads) inputBytes += r.end - r.offset;
  return { reads, ops, names, compressed, inputBytes };
}

function rejected(err: unknown): Promise<never> {
  const p = Promise.reject(err);
  p.catch(() => {});
  return p;
}

/** Reads [r.offset, r.end) into a buffer at byte 0 of its own ArrayBuffer (so it can be transferred). */
async function readRange(r: ReadRange, buffers: BufferPool): Promise<Buffer> {
  const len = r.end - r.offset;
  const what = `${r.file.name}: data for virtual offset ${r.guest} (host bytes ${r.offset}..${r.end})`;
  if (r.end > r.file.size || r.offset > r.file.size) throw truncated(what, r.end, r.file.size, { guestOffset: r.guest, hostOffset: r.offset });
  const buf = buffers.take(len);
  let done = 0;
  while (done < len) {
    const n = await r.file.read(buf, done, len - done, r.offset + done);
    if (n === 0) throw truncated(what, r.end, r.offset + done, { guestOffset: r.guest, hostOffset: r.offset });
    done += n;
  }
  return buf;
}

/**
 * Streams [offset, offset+length) of the virtual disk as ordered chunks covering it exactly.
 * The worker pool (started only when a compressed unit is met) is closed when the generator
 * finishes, fails, or the consumer stops early.
 */
export async function* streamVirtual(image: DiskImage, opts: StreamOptions = {}): AsyncGenerator<VirtualChunk> {
  const offset = opts.offset ?? 0;
  const length = opts.length ?? image.virtualSize - offset;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  const workers = opts.workers ?? defaultWorkers();
  const maxInFlight = opts.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT;
  const minZeroRun = opts.minZeroRun ?? 0;
  const align = opts.align ?? 1;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > image.virtualSize) {
    throw usage(`range of ${length} bytes at ${offset} is outside the ${image.virtualSize}-byte disk ${image.name}`);
  }
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 512) throw usage(`chunkSize must be an integer ≥ 512, not ${chunkSize}`);
  if (!Number.isInteger(workers) || workers < 0) throw usage(`workers must be an integer ≥ 0, not ${workers}`);
  if (!Number.isSafeInteger(align) || align < 1 || chunkSize % align !== 0 || offset % align !== 0) {
    throw usage(`align (${align}) must divide chunkSize (${chunkSize}) and the start offset (${offset})`);
  }
  if (!(maxInFlight > 0)) throw usage(`maxInFlightBytes must be positive, not ${maxInFlight}`);

  const planner = planChunks(image, { offset, length, chunkSize, minZeroRun, align });
  let pool: WorkerPool | undefined = opts.pool;
  const ownPool = !opts.pool;
  let finished = false;
  const queue: { cost: number; chunk: Promise<VirtualChunk> }[] = [];
  let inFlight = 0;
  let lookahead: PlanItem | undefined;
  let planDone = false;

  // Chunk buffers from a shared arena: a bit larger than a chunk, so compressed input ranges fit
  // too; enough slots for the readahead (a chunk in flight holds its input ranges and its output:
  // two or more slots) and for what a consumer may still hold. Slots cost address space, and
  // memory only once used; running out falls back to fresh buffers (garbage, copies, transfers).
  const buffers = new BufferPool(chunkSize + chunkSize / 4, 3 * Math.ceil(maxInFlight / chunkSize) + (opts.heldChunks ?? 8) + 4);
  const dataChunk = (item: Extract<PlanItem, { type: 'data' }>, data: Buffer): VirtualChunk => ({
    offset: item.offset,
    length: item.length,
    kind: 'data',
    data,
    release: (returned) => buffers.give(returned ?? data),
  });

  const load = async (item: Extract<PlanItem, { type: 'data' }>, plan: ChunkPlan): Promise<VirtualChunk> => {
    // All reads run at once; a failure is reported for the first range in virtual order.
    const settled = await Promise.allSettled(plan.reads.map((r) => readRange(r, buffers)));
    const bufs = settled.map((r) => {
      if (r.status === 'rejected') throw r.reason;
      return r.value;
    });
    const only = plan.ops[0];
    if (plan.ops.length === 1 && only?.t === 'copy' && only.from === 0 && only.len === bufs[0]!.length) return dataChunk(item, bufs[0]!);
    const out = buffers.take(item.length);
    if (!plan.compressed || workers === 0) {
      runDecodeJob(bufs, item.length, plan.ops, plan.names, out);
      for (const b of bufs) buffers.give(b);
      return dataChunk(item, out);
    }
    if (finished) throw new FerryError('INTERNAL', 'read finished', { remedy: 'none' });
    pool ??= new WorkerPool(workers);
    const transfer: TransferListItem[] = [];
    const inputs = bufs.map((b) => refTo(b, transfer));
    const r = await pool.run<DecodeResult>({ type: 'decode', inputs, out: refTo(out, transfer), ops: plan.ops, names: plan.names }, transfer);
    for (const ref of r.inputs) buffers.give(fromRef(ref));
    return dataChunk(item, fromRef(r.out));
  };

  try {
    while (true) {
      // Fill the readahead window.
      while (!planDone && queue.length < MAX_QUEUED) {
        if (!lookahead) {
          let r: IteratorResult<PlanItem>;
          try {
            r = await planner.next();
          } catch (err) {
            // A map() failure surfaces after the chunks before it, in virtual order.
            queue.push({ cost: 0, chunk: rejected(err) });
            planDone = true;
            break;
          }
          if (r.done) {
            planDone = true;
            break;
          }
          lookahead = r.value;
        }
        const item: PlanItem = lookahead;
        if (item.type === 'zero') {
          queue.push({ cost: 0, chunk: Promise.resolve({ offset: item.offset, length: item.length, kind: item.kind }) });
          lookahead = undefined;
          continue;
        }
        let plan: ChunkPlan;
        try {
          plan = planReads(item);
        } catch (err) {
          queue.push({ cost: 0, chunk: rejected(err) });
          lookahead = undefined;
          planDone = true;
          break;
        }
        const cost = item.length + plan.inputBytes;
        if (queue.length > 0 && inFlight + cost > maxInFlight) break;
        inFlight += cost;
        const chunk = load(item, plan);
        chunk.catch(() => {}); // observed when it reaches the head; avoid unhandled rejections
        queue.push({ cost, chunk });
        lookahead = undefined;
      }
      const head = queue.shift();
      if (!head) break;
      const chunk = await head.chunk;
      yield chunk;
      inFlight -= head.cost;
    }
  } finally {
    finished = true;
    if (ownPool) await pool?.close();
    await Promise.allSettled(queue.map((q) => q.chunk));
    await planner.return(undefined);
  }
}
