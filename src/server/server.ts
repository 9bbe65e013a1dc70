// `ferry server`: the control plane on one port — a REST API under /api/ (token required for every
// call: `Authorization: Bearer TOKEN`), a web console at / (a single page over that API), and
// Prometheus metrics at /metrics. It shows every job of its state directory: imports (the SQLite
// job store, src/jobs/) and the hosts of fleet runs (src/fleet/state.ts), with state, progress,
// rate, ETA and failure code/message/remedy; it starts imports and retries or cancels them (as
// `ferry` child processes, so a job outlives a restart of the server), and samples each running
// job's progress every 2 s for the console's rate chart. With `database` (PostgreSQL mode) the
// imports are rows of the shared job table instead, run by `ferry worker` processes on any number
// of machines (src/queue/); the server only queues, lists, cancels and retries them. Jobs running on
// other machines report themselves (`--report URL` of migrate and import: PUT /api/reports/ID,
// src/server/reports.ts) and are listed with the rest.
import { spawn } from 'node:child_process';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { FerryError } from '../errors.js';
import type { FleetRecord } from '../fleet/state.js';
import { cancelJob } from '../jobs/import-job.js';
import { JobStore, type Job } from '../jobs/job-store.js';
import { packagePath } from '../paths.js';
import type { PgJob, PgJobs } from '../queue/pg-jobs.js';
import { stateDir } from '../transfer/checkpoint.js';
import { toolVersion } from '../version.js';
import { consolePage } from './console.js';
import { isStale, REPORT_ID, ReportStore, type StoredReport } from './reports.js';

export interface ServerOptions {
  listen: string;
  token?: string;
  /** The token that may only send reports (PUT /api/reports/ID): what reporting machines hold. */
  reportToken?: string;
  /** PostgreSQL mode: the shared job database (postgres://…) that `ferry worker`s take imports from. */
  database?: string;
  /** Called for each request handled (method, path, status), for logs. */
  onRequest?: (r: { method: string; path: string; status: number }) => void;
}

/** A job as the API shows it: an import, or one host of a fleet run. */
export interface ApiJob {
  id: string;
  kind: 'import' | 'migration';
  state: string;
  phase?: string;
  source: string;
  target: string;
  bytesDone: number;
  bytesTotal: number;
  percent: number;
  rate: number | null;
  eta: number | null;
  started: string | null;
  finished: string | null;
  error: { code: string; message: string; remedy?: string } | null;
  /** PostgreSQL mode: the worker that runs (or ran) the import. */
  worker?: string | null;
  /** Jobs that report themselves from another machine (`--report`): where they run. */
  host?: string;
  reported?: boolean;
  /** A reported job still running whose reporter has been silent for a minute or more. */
  stale?: boolean;
  /** Bytes put on the wire (reported migrations: compressed). */
  bytesSent?: number;
  /** Reported jobs: when the server last heard from the job, and how many reports it received. */
  reportedAt?: string;
  reports?: number;
}

/** A reported job as the API shows it. */
function fromReport(r: StoredReport, now: number): ApiJob {
  return {
    id: r.id,
    kind: r.kind,
    state: r.state,
    ...(r.phase ? { phase: r.phase } : {}),
    source: r.source,
    target: r.target,
    bytesDone: r.bytesDone,
    bytesTotal: r.bytesTotal,
    percent: r.bytesTotal ? Math.min(100, Math.floor((100 * r.bytesDone) / r.bytesTotal)) : r.state === 'succeeded' ? 100 : 0,
    rate: r.rate,
    eta: r.eta,
    started: r.started,
    finished: r.finished,
    error: r.error,
    ...(r.host ? { host: r.host } : {}),
    reported: true,
    stale: isStale(r, now),
    reportedAt: r.reportedAt,
    reports: r.reports ?? 0,
    ...(r.bytesSent !== undefined ? { bytesSent: r.bytesSent } : {}),
  };
}

/** How often running jobs' progress is sampled for the rate chart (FERRY_SERVER_SAMPLE_MS: tests). */
const SAMPLE_MS = Math.max(100, Number(process.env.FERRY_SERVER_SAMPLE_MS) || 2000);

/** An import as the API shows it, from the local job store (Job) or the shared table (PgJob). */
function fromImport(j: Job | PgJob): ApiJob {
  return {
    id: j.id,
    kind: 'import',
    state: j.state,
    source: j.source,
    target: j.target,
    bytesDone: j.bytesDone,
    bytesTotal: j.bytesTotal,
    percent: j.bytesTotal ? Math.floor((100 * j.bytesDone) / j.bytesTotal) : j.state === 'succeeded' ? 100 : 0,
    rate: j.rate,
    eta: j.eta,
    started: j.started,
    finished: j.finished,
    error: j.error ? { code: j.error.code, message: j.error.message, ...(j.error.remedy ? { remedy: j.error.remedy } : {}) } : null,
    ...('worker' in j ? { worker: j.worker } : {}),
  };
}

