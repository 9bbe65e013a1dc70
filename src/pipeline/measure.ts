// Output size of a conversion without writing it (`ferry image measure`): the real writer runs
// against a sink that only counts. Exact by default (every data chunk is encoded, so compressed
// sizes are real); with `sample`, only small granules spread evenly over the disk are encoded and
// the result is extrapolated from the disk's data total — fast, and an estimate.
import type { Sink } from '../io/sink.js';
import type { CheckReport, DiskImage, ImageInfo, Segment } from '../image/types.js';
import type { ImageWriter, WriteSpec } from '../image/writer.js';
import { createWriter } from '../image/writers.js';
import { planChunks } from './chunk-plan.js';
import { chunkSizeFor, writeChunks, type ConvertProgress } from './convert.js';
import { streamVirtual, type VirtualChunk } from './virtual-stream.js';
import { defaultWorkers, WorkerPool } from './worker-pool.js';

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
  const workers = opts.workers ?? defaultWorkers();
  const pool = workers > 0 ? new WorkerPool(workers) : undefined;
  try {
    const probe = createWriter({ sink: new CountingSink('probe'), spec, sourceSize: image.virtualSize });
    const unit = probe.unitSize;
    const chunkSize = chunkSizeFor(probe);
    const streamOpts = { chunkSize, align: unit, workers, ...(pool ? { pool } : {}) };

    // The data chunks the conversion would encode (from the map alone: nothing is read).
    let dataBytes = 0;
    for await (const item of planChunks(image, { offset: 0, length: image.virtualSize, chunkSize, minZeroRun: 0, align: unit })) {
      if (item.type === 'data') dataBytes += item.length;
    }
    const budget = opts.sampleBytes ?? 256 * 1024 * 1024;
    if (!opts.sample || dataBytes <= budget) {
      const r = await run(image, spec, () => streamVirtual(image, streamOpts), pool, opts);
      return { ...shape(r.summary), requiredBytes: r.written, dataBytes, estimated: false, sampledBytes: r.dataBytes };
    }
    // Sample small granules spread evenly over the disk (not whole chunks: disks are uneven).
    const granule = Math.max(probe.allocationUnit ?? unit, Math.ceil(SAMPLE_GRANULE / unit) * unit);
    const sampled = new SampledImage(image, granule, budget / dataBytes);
    const empty = await run(image, spec, async function* () {}, pool, {});
    const part = await run(image, spec, () => streamVirtual(sampled, streamOpts), pool, opts);
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

const GOLDEN = (Math.sqrt(5) - 1) / 2;

/** Granule of the disk sampled as a whole (a multiple of the writer's unit). */
const SAMPLE_GRANULE = 256 * 1024;

/**
 * The disk with only a fraction f of its granules kept (granule g when frac(g·φ) < f); the rest
 * reads as unallocated. Encoding it costs a fraction of the whole.
 */
class SampledImage implements DiskImage {
  readonly format;
  readonly virtualSize: number;
  readonly name: string;

  constructor(
    private readonly inner: DiskImage,
    private readonly granule: number,
    private readonly fraction: number,
  ) {
    this.format = inner.format;
    this.virtualSize = inner.virtualSize;
    this.name = inner.name;
  }

  /** Golden-ratio sequence: evenly spread, yet not in step with regular layouts (every 8th block…). */
  private kept(g: number): boolean {
    return (g * GOLDEN) % 1 < this.fraction;
  }

  async map(offset: number, length: number): Promise<Segment[]> {
    const out: Segment[] = [];
    const end = offset + length;
    const gap = (from: number, to: number) => {
      const last = out[out.length - 1];
      if (last && last.kind === 'unallocated' && last.offset + last.length === from) last.length += to - from;
      else out.push({ offset: from, length: to - from, kind: 'unallocated', depth: 0, source: { type: 'zero' } });
    };
    for (let pos = offset; pos < end; ) {
      const g = Math.floor(pos / this.granule);
      const stop = Math.min(end, (g + 1) * this.granule);
      if (this.kept(g)) out.push(...(await this.inner.map(pos, stop - pos)));
      else gap(pos, stop);
      pos = stop;
    }
    return out;
  }

  info(): Promise<ImageInfo> {
    return this.inner.info();
  }

  check(): Promise<CheckReport> {
    return this.inner.check();
  }

  async close(): Promise<void> {}
}

function shape(s: { format: string; subformat: string; virtualSize: number; fileSize: number }) {
  return { format: s.format, subformat: s.subformat, virtualSize: s.virtualSize, fileSize: s.fileSize };
}
