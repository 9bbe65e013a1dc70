// Upload benchmark, Ferry vs `aws s3 cp` and `rclone`, side by side in one run against the same
// real S3 server (OpenStack Swift with s3api, started here by scripts/s3-server.sh):
//  1. builds (once, cached in bench/out/) the 4 GiB reference disk (raw, ~1.6 GB of real data);
//  2. raw as-is: `ferry upload`, `aws s3 cp` and `rclone copyto` of reference-4g.raw;
//     compressed: `ferry upload --compress zstd` (convert + compress + upload in one pass) versus
//     the manual path `qemu-img convert -c -O qcow2 -o compression_type=zstd` then `aws s3 cp`;
//     and, for its memory, `ferry upload` of the reference qcow2 as-is (content checked on the side);
//     N runs each, alternating, every run with its objects deleted first, under GNU time (wall,
//     CPU, peak RSS); medians reported;
//  3. verifies (untimed) Ferry's objects with `ferry verify` (manifest: parts and content digest)
//     and the peers' object sizes;
//  4. prints times, ratios, bytes sent, peak memory, targets and PASS/FAIL, and writes
//     bench/out/upload-results.json.
//
//   npm run build && node dist/bench/upload.js [--runs N]
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describeBuild, ensureImages, exec, FERRY, median, OUT, parseBenchArgs, RAW, table, timedExec, warnIfBusy, EXTRA_CA_NOTE } from './lib.js';
import { AWS, BUCKET, deleteKeys, ENDPOINT, need, objectSize, startServer } from './s3.js';

const QCOW2 = join(OUT, 'reference-4g.qcow2');

const SCRATCH = join(OUT, 'upload-tmp');

interface Run {
  wall: number;
  cpu: number;
  maxRssKiB: number;
  bytesSent: number;
}

async function ferryUpload(key: string, extra: string[], source = RAW): Promise<Run> {
  const p = await timedExec(process.execPath, [FERRY, 'upload', '--json', source, `s3://${BUCKET}/${key}`, ...extra]);
  if (p.code !== 0) throw new Error(`ferry upload failed: ${p.stdout}${p.stderr}`);
  const doc = JSON.parse(p.stdout) as { bytesSent: number };
  return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB, bytesSent: doc.bytesSent };
}

async function awsUpload(file: string, key: string): Promise<Run> {
  const p = await timedExec(AWS, ['--endpoint-url', ENDPOINT, 's3', 'cp', '--only-show-errors', file, `s3://${BUCKET}/${key}`]);
  if (p.code !== 0) throw new Error(`aws s3 cp failed: ${p.stderr}`);
  return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB, bytesSent: (await stat(file)).size };
}

async function rcloneUpload(key: string): Promise<Run> {
  const p = await timedExec('/usr/bin/rclone', ['copyto', RAW, `bench:${BUCKET}/${key}`]);
  if (p.code !== 0) throw new Error(`rclone failed: ${p.stderr}`);
  return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB, bytesSent: (await stat(RAW)).size };
}

async function manualCompressed(key: string): Promise<Run> {
  const tmp = join(SCRATCH, 'manual.qcow2');
  await rm(tmp, { force: true });
  const c = await timedExec('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', RAW, tmp]);
  if (c.code !== 0) throw new Error(`qemu-img failed: ${c.stderr}`);
  const u = await awsUpload(tmp, key);
  await rm(tmp, { force: true });
  return { wall: c.wall + u.wall, cpu: c.cpu + u.cpu, maxRssKiB: Math.max(c.maxRssKiB, u.maxRssKiB), bytesSent: u.bytesSent };
}

function summarize(runs: Run[]): Run {
  return {
    wall: median(runs.map((r) => r.wall)),
    cpu: median(runs.map((r) => r.cpu)),
    maxRssKiB: Math.max(...runs.map((r) => r.maxRssKiB)),
    bytesSent: median(runs.map((r) => r.bytesSent)),
  };
}

