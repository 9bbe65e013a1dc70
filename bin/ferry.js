#!/usr/bin/env node
// Entry point of the `ferry` command: runs the bundled CLI (dist/ferry/main.js, one file: faster to
// load) when it is at least as new as the compiled modules, else the compiled modules themselves
// (dist/src/cli/main.js). `npm run build` makes both; a plain `tsc` leaves the bundle older than
// the modules, which are then used. (Only the entry module's time is compared: a full check of
// every module would cost more start-up time than the bundle saves.)
import { statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
// Commands that receive bulk data let the heap grow 5x its live size before the next full
// collection (V8 picks ~1.1-3x from its own timings). Ferry's heap is small (~12 MB), and
// receiving over HTTP or TLS allocates a buffer per 64 KiB: with V8's default, a full collection
// starts every ~16 MB received (69 for a 1.1 GB import); with this, ~20, and the import's CPU drops
// ~1.4 s (3 alternating pairs on the 2-core reference machine: 8.2-8.7 s user against 9.4-10.5 s).
// V8 reads this flag each time it sizes the heap, so setting it here, before anything runs, is
// enough. Senders (upload, migrate) gain nothing from it and would hold ~50 MB more; the
// long-running control plane keeps V8's default too.
const RECEIVERS = new Set(['import', 'download', 'receive', 'worker', 'jobs']);
if (RECEIVERS.has(process.argv[2] ?? '')) setFlagsFromString('--heap-growing-percent=400');

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
const { run } = await import((bundled !== undefined && bundled >= built ? bundle : modules).href);
process.exitCode = await run(process.argv.slice(2));
