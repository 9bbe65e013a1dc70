// Entry point of the single-file agent (`npm run build:agent` bundles it into one executable with
// Node's single-executable-application support): the same command line as `ferry`, so the copy
// on a source server runs `ferry-agent migrate …` with nothing installed there.
import { tuneHeapFor } from '../cli/heap-tuning.js';
import { run } from '../cli/main.js';

tuneHeapFor(process.argv[2]);

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`ferry-agent: internal error: ${String(err)}\n`);
    process.exitCode = 70;
  },
);
