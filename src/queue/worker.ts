// `ferry worker --database URL`: one of the machines that share the imports of PostgreSQL mode.
// It takes import jobs from the queue (pg-boss; each job goes to one worker), runs each as a
// durable local import job (checkpoints in this machine's state directory, target locks), and
// writes its phase, progress, rate, ETA and outcome to the shared row every second; a cancel asked
// for through the API stops the import at the next report. A worker started again under the same
// name (and state directory) first resumes the imports it was running when it died or was
// stopped, from their last checkpoint.
import { hostname } from 'node:os';
import type PgBoss from 'pg-boss';
import { FerryError } from '../errors.js';
import { runImport } from '../jobs/import-job.js';
import type { ImageFormat } from '../image/types.js';
import { IMPORT_QUEUE, PgJobs } from './pg-jobs.js';

export interface WorkerOptions {
  database: string;
  /** Shown in the jobs it runs (default: the host name and process id). */
  name?: string;
  /** Imports run at once by this worker (default 1). */
  concurrency?: number;
  /** How often the queue is polled when idle, in seconds (default 2). */
  pollSeconds?: number;
  signal?: AbortSignal;
  /** Connected and taking jobs (with the worker's name). */
  onReady?: (name: string) => void;
  /** Job started / finished, for logs. */
  onEvent?: (e: { event: 'started' | 'succeeded' | 'failed' | 'cancelled'; id: string; source: string; target: string; error?: { code: string; message: string } }) => void;
}

const REPORT_EVERY_MS = 1000;

/** Runs until `signal` aborts; resolves once the running imports have stopped. */
export async function runWorker(opts: WorkerOptions): Promise<void> {
  const name = opts.name ?? `${hostname()}:${process.pid}`;
  const concurrency = opts.concurrency ?? 1;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    throw new FerryError('USAGE', `--concurrency must be 1..64, not ${concurrency}`, { remedy: 'Give the number of imports this machine runs at once.' });
  }
  const db = await PgJobs.open(opts.database);
  const running = new Set<AbortController>();
  // Test hook (as `ferry import`): FERRY_FAULT=kill-at-byte:N kills the worker once a copy passes N.
  const fault = /^kill-at-byte:(\d+)$/.exec(process.env.FERRY_FAULT ?? '');
  const killAt = fault ? Number(fault[1]) : undefined;
  const handle = async ([task]: PgBoss.Job<{ id: string }>[]): Promise<void> => {
    if (!task) return;
    await run(task.data.id);
  };
  const run = async (id: string): Promise<void> => {
    const job = await db.claim(id, name);
    if (!job) return; // cancelled or finished meanwhile
    const stop = new AbortController();
    running.add(stop);
    opts.onEvent?.({ event: 'started', id: job.id, source: job.source, target: job.target });
    let lastReport = 0;
    let cancelled = false;
    let reporting: Promise<void> = Promise.resolve();
    const report = (u: Parameters<PgJobs['update']>[1], force = false): void => {
      const now = Date.now();
      if (!force && now - lastReport < REPORT_EVERY_MS) return;
      lastReport = now;
      reporting = reporting
        .then(() => db.update(job.id, u))
        .then((cancel) => {
          if (cancel && !stop.signal.aborted) {
            cancelled = true;
            stop.abort();
          }
        })
        .catch(() => {}); // the database is away for a moment: the next report tries again
    };
    const began = Date.now();
    let startPos = -1;
    try {
      const { result } = await runImport(
        { source: job.source, target: job.target, ...(job.options.format ? { format: job.options.format as ImageFormat } : {}), ...(job.options.verify ? { verify: true } : {}) },
        {
          signal: stop.signal,
          onJob: (local, resuming) => {
            if (resuming) reporting = reporting.then(() => db.event(job.id, `worker ${name} resumes it at byte ${local.committed} (its last checkpoint)`)).catch(() => {});
          },
          onPhase: (phase) => report({ state: phase }, true),
          onProgress: (p) => {
            if (killAt !== undefined && p.position >= killAt) process.kill(process.pid, 'SIGKILL');
            if (startPos < 0) startPos = p.position;
            const rate = ((p.position - startPos) * 1000) / Math.max(1, Date.now() - began);
            report({ bytesDone: p.position, bytesTotal: p.total, rate, eta: rate > 0 ? (p.total - p.position) / rate : null });
          },
        },
      );
      await reporting;
      await db.update(job.id, { state: 'succeeded', bytesDone: result.virtualSize, bytesTotal: result.virtualSize, eta: 0, result: { ...result }, finished: true });
      await db.event(job.id, `succeeded on worker ${name}`);
      opts.onEvent?.({ event: 'succeeded', id: job.id, source: job.source, target: job.target });
    } catch (err) {
      await reporting;
      const e = err instanceof FerryError ? err : undefined;
      if (cancelled) {
        await db.update(job.id, { state: 'cancelled', rate: null, eta: null, finished: true });
        await db.event(job.id, `cancelled on worker ${name}`);
        opts.onEvent?.({ event: 'cancelled', id: job.id, source: job.source, target: job.target });
      } else {
        const error = e ? { code: e.code, message: e.message, remedy: e.remedy } : { code: 'INTERNAL', message: (err as Error)?.message ?? String(err), remedy: 'Please report this bug.' };
        await db.update(job.id, { state: 'failed', rate: null, eta: null, error, finished: true });
        await db.event(job.id, `failed on worker ${name}: ${error.code}`);
        opts.onEvent?.({ event: 'failed', id: job.id, source: job.source, target: job.target, error });
      }
    } finally {
      running.delete(stop);
    }
  };
  try {
    // What this worker was running when it died is resumed first, from its local checkpoints
    // (in `concurrency` lanes); then it takes queued jobs. pg-boss runs one job at a time per
    // work() subscription: one subscription per slot.
    const orphans = await db.orphansOf(name);
    opts.onReady?.(name);
    const lane = async (): Promise<void> => {
      for (let o = orphans.shift(); o && !opts.signal?.aborted; o = orphans.shift()) await run(o.id).catch(() => {}); // the database is away: retry from the API
    };
    const subscribed = Promise.all(Array.from({ length: concurrency }, lane)).then(async () => {
      if (opts.signal?.aborted) return;
      for (let i = 0; i < concurrency; i++) await db.boss.work<{ id: string }>(IMPORT_QUEUE, { batchSize: 1, pollingIntervalSeconds: opts.pollSeconds ?? 2 }, handle);
    });
    await new Promise<void>((resolve) => {
      if (opts.signal?.aborted) return resolve();
      opts.signal?.addEventListener('abort', () => resolve(), { once: true });
    });
    // Stop taking jobs; imports still running stop at their next chunk and stay resumable.
    for (const r of running) r.abort();
    await subscribed.catch(() => {});
    await db.boss.offWork(IMPORT_QUEUE).catch(() => {});
    const deadline = Date.now() + 30_000;
    while (running.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  } finally {
    await db.close();
  }
}
