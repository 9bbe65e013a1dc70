// The shared job table and queue of PostgreSQL mode: when several worker machines share the load,
// `ferry server --database URL` and every `ferry worker --database URL` meet in one PostgreSQL
// database. Jobs are rows of ferry.jobs (state, worker, progress, rate, ETA, failure
// code/message/remedy, heartbeat) and ferry.job_events; pg-boss (a proven Postgres queue:
// SKIP LOCKED fetches, expiry, retention) delivers each queued job to one worker, and the row is
// the lock: a worker runs a job only after moving it out of 'queued' in one conditional UPDATE,
// and every later write of that worker is fenced by the attempt number it claimed (a worker that
// lost the job — retried elsewhere after it stopped reporting — sees its writes refused and stops).
// A worker keeps the resume checkpoints of the imports it runs in its own state directory
// (src/jobs/), and reports progress and a heartbeat to the row.
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type PgBoss from 'pg-boss';
import type { Pool } from 'pg';
import { FerryError } from '../errors.js';

/** The pg-boss queue imports go through. */
export const IMPORT_QUEUE = 'ferry-import';
/** A running job whose worker has not reported for this long is stale: it may be retried or cancelled. */
export const STALE_AFTER_MS = 60_000;
/** Workers write a heartbeat at least this often while a job runs. */
export const HEARTBEAT_MS = 10_000;

