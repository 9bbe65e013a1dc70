// Read-throughput benchmark, Ferry vs qemu-img, side by side in one run (DESIGN.md §5):
//  1. builds (once, cached in bench/out/) a 4 GiB GPT disk with ext4 holding ~1.6 GB of real data,
//     and its qcow2, zlib-compressed qcow2 and streamOptimized VMDK conversions (qemu-img);
//  2. checks (untimed) that Ferry reads every image to the reference disk's SHA-256;
//  3. times reading each whole virtual disk and discarding it: `qemu-img convert` into the null-co
//     driver (under GNU time) vs bench/read-sink.js (streamVirtual), alternating, N runs each,
//     medians reported as a table and in bench/out/read-results.json.
//
//   npm run build && node dist/bench/read.js [--runs N]
import { existsSync } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import {
  describeBuild,
  ensureImages,
  FERRY,
  IMAGES,
  median,
  mustExec,
  OUT,
  parseBenchArgs,
  RAW,
  requireTools,
  ROOT,
  table,
  timedExec,
  virtualSize,
  warnIfBusy,
  withContention,
  type ImageSpec,
  type Sample,
  EXTRA_CA_NOTE,
} from './lib.js';
import type { SinkResult } from './read-sink.js';

// The sink bundled like the CLI (dist/ferry/, see scripts/bundle.mjs): what a ferry command loads.
const SINK = join(ROOT, 'dist', 'ferry', 'read-sink.js');

/** qemu-img reading the whole disk into its null driver, under GNU time. */
async function runQemu(img: ImageSpec, path: string, size: number): Promise<Omit<Sample, 'otherCpu'>> {
  const p = await timedExec('qemu-img', ['convert', '-n', '-f', img.format, '--target-image-opts', path, `driver=null-co,size=${size}`]);
  return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB };
}

async function runFerry(path: string, size: number): Promise<Omit<Sample, 'otherCpu'>> {
  const p = await mustExec(process.execPath, [SINK, path]);
  const r = JSON.parse(p.stdout.trim().split('\n').pop()!) as SinkResult;
  if (r.virtualBytes !== size) throw new Error(`ferry read ${r.virtualBytes} virtual bytes of ${path}, expected ${size}`);
  return { wall: p.wall, cpu: r.cpuSeconds, maxRssKiB: r.maxRssKiB };
}

async function main(): Promise<void> {
  const { runs } = parseBenchArgs(process.argv.slice(2), 'node dist/bench/read.js [--runs N]');
  const qemuVersion = await requireTools();
  if (!existsSync(SINK)) throw new Error(`${SINK} is missing: build first with npm run build`);

  await warnIfBusy();

  const build = await ensureImages();
  console.log(describeBuild(build));

  // Verification (untimed): Ferry's SHA-256 of each image equals the reference disk's.
  const sizes = new Map<string, number>();
  const rawSize = (await stat(RAW)).size;
  for (const img of IMAGES) {
    const path = join(OUT, img.file);
    const size = await virtualSize(path);
    if (size !== rawSize) throw new Error(`${img.file}: virtual size ${size} differs from the reference disk's ${rawSize}`);
    sizes.set(img.file, size);
    const doc = JSON.parse((await mustExec(process.execPath, [FERRY, 'image', 'checksum', '--json', path])).stdout) as { sha256: string };
    if (doc.sha256 !== build.rawSha256) {
      console.error(`VERIFY FAILED: ${img.file}: ferry sha256 ${doc.sha256} != reference disk ${build.rawSha256}`);
      process.exit(1);
    }
    console.log(`verified: ${img.file} reads to the reference disk's sha256 ${build.rawSha256.slice(0, 16)}…`);
  }

  const results = [];
  for (const img of IMAGES) {
    const path = join(OUT, img.file);
    const size = sizes.get(img.file)!;
    await mustExec('cat', [path], { stdout: 'ignore' }); // warm the page cache for both sides
    const qemu: Sample[] = [];
    const ferry: Sample[] = [];
    for (let i = 0; i < runs; i++) {
      qemu.push(await withContention(() => runQemu(img, path, size)));
      ferry.push(await withContention(() => runFerry(path, size)));
      console.log(`  ${img.label} run ${i + 1}/${runs}: qemu-img ${qemu[i]!.wall.toFixed(2)} s, ferry ${ferry[i]!.wall.toFixed(2)} s`);
    }
    const summary = (xs: Sample[]) => {
      const wall = median(xs.map((x) => x.wall));
      const cpu = median(xs.map((x) => x.cpu));
      return {
        wallSeconds: wall,
        cpuSeconds: cpu,
        cpuPerWall: cpu / wall,
        mbPerSecond: size / 1e6 / wall,
        maxRssMiB: median(xs.map((x) => x.maxRssKiB)) / 1024,
        /** Highest contention seen in any run: cores used by other processes. */
        otherCores: Math.max(...xs.map((x) => x.otherCpu / x.wall)),
      };
    };
    const q = summary(qemu);
    const f = summary(ferry);
    results.push({ image: img.label, file: img.file, fileBytes: (await stat(path)).size, virtualBytes: size, qemu: q, ferry: f, ratio: f.wallSeconds / q.wallSeconds, runs: { qemu, ferry } });
  }

  const rows = results.map((r) => [
    r.image,
    r.qemu.wallSeconds.toFixed(2),
    r.ferry.wallSeconds.toFixed(2),
    r.ratio.toFixed(2),
    r.qemu.mbPerSecond.toFixed(0),
    r.ferry.mbPerSecond.toFixed(0),
    r.qemu.cpuPerWall.toFixed(2),
    r.ferry.cpuPerWall.toFixed(2),
    r.qemu.maxRssMiB.toFixed(0),
    r.ferry.maxRssMiB.toFixed(0),
    Math.max(r.qemu.otherCores, r.ferry.otherCores).toFixed(2),
  ]);
  console.log(`\nread whole 4 GiB virtual disk, discard; median of ${runs} runs; ${cpus().length} cores; ${qemuVersion}; node ${process.version}`);
  if (EXTRA_CA_NOTE) console.log(EXTRA_CA_NOTE);
  console.log(
    table(
      ['image', 'qemu wall s', 'ferry wall s', 'ferry/qemu', 'qemu MB/s', 'ferry MB/s', 'qemu cpu/wall', 'ferry cpu/wall', 'qemu RSS MiB', 'ferry RSS MiB', 'other load'],
      rows,
    ),
  );
  console.log('(ferry/qemu: lower is better; MB/s = virtual bytes / wall; cpu/wall ≈ cores kept busy; other load: most cores other processes used during a run)');
  const busy = Math.max(...results.map((r) => Math.max(r.qemu.otherCores, r.ferry.otherCores)));
  if (busy > 0.15) {
    console.log(
      `WARNING: other processes kept up to ${busy.toFixed(2)} of ${cpus().length} cores busy during the timed runs; ` +
        'the numbers (especially cpu/wall of parallel decompression) are skewed. Rerun on an idle machine.',
    );
  }

  const doc = { date: new Date().toISOString(), runs, cores: cpus().length, node: process.version, qemu: qemuVersion, buildSeconds: build.seconds, built: build.built, referenceSha256: build.rawSha256, results };
  await writeFile(join(OUT, 'read-results.json'), JSON.stringify(doc, null, 2) + '\n');
  console.log(`results: ${join(OUT, 'read-results.json')}`);
}

main().catch((err: unknown) => {
  console.error(`bench/read: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
