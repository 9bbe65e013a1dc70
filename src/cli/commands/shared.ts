// Options shared by CLI commands.
import { type Command, Option } from 'commander';
import { FerryError } from '../../errors.js';
import { parseSize } from '../format.js';
import { SUPPORTED_FORMATS } from '../../image/types.js';

export function formatOption(): Option {
  return new Option('-f, --format <format>', 'image format instead of detecting it').choices([...SUPPORTED_FORMATS]);
}

export function usage(message: string, remedy: string): FerryError {
  return new FerryError('USAGE', message, { remedy });
}

/** A size option ('64K', '1M', '4G' or bytes), positive. */
export function sizeArg(text: string, what: string): number {
  const n = parseSize(text);
  if (n === undefined || n <= 0) throw usage(`${what} '${text}' is not a size`, 'Give a size such as 64K, 1M, 4G or a number of bytes.');
  return n;
}

/** A whole-number option within [min, max], or undefined when absent. */
export function intArg(text: string | undefined, what: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw usage(`${what} '${text}' is not a whole number from ${min} to ${max}`, `Give ${what} as a number, e.g. ${Math.min(max, Math.max(min, 8))}.`);
  return n;
}

/** An AbortSignal fired by Ctrl-C / SIGTERM, until dispose(). */
export function interruptSignal(): { signal: AbortSignal; dispose: () => void } {
  const ctl = new AbortController();
  const stop = () => ctl.abort();
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  return {
    signal: ctl.signal,
    dispose: () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    },
  };
}

/** Runs `fn` with an AbortSignal fired by Ctrl-C / SIGTERM. */
export async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const { signal, dispose } = interruptSignal();
  try {
    return await fn(signal);
  } finally {
    dispose();
  }
}

/**
 * An async library function loaded when first called, so that a command loads only the part of
 * Ferry it runs (the bundled CLI then starts faster): `const f = lazyFn(() => import('m.js'), 'f')`.
 */
export function lazyFn<M, K extends { [P in keyof M]: M[P] extends (...args: never[]) => Promise<unknown> ? P : never }[keyof M]>(load: () => Promise<M>, name: K): M[K] {
  const call = async (...args: unknown[]): Promise<unknown> => ((await load())[name] as (...a: unknown[]) => Promise<unknown>)(...args);
  return call as M[K];
}

/** Options of commands that can report to a control plane (`ferry server`). */
export function addReportOptions(cmd: Command): Command {
  return cmd
    .option('--report <url>', 'report state and progress to a `ferry server` at this URL (e.g. http://10.0.0.9:8787)')
    .option('--report-token <token>', 'the server\'s token (default: FERRY_REPORT_TOKEN)')
    .option('--report-id <id>', 'the job\'s id on the server (default: this host\'s name and the job\'s target)');
}

export interface ReportFlags {
  report?: string;
  reportToken?: string;
  reportId?: string;
}

/**
 * A reporter for `--report` (or a config file's report section), or undefined without one. Its
 * warnings (server unreachable, token refused) go to stderr as notes, or as JSON lines with --json.
 */
export async function openReporter(
  given: { url?: string | undefined; token?: string | undefined; id?: string | undefined; tokenEnv?: string },
  job: { kind: 'import' | 'migration'; source: string; target: string; idParts: string[] },
  json: boolean,
): Promise<import('../../server/reporter.js').Reporter | undefined> {
  if (!given.url) return undefined;
  const env = given.tokenEnv ?? 'FERRY_REPORT_TOKEN';
  const token = given.token ?? process.env[env];
  if (!token) throw usage('--report needs the server\'s report token', `Pass --report-token or set ${env} (\`ferry server\` printed its report token when it started).`);
  const { Reporter, reportId, reportTarget } = await import('../../server/reporter.js');
  return new Reporter({
    url: reportTarget(given.url),
    token,
    id: given.id ?? reportId(...job.idParts),
    kind: job.kind,
    source: job.source,
    target: job.target,
    onWarning: (message) => process.stderr.write(json ? JSON.stringify({ warning: { code: 'REPORT_FAILED', message } }) + '\n' : `ferry: warning: ${message}\n`),
  });
}

type Reporter = import('../../server/reporter.js').Reporter;
type FinalReport = Parameters<Reporter['finish']>[0];

/**
 * Runs a reported job: its final state goes to the control plane before the command ends — the
 * failure (code, message, remedy) when `run` throws (then rethrown), else `succeeded(result)`.
 * Without a reporter, just `run()`.
 */
export async function withReport<T>(reporter: Reporter | undefined, run: () => Promise<T>, succeeded: (result: T) => Omit<FinalReport, 'state'>): Promise<T> {
  if (!reporter) return run();
  let result: T;
  try {
    result = await run();
  } catch (err) {
    await reporter.finish((await import('../../server/reporter.js')).failureReport(err));
    throw err;
  }
  await reporter.finish({ ...succeeded(result), state: 'succeeded' });
  return result;
}
