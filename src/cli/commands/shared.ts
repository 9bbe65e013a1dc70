// Options shared by CLI commands.
import { Option } from 'commander';
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