/** Where imports live: this machine's SQLite job store, or PostgreSQL's shared job table. */
interface ImportJobs {
  list(): Promise<ApiJob[]>;
  /** One import by id (PostgreSQL mode; the local store is searched through list()). */
  find?(id: string): Promise<ApiJob | undefined>;
  events(id: string): Promise<unknown[]>;
  start(req: { source: string; target: string; format?: string }): Promise<Record<string, unknown>>;
  cancel(id: string): Promise<ApiJob>;
  retry(job: ApiJob): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

function localImports(): ImportJobs {
  const jobs = JobStore.open();
  const spawnFerry = (args: string[]) => {
    const child = spawn(process.execPath, [packagePath('bin', 'ferry.js'), ...args, '--json'], { stdio: 'ignore', detached: true, env: { ...process.env, FERRY_STATE_DIR: stateDir() } });
    child.unref();
  };
  return {
    list: async () => jobs.list({ limit: 500 }).map(fromImport),
    events: async (id) => jobs.events(id),
    start: async (req) => {
      spawnFerry(['import', req.source, '--target', req.target, ...(req.format ? ['--format', req.format] : [])]);
      return { accepted: true, source: req.source, target: req.target };
    },
    cancel: async (id) => fromImport(await cancelJob(id)),
    retry: async (job) => {
      if (job.state === 'succeeded' || job.state === 'cancelled') throw new HttpError(409, 'JOB_STATE', `job ${job.id} is ${job.state}: nothing to retry`);
      spawnFerry(['jobs', 'retry', job.id]);
      return { accepted: true, id: job.id };
    },
    close: async () => jobs.close(),
  };
}

async function postgresImports(url: string): Promise<ImportJobs> {
  const { PgJobs: Jobs } = await import('../queue/pg-jobs.js');
  const db: PgJobs = await Jobs.open(url);
  return {
    list: async () => (await db.list()).map(fromImport),
    find: async (id) => {
      const j = await db.get(id);
      return j ? fromImport(j) : undefined;
    },
    events: (id) => db.events(id),
    start: async (req) => {
      const job = await db.enqueueImport(req);
      return { accepted: true, id: job.id, source: job.source, target: job.target, job: fromImport(job) };
    },
    cancel: async (id) => fromImport(await db.cancel(id)),
    retry: async (job) => ({ accepted: true, id: job.id, job: fromImport(await db.retry(job.id)) }),
    close: () => db.close(),
  };
}

function fleetJobs(): ApiJob[] {
  const dir = join(stateDir(), 'fleet');
  let files: string[] = [];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
  const out: ApiJob[] = [];
  for (const f of files) {
    let rec: FleetRecord;
    try {
      rec = JSON.parse(readFileSync(join(dir, f), 'utf8')) as FleetRecord;
    } catch {
      continue; // being replaced right now
    }
    for (const h of Object.values(rec.hosts)) {
      const report = h.report as { target?: string; disks?: { source: string }[] } | undefined;
      out.push({
        id: `fleet:${f.replace(/\.json$/, '')}:${h.name}`,
        kind: 'migration',
        state: h.state,
        phase: h.phase,
        source: h.name,
        target: report?.target ?? rec.inventory,
        bytesDone: h.bytesSent ?? 0,
        bytesTotal: h.bytesToMove ?? 0,
        percent: h.percent ?? 0,
        rate: h.rate ?? null,
        eta: h.etaSeconds ?? null,
        started: h.startedAt ?? null,
        finished: h.finishedAt ?? null,
        error: h.error ?? null,
      });
    }
  }
  return out;
}

export interface RunningServer {
  address: string;
  port: number;
  token: string;
  reportToken: string;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function body(req: IncomingMessage): Promise<Record<string, unknown>> {
  let text = '';
  for await (const chunk of req) {
    text += (chunk as Buffer).toString('utf8');
    if (text.length > 64 * 1024) throw new HttpError(413, 'USAGE', 'request body over 64 KiB');
  }
  if (!text) return {};
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch {
    throw new HttpError(400, 'USAGE', 'the body is not a JSON object');
  }
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(opts.listen);
  if (!m) throw new FerryError('USAGE', `--listen '${opts.listen}' is not HOST:PORT`, { remedy: 'For example --listen 127.0.0.1:8787.' });
  const host = m[1] ?? (m[2] || '0.0.0.0');
  const token = opts.token ?? randomBytes(18).toString('base64url');
  const tokenBuf = Buffer.from(token);
  const reportToken = opts.reportToken ?? randomBytes(18).toString('base64url');
  const reportTokenBuf = Buffer.from(reportToken);
  const imports = opts.database ? await postgresImports(opts.database) : localImports();
  /** Progress samples of running jobs: id → [time ms, bytes done][] (last 10 minutes). */
  const samples = new Map<string, [number, number][]>();
  const reports = new ReportStore(stateDir());
  const allJobs = async (): Promise<ApiJob[]> => {
    const own = [...(await imports.list()), ...fleetJobs()];
    // A job this server also sees in its own records (same state directory) is listed once.
    const ids = new Set(own.map((j) => j.id));
    const now = Date.now();
    return [...own, ...reports.list().filter((r) => !ids.has(r.id)).map((r) => fromReport(r, now))];
  };
  let sampling = false;
  const sampler = setInterval(() => {
    if (sampling) return;
    sampling = true;
    const now = Date.now();
    allJobs()
      .then((all) => {
        const live = new Set(all.map((j) => j.id));
        for (const id of samples.keys()) if (!live.has(id)) samples.delete(id);
        for (const j of all) {
          if (!['preflight', 'copying', 'verifying', 'running'].includes(j.state) || j.stale) continue;
          const s = samples.get(j.id) ?? [];
          s.push([now, j.bytesDone]);
          while (s.length > 300) s.shift();
          samples.set(j.id, s);
        }
      })
      .catch(() => {}) // the database is away for a moment: the next sample tries again
      .finally(() => (sampling = false));
  }, SAMPLE_MS);
  sampler.unref();

  const presented = (req: IncomingMessage, want: Buffer): boolean => {
    const h = req.headers.authorization ?? '';
    const given = Buffer.from(h.startsWith('Bearer ') ? h.slice(7) : '');
    return given.length === want.length && timingSafeEqual(given, want);
  };
  const authorized = (req: IncomingMessage): boolean => presented(req, tokenBuf);

  const route = async (req: IncomingMessage, res: ServerResponse, path: string): Promise<unknown> => {
    const method = req.method ?? 'GET';
    if (path === '/api/health') return { ok: true, version: toolVersion() };
    const rep = /^\/api\/reports\/([^/]+)$/.exec(path);
    // Reporting machines hold the report token, which allows this and nothing else.
    if (rep && method === 'PUT' && (presented(req, reportTokenBuf) || authorized(req))) {
      const id = decodeURIComponent(rep[1]!);
      if (!REPORT_ID.test(id)) throw new HttpError(400, 'USAGE', `report id '${id.slice(0, 200)}' is not 1–128 letters, digits and . _ : @ -`);
      const r = reports.put(id, await body(req));
      if (!r.ok) throw new HttpError(400, 'USAGE', `the report does not fit the schema: ${r.issues.join('; ')}`);
      return { ok: true, id };
    }
    if (!authorized(req)) throw new HttpError(401, 'UNAUTHORIZED', 'this API needs the server\'s token: Authorization: Bearer TOKEN');
    if (path === '/api/jobs' && method === 'GET') return { jobs: await allJobs() };
    if (path === '/api/jobs' && method === 'POST') {
      const b = await body(req);
      if (b.kind !== 'import' || typeof b.source !== 'string' || typeof b.target !== 'string') {
        throw new HttpError(400, 'USAGE', 'give {"kind": "import", "source": "s3://… or a file", "target": "a file or device"}');
      }
      const accepted = await imports.start({ source: b.source, target: b.target, ...(typeof b.format === 'string' ? { format: b.format } : {}) });
      res.statusCode = 202;
      return accepted;
    }
    if (rep && method === 'DELETE') {
      const id = decodeURIComponent(rep[1]!);
      if (!REPORT_ID.test(id) || !reports.delete(id)) throw new HttpError(404, 'JOB_NOT_FOUND', `no reported job ${id.slice(0, 200)}`);
      samples.delete(id);
      await reports.flush(); // its file is gone when the answer says so (a restart does not bring it back)
      return { ok: true, id };
    }
    const one = /^\/api\/jobs\/([^/]+)(?:\/(retry|cancel|rates))?$/.exec(path);
    if (one) {
      const id = decodeURIComponent(one[1]!);
      const action = one[2];
      const job = (await imports.find?.(id)) ?? (await allJobs()).find((j) => j.id === id || (j.kind === 'import' && j.id.startsWith(id)));
      if (!job) throw new HttpError(404, 'JOB_NOT_FOUND', `no job ${id}`);
      if (!action && method === 'GET') return { job, ...(job.kind === 'import' ? { events: await imports.events(job.id) } : {}) };
      if (action === 'rates' && method === 'GET') {
        const s = samples.get(job.id) ?? [];
        return { id: job.id, rates: s.slice(1).map(([t, b], i) => ({ at: new Date(t).toISOString(), bytesPerSecond: Math.max(0, (b - s[i]![1]) / ((t - s[i]![0]) / 1000)) })) };
      }
      if (job.reported) throw new HttpError(400, 'USAGE', `job ${job.id} runs on ${job.host ?? 'another machine'} and reports here: retry or cancel it there`);
      if (job.kind !== 'import') throw new HttpError(400, 'USAGE', 'fleet hosts are retried by running `ferry fleet run` again');
      if (action === 'cancel' && method === 'POST') return { job: await imports.cancel(job.id) };
      if (action === 'retry' && method === 'POST') {
        const accepted = await imports.retry(job);
        res.statusCode = 202;
        return accepted;
      }
    }
    throw new HttpError(404, 'NOT_FOUND', `no ${method} ${path}`);
  };

  const metrics = async (): Promise<string> => {
    const all = await allJobs();
    const lines = ['# HELP ferry_jobs Jobs by kind and state.', '# TYPE ferry_jobs gauge'];
    const counts = new Map<string, number>();
    // A reported job whose reporter fell silent is counted as stale, not as running, and has no
    // progress series (its last figures are not current).
    for (const j of all) {
      const k = `kind="${j.kind}",state="${j.stale ? 'stale' : j.state}"`;
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    for (const [k, n] of counts) lines.push(`ferry_jobs{${k}} ${n}`);
    const live = all.filter((j) => !j.finished && !j.stale);
    const label = (v: string) => v.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`));
    lines.push('# HELP ferry_job_bytes_done Bytes done by running jobs.', '# TYPE ferry_job_bytes_done gauge');
    for (const j of live) lines.push(`ferry_job_bytes_done{id="${label(j.id)}",kind="${j.kind}"} ${j.bytesDone}`);
    lines.push('# HELP ferry_job_rate_bytes_per_second Current rate of running jobs.', '# TYPE ferry_job_rate_bytes_per_second gauge');
    for (const j of live) if (j.rate !== null) lines.push(`ferry_job_rate_bytes_per_second{id="${label(j.id)}",kind="${j.kind}"} ${j.rate}`);
    return lines.join('\n') + '\n';
  };

  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const done = (status: number, type: string, text: string) => {
      res.statusCode = status;
      res.setHeader('content-type', type);
      res.setHeader('cache-control', 'no-store');
      res.end(text);
      opts.onRequest?.({ method: req.method ?? 'GET', path, status });
    };
    if (path === '/' && req.method === 'GET') return done(200, 'text/html; charset=utf-8', consolePage());
    if (path === '/metrics' && req.method === 'GET') {
      metrics().then(
        (text) => done(200, 'text/plain; version=0.0.4', text),
        (err: unknown) => done(503, 'text/plain', `# ${String((err as Error)?.message ?? err)}\n`),
      );
      return;
    }
    route(req, res, path).then(
      (doc) => done(res.statusCode === 200 ? 200 : res.statusCode, 'application/json', JSON.stringify(doc)),
      (err: unknown) => {
        if (err instanceof HttpError) return done(err.status, 'application/json', JSON.stringify({ error: { code: err.code, message: err.message } }));
        if (err instanceof FerryError) {
          const status = err.code === 'JOB_NOT_FOUND' ? 404 : err.code.startsWith('DATABASE_') ? 503 : 409;
          return done(status, 'application/json', JSON.stringify({ error: err.toJSON() }));
        }
        done(500, 'application/json', JSON.stringify({ error: { code: 'INTERNAL', message: String((err as Error)?.message ?? err) } }));
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new FerryError('USAGE', `cannot listen on ${opts.listen} (${err.code})`, { remedy: err.code === 'EADDRINUSE' ? 'Another program uses this port: choose another with --listen.' : 'Check the address.' })),
    );
    server.listen(Number(m[3]), host, () => resolve());
  }).catch(async (err: unknown) => {
    clearInterval(sampler);
    await imports.close();
    throw err;
  });
  const addr = server.address() as { address: string; port: number };
  return {
    address: `${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`,
    port: addr.port,
    token,
    reportToken,
    close: async () => {
      clearInterval(sampler);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await reports.flush();
      await imports.close();
    },
  };
}
