// The shared job table and queue of PostgreSQL mode: when several worker machines share the load,
// `ferry server --database URL` and every `ferry worker --database URL` meet in one PostgreSQL
// database. Jobs are rows of ferry.jobs (state, worker, progress, rate, ETA, failure
// code/message/remedy, heartbeat) and ferry.job_events; pg-boss (a proven Postgres queue:
// SKIP LOCKED fetches, expiry, retention) hands each job to exactly one worker. A worker keeps the
// resume checkpoints of the imports it runs in its own state directory (src/jobs/), and reports
// progress to the row every second.
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type PgBoss from 'pg-boss';
import type { Pool } from 'pg';
import { FerryError } from '../errors.js';

/** The pg-boss queue imports go through. */
export const IMPORT_QUEUE = 'ferry-import';
/** A running job whose worker has not reported for this long is shown as stale (and may be retried). */
export const STALE_AFTER_MS = 60_000;

export type PgJobState = 'queued' | 'preflight' | 'copying' | 'verifying' | 'succeeded' | 'failed' | 'cancelled';

export interface PgJob {
  id: string;
  kind: 'import';
  source: string;
  target: string;
  options: { format?: string; verify?: boolean };
  state: PgJobState;
  worker: string | null;
  attempts: number;
  bytesDone: number;
  bytesTotal: number;
  rate: number | null;
  eta: number | null;
  error: { code: string; message: string; remedy?: string } | null;
  result: Record<string, unknown> | null;
  cancelRequested: boolean;
  created: string;
  started: string | null;
  finished: string | null;
  heartbeat: string | null;
}

export interface ImportRequest {
  source: string;
  target: string;
  format?: string;
  verify?: boolean;
}

const SCHEMA = `
CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.jobs (
  id uuid PRIMARY KEY,
  kind text NOT NULL,
  source text NOT NULL,
  target text NOT NULL,
  options jsonb NOT NULL DEFAULT '{}',
  state text NOT NULL,
  worker text,
  attempts integer NOT NULL DEFAULT 0,
  bytes_done bigint NOT NULL DEFAULT 0,
  bytes_total bigint NOT NULL DEFAULT 0,
  rate double precision,
  eta double precision,
  error jsonb,
  result jsonb,
  cancel_requested boolean NOT NULL DEFAULT false,
  created timestamptz NOT NULL DEFAULT now(),
  started timestamptz,
  finished timestamptz,
  heartbeat timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_created ON ferry.jobs (created DESC);
CREATE TABLE IF NOT EXISTS ferry.job_events (
  job uuid NOT NULL REFERENCES ferry.jobs (id) ON DELETE CASCADE,
  at timestamptz NOT NULL DEFAULT now(),
  message text NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON ferry.job_events (job, at);
`;

/** Where the database URL comes from: --database, else FERRY_DATABASE_URL. */
export function databaseUrl(flag: string | undefined): string | undefined {
  return flag ?? process.env.FERRY_DATABASE_URL ?? undefined;
}

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(an unparsable database URL)';
  }
}

/** A PostgreSQL failure as a FerryError with a remedy. */
export function databaseError(err: unknown, url: string): FerryError {
  if (err instanceof FerryError) return err;
  const e = err as { code?: string; message?: string };
  const where = redactUrl(url);
  if (e.code === 'ECONNREFUSED' || e.code === 'ENOTFOUND' || e.code === 'ETIMEDOUT' || e.code === 'EHOSTUNREACH' || e.code === '57P03') {
    return new FerryError('DATABASE_UNREACHABLE', `PostgreSQL at ${where} cannot be reached (${e.code}: ${e.message ?? ''})`, {
      remedy: 'Check that PostgreSQL runs and listens on that host and port (listen_addresses, pg_hba.conf), and that no firewall is in the way.',
      cause: err,
    });
  }
  if (e.code === '28P01' || e.code === '28000' || e.code === '3D000') {
    return new FerryError('DATABASE_AUTH_FAILED', `PostgreSQL at ${where} refused the connection: ${e.message ?? e.code}`, {
      remedy: e.code === '3D000' ? 'Create the database first (createdb NAME), or name an existing one in the URL.' : 'Check the user and password in the URL (or PGPASSWORD / ~/.pgpass) and pg_hba.conf.',
      cause: err,
    });
  }
  return new FerryError('DATABASE_ERROR', `PostgreSQL at ${where}: ${e.message ?? String(err)}`, { remedy: 'Check the database server\'s log; run the command again.', cause: err });
}

interface Row {
  id: string;
  kind: string;
  source: string;
  target: string;
  options: PgJob['options'];
  state: PgJobState;
  worker: string | null;
  attempts: number;
  bytes_done: string;
  bytes_total: string;
  rate: number | null;
  eta: number | null;
  error: PgJob['error'];
  result: PgJob['result'];
  cancel_requested: boolean;
  created: Date;
  started: Date | null;
  finished: Date | null;
  heartbeat: Date | null;
}

