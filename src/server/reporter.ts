// The reporting side of `--report URL`: a job running on this machine (a migration, an import)
// sends its state to a `ferry server` (PUT /api/reports/ID, token in the Authorization header):
// on each state change at once, and progress at most once per interval. Reporting never holds the
// job up and never fails it: one request at a time, the newest state wins, a request that fails
// or takes over 5 s is dropped (and said once, through onWarning, until one succeeds again); the
// final state is sent before the job's command ends, waiting at most a few seconds for the server.
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
  onWarning?: (message: string) => void;
}

const REQUEST_TIMEOUT_MS = 5000;
const RATE_WINDOW_MS = 5000;

/** Checks --report's URL and turns a free-form name into a valid report id. */
export function reportTarget(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new FerryError('USAGE', `--report '${url}' is not a URL`, { remedy: 'Give the control plane\'s address, e.g. --report http://10.0.0.9:8787.' });
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new FerryError('USAGE', `--report '${url}': only http:// and https:// are supported`, { remedy: 'Give the address `ferry server` printed, e.g. http://10.0.0.9:8787.' });
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
  private sending: Promise<void> | undefined;
  private dirty = false;
  private lastSent = 0;
  private timer: NodeJS.Timeout | undefined;
  private failing = false;
  private done = false;
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
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.sending;
    await this.send();
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

  private async send(): Promise<void> {
    this.dirty = false;
    this.lastSent = Date.now();
    const body = JSON.stringify(this.state);
    try {
      const r = await fetch(this.endpoint, {
        method: 'PUT',
        headers: { authorization: `Bearer ${this.opts.token}`, 'content-type': 'application/json' },
        body,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
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
    } catch (err) {
      if (!this.failing) {
        const e = err as Error & { cause?: { code?: string; message?: string; errors?: { code?: string }[] } };
        const why = e.name === 'TimeoutError' ? `no answer in ${REQUEST_TIMEOUT_MS / 1000} s` : (e.cause?.code ?? e.cause?.errors?.[0]?.code ?? e.cause?.message ?? e.message);
        this.opts.onWarning?.(`cannot report to ${this.opts.url}: ${why}; the job goes on (reports resume when the server answers)`);
      }
      this.failing = true;
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
