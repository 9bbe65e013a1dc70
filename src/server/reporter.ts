// The reporting side of `--report URL`: a job running on this machine (a migration, an import)
// sends its state to a `ferry server` (PUT /api/reports/ID, token in the Authorization header):
// on each state change at once, progress at most once per interval, and the unchanged state every
// HEARTBEAT_MS while nothing moves (a long verification is not a dead job). Reporting never fails
// the job and barely holds it up: one request at a time, the newest state wins, a request that
// fails or takes over 5 s is dropped (and said once, through onWarning, until one succeeds again);
// the final state is sent before the job's command ends — the request in flight is abandoned, and
// the final one tried up to three times within FINAL_DEADLINE_MS in all.
import { hostname } from 'node:os';
import { FerryError } from '../errors.js';
import type { JobReport } from './reports.js';

/** Report ids: what reporters choose (host and job), safe as a file name. */
export const REPORT_ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

export interface ReporterOptions {
  /** The server's base URL, e.g. http://10.0.0.9:8787 */
  url: string;
  token: string;
  /** The job's id on the server (letters, digits, . _ : @ -; at most 128). */
  id: string;
  kind: JobReport['kind'];
  source: string;
  target: string;
  /** Least time between progress reports (ms; FERRY_REPORT_MS, default 1000). */
  intervalMs?: number;
  /** While nothing changes, the state is sent again this often (ms; default 15 s). */
  heartbeatMs?: number;
  onWarning?: (message: string) => void;
}

const REQUEST_TIMEOUT_MS = 5000;
const RATE_WINDOW_MS = 5000;
/** While nothing changes, the state is sent again this often (the server marks silent jobs stale after a minute). */
const HEARTBEAT_MS = 15_000;
/** The final report's whole budget, retries included. */
const FINAL_DEADLINE_MS = 4000;

/** Checks --report's URL and turns a free-form name into a valid report id. */
export function reportTarget(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new FerryError('USAGE', `--report: not a URL (${url.replace(/\/\/[^@/]*@/, '//…@')})`, { remedy: 'Give the control plane\'s address, e.g. --report http://10.0.0.9:8787.' });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new FerryError('USAGE', `--report '${url}': only http:// and https:// are supported`, { remedy: 'Give the address `ferry server` printed, e.g. http://10.0.0.9:8787.' });
  if (u.username || u.password) throw new FerryError('USAGE', '--report: the URL must not hold a user or password', { remedy: 'Give the token with --report-token or FERRY_REPORT_TOKEN instead.' });
  return u.href.replace(/\/+$/, '');
}

/** A report id from parts (this host's name and what the job is), with unsafe characters replaced. */
export function reportId(...parts: string[]): string {
  const id = [hostname(), ...parts]
    .join(':')
    .replace(/[^A-Za-z0-9._:@-]+/g, '_')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 128);
  return REPORT_ID.test(id) ? id : `job-${Date.now()}`;
}

export class Reporter {
  private readonly endpoint: string;
  private readonly interval: number;
  private state: JobReport;
  private sending: Promise<unknown> | undefined;
  private dirty = false;
  private lastSent = 0;
  private timer: NodeJS.Timeout | undefined;
  private failing = false;
  private done = false;
  private heartbeat: NodeJS.Timeout;
  /** Aborts the request in flight (finish() does not wait for a progress report). */
  private inFlight: AbortController | undefined;
  /** Recent (time, bytes done) samples for the rate. */
  private window: [number, number][] = [];