function fromRow(r: Row): PgJob {
  return {
    id: r.id,
    kind: 'import',
    source: r.source,
    target: r.target,
    options: r.options ?? {},
    state: r.state,
    worker: r.worker,
    attempts: r.attempts,
    bytesDone: Number(r.bytes_done),
    bytesTotal: Number(r.bytes_total),
    rate: r.rate,
    eta: r.eta,
    error: r.error,
    result: r.result,
    cancelRequested: r.cancel_requested,
    created: r.created.toISOString(),
    started: r.started?.toISOString() ?? null,
    finished: r.finished?.toISOString() ?? null,
    heartbeat: r.heartbeat?.toISOString() ?? null,
  };
}

/** Progress or outcome written by a worker. */
export interface JobUpdate {
  state?: PgJobState;
  bytesDone?: number;
  bytesTotal?: number;
  rate?: number | null;
  eta?: number | null;
  error?: PgJob['error'];
  result?: Record<string, unknown> | null;
  finished?: boolean;
}

const COLUMNS: Record<Exclude<keyof JobUpdate, 'finished'>, string> = {
  state: 'state',
  bytesDone: 'bytes_done',
  bytesTotal: 'bytes_total',
  rate: 'rate',
  eta: 'eta',
  error: 'error',
  result: 'result',
};

export class PgJobs {
  private constructor(
    readonly url: string,
    private readonly pool: Pool,
    readonly boss: PgBoss,
  ) {}

