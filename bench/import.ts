// Import benchmark, Ferry vs the usual manual path, side by side in one run against the same real
// S3 server (Swift with s3api, started here):
//  1. builds (once, cached in bench/out/) the 4 GiB reference disk and its zlib-compressed qcow2
//     (qemu-img convert -c), and uploads that qcow2 once with `ferry upload` (as-is: the object
//     is qemu-img's file, with a Ferry manifest beside it) — untimed;
//  2. times `ferry import s3://…/reference.qcow2 --target FILE` (preflight, range reads,
//     decompression on all cores, sparse raw output, content checked against the manifest) and the
//     manual path: `aws s3 cp` of the object to a local file, then `qemu-img convert -O raw` of it
//     (the sum of both walls); every run starts with the outputs deleted; medians of N runs;
//  3. verifies (untimed) both outputs: SHA-256 equal to the reference disk's;
//  4. prints the table with the ratio (target ≤ 0.7) and writes bench/out/import-results.json.
//
//   npm run build && node dist/bench/import.js [--runs N]
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describeBuild, ensureImages, exec, FERRY, median, OUT, parseBenchArgs, sha256File, table, timedExec, warnIfBusy, EXTRA_CA_NOTE } from './lib.js';
import { AWS, BUCKET, ENDPOINT, need, startServer } from './s3.js';

const SCRATCH = join(OUT, 'import-tmp');
const QCOW2 = join(OUT, 'reference-4g-zlib.qcow2');
const KEY = 'reference-4g-zlib.qcow2';

interface Run {
  wall: number;
  cpu: number;
  maxRssKiB: number;
  /** Manual path: the download's and the conversion's walls. */
  parts?: [number, number];
}

async function ferryImport(target: string): Promise<Run> {
  const p = await timedExec(process.execPath, [FERRY, 'import', '--json', `s3://${BUCKET}/${KEY}`, '--target', target]);
  if (p.code !== 0) throw new Error(`ferry import failed: ${p.stdout}${p.stderr}`);
  return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB };
}

async function manual(target: string): Promise<Run> {
  const tmp = join(SCRATCH, 'downloaded.qcow2');
  await rm(tmp, { force: true });
  const d = await timedExec(AWS, ['--endpoint-url', ENDPOINT, 's3', 'cp', '--only-show-errors', `s3://${BUCKET}/${KEY}`, tmp]);
  if (d.code !== 0) throw new Error(`aws s3 cp failed: ${d.stderr}`);
  const c = await timedExec('qemu-img', ['convert', '-O', 'raw', tmp, target]);
  if (c.code !== 0) throw new Error(`qemu-img convert failed: ${c.stderr}`);
  await rm(tmp, { force: true });
  return { wall: d.wall + c.wall, cpu: d.cpu + c.cpu, maxRssKiB: Math.max(d.maxRssKiB, c.maxRssKiB), parts: [d.wall, c.wall] };
}

async function main(): Promise<void> {
  const args = parseBenchArgs(process.argv.slice(2), 'node dist/bench/import.js [--runs N]');
  need(AWS, 'awscli');
  const build = await ensureImages();
  console.log(describeBuild(build));
  await mkdir(SCRATCH, { recursive: true });
  const stop = await startServer(join(SCRATCH, 'state'));
  try {
    const up = await exec(process.execPath, [FERRY, 'upload', '--json', QCOW2, `s3://${BUCKET}/${KEY}`]);
    if (up.code !== 0) throw new Error(`ferry upload failed: ${up.stdout}${up.stderr}`);
    const busy = await warnIfBusy();
    const ferryOut = join(SCRATCH, 'ferry.raw');
    const manualOut = join(SCRATCH, 'manual.raw');
    const runs: { ferry: Run[]; manual: Run[] } = { ferry: [], manual: [] };
    for (let i = 0; i < args.runs; i++) {
      console.log(`run ${i + 1}/${args.runs} …`);
      await rm(ferryOut, { force: true });
      await rm(manualOut, { force: true });
      runs.ferry.push(await ferryImport(ferryOut));
      await rm(ferryOut, { force: true });
      runs.manual.push(await manual(manualOut));
      if (i < args.runs - 1) await rm(manualOut, { force: true });
    }
    // Verification (untimed): the last outputs hold the reference disk.
    await ferryImport(ferryOut);
    for (const [label, path] of [
      ['ferry', ferryOut],
      ['manual', manualOut],
    ] as const) {
      const sha = await sha256File(path);
      if (sha !== build.rawSha256) throw new Error(`${label}: the imported disk differs from the reference (${sha})`);
    }
    console.log('verified: both outputs have the SHA-256 of reference-4g.raw');
    const f = { wall: median(runs.ferry.map((r) => r.wall)), cpu: median(runs.ferry.map((r) => r.cpu)), rss: Math.max(...runs.ferry.map((r) => r.maxRssKiB)) };
    const m = { wall: median(runs.manual.map((r) => r.wall)), cpu: median(runs.manual.map((r) => r.cpu)), rss: Math.max(...runs.manual.map((r) => r.maxRssKiB)) };
    const ratio = f.wall / m.wall;
    const dl = median(runs.manual.map((r) => r.parts![0]));
    const cv = median(runs.manual.map((r) => r.parts![1]));
    console.log(`\nimport of the zlib-compressed 4 GiB reference qcow2 from Swift (s3api) on 127.0.0.1 onto a file, median of ${args.runs} run(s); other load at start ${busy.toFixed(2)} cores`);
    if (EXTRA_CA_NOTE) console.log(EXTRA_CA_NOTE);
    console.log(
      table(
        ['path', 'wall s', 'cpu s', 'peak MiB', 'ratio', 'target', ''],
        [
          ['ferry import', f.wall.toFixed(1), f.cpu.toFixed(1), (f.rss / 1024).toFixed(0), ratio.toFixed(2), '≤ 0.70', ratio <= 0.7 ? 'PASS' : 'FAIL'],
          [`aws s3 cp (${dl.toFixed(1)} s) + qemu-img convert -O raw (${cv.toFixed(1)} s)`, m.wall.toFixed(1), m.cpu.toFixed(1), (m.rss / 1024).toFixed(0), '', '', ''],
        ],
      ),
    );
    await writeFile(join(OUT, 'import-results.json'), JSON.stringify({ runs: args.runs, ferry: f, manual: m, ratio, samples: runs }, null, 1));
    await rm(ferryOut, { force: true });
    await rm(manualOut, { force: true });
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
