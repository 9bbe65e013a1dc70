// Conversion benchmark, Ferry vs qemu-img, side by side in one run (DESIGN.md §5):
//  1. builds (once, cached in bench/out/, shared with bench/read.ts) the 4 GiB reference disk and
//     its zlib qcow2 and streamOptimized VMDK conversions;
//  2. for each case (raw → qcow2 zlib/zstd/plain, VMDK streamOptimized, VHD dynamic; zlib qcow2 and
//     VMDK → raw) times `qemu-img convert` (then the `sync` that makes its output durable) and
//     `ferry image convert` (which flushes before renaming into place), alternating (which tool
//     goes first alternates too), N runs each, under GNU time; before every timed run `sync` and a
//     wait for the disks to be idle (see settle()); medians reported;
//  3. verifies (untimed) the last outputs: `qemu-img compare` with the reference disk for both
//     tools, `qemu-img check` for Ferry's qcow2 and VMDK outputs; a failure fails the bench;
//  4. prints a table with ratios, targets and PASS/FAIL, and writes bench/out/convert-results.json.
//
//   npm run build && node dist/bench/convert.js [--runs N] [--only case1,case2]
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import {
  describeBuild,
  ensureImages,
  exec,
  FERRY,
  median,
  mustExec,
  OUT,
  parseBenchArgs,
  RAW,
  requireTools,
  ROOT,
  sleep,
  table,
  timedExec,
  warnIfBusy,
  withContention,
  type Sample,
  EXTRA_CA_NOTE,
} from './lib.js';

const SCRATCH = join(OUT, 'convert-tmp');

type Format = 'raw' | 'qcow2' | 'vpc' | 'vmdk';

interface Peer {
  /** Row label suffix ('' for the main qemu-img invocation). */
  label: string;
  /** qemu-img convert options (between `-f FMT` and SOURCE DEST). */
  args: string[];
  /** Target for ferry wall / this peer's wall. */
  target: number;
}

interface Case {
  name: string;
  /** File in bench/out/. */
  source: string;
  sourceFormat: 'raw' | 'qcow2' | 'vmdk';
  to: Format;
  /** ferry image convert options (before SOURCE DEST). */
  ferryArgs: string[];
  peers: Peer[];
}

const EXT: Record<Format, string> = { raw: 'raw', qcow2: 'qcow2', vpc: 'vhd', vmdk: 'vmdk' };
const COMPRESSED_TARGET = 0.6;
const COMPRESSED_TUNED_TARGET = 1.0;
const PLAIN_TARGET = 1.1;
const SIZE_TARGET = 1.05;
const RSS_TARGET_MIB = 512;