  constructor(private readonly opts: ReporterOptions) {
    if (!REPORT_ID.test(opts.id)) throw new FerryError('USAGE', `report id '${opts.id}' is not 1–128 letters, digits and . _ : @ -`, { remedy: 'Choose another --report-id.' });
    this.endpoint = `${reportTarget(opts.url)}/api/reports/${encodeURIComponent(opts.id)}`;
    this.interval = opts.intervalMs ?? (Math.max(100, Number(process.env.FERRY_REPORT_MS) || 1000));
    this.state = {
      kind: opts.kind,
      host: hostname(),
      source: opts.source,
      target: opts.target,
      state: 'preflight',
      bytesDone: 0,
      bytesTotal: 0,
      rate: null,
      eta: null,
      started: new Date().toISOString(),
      finished: null,
      error: null,
    };
    const beat = opts.heartbeatMs ?? HEARTBEAT_MS;
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastSent >= beat) {
        this.dirty = true;
        this.schedule(0);
      }
    }, Math.max(50, beat / 2));
    this.heartbeat.unref();
  }

  /** Merges fields into the report; a state change goes out now, progress within the interval. */
  update(fields: Partial<JobReport>): void {
    if (this.done) return;
    const changed = fields.state !== undefined && fields.state !== this.state.state;
    this.state = { ...this.state, ...fields };
    this.dirty = true;
    this.schedule(changed ? 0 : Math.max(0, this.lastSent + this.interval - Date.now()));
  }

  /** Progress of a copy: bytes done of total, with the rate over the last few seconds and the ETA. */
  progress(done: number, total: number, fields: Partial<JobReport> = {}): void {
    const now = Date.now();
    this.window.push([now, done]);
    while (this.window.length > 2 && now - this.window[1]![0] >= RATE_WINDOW_MS) this.window.shift();
    const [t0, b0] = this.window[0]!;
    const rate = now - t0 >= 500 ? Math.max(0, ((done - b0) * 1000) / (now - t0)) : this.state.rate;
    const eta = rate ? Math.max(0, (total - done) / rate) : null;
    this.update({ bytesDone: done, bytesTotal: total, rate: rate ?? null, eta, ...fields });
  }

  /** Sends the final state (succeeded/failed/cancelled) and waits for it to be delivered (or dropped). */
  async finish(fields: Partial<JobReport> & Pick<JobReport, 'state'>): Promise<void> {
    if (this.done) return;
    this.state = { ...this.state, ...fields, finished: new Date().toISOString(), eta: null, rate: fields.state === 'succeeded' ? this.state.rate : null };
    this.done = true;
    clearInterval(this.heartbeat);
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.inFlight?.abort();
    await this.sending;
    const deadline = Date.now() + FINAL_DEADLINE_MS;
    for (let attempt = 0; attempt < 3; attempt++) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      if (await this.send(left)) return;
      await new Promise((r) => setTimeout(r, Math.min(300, Math.max(0, deadline - Date.now()))));
    }
  }

  private schedule(delay: number): void {
    if (this.done) return;
    if (this.timer && delay === 0) {
      clearTimeout(this.timer); // a state change does not wait for the progress interval
      this.timer = undefined;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.sending) {
        // One request at a time: the newest state goes when this one is through.
        void this.sending.then(() => this.schedule(0));
        return;
      }
      if (this.dirty) this.sending = this.send().finally(() => (this.sending = undefined));
    }, delay);
    this.timer.unref();
  }

  /** One request; resolves whether it was delivered (never rejects). */
  private async send(timeoutMs = REQUEST_TIMEOUT_MS): Promise<boolean> {
    this.dirty = false;
    this.lastSent = Date.now();
    const body = JSON.stringify(this.state);
    const abort = new AbortController();
    this.inFlight = abort;
    const timer = setTimeout(() => abort.abort(Object.assign(new Error('timeout'), { name: 'TimeoutError' })), Math.min(timeoutMs, REQUEST_TIMEOUT_MS));
    try {
      const r = await fetch(this.endpoint, {
        method: 'PUT',
        headers: { authorization: `Bearer ${this.opts.token}`, 'content-type': 'application/json' },
        body,
        signal: abort.signal,
      });
      if (!r.ok) {
        let why = `HTTP ${r.status}`;
        try {
          const doc = (await r.json()) as { error?: { code?: string; message?: string } };
          if (doc.error?.message) why = `${doc.error.code ?? r.status}: ${doc.error.message}`;
        } catch {
          // not JSON
        }
        throw new Error(r.status === 401 ? `${why} (check --report-token / FERRY_REPORT_TOKEN: the token \`ferry server\` printed)` : why);
      }
      this.failing = false;
      return true;
    } catch (err) {
      // A progress report abandoned for the final one is not a failure worth a warning.
      const abandoned = abort.signal.aborted && (abort.signal.reason as Error | undefined)?.name !== 'TimeoutError';
      if (!this.failing && !abandoned) {
        const e = err as Error & { cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
        const timedOut = (abort.signal.reason as Error | undefined)?.name === 'TimeoutError';
        const why = timedOut ? 'no answer in time' : (e.cause?.code ?? e.cause?.errors?.[0]?.code ?? e.cause?.message ?? e.message);
        this.opts.onWarning?.(`cannot report to ${this.opts.url}: ${why}; the job goes on (reports resume when the server answers)`);
        this.failing = true;
      }
      return false;
    } finally {
      clearTimeout(timer);
      if (this.inFlight === abort) this.inFlight = undefined;
    }
  }
}

/** The final report of a job that threw: failed with the error's code, message and remedy (cancelled when interrupted). */
export function failureReport(err: unknown): Partial<JobReport> & Pick<JobReport, 'state'> {
  if (err instanceof FerryError) {
    const e = err.toJSON();
    return { state: e.code === 'INTERRUPTED' ? 'cancelled' : 'failed', error: { code: e.code, message: e.message.slice(0, 4096), ...(e.remedy ? { remedy: e.remedy.slice(0, 4096) } : {}) } };
  }
  return { state: 'failed', error: { code: 'INTERNAL', message: String((err as Error)?.message ?? err).slice(0, 4096) } };
}

/** For config schemas: whether `url` is what --report accepts (http/https, no credentials). */
export function isReportUrl(url: string): boolean {
  try {
    reportTarget(url);
    return true;
  } catch {
    return false;
  }
}
