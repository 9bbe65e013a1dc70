// Entry point of the single-file agent (`npm run build:agent` bundles it into one executable with
// Node's single-executable-application support): the same command line as `ferry`, so the copy
// on a source server runs `ferry-agent migrate …` with nothing installed there.
import { setFlagsFromString } from 'node:v8';
import { run } from '../cli/main.js';

// As bin/ferry.js does for commands that receive bulk data (see there): the heap may grow 5x its
// live size between full collections, so receiving over the network does not trigger one every
// few megabytes.
if (['import', 'download', 'receive'].includes(process.argv[2] ?? '')) setFlagsFromString('--heap-growing-percent=400');

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`ferry-agent: internal error: ${String(err)}\n`);
    process.exitCode = 70;
  },
);
