// Jobs reported to the control plane from elsewhere: `ferry migrate --report URL` on a source
// server (or a fleet agent) and `ferry import --report URL` on any machine PUT their state to
// `/api/reports/ID` while they run. This module owns the report's schema (checked with zod: a
// reporter is a remote program, its documents are input like any other) and the store: the latest
// report of each job, kept in memory and in `STATE_DIR/reports/ID.json`, so a restarted server
// still shows what it was told. A running job whose reporter falls silent is shown as `stale`.
// Files are written in the background, off the request path, and coalesced: a job that reports
// faster than the disk keeps up with is written once with its latest report.
import { readdirSync, readFileSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

import { REPORT_ID } from './reporter.js';
export { REPORT_ID };

/** Time without a report after which a running job is shown as stale (FERRY_SERVER_STALE_MS: tests). */
const STALE_AFTER_MS = Math.max(100, Number(process.env.FERRY_SERVER_STALE_MS) || 60_000);

const States = ['preflight', 'copying', 'running', 'verifying', 'succeeded', 'failed', 'cancelled'] as const;
export const FINAL_STATES: readonly string[] = ['succeeded', 'failed', 'cancelled'];
/** Reported jobs kept at most; beyond, the oldest finished (or stale) one makes room. */
const MAX_REPORTS = Math.max(2, Number(process.env.FERRY_SERVER_MAX_REPORTS) || 2000);

const Iso = z.string().max(40).nullable();
export const ReportSchema = z
  .object({
    kind: z.enum(['import', 'migration']),
    /** The machine the job runs on (for the console: where to look). */
    host: z.string().max(253).optional(),
    source: z.string().max(4096),
    target: z.string().max(4096),
    state: z.enum(States),
    phase: z.string().max(200).optional(),
    bytesDone: z.number().nonnegative().finite(),
    bytesTotal: z.number().nonnegative().finite(),
    /** Bytes put on the wire so far (migrations: compressed), when it differs from bytesDone. */
    bytesSent: z.number().nonnegative().finite().optional(),
    rate: z.number().nonnegative().finite().nullable(),
    eta: z.number().nonnegative().finite().nullable(),
    started: Iso,
    finished: Iso,
    error: z
      .object({ code: z.string().max(64), message: z.string().max(4096), remedy: z.string().max(4096).optional() })
      .strict()
      .nullable(),
  })
  .strict();

export type JobReport = z.infer<typeof ReportSchema>;

export interface StoredReport extends JobReport {
  id: string;
  /** When the server last heard from the reporter (ISO time, the server's clock). */
  reportedAt: string;
  /** Reports received for this job since the server started. */
  reports?: number;
}

export class ReportStore {
  private readonly reports = new Map<string, StoredReport>();
  private readonly dir: string;
  /** Jobs whose file no longer matches memory (written, or removed when deleted). */
  private readonly dirty = new Set<string>();
  private writing: Promise<void> | undefined;
  /** The first failure to keep a file (reported once; memory stays right meanwhile). */
  private persistError: string | undefined;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'reports');
    let files: string[] = [];
    try {
      files = readdirSync(this.dir).filter((f) => f.endsWith('.json'));
    } catch {
      return; // none yet
    }
    for (const f of files) {
      try {
        const doc = JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as StoredReport;
        const ok = ReportSchema.safeParse(stripStored(doc));
        if (ok.success && REPORT_ID.test(doc.id) && typeof doc.reportedAt === 'string') this.reports.set(doc.id, { ...ok.data, id: doc.id, reportedAt: doc.reportedAt, reports: 0 });
      } catch {
        // a damaged file: ignored (the next report replaces it)
      }
    }
  }

  /** Records a report; returns the issues when the document does not fit the schema. */
  put(id: string, doc: unknown, now = new Date()): { ok: true; report: StoredReport } | { ok: false; issues: string[] } {
    const parsed = ReportSchema.safeParse(doc);
    if (!parsed.success) return { ok: false, issues: parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`) };
    if (!this.reports.has(id) && this.reports.size >= MAX_REPORTS) {
      const done = [...this.reports.values()].filter((r) => FINAL_STATES.includes(r.state) || isStale(r, now.getTime()));
      if (done.length === 0) return { ok: false, issues: [`${MAX_REPORTS} jobs are reporting already (none finished); delete some with DELETE /api/reports/ID`] };
      const oldest = done.reduce((a, b) => (Date.parse(a.reportedAt) <= Date.parse(b.reportedAt) ? a : b));
      this.delete(oldest.id);
    }
    const report: StoredReport = { ...parsed.data, id, reportedAt: now.toISOString(), reports: (this.reports.get(id)?.reports ?? 0) + 1 };
    this.reports.set(id, report);
    this.persist(id);
    return { ok: true, report };
  }

  /** Queues the job's file to be brought in line with memory. */
  private persist(id: string): void {
    this.dirty.add(id);
    this.writing ??= this.writeDirty().finally(() => {
      this.writing = undefined;
      const [next] = this.dirty;
      if (next !== undefined) this.persist(next); // queued in the moment the loop ended
    });
  }

  private async writeDirty(): Promise<void> {
    while (this.dirty.size > 0) {
      const [id] = this.dirty;
      this.dirty.delete(id!);
      const file = join(this.dir, `${id}.json`);
      const report = this.reports.get(id!);
      try {
        if (!report) {
          await rm(file, { force: true });
          continue;
        }
        await mkdir(this.dir, { recursive: true, mode: 0o700 });
        await writeFile(`${file}.tmp`, JSON.stringify(report));
        await rename(`${file}.tmp`, file);
      } catch (err) {
        if (this.persistError === undefined) {
          this.persistError = `${file}: ${(err as Error).message}`;
          process.stderr.write(`ferry server: warning: cannot keep reported jobs in ${this.dir} (${this.persistError}); they are kept in memory only\n`);
        }
      }
    }
  }

  /** Resolves once every report received so far is in its file (before the server exits). */
  async flush(): Promise<void> {
    while (this.writing) await this.writing;
  }

  list(): StoredReport[] {
    return [...this.reports.values()];
  }

  get(id: string): StoredReport | undefined {
    return this.reports.get(id);
  }

  delete(id: string): boolean {
    const had = this.reports.delete(id);
    this.persist(id);
    return had;
  }
}

function stripStored(doc: StoredReport): Record<string, unknown> {
  const { id: _id, reportedAt: _at, reports: _n, ...rest } = doc;
  return rest;
}

/** Whether a running job's reporter has been silent too long (final states are never stale). */
export function isStale(r: StoredReport, now = Date.now()): boolean {
  return !FINAL_STATES.includes(r.state) && now - Date.parse(r.reportedAt) > STALE_AFTER_MS;
}
