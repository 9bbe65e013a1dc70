// npm modules with native code or a noticeable load time, loaded on first use instead of at
// start-up (every `ferry` command would otherwise pay for all of them): better-sqlite3 (job and
// receiver records), cli-progress (terminal progress bars), zstd-napi's low-level binding, fs-ext
// (flock, lseek SEEK_END/SEEK_DATA/SEEK_HOLE) and Ferry's optional native addon (native/).
// The single-file agent's build maps these ids to its embedded copies (scripts/build-agent.mjs).
import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';
import type CliProgress from 'cli-progress';

const require = createRequire(import.meta.url);

function lazy<T>(id: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= require(id) as T);
}

export const sqlite: () => typeof BetterSqlite3 = lazy('better-sqlite3');
export const cliProgress = lazy<typeof CliProgress>('cli-progress');
export const zstd = lazy<typeof import('zstd-napi/binding.js')>('zstd-napi/binding.js');
export type ZstdCCtx = InstanceType<ReturnType<typeof zstd>['CCtx']>;
export type ZstdDCtx = InstanceType<ReturnType<typeof zstd>['DCtx']>;
export const fsExt = lazy<typeof import('fs-ext')>('fs-ext');

/** native/ (built by setup when a compiler is there): inflate into a given buffer, fallocate(2). */
export interface FerryNative {
  inflateInto?: (input: Uint8Array, output: Uint8Array, zlibHeader: boolean) => number;
  fallocate?: (fd: number, offset: number, length: number, keepSize?: boolean) => void;
  /** Whether every buffer's memory starts and ends on a multiple of `align` (a power of two). */
  alignedTo?: (buffers: Uint8Array[], align: number) => boolean;
  /** sysconf(_SC_PAGESIZE). */
  pageSize?: number;
}
let native: FerryNative | null | undefined;
/** The native addon, or null when it was not built. */
export function ferryNative(): FerryNative | null {
  if (native === undefined) {
    try {
      native = require('ferry-native') as FerryNative;
    } catch {
      native = null;
    }
  }
  return native;
}
