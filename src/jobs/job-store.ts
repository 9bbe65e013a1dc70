// Durable job records in an embedded SQLite database ($FERRY_STATE_DIR/jobs.db, WAL mode, shared
// by every Ferry process on the machine): what each job does (kind, source, target, options), its
// state (queued → preflight → copying → verifying → succeeded | failed | cancelled), progress
// (bytes done/total, rate, ETA), the offset below which its target is durably written (what a
// resumed run starts from), timings, the failure (code, message, remedy) and an event log.
//
// Example:
//   const jobs = JobStore.open();
//   const job = jobs.create({ kind: 'import', source: 's3://b/disk.qcow2', target: '/dev/vdb', options: {} });
//   jobs.update(job.id, { state: 'copying' });
import { mkdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { sqlite } from '../lazy-modules.js';
import { FerryError } from '../errors.js';
import { stateDir } from '../transfer/checkpoint.js';

export const JOB_STATES = ['queued', 'preflight', 'copying', 'verifying', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];
/** States a job can still go on from (with `ferry jobs retry`). */
export const UNFINISHED: readonly JobState[] = ['queued', 'preflight', 'copying', 'verifying', 'failed'];

export interface JobError {
  code: string;
  message: string;
  remedy: string;
}

export interface Job {
  id: string;
  kind: 'import';
  state: JobState;
  source: string;
  target: string;
  /** Settings the job runs with (format, verify, store options — never secrets). */
  options: Record<string, unknown>;
  /** Identity of the source content the partial target was written from (object size + ETag…). */
  sourceId: string | null;
  /** Where a file target is written until it is complete (kept between attempts). */
  partialPath: string | null;
  /** The target holds the final content below this offset, on stable storage. */
  committed: number;
  /**
   * Everything below this offset was handed to the kernel (written, maybe not yet on the disk)
   * during boot `bootId`: after a kill -9 without a reboot, a resume may start here.
   */
  written: number;
  bootId: string | null;
  bytesDone: number;
  bytesTotal: number;
  /** Bytes per second over the current attempt, and the estimated seconds left. */
  rate: number | null;
  eta: number | null;
  attempts: number;
  /** Process and host running the job now (or last). */
  pid: number | null;
  host: string | null;
  created: string;
  started: string | null;
  updated: string;
  finished: string | null;
  error: JobError | null;
  /** The outcome of a finished job (e.g. the import's verification). */
  result: Record<string, unknown> | null;
}

export interface JobEvent {
  at: string;
  state: JobState | null;
  message: string;
}

type Row = Record<string, unknown>;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  source TEXT NOT NULL,
  target TEXT NOT NULL,
  options TEXT NOT NULL,
  source_id TEXT,
  partial_path TEXT,
  committed INTEGER NOT NULL DEFAULT 0,
  written INTEGER NOT NULL DEFAULT 0,
  boot_id TEXT,
  bytes_done INTEGER NOT NULL DEFAULT 0,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  rate REAL,
  eta REAL,
  attempts INTEGER NOT NULL DEFAULT 0,
  pid INTEGER,
  host TEXT,
  created TEXT NOT NULL,
  started TEXT,
  updated TEXT NOT NULL,
  finished TEXT,
  error TEXT,
  result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_target ON jobs(target);
CREATE TABLE IF NOT EXISTS job_events (
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  at TEXT NOT NULL,
  state TEXT,
  message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id);
`;

const COLUMNS: Record<string, string> = {
  state: 'state',
  sourceId: 'source_id',
  partialPath: 'partial_path',
  committed: 'committed',
  written: 'written',
  bootId: 'boot_id',
  bytesDone: 'bytes_done',
  bytesTotal: 'bytes_total',
  rate: 'rate',
  eta: 'eta',
  attempts: 'attempts',
  pid: 'pid',
  host: 'host',
  started: 'started',
  finished: 'finished',
  error: 'error',
  result: 'result',
  options: 'options',
};

function toJob(r: Row): Job {
  const json = (v: unknown) => (typeof v === 'string' ? (JSON.parse(v) as Record<string, unknown>) : null);
  return {
    id: r.id as string,
    kind: r.kind as 'import',
    state: r.state as JobState,
    source: r.source as string,
    target: r.target as string,
    options: json(r.options) ?? {},
    sourceId: (r.source_id as string | null) ?? null,
    partialPath: (r.partial_path as string | null) ?? null,
    committed: Number(r.committed),
    written: Number(r.written),
    bootId: (r.boot_id as string | null) ?? null,
    bytesDone: Number(r.bytes_done),
    bytesTotal: Number(r.bytes_total),
    rate: (r.rate as number | null) ?? null,
    eta: (r.eta as number | null) ?? null,
    attempts: Number(r.attempts),
    pid: (r.pid as number | null) ?? null,
    host: (r.host as string | null) ?? null,
    created: r.created as string,
    started: (r.started as string | null) ?? null,
    updated: r.updated as string,
    finished: (r.finished as string | null) ?? null,
    error: json(r.error) as JobError | null,
    result: json(r.result),
  };
}

export type JobUpdate = Partial<Omit<Job, 'id' | 'kind' | 'source' | 'target' | 'created' | 'updated'>>;

export class JobStore {
  private constructor(private readonly db: Database.Database) {}

  /** Opens (creating if needed) the job database under the state directory. */
  static open(dir = stateDir()): JobStore {
    let db: Database.Database;
    try {
      mkdirSync(dir, { recursive: true });
      db = new (sqlite())(join(dir, 'jobs.db'), { timeout: 10_000 });
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.exec(SCHEMA);
    } catch (err) {
      throw new FerryError('IO_ERROR', `cannot open the job database in ${dir}: ${(err as Error).message}`, {
        remedy: 'Check that the state directory is writable (set FERRY_STATE_DIR to use another one).',
        cause: err,
      });
    }
    return new JobStore(db);
  }

  close(): void {
    this.db.close();
  }

  create(spec: { kind: 'import'; source: string; target: string; options: Record<string, unknown> }): Job {
    const now = new Date().toISOString();
    const id = `${spec.kind.slice(0, 3)}-${randomBytes(4).toString('hex')}`;
    this.db
      .prepare('INSERT INTO jobs (id, kind, state, source, target, options, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
      .run(id, spec.kind, 'queued', spec.source, spec.target, JSON.stringify(spec.options), now, now);
    this.event(id, 'queued', `${spec.kind} ${spec.source} -> ${spec.target}`);
    return this.get(id)!;
  }

  get(id: string): Job | undefined {
    const r = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as Row | undefined;
    return r ? toJob(r) : undefined;
  }

  /** Finds a job by its id or a unique prefix of it. */
  find(idOrPrefix: string): Job {
    const exact = this.get(idOrPrefix);
    if (exact) return exact;
    const rows = this.db.prepare("SELECT * FROM jobs WHERE id LIKE ? || '%' ESCAPE '\\' LIMIT 2").all(idOrPrefix.replace(/[%_\\]/g, '\\$&')) as Row[];
    if (rows.length === 1) return toJob(rows[0]!);
    throw new FerryError('JOB_NOT_FOUND', rows.length ? `job id '${idOrPrefix}' is ambiguous` : `no job '${idOrPrefix}'`, {
      remedy: 'List the jobs with `ferry jobs list` and give a full id.',
    });
  }

  list(opts: { states?: readonly JobState[]; limit?: number } = {}): Job[] {
    const where = opts.states?.length ? `WHERE state IN (${opts.states.map(() => '?').join(',')})` : '';
    const rows = this.db.prepare(`SELECT * FROM jobs ${where} ORDER BY created DESC, rowid DESC LIMIT ?`).all(...(opts.states ?? []), opts.limit ?? 1000) as Row[];
    return rows.map(toJob);
  }

  /** Unfinished jobs writing `target` (newest first). */
  unfinishedFor(target: string): Job[] {
    const rows = this.db
      .prepare(`SELECT * FROM jobs WHERE target = ? AND state IN (${UNFINISHED.map(() => '?').join(',')}) ORDER BY created DESC`)
      .all(target, ...UNFINISHED) as Row[];
    return rows.map(toJob);
  }

  update(id: string, changes: JobUpdate): void {
    const sets: string[] = ['updated = ?'];
    const values: unknown[] = [new Date().toISOString()];
    for (const [key, value] of Object.entries(changes)) {
      const col = COLUMNS[key];
      if (!col || value === undefined) continue;
      sets.push(`${col} = ?`);
      values.push(key === 'error' || key === 'result' || key === 'options' ? (value === null ? null : JSON.stringify(value)) : value);
    }
    this.db.prepare(`UPDATE jobs SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
    if (changes.state) this.event(id, changes.state, changes.error ? `${changes.error.code}: ${changes.error.message}` : '');
  }

  event(id: string, state: JobState | null, message: string): void {
    this.db.prepare('INSERT INTO job_events (job_id, at, state, message) VALUES (?, ?, ?, ?)').run(id, new Date().toISOString(), state, message);
  }

  events(id: string): JobEvent[] {
    return this.db.prepare('SELECT at, state, message FROM job_events WHERE job_id = ? ORDER BY rowid').all(id) as JobEvent[];
  }

  /** Marks this process as running the job (a new attempt). */
  claim(id: string): void {
    this.db
      .prepare('UPDATE jobs SET pid = ?, host = ?, attempts = attempts + 1, started = COALESCE(started, ?), finished = NULL, error = NULL, updated = ? WHERE id = ?')
      .run(process.pid, hostname(), new Date().toISOString(), new Date().toISOString(), id);
  }
}

/** Whether the process that last ran `job` is still running it (same host, process alive). */
export function isRunning(job: Job): boolean {
  if (job.pid === null || job.host !== hostname() || !['queued', 'preflight', 'copying', 'verifying'].includes(job.state)) return false;
  try {
    process.kill(job.pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