async function main(): Promise<void> {
  const args = parseBenchArgs(process.argv.slice(2), 'node dist/bench/upload.js [--runs N]');
  need(AWS, 'awscli');
  need('/usr/bin/rclone', 'rclone');
  const build = await ensureImages();
  console.log(describeBuild(build));
  await mkdir(SCRATCH, { recursive: true });
  const stop = await startServer(join(SCRATCH, 'state'));
  try {
    const busy = await warnIfBusy();
    const res: Record<string, Run[]> = { ferryRaw: [], aws: [], rclone: [], ferryZstd: [], manual: [], ferryQcow2: [] };
    for (let i = 0; i < args.runs; i++) {
      console.log(`run ${i + 1}/${args.runs} …`);
      await deleteKeys(['ferry.raw']);
      res.ferryRaw!.push(await ferryUpload('ferry.raw', []));
      await deleteKeys(['aws.raw']);
      res.aws!.push(await awsUpload(RAW, 'aws.raw'));
      await deleteKeys(['rclone.raw']);
      res.rclone!.push(await rcloneUpload('rclone.raw'));
      await deleteKeys(['ferry.qcow2']);
      res.ferryZstd!.push(await ferryUpload('ferry.qcow2', ['--compress', 'zstd']));
      await deleteKeys(['manual.qcow2']);
      res.manual!.push(await manualCompressed('manual.qcow2'));
      // Memory of an as-is upload of an image whose content is checked on the side (qcow2).
      await deleteKeys(['ferry-asis.qcow2']);
      res.ferryQcow2!.push(await ferryUpload('ferry-asis.qcow2', [], QCOW2));
    }
    // Verification (untimed): Ferry's objects against their manifests, the peers' sizes.
    for (const key of ['ferry.raw', 'ferry.qcow2', 'ferry-asis.qcow2']) {
      const v = await exec(process.execPath, [FERRY, 'verify', `s3://${BUCKET}/${key}`]);
      if (v.code !== 0) throw new Error(`ferry verify ${key} failed: ${v.stdout}${v.stderr}`);
      console.log(v.stdout.trim());
    }
    const rawSize = (await stat(RAW)).size;
    for (const key of ['aws.raw', 'rclone.raw']) if ((await objectSize(key)) !== rawSize) throw new Error(`${key} has the wrong size`);
    const s = Object.fromEntries(Object.entries(res).map(([k, v]) => [k, summarize(v)])) as Record<string, Run>;
    const mib = (kib: number) => (kib / 1024).toFixed(0);
    const gb = (n: number) => (n / 1e9).toFixed(2);
    const rawRatio = s.ferryRaw!.wall / s.aws!.wall;
    const zRatio = s.ferryZstd!.wall / s.manual!.wall;
    const peak = Math.max(s.ferryRaw!.maxRssKiB, s.ferryZstd!.maxRssKiB, s.ferryQcow2!.maxRssKiB);
    const rssOk = peak <= 256 * 1024;
    const rows = [
      ['raw as-is: ferry upload', s.ferryRaw!.wall.toFixed(1), s.ferryRaw!.cpu.toFixed(1), mib(s.ferryRaw!.maxRssKiB), gb(s.ferryRaw!.bytesSent), `${rawRatio.toFixed(2)} of aws`, '≤ 1.00', rawRatio <= 1 ? 'PASS' : 'FAIL'],
      ['raw: aws s3 cp', s.aws!.wall.toFixed(1), s.aws!.cpu.toFixed(1), mib(s.aws!.maxRssKiB), gb(s.aws!.bytesSent), '', '', ''],
      ['raw: rclone copyto', s.rclone!.wall.toFixed(1), s.rclone!.cpu.toFixed(1), mib(s.rclone!.maxRssKiB), gb(s.rclone!.bytesSent), `ferry ${(s.ferryRaw!.wall / s.rclone!.wall).toFixed(2)} of it`, '', ''],
      ['zstd qcow2: ferry upload --compress zstd', s.ferryZstd!.wall.toFixed(1), s.ferryZstd!.cpu.toFixed(1), mib(s.ferryZstd!.maxRssKiB), gb(s.ferryZstd!.bytesSent), `${zRatio.toFixed(2)} of manual`, '≤ 0.50', zRatio <= 0.5 ? 'PASS' : 'FAIL'],
      ['zstd qcow2: qemu-img convert -c + aws s3 cp', s.manual!.wall.toFixed(1), s.manual!.cpu.toFixed(1), mib(s.manual!.maxRssKiB), gb(s.manual!.bytesSent), '', '', ''],
      ['qcow2 (1.7 GB) as-is: ferry upload', s.ferryQcow2!.wall.toFixed(1), s.ferryQcow2!.cpu.toFixed(1), mib(s.ferryQcow2!.maxRssKiB), gb(s.ferryQcow2!.bytesSent), '', '', ''],
      ['peak RSS of ferry (MiB)', '', '', mib(peak), '', '', '≤ 256', rssOk ? 'PASS' : 'FAIL'],
    ];
    console.log(`\nupload of the 4 GiB reference disk to Swift (s3api) on 127.0.0.1, median of ${args.runs} run(s); other load at start ${busy.toFixed(2)} cores`);
    if (EXTRA_CA_NOTE) console.log(EXTRA_CA_NOTE);
    console.log(table(['case', 'wall s', 'cpu s', 'peak MiB', 'GB sent', 'ratio', 'target', ''], rows));
    await writeFile(join(OUT, 'upload-results.json'), JSON.stringify({ runs: args.runs, results: s, raw: res }, null, 1));
  } finally {
    await stop();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
