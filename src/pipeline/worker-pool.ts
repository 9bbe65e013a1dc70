// The worker pool: N worker_threads running pool-worker.js, a FIFO of jobs (decoding a chunk of
// compressed units, or encoding a chunk into zero-detected, compressed units), up to two jobs
// outstanding per worker (so a worker never idles waiting for the next message), buffers
// transferred rather than copied. Workers are ref'd only while they hold work, so an abandoned
// pool never keeps the process alive; close() stops them all.
import { availableParallelism } from 'node:os';
import { Worker, type TransferListItem } from 'node:worker_threads';
import { FerryError } from '../errors.js';
import { reviveFailure, type DecodeFailure } from './decode-job.js';
import { refTo } from './buffer-pool.js';
import type { DigestResult } from './pool-worker.js';

/** A job as posted to a worker: `type` selects the handler in pool-worker.ts. */
export interface PoolJob {
  type: string;
  id: number;
}

export type PoolReply = { id: number; result: unknown } | { id: number; error: DecodeFailure };

const PER_WORKER = 2;

interface Pending {
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, Pending>;
}

interface Queued extends Pending {
  job: PoolJob;
  transfer: TransferListItem[];
}

let liveWorkers = 0;

/**
 * Worker threads to use when the caller does not say: all cores — except in the single-file agent,
 * whose code lives inside its executable where a worker thread cannot load it: there the work is
 * done on the main thread.
 */
export function defaultWorkers(): number {
  return process.env.FERRY_AGENT_VERSION ? 0 : availableParallelism();
}

/** Worker threads currently alive across all pools (for tests and diagnostics). */
export function activeWorkerCount(): number {
  return liveWorkers;
}

export class WorkerPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Queued[] = [];
  private nextId = 1;
  private closed = false;
  private failure: FerryError | undefined;

  /** `size` workers at most; they are started on demand. */
  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`pool size must be a positive integer, not ${size}`);
  }

  /** Workers of this pool currently alive. */
  get workerCount(): number {
    return this.slots.length;
  }

  /**
   * Runs a job (its `id` is assigned here); the buffers in `transfer` are moved to the worker
   * (detached here). Resolves to the handler's result.
   */
  run<R>(job: Omit<PoolJob, 'id'> & Record<string, unknown>, transfer: TransferListItem[] = []): Promise<R> {
    if (this.closed) return Promise.reject(this.failure ?? closedError());
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ job: { ...job, id: this.nextId++ } as PoolJob, transfer, resolve: resolve as (r: unknown) => void, reject });
      this.pump();
    });
  }

  /**
   * Digests of `data` on a worker, one per algorithm ('md5', 'sha256', 'crc64': see
   * pool-worker.ts). A range of a shared arena is read in place; any other buffer is transferred
   * (detached here: pass a copy to keep it).
   */
  async digest(data: Buffer, algorithms: string[]): Promise<Buffer[]> {
    const transfer: TransferListItem[] = [];
    const r = await this.run<DigestResult>({ type: 'digest', input: refTo(data, transfer), algorithms }, transfer);
    return r.digests.map((d) => Buffer.from(d));
  }

  private pump(): void {
    while (this.queue.length > 0) {
      let slot: Slot | undefined;
      for (const s of this.slots) if (s.jobs.size < PER_WORKER && (!slot || s.jobs.size < slot.jobs.size)) slot = s;
      if ((!slot || slot.jobs.size > 0) && this.slots.length < this.size) slot = this.spawn();
      if (!slot) return;
      const q = this.queue.shift()!;
      if (slot.jobs.size === 0) slot.worker.ref();
      slot.jobs.set(q.job.id, { resolve: q.resolve, reject: q.reject });
      slot.worker.postMessage(q.job, q.transfer);
    }
  }

  private spawn(): Slot {
    const worker = new Worker(new URL('./pool-worker.js', import.meta.url));
    liveWorkers++;
    const slot: Slot = { worker, jobs: new Map() };
    this.slots.push(slot);
    worker.unref();
    worker.on('message', (reply: PoolReply) => {
      const p = slot.jobs.get(reply.id);
      if (!p) return;
      slot.jobs.delete(reply.id);
      if (slot.jobs.size === 0 && !this.closed) worker.unref();
      if ('error' in reply) p.reject(reviveFailure(reply.error));
      else p.resolve(reply.result);
      this.pump();
    });
    worker.on('error', (err) => {
      this.fail(
        new FerryError('INTERNAL', `pool worker failed: ${err.message}`, {
          remedy: 'This is a bug in Ferry (or the machine ran out of memory); please report it.',
          cause: err,
        }),
      );
    });
    worker.on('exit', () => {
      liveWorkers--;
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      if (!this.closed) {
        this.fail(
          new FerryError('INTERNAL', 'a pool worker exited unexpectedly', {
            remedy: 'This is a bug in Ferry (or the machine ran out of memory); please report it.',
          }),
        );
      }
      for (const p of slot.jobs.values()) p.reject(this.failure ?? closedError());
      slot.jobs.clear();
    });
    return slot;
  }

  private fail(err: FerryError): void {
    if (!this.failure) this.failure = err;
    void this.close();
  }

  /** Terminates every worker; queued and running jobs are rejected. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    const err = this.failure ?? closedError();
    for (const q of this.queue.splice(0)) q.reject(err);
    const slots = this.slots.slice();
    for (const s of slots) {
      for (const p of s.jobs.values()) p.reject(err);
      s.jobs.clear();
    }
    // Ask each worker to finish its current job and exit instead of terminate(): terminating a
    // worker inside a synchronous zlib call aborts the whole process in Node 20 (node_zlib.cc
    // "close before init" during worker cleanup). A job is a few milliseconds of work; terminate()
    // remains the fallback for a worker that does not stop.
    await Promise.all(slots.map((s) => stopWorker(s.worker)));
  }
}

const STOP_GRACE_MS = 10_000;

function stopWorker(worker: Worker): Promise<void> {
  return new Promise<void>((resolve) => {
    if (worker.threadId < 0) return resolve(); // already exited
    const timer = setTimeout(() => void worker.terminate(), STOP_GRACE_MS);
    timer.unref();
    worker.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    worker.ref();
    worker.postMessage({ stop: true });
  });
}

function closedError(): FerryError {
  return new FerryError('INTERNAL', 'the worker pool was closed', {
    remedy: 'This is a bug in Ferry: work was submitted after the read finished; please report it.',
  });
}