const RUNNING = "state IN ('preflight', 'copying', 'verifying')";
const STALE = `heartbeat < now() - interval '${STALE_AFTER_MS / 1000} seconds'`;
/** A job its worker did not finish: still marked running, or stopped by an interruption. */
const OWN_UNFINISHED = `(${RUNNING} OR (state = 'failed' AND error->>'code' = 'INTERRUPTED'))`;

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
  seq bigserial PRIMARY KEY,
  job uuid NOT NULL REFERENCES ferry.jobs (id) ON DELETE CASCADE,
  at timestamptz NOT NULL DEFAULT now(),
  message text NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON ferry.job_events (job, seq);
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
    for (const key of [...u.searchParams.keys()]) if (/pass|secret|key/i.test(key)) u.searchParams.set(key, '***');
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
  const timedOut = !e.code && /timeout|terminated unexpectedly|Connection terminated/i.test(e.message ?? '');
  if (timedOut || e.code === 'ECONNREFUSED' || e.code === 'ENOTFOUND' || e.code === 'ETIMEDOUT' || e.code === 'EHOSTUNREACH' || e.code === 'ECONNRESET' || e.code === '57P03') {
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
    let parsed: URL | undefined;
    try {
      parsed = new URL(url);
    } catch {
      parsed = undefined;
    }
    if (!parsed || !/^postgres(ql)?:$/.test(parsed.protocol) || (!parsed.hostname && !parsed.searchParams.get('host'))) {
      throw new FerryError('USAGE', `'${redactUrl(url)}' is not a PostgreSQL URL`, {
        remedy: 'Give postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE (--database or FERRY_DATABASE_URL).',
      });
    }
    let pg: typeof import('pg');
    let PgBossClass: typeof PgBoss;
    try {
      const require = createRequire(import.meta.url);
      pg = require('pg') as typeof import('pg');
      PgBossClass = require('pg-boss') as typeof PgBoss;
    } catch (err) {
      throw new FerryError('USAGE', `PostgreSQL mode is not available in this build of Ferry (${(err as Error).message})`, {
        remedy: 'Run `ferry server --database` and `ferry worker` from a full installation (npm ci), not from the single-file agent.',
        cause: err,
      });
    }
    const pool = new pg.Pool({ connectionString: url, max: 3, connectionTimeoutMillis: 10_000, application_name: 'ferry' });
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
      boss = new PgBossClass({ connectionString: url, max: 2, application_name: 'ferry-queue', schema: 'ferry_queue' });
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

  /**
   * Puts a queued row on the queue. When that fails the row is marked failed (with the reason), so
   * it never sits 'queued' with nothing to run it; retry queues it again.
   */
  async send(id: string): Promise<void> {
    try {
      await this.boss.send(IMPORT_QUEUE, { id });
    } catch (err) {
      const e = databaseError(err, this.url);
      await this.q("UPDATE ferry.jobs SET state = 'failed', finished = now(), error = $2 WHERE id = $1 AND state = 'queued'", [
        id,
        JSON.stringify({ code: e.code, message: `could not queue the job: ${e.message}`, remedy: 'Retry it once the database is back.' }),
      ]).catch(() => {});
      throw e;
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
    return (await this.q<{ at: Date; message: string }>('SELECT at, message FROM ferry.job_events WHERE job = $1 ORDER BY seq', [id])).map((e) => ({ at: e.at.toISOString(), message: e.message }));
  }

  async event(id: string, message: string): Promise<void> {
    await this.q('INSERT INTO ferry.job_events (job, message) VALUES ($1, $2)', [id, message]);
  }

  /**
   * A worker takes a job delivered by the queue: only a 'queued' row can be taken, in one UPDATE,
   * so a job runs on one worker at a time. Returns the job (with its new attempt number) or
   * undefined when it is not queued any more (cancelled, or taken).
   */
  async claim(id: string, worker: string): Promise<PgJob | undefined> {
    return this.start(id, worker, "state = 'queued'", `started by worker ${worker}`);
  }

  /** A worker started again takes back a job it was running (see orphansOf). */
  async reclaim(id: string, worker: string): Promise<PgJob | undefined> {
    return this.start(id, worker, `worker = $2 AND ${OWN_UNFINISHED}`, `started by worker ${worker} again`);
  }

  private async start(id: string, worker: string, condition: string, what: string): Promise<PgJob | undefined> {
    const [row] = await this.q(
      `UPDATE ferry.jobs SET state = 'preflight', worker = $2, attempts = attempts + 1, started = now(), heartbeat = now(), finished = NULL, error = NULL, rate = NULL, eta = NULL
       WHERE id = $1 AND NOT cancel_requested AND ${condition} RETURNING *`,
      [id, worker],
    );
    if (row) await this.event(id, `${what} (attempt ${row.attempts})`);
    return row ? fromRow(row) : undefined;
  }

  /** Jobs this worker was running when it stopped: it died (or its machine did), or was interrupted. */
  async orphansOf(worker: string): Promise<PgJob[]> {
    const sql = `SELECT * FROM ferry.jobs WHERE worker = $1 AND NOT cancel_requested AND ${OWN_UNFINISHED} ORDER BY started`;
    return (await this.q(sql, [worker])).map(fromRow);
  }

  /**
   * Writes progress or the outcome, and the heartbeat, for the attempt `attempt` of `worker`.
   * Returns 'cancel' when a cancel was asked for, 'lost' when the job is not this attempt's any more
   * (retried elsewhere, or finished): the worker must stop it. An update with no fields is a heartbeat.
   */
  async update(id: string, attempt: { worker: string; attempts: number }, u: JobUpdate): Promise<'ok' | 'cancel' | 'lost'> {
    const sets = ['heartbeat = now()'];
    const values: unknown[] = [id, attempt.worker, attempt.attempts];
    for (const [key, column] of Object.entries(COLUMNS) as [keyof typeof COLUMNS, string][]) {
      if (u[key] === undefined) continue;
      values.push(key === 'error' || key === 'result' ? (u[key] === null ? null : JSON.stringify(u[key])) : u[key]);
      sets.push(`${column} = $${values.length}`);
    }
    if (u.finished) sets.push('finished = now()');
    const [row] = await this.q<{ cancel_requested: boolean }>(
      `UPDATE ferry.jobs SET ${sets.join(', ')} WHERE id = $1 AND worker = $2 AND attempts = $3 AND state IN ('preflight', 'copying', 'verifying') RETURNING cancel_requested`,
      values,
    );
    if (!row) return 'lost';
    return row.cancel_requested ? 'cancel' : 'ok';
  }

  /**
   * Cancels a queued or failed job at once (and a running one whose worker stopped reporting);
   * asks the worker of a running one to stop (it does at its next report).
   */
  async cancel(id: string): Promise<PgJob> {
    const [now] = await this.q(
      `UPDATE ferry.jobs SET state = 'cancelled', cancel_requested = true, finished = now(), rate = NULL, eta = NULL
       WHERE id = $1 AND (state IN ('queued', 'failed') OR (${RUNNING} AND ${STALE})) RETURNING *`,
      [id],
    );
    if (now) {
      await this.event(id, 'cancelled');
      return fromRow(now);
    }
    const [asked] = await this.q(`UPDATE ferry.jobs SET cancel_requested = true WHERE id = $1 AND ${RUNNING} RETURNING *`, [id]);
    if (asked) {
      await this.event(id, `cancel requested (worker ${asked.worker ?? '?'} stops it)`);
      return fromRow(asked);
    }
    const job = await this.get(id);
    if (!job) throw new FerryError('JOB_NOT_FOUND', `no job ${id}`, { remedy: 'List the jobs with GET /api/jobs.' });
    throw new FerryError('JOB_STATE', `job ${id} is already ${job.state}`, { remedy: 'Nothing to cancel.' });
  }

  /** Queues a failed job again (or a running one whose worker stopped reporting), in one UPDATE. */
  async retry(id: string): Promise<PgJob> {
    const [row] = await this.q(
      `UPDATE ferry.jobs SET state = 'queued', error = NULL, finished = NULL, rate = NULL, eta = NULL, cancel_requested = false
       WHERE id = $1 AND (state = 'failed' OR (${RUNNING} AND ${STALE})) RETURNING *, (SELECT state FROM ferry.jobs WHERE id = $1) AS was`,
      [id],
    );
    if (!row) {
      const job = await this.get(id);
      if (!job) throw new FerryError('JOB_NOT_FOUND', `no job ${id}`, { remedy: 'List the jobs with GET /api/jobs.' });
      const running = ['preflight', 'copying', 'verifying'].includes(job.state);
      throw new FerryError('JOB_STATE', `job ${id} is ${job.state}${running ? ` on worker ${job.worker}` : ''}: nothing to retry`, {
        remedy: running ? 'Wait for it, or cancel it first.' : job.state === 'queued' ? 'It waits for a worker: start one with `ferry worker`.' : 'Start a new import instead.',
      });
    }
    const was = (row as Row & { was: string }).was;
    await this.event(id, was === 'failed' ? 'requeued' : `requeued: worker ${row.worker} stopped reporting`);
    await this.send(id);
    return fromRow(row);
  }

  async close(): Promise<void> {
    await this.boss.stop({ graceful: false, wait: true, close: true }).catch(() => {});
    await this.pool.end().catch(() => {});
  }
}