  /** Connects, creates Ferry's tables and pg-boss's schema when missing, and the import queue. */
  static async open(url: string): Promise<PgJobs> {
    const require = createRequire(import.meta.url);
    const pg = require('pg') as typeof import('pg');
    const PgBossClass = require('pg-boss') as typeof PgBoss;
    const pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 10_000, application_name: 'ferry' });
    pool.on('error', () => {}); // an idle connection dropped: the next query reconnects or reports
    let boss: PgBoss | undefined;
    try {
      const client = await pool.connect();
      try {
        // Server and workers may start together: one of them creates the tables at a time.
        await client.query('BEGIN');
        await client.query("SELECT pg_advisory_xact_lock(hashtext('ferry-schema'))");
        await client.query(SCHEMA);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw err;
      } finally {
        client.release();
      }
      boss = new PgBossClass({ connectionString: url, max: 4, application_name: 'ferry-queue', schema: 'ferry_queue' });
      boss.on('error', () => {}); // maintenance errors are retried by pg-boss; job errors are ours
      await boss.start();
      // Jobs are handed out once; retries are explicit (`retry` in the API/console). A job whose
      // worker vanished expires after a day (pg-boss then marks it failed; retry requeues it).
      if (!(await boss.getQueue(IMPORT_QUEUE))) {
        await boss.createQueue(IMPORT_QUEUE, { name: IMPORT_QUEUE, retryLimit: 0, expireInHours: 23, retentionDays: 7 }).catch(async (err: unknown) => {
          if (!(await boss!.getQueue(IMPORT_QUEUE))) throw err; // another process created it meanwhile
        });
      }
      return new PgJobs(url, pool, boss);
    } catch (err) {
      await boss?.stop({ graceful: false, wait: true }).catch(() => {});
      await pool.end().catch(() => {});
      throw databaseError(err, url);
    }
  }

  private async q<T = Row>(sql: string, values: unknown[] = []): Promise<T[]> {
    try {
      return (await this.pool.query(sql, values)).rows as T[];
    } catch (err) {
      throw databaseError(err, this.url);
    }
  }

  /** Records an import and queues it; returns the job. */
  async enqueueImport(req: ImportRequest): Promise<PgJob> {
    const id = randomUUID();
    const options = { ...(req.format ? { format: req.format } : {}), ...(req.verify ? { verify: true } : {}) };
    const [row] = await this.q('INSERT INTO ferry.jobs (id, kind, source, target, options, state) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *', [id, 'import', req.source, req.target, options, 'queued']);
    await this.event(id, 'queued');
    await this.send(id);
    return fromRow(row!);
  }

  private async send(id: string): Promise<void> {
    try {
      await this.boss.send(IMPORT_QUEUE, { id });
    } catch (err) {
      throw databaseError(err, this.url);
    }
  }

  async list(limit = 500): Promise<PgJob[]> {
    return (await this.q('SELECT * FROM ferry.jobs ORDER BY created DESC LIMIT $1', [limit])).map(fromRow);
  }

  async get(id: string): Promise<PgJob | undefined> {
    if (!/^[0-9a-f-]{36}$/i.test(id)) return undefined;
    const [row] = await this.q('SELECT * FROM ferry.jobs WHERE id = $1', [id]);
    return row ? fromRow(row) : undefined;
  }

  async events(id: string): Promise<{ at: string; message: string }[]> {
    return (await this.q<{ at: Date; message: string }>('SELECT at, message FROM ferry.job_events WHERE job = $1 ORDER BY at', [id])).map((e) => ({ at: e.at.toISOString(), message: e.message }));
  }

  async event(id: string, message: string): Promise<void> {
    await this.q('INSERT INTO ferry.job_events (job, message) VALUES ($1, $2)', [id, message]);
  }

  /**
   * A worker takes a job: returns it when it may run (not finished, not cancelled), marking it
   * started by `worker`; undefined otherwise.
   */
  async claim(id: string, worker: string): Promise<PgJob | undefined> {
    const [row] = await this.q(
      `UPDATE ferry.jobs SET state = 'preflight', worker = $2, attempts = attempts + 1, started = now(), heartbeat = now(), finished = NULL, error = NULL, rate = NULL, eta = NULL
       WHERE id = $1 AND state NOT IN ('succeeded', 'cancelled') AND NOT cancel_requested RETURNING *`,
      [id, worker],
    );
    if (row) await this.event(id, `started by worker ${worker} (attempt ${row.attempts})`);
    return row ? fromRow(row) : undefined;
  }

  /** Jobs this worker was running when it stopped: it died (or its machine did), or was interrupted. */
  async orphansOf(worker: string): Promise<PgJob[]> {
    const sql = `SELECT * FROM ferry.jobs WHERE worker = $1 AND NOT cancel_requested
      AND (state IN ('preflight', 'copying', 'verifying') OR (state = 'failed' AND error->>'code' = 'INTERRUPTED')) ORDER BY started`;
    return (await this.q(sql, [worker])).map(fromRow);
  }

  /** Writes progress or the outcome, and the heartbeat; returns whether a cancel was asked for. */
  async update(id: string, u: JobUpdate): Promise<boolean> {
    const sets = ['heartbeat = now()'];
    const values: unknown[] = [id];
    for (const [key, column] of Object.entries(COLUMNS) as [keyof typeof COLUMNS, string][]) {
      if (u[key] === undefined) continue;
      values.push(key === 'error' || key === 'result' ? (u[key] === null ? null : JSON.stringify(u[key])) : u[key]);
      sets.push(`${column} = $${values.length}`);
    }
    if (u.finished) sets.push('finished = now()');
    const [row] = await this.q<{ cancel_requested: boolean }>(`UPDATE ferry.jobs SET ${sets.join(', ')} WHERE id = $1 RETURNING cancel_requested`, values);
    return row?.cancel_requested ?? false;
  }

  /** Cancels a queued job at once; asks the worker of a running one to stop. */
  async cancel(id: string): Promise<PgJob> {
    const job = await this.get(id);
    if (!job) throw new FerryError('JOB_NOT_FOUND', `no job ${id}`, { remedy: 'List the jobs with GET /api/jobs.' });
    if (job.state === 'succeeded' || job.state === 'cancelled') throw new FerryError('JOB_STATE', `job ${id} is already ${job.state}`, { remedy: 'Nothing to cancel.' });
    if (job.state === 'queued' || job.state === 'failed') {
      await this.q("UPDATE ferry.jobs SET state = 'cancelled', cancel_requested = true, finished = now() WHERE id = $1", [id]);
      await this.event(id, 'cancelled');
    } else {
      await this.q('UPDATE ferry.jobs SET cancel_requested = true WHERE id = $1', [id]);
      await this.event(id, `cancel requested (worker ${job.worker ?? '?'} stops it)`);
    }
    return (await this.get(id))!;
  }

  /** Queues a failed job again (or a running one whose worker stopped reporting). */
  async retry(id: string): Promise<PgJob> {
    const job = await this.get(id);
    if (!job) throw new FerryError('JOB_NOT_FOUND', `no job ${id}`, { remedy: 'List the jobs with GET /api/jobs.' });
    const stale = job.heartbeat !== null && Date.now() - Date.parse(job.heartbeat) > STALE_AFTER_MS;
    const running = job.state === 'preflight' || job.state === 'copying' || job.state === 'verifying';
    if (job.state === 'succeeded' || job.state === 'cancelled' || job.state === 'queued' || (running && !stale)) {
      throw new FerryError('JOB_STATE', `job ${id} is ${job.state}${running ? ` on worker ${job.worker}` : ''}: nothing to retry`, {
        remedy: running ? 'Wait for it, or cancel it first.' : 'Start a new import instead.',
      });
    }
    await this.q("UPDATE ferry.jobs SET state = 'queued', error = NULL, finished = NULL WHERE id = $1", [id]);
    await this.event(id, running ? `requeued: worker ${job.worker} stopped reporting` : 'requeued');
    await this.send(id);
    return (await this.get(id))!;
  }

  async close(): Promise<void> {
    await this.boss.stop({ graceful: false, wait: true, close: true }).catch(() => {});
    await this.pool.end().catch(() => {});
  }
}
