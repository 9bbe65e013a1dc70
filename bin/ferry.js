#!/usr/bin/env node
// Entry point of the `ferry` command: runs the bundled CLI (dist/ferry/main.js, one file: faster to
// load) when it is at least as new as the compiled modules, else the compiled modules themselves
// (dist/src/cli/main.js). `npm run build` makes both; a plain `tsc` leaves the bundle older than
// the modules, which are then used. (Only the entry module's time is compared: a full check of
// every module would cost more start-up time than the bundle saves.)
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const modules = new URL('../dist/src/cli/main.js', import.meta.url);
const bundle = new URL('../dist/ferry/main.js', import.meta.url);
const mtime = (url) => {
  try {
    return statSync(fileURLToPath(url)).mtimeMs;
  } catch {
    return undefined;
  }
};
const built = mtime(modules);
if (built === undefined) {
  process.stderr.write('ferry: not built yet. Run `npm ci && npm run build` in the checkout first.\n');
  process.exit(70);
}
const bundled = mtime(bundle);
// Heap sizing for data-receiving commands (see src/cli/heap-tuning.ts), before the CLI loads.
const { tuneHeapFor } = await import(new URL('../dist/src/cli/heap-tuning.js', import.meta.url).href);
tuneHeapFor(process.argv[2]);
const { run } = await import((bundled !== undefined && bundled >= built ? bundle : modules).href);
process.exitCode = await run(process.argv.slice(2));
