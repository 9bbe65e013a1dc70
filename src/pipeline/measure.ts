// Output size of a conversion without writing it (`ferry image measure`): the real writer runs
// against a sink that only counts. Exact by default (every data chunk is encoded, so compressed
// sizes are real); with `sample`, only every k-th data chunk is encoded and the result is
// extrapolated from the disk's data total — fast, and an estimate.
import { availableParallelism } from 'node:os';
import type { Sink } from '../io/sink.js';
import type { DiskImage } from '../image/types.js';
import type { ImageWriter, WriteSpec } from '../image/writer.js';
import { createWriter } from '../image/writers.js';
import { planChunks } from './chunk-plan.js';
import { chunkSizeFor, writeChunks, type ConvertProgress } from './convert.js';
import { streamVirtual, type VirtualChunk } from './virtual-stream.js';
import { WorkerPool } from './worker-pool.js';

export interface MeasureOptions {
  /** Encode only a sample of about `sampleBytes` of the data and extrapolate. */
  sample?: boolean;
  /** Data bytes to encode when sampling (default 256 MiB). */
  sampleBytes?: number;
  workers?: number;
  onProgress?: (p: ConvertProgress) => void;
}

export interface MeasureResult {
  format: string;
  subformat: string;
  virtualSize: number;
  /** Size of the output file. */
  fileSize: number;
  /** Bytes the output occupies on disk (holes of sparse outputs excluded). */
  requiredBytes: number;
  /** Data bytes of the source (zero/unallocated ranges excluded). */
  dataBytes: number;
  /** True when the figures are extrapolated from a sample. */
  estimated: boolean;
  /** Data bytes actually encoded. */
  sampledBytes: number;
}

/** A sink that keeps nothing and counts what would be written. */
class CountingSink implements Sink {
  readonly isBlockDevice = false;
  readonly deviceSize = undefined;
  written = 0;
  size = 0;

  constructor(readonly path: string) {}

  async write(buf: Buffer, position: number): Promise<void> {
    this.written += buf.length;
    this.size = Math.max(this.size, position + buf.length);
  }

  async writev(bufs: Buffer[], position: number): Promise<void> {
    let n = 0;
    for (const b of bufs) n += b.length;
    this.written += n;
    this.size = Math.max(this.size, position + n);
  }

  async truncate(size: number): Promise<void> {
    this.size = size;
  }

  async reserve(): Promise<void> {}

  async commit(): Promise<void> {}
  async abort(): Promise<void> {}
}

async function run(image: DiskImage, spec: WriteSpec, chunks: (w: ImageWriter) => AsyncGenerator<VirtualChunk>, pool: WorkerPool | undefined, opts: MeasureOptions) {
  const sink = new CountingSink(`measure.${spec.format}`);
  const writer = createWriter({ sink, spec, sourceSize: image.virtualSize });
  const stats = await writeChunks(chunks(writer), image.virtualSize, writer, pool, opts.onProgress ? { onProgress: opts.onProgress } : {});
  const summary = await writer.finish();
  return { summary, written: sink.written, dataBytes: stats.dataBytes };
}

export async function measureImage(image: DiskImage, spec: WriteSpec, opts: MeasureOptions = {}): Promise<MeasureResult> {
  const workers = opts.workers ?? availableParallelism();
  const pool = workers > 0 ? new WorkerPool(workers) : undefined;
  try {
    const probe = createWriter({ sink: new CountingSink('probe'), spec, sourceSize: image.virtualSize });
    const unit = probe.unitSize;
    const chunkSize = chunkSizeFor(probe);
    const streamOpts = { chunkSize, align: unit, workers, ...(pool ? { pool } : {}) };

    // The data chunks the conversion would encode (from the map alone: nothing is read).
    const cells: { offset: number; length: number }[] = [];
    let dataBytes = 0;
    for await (const item of planChunks(image, { offset: 0, length: image.virtualSize, chunkSize, minZeroRun: 0, align: unit })) {
      if (item.type !== 'data') continue;
      cells.push({ offset: item.offset, length: item.length });
      dataBytes += item.length;
    }
    const budget = opts.sampleBytes ?? 256 * 1024 * 1024;
    if (!opts.sample || dataBytes <= budget) {
      const r = await run(image, spec, () => streamVirtual(image, streamOpts), pool, opts);
      return { ...shape(r.summary), requiredBytes: r.written, dataBytes, estimated: false, sampledBytes: r.dataBytes };
    }
    const every = Math.ceil(dataBytes / budget);
    const picked = cells.filter((_, i) => i % every === Math.floor(every / 2));
    async function* sampled(): AsyncGenerator<VirtualChunk> {
      for (const c of picked) yield* streamVirtual(image, { ...streamOpts, offset: c.offset, length: c.length });
    }
    const empty = await run(image, spec, async function* () {}, pool, {});
    const part = await run(image, spec, sampled, pool, opts);
    const scale = dataBytes / Math.max(1, part.dataBytes);
    const extrapolate = (base: number, withSample: number) => Math.round(base + (withSample - base) * scale);
    return {
      ...shape(part.summary),
      fileSize: extrapolate(empty.summary.fileSize, part.summary.fileSize),
      requiredBytes: extrapolate(empty.written, part.written),
      dataBytes,
      estimated: true,
      sampledBytes: part.dataBytes,
    };
  } finally {
    await pool?.close();
  }
}

function shape(s: { format: string; subformat: string; virtualSize: number; fileSize: number }) {
  return { format: s.format, subformat: s.subformat, virtualSize: s.virtualSize, fileSize: s.fileSize };
}
