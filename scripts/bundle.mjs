// Bundles the compiled CLI (dist/src/cli/main.js) into dist/ferry/: one ES module per entry plus
// shared chunks for what loads lazily (S3 client, server, fleet…), npm packages left external.
// Node loads one file much faster than Ferry's ~40 separate modules (about 50 ms per command on
// the 2-core reference machine). bin/ferry.js runs the bundle when it is at least as new as the
// compiled modules. The decode/encode worker (pool-worker.js) sits next to it, where worker-pool
// looks for it; the read benchmark's sink is bundled the same way. Run by `npm run build`.
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Chunk names carry content hashes: start empty so no stale chunk stays behind.
rmSync(join(root, 'dist/ferry'), { recursive: true, force: true });
await build({
  entryPoints: {
    main: join(root, 'dist/src/cli/main.js'),
    'pool-worker': join(root, 'dist/src/pipeline/pool-worker.js'),
    'read-sink': join(root, 'dist/bench/read-sink.js'),
  },
  outdir: join(root, 'dist/ferry'),
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  logLevel: 'warning',
});
