// Lazy access to the fs-ext native addon (flock, and lseek with SEEK_END / SEEK_DATA / SEEK_HOLE):
// loaded on first use, so commands that never need it do not pay for loading it at start-up.
import { createRequire } from 'node:module';

type FsExt = typeof import('fs-ext');

let loaded: FsExt | undefined;

export function fsExt(): FsExt {
  loaded ??= createRequire(import.meta.url)('fs-ext') as FsExt;
  return loaded;
}
