// Imports as durable jobs: `ferry import` records a job (jobs.db), takes the target's lock, and
// runs importImage with the job's state, progress, rate and ETA kept up to date. A file target is
// written under `.NAME.ferry-partial-JOBID` and the offset below which it is durably written is
// committed every CHECKPOINT_BYTES (after fdatasync); the offset below which everything was written
// (handed to the kernel) is recorded after every chunk, with the machine's boot id. A job that
// died resumes from the written offset if the machine has not restarted since (kill -9, a dropped
// connection), else from the durable one (power loss): with `ferry jobs retry ID`, or by running the
// same `ferry import` again; the part already written is re-read from the target for the content
// digest, so the finished target is still proven against the upload's manifest.
//
// Example:
//   const { job, result } = await runImport({ source: 's3://b/disk.qcow2', target: '/dev/vdb' });
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { FerryError, errorRecord } from '../errors.js';
import type { ImageFormat } from '../image/types.js';
import { PARTIAL_MARK } from '../io/sink.js';
import { importImage, type ImportResult } from '../migrate/import.js';
import type { StoreOptions } from '../storage/open-store.js';
import { JobStore, isRunning, type Job, type JobState } from './job-store.js';
import { canonicalTarget, isTargetLocked, lockTarget, type TargetLock } from './target-lock.js';
import { parseRemoteTarget } from '../online/remote-sink.js';

/** Data bytes written between two durable checkpoints (what a kill can cost at most). */
export const CHECKPOINT_BYTES = 32 * 1024 * 1024;
/**
 * Bytes read ahead of the writer, and written but not yet done: small for imports (the target is
 * raw, nothing to compress), since a killed job fetches what was in flight again.
 */
const IN_FLIGHT_BYTES = 16 * 1024 * 1024;
/** How often progress is written to the job record (FERRY_PROGRESS_MS, at least 100: tests). */
const PROGRESS_EVERY_MS = Math.max(100, Number(process.env.FERRY_PROGRESS_MS) || 1000);

export interface ImportJobSpec {
  source: string;
  target: string;
  format?: ImageFormat;
  verify?: boolean;
  overwrite?: boolean;
  store?: StoreOptions;
  /** A receiver's disk as the target (ferry://…): token and fingerprint (never stored in the job). */
  remote?: { token: string; fingerprint: string };
}

export interface RunOptions {
  signal?: AbortSignal;
  onProgress?: (p: { position: number; total: number }) => void;
  /** Learns each phase as the job enters it (preflight, copying, verifying). */
  onPhase?: (phase: 'preflight' | 'copying' | 'verifying') => void;
  /** Learns the job (new or resumed) before it runs. */
  onJob?: (job: Job, resuming: boolean) => void;
  workers?: number;
  /** Secrets of a remote target, for this run only. */
  remote?: { token: string; fingerprint: string };
}

export interface JobOutcome {
  job: Job;
  result: ImportResult;
}

function specOf(job: Job): ImportJobSpec {
  const o = job.options as Omit<ImportJobSpec, 'source' | 'target'>;
  return { source: job.source, target: job.target, ...o };
}

/** This boot of the machine (changes at every restart). */
function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
}

function isBlockDevice(path: string): boolean {
  try {
    return statSync(path).isBlockDevice();
  } catch {
    return false;
  }
}

/**
 * Runs `ferry import` as a job: resumes the unfinished job for the same source and target when
 * there is one (and no process runs it), else records a new one.
 */
export async function runImport(spec: ImportJobSpec, opts: RunOptions = {}): Promise<JobOutcome> {
  const target = parseRemoteTarget(spec.target) ? spec.target : await canonicalTarget(spec.target);
  // The lock first: a job is recorded only when it may run.
  const lock = lockTarget(target, `import of ${spec.source}`);
  const jobs = JobStore.open();
  try {
    const earlier = jobs.unfinishedFor(target).find((j) => j.source === spec.source && !isRunning(j));
    const options: Record<string, unknown> = {
      ...(spec.format ? { format: spec.format } : {}),
      ...(spec.verify ? { verify: true } : {}),
      ...(spec.overwrite ? { overwrite: true } : {}),
      ...(spec.store && Object.keys(spec.store).length ? { store: spec.store } : {}),
    };
    let job: Job;
    if (earlier) {
      jobs.update(earlier.id, { options: { ...earlier.options, ...options } });
      job = jobs.get(earlier.id)!;
    } else {
      job = jobs.create({ kind: 'import', source: spec.source, target, options });
    }
    lock.holder(job.id);
    return await runJob(jobs, job, { ...opts, ...(spec.remote ? { remote: spec.remote } : {}) }, earlier !== undefined, lock);
  } finally {
    lock.release();
    jobs.close();
  }
}

/** `ferry jobs retry ID`: runs a failed or interrupted job again, resuming where it stopped. */
export async function retryJob(id: string, opts: RunOptions = {}): Promise<JobOutcome> {
  const jobs = JobStore.open();
  try {
    const job = jobs.find(id);
    if (job.state === 'succeeded' || job.state === 'cancelled') {
      throw new FerryError('JOB_STATE', `job ${job.id} is ${job.state}: there is nothing to retry`, {
        remedy: job.state === 'cancelled' ? 'Start a new import with `ferry import`.' : 'The import is done; run `ferry jobs show ID` for its result.',
      });
    }
    if (isRunning(job)) {
      throw new FerryError('JOB_STATE', `job ${job.id} is running (process ${job.pid})`, {
        remedy: 'Wait for it, or cancel it with `ferry jobs cancel ID`.',
      });
    }
    return await runJob(jobs, job, opts, true);
  } finally {
    jobs.close();
  }
}

