// The raw writer: data runs land at their virtual offsets. Into a new file, zero ranges stay holes
// (a sparse file, like `qemu-img convert -S 4k`); onto a block device, zero ranges are written as
// zeros unless the caller says the device already reads as zeros (targetIsZero).
import { FerryError } from '../errors.js';
import { inParallel, type Sink } from '../io/sink.js';
import { UNCOMPRESSED, roundUp, type DataRun, type ImageWriter, type WriteSummary, type WriterContext } from './writer.js';

/** Zero detection granularity: 4 KiB, as qemu-img's default for sparse raw output. */
const RAW_UNIT = 4096;
const ZERO_FILL = Buffer.alloc(4 * 1024 * 1024);
/** Runs of a chunk written at once (the sink cuts each into pieces and queues those too). */
const RUNS_IN_FLIGHT = 8;

export class RawWriter implements ImageWriter {
  readonly format = 'raw' as const;
  readonly subformat = 'raw';
  readonly unitSize = RAW_UNIT;
  readonly headBytes = 0;
  readonly encoding = UNCOMPRESSED;
  readonly virtualSize: number;
  private readonly sink: Sink;
  private readonly fillZeros: boolean;
  /** End of what has been written or zero-filled so far. */
  private pos = 0;

  constructor(ctx: WriterContext) {
    this.sink = ctx.sink;
    this.virtualSize = ctx.spec.alignSize ? roundUp(ctx.sourceSize, ctx.spec.alignSize) : ctx.sourceSize;
    this.fillZeros = ctx.sink.isBlockDevice && !ctx.spec.targetIsZero;
    this.pos = ctx.resumeAt ?? 0;
    const dev = ctx.sink.deviceSize;
    if (dev !== undefined && dev < this.virtualSize) {
      throw new FerryError('TARGET_TOO_SMALL', `${ctx.sink.path}: the device holds ${dev} bytes, but the disk needs ${this.virtualSize}`, {
        remedy: 'Use a device at least as large as the virtual disk (see `ferry image info`), or grow it first.',
        details: { deviceSize: dev, required: this.virtualSize },
      });
    }
  }

  private async zeroTo(end: number): Promise<void> {
    while (this.pos < end) {
      const n = Math.min(ZERO_FILL.length, end - this.pos);
      await this.sink.write(n === ZERO_FILL.length ? ZERO_FILL : ZERO_FILL.subarray(0, n), this.pos);
      this.pos += n;
    }
  }

  async write(runs: DataRun[]): Promise<void> {
    if (this.fillZeros) {
      for (const r of runs) {
        await this.zeroTo(r.offset);
        await this.sink.write(r.data, r.offset);
        this.pos = r.offset + r.length;
      }
      return;
    }
    if (!this.sink.concurrentWrites) {
      for (const r of runs) await this.sink.write(r.data, r.offset);
    } else {
      // Into a file the runs land between holes, each at its own offset: several at once.
      await inParallel(runs.map((r) => ({ at: r.offset, data: r.data })), RUNS_IN_FLIGHT, (r) => this.sink.write(r.data, r.at));
    }
    const last = runs[runs.length - 1];
    if (last) this.pos = last.offset + last.length;
  }

  async finish(): Promise<WriteSummary> {
    if (this.fillZeros) await this.zeroTo(this.virtualSize);
    await this.sink.truncate(this.virtualSize);
    return { format: 'raw', subformat: 'raw', virtualSize: this.virtualSize, fileSize: this.virtualSize };
  }
}
