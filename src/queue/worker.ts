// `ferry worker --database URL`: one of the machines that share the imports of PostgreSQL mode.
// It takes import jobs from the queue (a job runs only once its row moved out of 'queued'; see
// pg-jobs.ts), runs each as a durable local import job (checkpoints in this machine's state
// directory, target locks), and writes its phase, progress, rate, ETA and a heartbeat to the shared
// row (progress every second, heartbeat every 10 s even when the import reports nothing, e.g.
// while verifying). A cancel asked for through the API stops the import at the next write and
// removes its partial target; a write refused because the job was retried elsewhere stops it too.
// A worker started again under the same name (and state directory) first resumes the imports it
// was running when it died or was stopped, from their last checkpoint. Its default name is the
// machine's and its state directory's (HOST:8 hex digits), so a plain restart finds its imports;
// one state directory serves one worker at a time (a lock file in it, held while the worker runs).
import { createHash } from 'node:crypto';
import { closeSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type PgBoss from 'pg-boss';
import { FerryError, errorRecord } from '../errors.js';
import { cancelJob, runImport, type JobOutcome } from '../jobs/import-job.js';
import type { ImageFormat } from '../image/types.js';
import { tryLock } from '../jobs/target-lock.js';
import { stateDir } from '../transfer/checkpoint.js';
import { HEARTBEAT_MS, IMPORT_QUEUE, PgJobs, type JobUpdate, type PgJob } from './pg-jobs.js';

export interface WorkerOptions {
  database: string;
  /** Shown in the jobs it runs, and how a restarted worker finds its own (default: HOST and a hash of the state directory; see defaultWorkerName). */
  name?: string;
  /** Imports run at once by this worker (default 1). */
  concurrency?: number;
  /** How often the queue is polled when idle, in seconds (default 2). */
  pollSeconds?: number;
  signal?: AbortSignal;
  /** Connected and taking jobs (with the worker's name). */
  onReady?: (name: string) => void;
  /** Job started / finished, for logs. */
  onEvent?: (e: { event: 'started' | 'succeeded' | 'failed' | 'cancelled' | 'lost'; id: string; source: string; target: string; error?: { code: string; message: string } }) => void;
}

const REPORT_EVERY_MS = 1000;

/** Runs until `signal` aborts; resolves once the running imports have stopped. */
export async function runWorker(opts: WorkerOptions): Promise<void> {
  const concurrency = opts.concurrency ?? 1;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    throw new FerryError('USAGE', `--concurrency must be 1..64, not ${concurrency}`, { remedy: 'Give the number of imports this machine runs at once.' });
  }
  const dir = stateDir();
  const lockFd = lockStateDir(dir);
  try {
    await work(opts, opts.name ?? defaultWorkerName(dir), concurrency);
  } finally {
    closeSync(lockFd);
  }
}

/** HOST:8 hex digits of the state directory's real path: the same after a restart, per directory. */
export function defaultWorkerName(dir: string): string {
  return `${hostname()}:${createHash('sha256').update(realpathSync(dir)).digest('hex').slice(0, 8)}`;
}

/** Takes the state directory for this worker (flock on worker.lock), or says which worker has it. */
function lockStateDir(dir: string): number {
  const file = join(dir, 'worker.lock');
  const fd = tryLock(file);
  if (fd === undefined) {
    let holder = '';
    try {
      const pid = readFileSync(file, 'utf8').trim();
      if (/^\d+$/.test(pid)) holder = ` (process ${pid})`;
    } catch {
      // unreadable: the message goes without the process
    }
    throw new FerryError('USAGE', `another ferry worker${holder} uses the state directory ${dir}`, {
      remedy: 'Give each worker of a machine its own state directory (--data-dir DIR, or FERRY_STATE_DIR): its imports\' checkpoints live there.',
    });
  }
  writeFileSync(file, `${process.pid}\n`);
  return fd;
}