/**
 * `ferry jobs cancel ID`: stops a running job (SIGTERM to its process, on this host) and marks
 * it cancelled; the partial target file is removed (a block device keeps what was written).
 */
export async function cancelJob(id: string): Promise<Job> {
  const jobs = JobStore.open();
  try {
    const job = jobs.find(id);
    if (job.state === 'succeeded' || job.state === 'cancelled') {
      throw new FerryError('JOB_STATE', `job ${job.id} is already ${job.state}`, { remedy: 'Nothing to cancel.' });
    }
    if (isRunning(job)) {
      process.kill(job.pid!, 'SIGTERM');
      const deadline = Date.now() + 30_000;
      while (isTargetLocked(job.target) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      if (isTargetLocked(job.target)) {
        throw new FerryError('JOB_STATE', `job ${job.id}: its process ${job.pid} did not stop within 30 s`, {
          remedy: `Stop it (kill ${job.pid}), then cancel again.`,
        });
      }
    }
    const now = jobs.get(job.id)!;
    if (now.partialPath) rmSync(now.partialPath, { force: true });
    jobs.update(job.id, { state: 'cancelled', finished: new Date().toISOString(), partialPath: null, committed: 0, written: 0, rate: null, eta: null, pid: null });
    return jobs.get(job.id)!;
  } finally {
    jobs.close();
  }
}

async function runJob(jobs: JobStore, job: Job, opts: RunOptions, resuming: boolean, held?: TargetLock): Promise<JobOutcome> {
  const lock = held ?? lockTarget(job.target, `job ${job.id}`);
  try {
    const spec = specOf(job);
    const remote = parseRemoteTarget(job.target) !== undefined;
    const device = remote || isBlockDevice(job.target);
    const partialPath = device ? null : (job.partialPath ?? join(dirname(job.target), `.${basename(job.target)}${PARTIAL_MARK}${job.id}`));
    // What an earlier attempt left: resumable only if its file is still there. What it wrote
    // without a flush counts too if the machine has not restarted since (a killed process loses
    // nothing it had written; a power loss may).
    const boot = bootId();
    let committed = job.written > job.committed && job.bootId !== null && job.bootId === boot ? job.written : job.committed;
    if (partialPath && !existsSync(partialPath)) committed = 0;
    jobs.claim(job.id);
    jobs.update(job.id, { state: 'preflight', partialPath, committed, written: committed, bootId: boot, rate: null, eta: null });
    opts.onJob?.(jobs.get(job.id)!, resuming && committed > 0);

    const began = Date.now();
    let lastWrite = 0;
    let startPos = -1;
    try {
      const result = await importImage(spec.source, job.target, {
        ...(spec.format ? { format: spec.format } : {}),
        ...(spec.verify ? { verify: true } : {}),
        ...(spec.overwrite ? { overwrite: true } : {}),
        ...(spec.store ? { store: spec.store } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
        ...(opts.workers !== undefined ? { workers: opts.workers } : {}),
        ...(opts.remote ? { remote: opts.remote } : {}),
        ...(partialPath ? { partialPath } : {}),
        ...(committed > 0 ? { resume: { at: committed, sourceId: job.sourceId } } : {}),
        onPreflight: (info) => {
          if (info.resumeAt === 0 && committed > 0) jobs.event(job.id, null, 'the source changed since the last attempt: copying from the start');
          else if (info.resumeAt > 0) jobs.event(job.id, null, `resuming at byte ${info.resumeAt}`);
          jobs.update(job.id, { sourceId: info.sourceId, bytesTotal: info.virtualSize, bytesDone: info.resumeAt, committed: info.resumeAt, written: info.resumeAt });
        },
        maxInFlightBytes: IN_FLIGHT_BYTES,
        onPhase: (phase) => {
          jobs.update(job.id, { state: phase });
          opts.onPhase?.(phase);
        },
        checkpoint: {
          every: CHECKPOINT_BYTES,
          save: (position) => jobs.update(job.id, { committed: position }),
          written: (position) => jobs.update(job.id, { written: position }),
        },
        onProgress: (p) => {
          opts.onProgress?.(p);
          if (startPos < 0) startPos = p.position;
          const now = Date.now();
          if (now - lastWrite < PROGRESS_EVERY_MS) return;
          lastWrite = now;
          const rate = ((p.position - startPos) * 1000) / Math.max(1, now - began);
          jobs.update(job.id, { bytesDone: p.position, rate, eta: rate > 0 ? (p.total - p.position) / rate : null });
        },
      });
      const seconds = (Date.now() - began) / 1000;
      jobs.update(job.id, {
        state: 'succeeded',
        bytesDone: result.virtualSize,
        committed: result.virtualSize,
        partialPath: null,
        rate: (result.virtualSize - result.resumedAt) / Math.max(seconds, 0.001),
        eta: 0,
        finished: new Date().toISOString(),
        result: { ...result },
      });
      return { job: jobs.get(job.id)!, result };
    } catch (err) {
      const e = err instanceof FerryError ? err : undefined;
      const changes: Parameters<JobStore['update']>[1] = {
        state: 'failed' as JobState,
        finished: new Date().toISOString(),
        rate: null,
        eta: null,
        error: errorRecord(err),
      };
      // Content that failed verification is not kept for a resume.
      if (e?.code === 'CHECKSUM_MISMATCH') {
        if (partialPath) rmSync(partialPath, { force: true });
        changes.committed = 0;
        changes.written = 0;
      }
      jobs.update(job.id, changes);
      throw err;
    }
  } finally {
    lock.release();
  }
}

export { JobStore };