const CASES: Case[] = [
  {
    name: 'qcow2-zlib',
    source: 'reference-4g.raw',
    sourceFormat: 'raw',
    to: 'qcow2',
    ferryArgs: ['-O', 'qcow2', '-c'],
    peers: [
      { label: '', args: ['-c', '-O', 'qcow2'], target: COMPRESSED_TARGET },
      { label: ' (qemu -W -m16)', args: ['-c', '-W', '-m', '16', '-O', 'qcow2'], target: COMPRESSED_TUNED_TARGET },
    ],
  },
  {
    name: 'qcow2-zstd',
    source: 'reference-4g.raw',
    sourceFormat: 'raw',
    to: 'qcow2',
    ferryArgs: ['-O', 'qcow2', '--compress', 'zstd'],
    peers: [{ label: '', args: ['-c', '-O', 'qcow2', '-o', 'compression_type=zstd'], target: COMPRESSED_TARGET }],
  },
  {
    name: 'vmdk-stream',
    source: 'reference-4g.raw',
    sourceFormat: 'raw',
    to: 'vmdk',
    ferryArgs: ['-O', 'vmdk'],
    peers: [{ label: '', args: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'], target: COMPRESSED_TARGET }],
  },
  {
    name: 'qcow2',
    source: 'reference-4g.raw',
    sourceFormat: 'raw',
    to: 'qcow2',
    ferryArgs: ['-O', 'qcow2'],
    peers: [{ label: '', args: ['-O', 'qcow2'], target: PLAIN_TARGET }],
  },
  {
    name: 'vhd-dynamic',
    source: 'reference-4g.raw',
    sourceFormat: 'raw',
    to: 'vpc',
    ferryArgs: ['-O', 'vpc'],
    peers: [{ label: '', args: ['-O', 'vpc', '-o', 'subformat=dynamic'], target: PLAIN_TARGET }],
  },
  {
    name: 'zlib-to-raw',
    source: 'reference-4g-zlib.qcow2',
    sourceFormat: 'qcow2',
    to: 'raw',
    ferryArgs: ['-O', 'raw'],
    peers: [{ label: '', args: ['-O', 'raw'], target: PLAIN_TARGET }],
  },
  {
    name: 'vmdk-to-raw',
    source: 'reference-4g-stream.vmdk',
    sourceFormat: 'vmdk',
    to: 'raw',
    ferryArgs: ['-O', 'raw'],
    peers: [{ label: '', args: ['-O', 'raw'], target: PLAIN_TARGET }],
  },
];

interface ConvertSample extends Sample {
  /** Apparent size of the output file. */
  fileBytes: number;
  /** Space the output file occupies on disk (st_blocks × 512): what counts for sparse raw outputs. */
  allocatedBytes: number;
}

interface QemuSample extends ConvertSample {
  /** Wall seconds of the `sync` run right after qemu-img (flushing what it left dirty). */
  syncWall: number;
}

interface Summary {
  wallSeconds: number;
  cpuSeconds: number;
  cpuPerWall: number;
  maxRssMiB: number;
  /** Highest contention seen in any run: cores used by other processes. */
  otherCores: number;
  fileBytes: number;
  allocatedBytes: number;
}

interface Check {
  tool: string;
  command: string;
  ok: boolean;
  output: string;
}

/** `sync`, then 1 s pause: earlier dirty pages must not slow the next timed run. */
/** The block devices' completed reads, writes and discards, and the I/Os in flight (/proc/diskstats). */
async function diskActivity(): Promise<{ counters: string; inFlight: number }> {
  const rows = (await readFile('/proc/diskstats', 'utf8'))
    .split('\n')
    .map((l: string) => l.trim().split(/\s+/))
    .filter((f: string[]) => f.length >= 14 && !/^(loop|ram|sr)/.test(f[2]!));
  return {
    counters: rows.map((f: string[]) => [f[2], f[3], f[7], f[14] ?? ''].join(':')).join(' '),
    inFlight: rows.reduce((n: number, f: string[]) => n + Number(f[11]), 0),
  };
}

/**
 * Before every timed run: `sync`, then wait until the disks are idle — nothing in flight and the
 * counters unchanged for 0.5 s (at most 30 s). The file system here is mounted with `discard`:
 * deleting the last run's synced 1.7 GB output sends discards that run for seconds after `sync`
 * returns, and would otherwise land in whichever tool runs next.
 */
async function settle(): Promise<void> {
  await mustExec('sync', []);
  const deadline = Date.now() + 30_000;
  let last = await diskActivity();
  for (let quiet = 0; quiet < 5 && Date.now() < deadline; ) {
    await sleep(100);
    const now = await diskActivity();
    quiet = now.counters === last.counters && now.inFlight === 0 ? quiet + 1 : 0;
    last = now;
  }
  await sleep(500);
}

async function outputSize(path: string): Promise<{ fileBytes: number; allocatedBytes: number }> {
  const s = await stat(path);
  return { fileBytes: s.size, allocatedBytes: s.blocks * 512 };
}

async function runQemu(c: Case, peer: Peer, src: string, dst: string, clean: () => Promise<void>): Promise<QemuSample> {
  await clean();
  await settle();
  const s = await withContention(async () => {
    const p = await timedExec('qemu-img', ['convert', '-f', c.sourceFormat, ...peer.args, src, dst]);
    return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB };
  });
  const sync = await mustExec('sync', []);
  return { ...s, syncWall: sync.wall, ...(await outputSize(dst)) };
}

async function runFerry(c: Case, src: string, dst: string, extra: string[], clean: () => Promise<void>): Promise<ConvertSample & { result: unknown }> {
  await clean();
  await settle();
  let result: unknown;
  const s = await withContention(async () => {
    const p = await timedExec(process.execPath, [FERRY, 'image', 'convert', ...c.ferryArgs, ...extra, '--json', src, dst]);
    result = JSON.parse(p.stdout);
    return { wall: p.wall, cpu: p.cpu, maxRssKiB: p.maxRssKiB };
  });
  return { ...s, ...(await outputSize(dst)), result };
}

function summarize(xs: ConvertSample[]): Summary {
  const wall = median(xs.map((x) => x.wall));
  const cpu = median(xs.map((x) => x.cpu));
  const last = xs[xs.length - 1]!;
  return {
    wallSeconds: wall,
    cpuSeconds: cpu,
    cpuPerWall: cpu / wall,
    maxRssMiB: median(xs.map((x) => x.maxRssKiB)) / 1024,
    otherCores: Math.max(...xs.map((x) => x.otherCpu / x.wall)),
    fileBytes: last.fileBytes,
    allocatedBytes: last.allocatedBytes,
  };
}

/** `qemu-img compare` with the reference disk (exit 0 and "identical"), `qemu-img check` (exit 0). */
async function verify(tool: string, c: Case, path: string, withCheck: boolean): Promise<Check[]> {
  const checks: Check[] = [];
  const cmp = ['compare', '-f', 'raw', '-F', c.to, RAW, path];
  const p = await exec('qemu-img', cmp);
  const out = (p.stdout + p.stderr).trim();
  checks.push({ tool, command: `qemu-img ${cmp.join(' ')}`, ok: p.code === 0 && /identical/i.test(out), output: out });
  if (withCheck && (c.to === 'qcow2' || c.to === 'vmdk')) {
    const chk = ['check', '-f', c.to, path];
    const q = await exec('qemu-img', chk);
    checks.push({ tool, command: `qemu-img ${chk.join(' ')}`, ok: q.code === 0, output: (q.stdout + q.stderr).trim() });
  }
  return checks;
}

const pass = (ok: boolean) => (ok ? 'PASS' : 'FAIL');

async function main(): Promise<void> {
  const usage = `node dist/bench/convert.js [--runs N] [--only ${CASES.map((c) => c.name).join(',')}]`;
  const args = parseBenchArgs(process.argv.slice(2), usage, true);
  const unknown = (args.only ?? []).filter((n) => !CASES.some((c) => c.name === n));
  if (unknown.length) throw new Error(`unknown case ${unknown.join(', ')} (cases: ${CASES.map((c) => c.name).join(', ')})`);
  const cases = args.only ? CASES.filter((c) => args.only!.includes(c.name)) : CASES;
  const runs = args.runs;
  const qemuVersion = await requireTools();
  if (!existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) throw new Error('Ferry is not built: npm run build');
  const help = await mustExec(process.execPath, [FERRY, 'image', 'convert', '--help']);
  // The second Ferry variant: with --sync (flushed, as durable as qemu-img + sync) when Ferry has it.
  const hasSyncFlag = help.stdout.includes('--sync');
  console.log(hasSyncFlag ? 'ferry has --sync: also timing ferry flushing its output before the rename' : 'ferry has no --sync option: skipping the ferry --sync column');

  await warnIfBusy();

  const build = await ensureImages();
  console.log(describeBuild(build));

  await rm(SCRATCH, { recursive: true, force: true });
  await mkdir(SCRATCH, { recursive: true });

  const results = [];
  try {
    for (const c of cases) {
      const src = join(OUT, c.source);
      const ext = EXT[c.to];
      const qemuDst = c.peers.map((_, i) => join(SCRATCH, `${c.name}.qemu${i}.${ext}`));
      const ferryDst = join(SCRATCH, `${c.name}.ferry.${ext}`);
      const syncedDst = join(SCRATCH, `${c.name}.ferry-sync.${ext}`);
      await mustExec('cat', [src], { stdout: 'ignore' }); // warm the page cache for both sides
      const qemu: QemuSample[][] = c.peers.map(() => []);
      const ferry: (ConvertSample & { result: unknown })[] = [];
      const synced: ConvertSample[] = [];
      // Every timed run starts from the same state: no output of this case on disk (a large,
      // recently written file left in the page cache slows the next writer on this machine, so
      // keeping the other tool's output around would favour whoever runs first). The last run of
      // each tool is verified right after it, before the next run removes it.
      const all = [...qemuDst, ferryDst, syncedDst];
      const clean = async () => {
        for (const p of all) await rm(p, { force: true });
      };
      const checks: Check[] = [];
      for (let i = 0; i < runs; i++) {
        const last = i === runs - 1;
        const line: string[] = [];
        const runPeers = async () => {
          for (const [k, peer] of c.peers.entries()) {
            const q = await runQemu(c, peer, src, qemuDst[k]!, clean);
            qemu[k]!.push(q);
            line.push(`qemu-img${peer.label} ${q.wall.toFixed(2)} s (+sync ${q.syncWall.toFixed(2)} s)`);
            if (last) checks.push(...(await verify(`qemu-img${peer.label}`, c, qemuDst[k]!, false)));
          }
        };
        // The order alternates from run to run, so neither tool always follows the other.
        if (i % 2 === 0) await runPeers();
        const f = await runFerry(c, src, ferryDst, [], clean);
        ferry.push(f);
        line.push(`ferry ${f.wall.toFixed(2)} s`);
        if (last) checks.push(...(await verify('ferry', c, ferryDst, true)));
        if (i % 2 === 1) await runPeers();
        if (hasSyncFlag) {
          const n = await runFerry(c, src, syncedDst, ['--sync'], clean);
          synced.push(n);
          line.push(`ferry --sync ${n.wall.toFixed(2)} s`);
        }
        console.log(`  ${c.name} run ${i + 1}/${runs}: ${line.join(', ')}`);
      }

      // Verification (untimed) of the last outputs of both tools (done above, right after them).
      for (const ch of checks) {
        console.log(`  ${ch.ok ? 'verified' : 'VERIFY FAILED'}: ${ch.tool}: ${ch.command}: ${ch.output.split('\n').slice(0, 2).join(' | ')}`);
        if (!ch.ok) console.log(ch.output.replace(/^/gm, '    '));
      }
      for (const p of [...qemuDst, ferryDst, syncedDst]) await rm(p, { force: true });

      const f = summarize(ferry);
      const n = hasSyncFlag ? summarize(synced) : undefined;
      // Sparse raw outputs are all 4 GiB long: compare the space they take instead.
      const sizeOf = (s: Summary) => (c.to === 'raw' ? s.allocatedBytes : s.fileBytes);
      const rows = c.peers.map((peer, k) => {
        const q = summarize(qemu[k]!);
        const qemuSyncWall = median(qemu[k]!.map((x) => x.wall + x.syncWall));
        const ratio = f.wallSeconds / q.wallSeconds;
        const sizeRatio = sizeOf(f) / sizeOf(q);
        return {
          label: `${c.name}${peer.label}`,
          qemuArgs: peer.args,
          qemu: { ...q, wallPlusSyncSeconds: qemuSyncWall, syncSeconds: median(qemu[k]!.map((x) => x.syncWall)) },
          ratio,
          ratioWithSync: f.wallSeconds / qemuSyncWall,
          // The fastest run of each tool: page-cache writes on this VM vary run to run by up to 5×
          // (dd of the same 1.6 GB: 0.57–3.18 s), noise that only ever adds time.
          bestRatio: Math.min(...ferry.map((x) => x.wall)) / Math.min(...qemu[k]!.map((x) => x.wall)),
          syncedRatio: n ? n.wallSeconds / qemuSyncWall : undefined,
          sizeRatio,
          target: peer.target,
          pass: { time: ratio <= peer.target, size: sizeRatio <= SIZE_TARGET, rss: f.maxRssMiB < RSS_TARGET_MIB },
          runs: qemu[k],
        };
      });
      results.push({
        case: c.name,
        source: c.source,
        to: c.to,
        ferryArgs: c.ferryArgs,
        sizeMeasure: c.to === 'raw' ? 'allocatedBytes' : 'fileBytes',
        ferry: f,
        ferrySync: n,
        rows,
        checks,
        verified: checks.every((ch) => ch.ok),
        ferryRuns: ferry,
        ferrySyncRuns: hasSyncFlag ? synced : undefined,
      });
    }
  } finally {
    await rm(SCRATCH, { recursive: true, force: true });
  }

  const header = ['case', 'qemu s', 'qemu+sync s', 'ferry s', 'ferry/qemu', 'target', 'best f/q', 'ferry/(qemu+sync)'];
  if (hasSyncFlag) header.push('ferry --sync s', 'sync/(qemu+sync)');
  header.push('ferry cpu/wall', 'ferry RSS MiB', 'qemu RSS MiB', 'qemu MB', 'ferry MB', 'size f/q', 'other load', 'time', 'size', 'RSS', 'verified');
  const rows: string[][] = [];
  for (const r of results) {
    for (const row of r.rows) {
      const cells = [
        row.label,
        row.qemu.wallSeconds.toFixed(2),
        row.qemu.wallPlusSyncSeconds.toFixed(2),
        r.ferry.wallSeconds.toFixed(2),
        row.ratio.toFixed(2),
        `≤ ${row.target.toFixed(2)}`,
        row.bestRatio.toFixed(2),
        row.ratioWithSync.toFixed(2),
      ];
      if (hasSyncFlag) cells.push(r.ferrySync!.wallSeconds.toFixed(2), row.syncedRatio!.toFixed(2));
      const size = (s: Summary) => ((r.to === 'raw' ? s.allocatedBytes : s.fileBytes) / 1e6).toFixed(0);
      cells.push(
        r.ferry.cpuPerWall.toFixed(2),
        r.ferry.maxRssMiB.toFixed(0),
        row.qemu.maxRssMiB.toFixed(0),
        size(row.qemu),
        size(r.ferry),
        row.sizeRatio.toFixed(3),
        Math.max(row.qemu.otherCores, r.ferry.otherCores, r.ferrySync?.otherCores ?? 0).toFixed(2),
        pass(row.pass.time),
        pass(row.pass.size),
        pass(row.pass.rss),
        r.verified ? 'yes' : 'NO',
      );
      rows.push(cells);
    }
  }
  console.log(`\nconvert the 4 GiB reference disk; median of ${runs} runs; ${cpus().length} cores; ${qemuVersion}; node ${process.version}`);
  if (EXTRA_CA_NOTE) console.log(EXTRA_CA_NOTE);
  console.log(table(header, rows));
  console.log(
    '(ferry/qemu: lower is better, the headline, against the target (neither tool flushes its output by default); best f/q: fastest run against fastest run;\n' +
      ` sync/(qemu+sync): both outputs durable — ferry --sync against qemu-img followed by \`sync\`; sizes in MB (10^6) of file size, allocated size for raw outputs; size target ferry ≤ ${SIZE_TARGET.toFixed(2)} × qemu; RSS target < ${RSS_TARGET_MIB} MiB;\n` +
      ' cpu/wall ≈ cores kept busy; other load: most cores other processes used during a timed run; verified: qemu-img compare (+ check) of both outputs)',
  );
  const busy = Math.max(0, ...results.flatMap((r) => r.rows.map((row) => Math.max(row.qemu.otherCores, r.ferry.otherCores, r.ferrySync?.otherCores ?? 0))));
  if (busy > 0.15) {
    console.log(
      `WARNING: other processes kept up to ${busy.toFixed(2)} of ${cpus().length} cores busy during the timed runs; ` +
        'the numbers (especially of the parallel compression) are skewed. Rerun on an idle machine.',
    );
  }
  const failedTargets = results.flatMap((r) => r.rows.filter((row) => !row.pass.time || !row.pass.size || !row.pass.rss).map((row) => row.label));
  console.log(failedTargets.length ? `targets missed: ${failedTargets.join(', ')}` : 'all targets met');

  const verified = results.every((r) => r.verified);
  const doc = {
    date: new Date().toISOString(),
    runs,
    cores: cpus().length,
    node: process.version,
    qemu: qemuVersion,
    ferryHasSync: hasSyncFlag,
    buildSeconds: build.seconds,
    built: build.built,
    referenceSha256: build.rawSha256,
    targets: { compressed: COMPRESSED_TARGET, compressedVsTunedQemu: COMPRESSED_TUNED_TARGET, uncompressed: PLAIN_TARGET, size: SIZE_TARGET, ferryRssMiB: RSS_TARGET_MIB },
    verified,
    results,
  };
  await writeFile(join(OUT, 'convert-results.json'), JSON.stringify(doc, null, 2) + '\n');
  console.log(`results: ${join(OUT, 'convert-results.json')}`);
  if (!verified) {
    console.error('VERIFY FAILED: an output is not identical to the reference disk or fails qemu-img check (see above)');
    process.exit(1);
  }
}

main().catch((err: unknown) => {
  console.error(`bench/convert: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
