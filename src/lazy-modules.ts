// npm modules with native code or a noticeable load time, loaded on first use instead of at
// start-up (every `ferry` command would otherwise pay for all of them): better-sqlite3 (job and
// receiver records), cli-progress (terminal progress bars), zstd-napi's low-level binding.
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