async function work(opts: WorkerOptions, name: string, concurrency: number): Promise<void> {
  const db = await PgJobs.open(opts.database);
  const running = new Set<Promise<void>>();
  // Test hook (as `ferry import`): FERRY_FAULT=kill-at-byte:N kills the worker once a copy passes N.
  const fault = /^kill-at-byte:(\d+)$/.exec(process.env.FERRY_FAULT ?? '');
  const killAt = fault ? Number(fault[1]) : undefined;

  /** Runs one claimed job to its end and records the outcome (unless the job was lost). */
  const execute = async (job: PgJob): Promise<void> => {
    const attempt = { worker: name, attempts: job.attempts };
    const stop = new AbortController();
    const onShutdown = () => stop.abort();
    opts.signal?.addEventListener('abort', onShutdown, { once: true });
    opts.onEvent?.({ event: 'started', id: job.id, source: job.source, target: job.target });
    let stopReason: 'cancel' | 'lost' | undefined;
    let lastReport = 0;
    let reporting: Promise<void> = Promise.resolve();
    const report = (u: JobUpdate, force = false): void => {
      const now = Date.now();
      if (!force && now - lastReport < REPORT_EVERY_MS) return;
      lastReport = now;
      reporting = reporting
        .then(() => db.update(job.id, attempt, u))
        .then((verdict) => {
          if (verdict !== 'ok' && !stop.signal.aborted) {
            stopReason = verdict;
            stop.abort();
          }
        })
        .catch(() => {}); // the database is away for a moment: the next report tries again
    };
    const heartbeat = setInterval(() => report({}, true), HEARTBEAT_MS);
    const began = Date.now();
    let startPos = -1;
    let localJob: string | undefined;
    let outcome: { ok: true; result: JobOutcome['result'] } | { ok: false; err: unknown };
    try {
      const { result } = await runImport(
        { source: job.source, target: job.target, ...(job.options.format ? { format: job.options.format as ImageFormat } : {}), ...(job.options.verify ? { verify: true } : {}) },
        {
          signal: stop.signal,
          onJob: (local, resuming) => {
            localJob = local.id;
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
      outcome = { ok: true, result };
    } catch (err) {
      outcome = { ok: false, err };
    } finally {
      clearInterval(heartbeat);
      opts.signal?.removeEventListener('abort', onShutdown);
    }
    await reporting;
    const where = { id: job.id, source: job.source, target: job.target };
    if (stopReason === 'lost') {
      // Retried elsewhere (this worker had stopped reporting) or finished by someone else.
      opts.onEvent?.({ event: 'lost', ...where });
      return;
    }
    let final: JobUpdate;
    let event: 'succeeded' | 'failed' | 'cancelled';
    let error: ReturnType<typeof errorRecord> | undefined;
    if (outcome.ok) {
      const r = outcome.result;
      final = { state: 'succeeded', bytesDone: r.virtualSize, bytesTotal: r.virtualSize, eta: 0, result: { ...r }, finished: true };
      event = 'succeeded';
    } else if (stopReason === 'cancel') {
      // The partial target goes, as with `ferry jobs cancel` (the local job is stopped already).
      if (localJob) await cancelJob(localJob).catch(() => {});
      final = { state: 'cancelled', rate: null, eta: null, finished: true };
      event = 'cancelled';
    } else {
      error = errorRecord(outcome.err);
      final = { state: 'failed', rate: null, eta: null, error, finished: true };
      event = 'failed';
    }
    // The outcome is written separately from the import: a database hiccup here does not turn a
    // finished import into a failed one. Tried a few times; if it still fails, the job stays
    // marked running, stops beating, and can be retried once stale.
    for (let i = 0; ; i++) {
      try {
        if ((await db.update(job.id, attempt, final)) === 'lost') {
          opts.onEvent?.({ event: 'lost', ...where });
          return;
        }
        await db.event(job.id, `${event} on worker ${name}${error ? `: ${error.code}` : ''}`).catch(() => {});
        break;
      } catch (err) {
        if (i >= 4) {
          opts.onEvent?.({ event, ...where, error: error ?? { code: 'DATABASE_ERROR', message: `the outcome could not be recorded: ${(err as Error).message}` } });
          return;
        }
        await new Promise((r) => setTimeout(r, 1000 * (i + 1)));
      }
    }
    opts.onEvent?.({ event, ...where, ...(error ? { error } : {}) });
  };

  const track = async (claimed: Promise<PgJob | undefined>): Promise<void> => {
    const job = await claimed;
    if (!job) return; // cancelled, or taken, meanwhile
    const p = execute(job);
    running.add(p);
    try {
      await p;
    } finally {
      running.delete(p);
    }
  };
  const handle = async ([task]: PgBoss.Job<{ id: string }>[]): Promise<void> => {
    if (!task) return;
    if (opts.signal?.aborted) {
      // Fetched while shutting down: put it back for another worker, untouched.
      await db.send(task.data.id);
      return;
    }
    await track(db.claim(task.data.id, name));
  };

  try {
    // What this worker was running when it died is resumed first, from its local checkpoints
    // (in `concurrency` lanes); then it takes queued jobs. pg-boss runs one job at a time per
    // work() subscription: one subscription per slot.
    const orphans = await db.orphansOf(name);
    opts.onReady?.(name);
    const lane = async (): Promise<void> => {
      for (let o = orphans.shift(); o && !opts.signal?.aborted; o = orphans.shift()) await track(db.reclaim(o.id, name)).catch(() => {}); // the database is away: retry it from the API
    };
    const subscribed = Promise.all(Array.from({ length: concurrency }, lane)).then(async () => {
      if (opts.signal?.aborted) return;
      for (let i = 0; i < concurrency; i++) await db.boss.work<{ id: string }>(IMPORT_QUEUE, { batchSize: 1, pollingIntervalSeconds: opts.pollSeconds ?? 2 }, handle);
    });
    const shutdown = new Promise<void>((resolve) => {
      if (opts.signal?.aborted) return resolve();
      opts.signal?.addEventListener('abort', () => resolve(), { once: true });
    });
    // A queue that cannot be subscribed to ends the worker with that error.
    await Promise.race([shutdown, subscribed.then(() => shutdown)]);
    // Stop taking jobs first; imports still running then stop at their next chunk (they saw the
    // signal) and stay resumable.
    await subscribed.catch(() => {});
    await db.boss.offWork(IMPORT_QUEUE).catch(() => {});
    await Promise.race([Promise.allSettled([...running]), new Promise((r) => setTimeout(r, 30_000))]);
  } finally {
    await db.close();
  }
}
