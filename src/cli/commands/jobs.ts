// `ferry jobs list|show|retry|cancel`: the durable job records (src/jobs/) — what ran, what runs,
// how far it got, why it failed — and resuming or stopping a job.
import type { Command } from 'commander';
import { JOB_STATES, JobStore, isRunning, type Job, type JobState } from '../../jobs/job-store.js';
import { humanBytes, table } from '../format.js';
import { makeOutput } from '../output.js';
import type { RunState } from '../main.js';
import { printImportOutcome, runWithProgress } from './import.js';
import { lazyFn, usage } from './shared.js';

const cancelJob = lazyFn(() => import('../../jobs/import-job.js'), 'cancelJob');
const retryJob = lazyFn(() => import('../../jobs/import-job.js'), 'retryJob');

/** The state shown to people: a job whose process died mid-way is "interrupted". */
function shownState(j: Job): string {
  if (['queued', 'preflight', 'copying', 'verifying'].includes(j.state) && !isRunning(j)) return 'interrupted';
  return j.state;
}

function percent(j: Job): string {
  return j.bytesTotal > 0 ? `${((100 * j.bytesDone) / j.bytesTotal).toFixed(1)}%` : '-';
}

function duration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '-';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

function jobDoc(j: Job): Record<string, unknown> {
  return { ...j, shownState: shownState(j), running: isRunning(j) };
}

export function registerJobsCommands(program: Command, state: RunState): void {
  void state;
  const jobs = program.command('jobs').description('durable import jobs: list, show, retry (resume), cancel');

  jobs
    .command('list')
    .description('list jobs, newest first')
    .option('--state <state>', `only jobs in this state (${JOB_STATES.join(', ')})`)
    .option('--limit <n>', 'at most this many', '50')
    .option('--json', 'print one JSON document')
    .action((flags: { state?: string; limit: string; json?: boolean }) => {
      if (flags.state && !(JOB_STATES as readonly string[]).includes(flags.state)) throw usage(`unknown state '${flags.state}'`, `Give one of: ${JOB_STATES.join(', ')}.`);
      const limit = Number(flags.limit);
      if (!Number.isInteger(limit) || limit <= 0) throw usage(`--limit '${flags.limit}' is not a positive number`, 'Give a number such as 20.');
      const store = JobStore.open();
      try {
        const list = store.list({ ...(flags.state ? { states: [flags.state as JobState] } : {}), limit });
        makeOutput(!!flags.json).result({ jobs: list.map(jobDoc) }, () =>
          list.length === 0
            ? 'no jobs'
            : table(
                ['ID', 'STATE', 'PROGRESS', 'RATE', 'ETA', 'SOURCE', 'TARGET', 'ERROR'],
                list.map((j) => [
                  j.id,
                  shownState(j),
                  `${percent(j)} of ${humanBytes(j.bytesTotal)}`,
                  j.rate ? `${humanBytes(j.rate)}/s` : '-',
                  j.state === 'succeeded' ? '-' : duration(j.eta),
                  j.source,
                  j.target,
                  j.error ? j.error.code : '',
                ]),
              ),
        );
      } finally {
        store.close();
      }
    });

  jobs
    .command('show')
    .description('one job in full: state, progress, timings, failure and its remedy, events')
    .argument('<id>', 'job id (or a unique prefix)')
    .option('--json', 'print one JSON document')
    .action((id: string, flags: { json?: boolean }) => {
      const store = JobStore.open();
      try {
        const j = store.find(id);
        const events = store.events(j.id);
        makeOutput(!!flags.json).result({ ...jobDoc(j), events }, () =>
          [
            `job ${j.id} (${j.kind}): ${shownState(j)}`,
            `  source:    ${j.source}`,
            `  target:    ${j.target}${j.partialPath ? ` (written as ${j.partialPath})` : ''}`,
            `  progress:  ${humanBytes(j.bytesDone)} of ${humanBytes(j.bytesTotal)} (${percent(j)}), durable up to ${humanBytes(j.committed)}`,
            `  rate:      ${j.rate ? `${humanBytes(j.rate)}/s` : '-'}, ETA ${j.state === 'succeeded' ? '-' : duration(j.eta)}`,
            `  attempts:  ${j.attempts}${j.pid ? `, last by process ${j.pid} on ${j.host}` : ''}`,
            `  created:   ${j.created}`,
            `  started:   ${j.started ?? '-'}`,
            `  finished:  ${j.finished ?? '-'}`,
            ...(j.error ? [`  error:     [${j.error.code}] ${j.error.message}`, `  remedy:    ${j.error.remedy}`] : []),
            ...(j.result && typeof j.result.verified === 'string' ? [`  verified:  ${j.result.verified}${j.result.digest ? ` (${String(j.result.digest)})` : ''}`] : []),
            '  events:',
            ...events.map((e) => `    ${e.at}  ${e.state ?? ''}${e.message ? `  ${e.message}` : ''}`),
          ].join('\n'),
        );
      } finally {
        store.close();
      }
    });

  jobs
    .command('retry')
    .description('run a failed or interrupted job again; it resumes from its last durable checkpoint')
    .argument('<id>', 'job id (or a unique prefix)')
    .option('--json', 'print one JSON document (progress as JSON lines on stderr)')
    .action(async (id: string, flags: { json?: boolean }) => {
      const out = makeOutput(!!flags.json);
      const outcome = await runWithProgress(!!flags.json, (opts) =>
        retryJob(id, { ...opts, onJob: (job, resuming) => out.note(resuming ? `job ${job.id}: resuming at ${humanBytes(job.committed)} (${job.committed} bytes)` : `job ${job.id}: starting over`) }),
      );
      printImportOutcome(out, outcome);
    });

  jobs
    .command('cancel')
    .description('stop a job (if it runs) and mark it cancelled; its partial target file is removed')
    .argument('<id>', 'job id (or a unique prefix)')
    .option('--json', 'print one JSON document')
    .action(async (id: string, flags: { json?: boolean }) => {
      const j = await cancelJob(id);
      makeOutput(!!flags.json).result(jobDoc(j), () => `job ${j.id} cancelled`);
    });
}
