// `ferry import SOURCE --target TARGET`: option parsing, progress, Ctrl-C handling and rendering
// for the offline import (src/migrate/import.ts).
import type { Command } from 'commander';
import type { ImageFormat } from '../../image/types.js';
import type { JobOutcome, RunOptions } from '../../jobs/import-job.js';
import { humanBytes } from '../format.js';
import { makeOutput, type Output } from '../output.js';
import { startProgress } from '../progress.js';
import type { RunState } from '../main.js';
import { addReportOptions, formatOption, interruptSignal, lazyFn, openReporter, type ReportFlags, usage, withReport } from './shared.js';
import { addStoreOptions, storeOptions, type StoreFlags } from './transfer.js';

const runImport = lazyFn(() => import('../../jobs/import-job.js'), 'runImport');

interface ImportFlags extends StoreFlags, ReportFlags {
  target: string;
  fingerprint?: string;
  token?: string;
  format?: ImageFormat;
  verify?: boolean;
  overwrite?: boolean;
  json?: boolean;
  virtualHost?: boolean;
}

export function registerImportCommand(program: Command, state: RunState): void {
  void state;
  addReportOptions(addStoreOptions(
    program
      .command('import')
      .description('put an image (s3://, cos://, file:// object or local file) onto a target disk (raw file or block device), checked first and verified; runs as a resumable job')
      .argument('<source>', 'the image: s3://BUCKET/KEY, cos://…, file:///DIR/NAME or a local file')
      .requiredOption('--target <path>', 'target disk: a raw file (created sparse), a block device, or ferry://HOST:PORT/NAME (a disk of `ferry receive`)')
      .option('--fingerprint <sha256>', 'ferry:// targets: the receiver\'s certificate fingerprint')
      .option('--token <token>', 'ferry:// targets: the receiver\'s token (default: FERRY_TOKEN)')
      .addOption(formatOption())
      .option('--verify', 'without a manifest: re-read the target and compare it with the source')
      .option('--overwrite', 'replace an existing target file')
      .option('--json', 'print one JSON document (progress as JSON lines on stderr)'),
  )).action(async (source: string, flags: ImportFlags) => {
    const out = makeOutput(!!flags.json);
    const reporter = await openReporter({ url: flags.report, token: flags.reportToken, id: flags.reportId }, { kind: 'import', source, target: flags.target, idParts: ['import', flags.target] }, !!flags.json);
    const outcome = await withReport(
      reporter,
      () =>
        runWithProgress(!!flags.json, (opts) =>
          runImport(
            {
              source,
              target: flags.target,
              ...(flags.format ? { format: flags.format } : {}),
              ...(flags.verify ? { verify: true } : {}),
              ...(flags.overwrite ? { overwrite: true } : {}),
              store: storeOptions({ ...flags, ...(flags.virtualHost ? { pathStyle: false } : {}) }),
              ...(flags.fingerprint ? { remote: { fingerprint: flags.fingerprint, token: remoteToken(flags) } } : {}),
            },
            {
              ...opts,
              onProgress: (p) => {
                opts.onProgress?.(p);
                reporter?.progress(p.position, p.total);
              },
              onPhase: (phase) => reporter?.update({ state: phase, phase }),
              onJob: (job, resuming) => {
                reporter?.update({ phase: resuming ? `job ${job.id}, resuming at ${job.committed} bytes` : `job ${job.id}` });
                out.note(resuming ? `job ${job.id}: resuming at ${humanBytes(job.committed)} (${job.committed} bytes)` : `job ${job.id}`);
              },
            },
          ),
        ),
      (o) => ({ phase: `job ${o.job.id}, verified: ${o.result.verified}`, bytesDone: o.result.virtualSize, bytesTotal: o.result.virtualSize }),
    );
    printImportOutcome(out, outcome);
  });
}

/** The token of a ferry:// target: --token, else FERRY_TOKEN; a clear error when neither is there. */
function remoteToken(flags: ImportFlags): string {
  const token = flags.token ?? process.env.FERRY_TOKEN;
  if (!token) throw usage('a ferry:// target needs the receiver\'s token', 'Pass --token or set FERRY_TOKEN (the receiver printed it when it started).');
  return token;
}

/** Runs an import job with a progress bar, Ctrl-C handling and the test fault hook. */
export async function runWithProgress(json: boolean, fn: (opts: RunOptions) => Promise<JobOutcome>): Promise<JobOutcome> {
  const { signal, dispose } = interruptSignal();
  let bar: ReturnType<typeof startProgress> | undefined;
  // Test hook: FERRY_FAULT=kill-at-byte:N ends the process with SIGKILL once the copy passes N.
  const fault = /^kill-at-byte:(\d+)$/.exec(process.env.FERRY_FAULT ?? '');
  const killAt = fault ? Number(fault[1]) : undefined;
  try {
    return await fn({
      signal,
      onProgress: (p) => {
        if (killAt !== undefined && p.position >= killAt) process.kill(process.pid, 'SIGKILL');
        bar ??= startProgress('import', p.total, json);
        bar.update(p.position);
      },
    });
  } finally {
    bar?.stop();
    dispose();
  }
}

export function printImportOutcome(out: Output, { job, result: r }: JobOutcome): void {
  out.result({ job: job.id, ...r }, () =>
    `job ${job.id} succeeded: ${r.source} (${r.format}, ${humanBytes(r.virtualSize)}) -> ${r.target}: ${humanBytes(r.dataBytes)} of data in ${r.seconds.toFixed(1)} s` +
    (r.resumedAt > 0 ? ` (resumed at ${humanBytes(r.resumedAt)})` : '') +
    (r.bytesFetched !== undefined ? `, ${humanBytes(r.bytesFetched)} fetched` : '') +
    `\nverified: ${r.verified === 'manifest' ? `content matches the upload's manifest (${r.digest})` : r.verified === 'reread' ? 'target re-read and compared with the source' : 'no (no manifest; pass --verify to re-read the target)'}`,
  );
}
