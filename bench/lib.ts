// Helpers shared by the benchmarks (bench/read.ts, bench/convert.ts): paths, building and caching
// the 4 GiB reference disk and its qemu-img conversions in bench/out/, running commands (timed from
// spawn to exit, optionally under GNU time for CPU and peak RSS), measuring what the rest of the
// machine uses meanwhile (/proc/stat), medians, argument parsing and plain-text tables.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildReferenceDiskDetailed } from '../test/corpus/reference-disk.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const OUT = join(ROOT, 'bench', 'out');
export const FERRY = join(ROOT, 'bin', 'ferry.js');
export const GNU_TIME = '/usr/bin/time';
export const RAW = join(OUT, 'reference-4g.raw');
export const GIB = 1024 ** 3;

/**
 * Node reads and parses the whole NODE_EXTRA_CA_CERTS bundle at every start (0.07–0.09 s on the
 * 2-core reference machine, whose environment sets it; a fresh Debian machine does not). The
 * benchmarks time local work only (files, loopback, plain-HTTP S3), so they run every command
 * without it, and say so. qemu-img and the other peers do not read it.
 */
export const EXTRA_CA_NOTE = process.env.NODE_EXTRA_CA_CERTS
  ? `note: NODE_EXTRA_CA_CERTS (${process.env.NODE_EXTRA_CA_CERTS}) was set; commands run without it (Node parses that bundle at every start, ~0.08 s here)`
  : undefined;
delete process.env.NODE_EXTRA_CA_CERTS;

export interface ImageSpec {
  label: string;
  file: string;
  format: 'qcow2' | 'vmdk';
  convertArgs: string[];
}

/** The conversions of reference-4g.raw built (with qemu-img) and cached next to it. */
export const IMAGES: ImageSpec[] = [
  { label: 'qcow2', file: 'reference-4g.qcow2', format: 'qcow2', convertArgs: ['-O', 'qcow2'] },
  { label: 'qcow2 zlib', file: 'reference-4g-zlib.qcow2', format: 'qcow2', convertArgs: ['-c', '-O', 'qcow2'] },
  { label: 'vmdk streamOptimized', file: 'reference-4g-stream.vmdk', format: 'vmdk', convertArgs: ['-O', 'vmdk', '-o', 'subformat=streamOptimized'] },
];

export interface Sample {
  wall: number;
  cpu: number;
  maxRssKiB: number;
  /** CPU seconds the rest of the machine used meanwhile (from /proc/stat): contention. */
  otherCpu: number;
}

export interface Proc {
  code: number;
  stdout: string;
  stderr: string;
  wall: number;
}

export interface ExecOptions {
  stdout?: 'pipe' | 'ignore';
}

/** Spawns `cmd args`, collects output, measures wall time from spawn to exit. */
export function exec(cmd: string, args: string[], opts: ExecOptions = {}): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', opts.stdout ?? 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr, wall: Number(process.hrtime.bigint() - t0) / 1e9 }));
  });
}

export async function mustExec(cmd: string, args: string[], opts: ExecOptions = {}): Promise<Proc> {
  const p = await exec(cmd, args, opts);
  if (p.code !== 0) throw new Error(`command failed (exit ${p.code}): ${cmd} ${args.join(' ')}\n${p.stderr}`);
  return p;
}

export interface TimedProc extends Proc {
  /** User + system CPU seconds of the command (all its threads), from GNU time. */
  cpu: number;
  /** Peak resident set size in KiB, from GNU time. */
  maxRssKiB: number;
}

/**
 * Runs `cmd args` under GNU time (`-f '%e %U %S %M'`) and fails if it fails. Wall time is measured
 * here from spawn to exit (as for untimed commands); CPU and peak RSS come from GNU time.
 */
export async function timedExec(cmd: string, args: string[], opts: ExecOptions = {}): Promise<TimedProc> {
  const timeFile = join(OUT, '.time.txt');
  const p = await mustExec(GNU_TIME, ['-f', '%e %U %S %M', '-o', timeFile, cmd, ...args], opts);
  const [, user, sys, rss] = (await readFile(timeFile, 'utf8')).trim().split('\n').pop()!.split(' ').map(Number);
  return { ...p, cpu: user! + sys!, maxRssKiB: rss! };
}

/** CPU seconds all cores of the machine have been busy since boot (/proc/stat, USER_HZ = 100). */
export async function machineBusySeconds(): Promise<number> {
  const f = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
  return (user + nice + system + irq + softirq + steal) / 100;
}

/** Runs `measure` and adds what the other processes of the machine used meanwhile. */
export async function withContention<T extends Omit<Sample, 'otherCpu'>>(measure: () => Promise<T>): Promise<T & { otherCpu: number }> {
  const before = await machineBusySeconds();
  const s = await measure();
  return { ...s, otherCpu: Math.max(0, (await machineBusySeconds()) - before - s.cpu) };
}

/** Samples the machine for one second and warns when other processes keep it busy. */
export async function warnIfBusy(): Promise<number> {
  const idle0 = await machineBusySeconds();
  await sleep(1000);
  const busyNow = (await machineBusySeconds()) - idle0;
  if (busyNow > 0.2) console.log(`WARNING: the machine is busy (${busyNow.toFixed(2)} cores used by other processes); timings will be skewed.`);
  return busyNow;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export interface BuildInfo {
  seconds: number;
  built: string[];
  rawSha256: string;
}

/** Builds what is missing in bench/out/ (partial files are built under another name, then renamed). */
export async function ensureImages(): Promise<BuildInfo> {
  await mkdir(OUT, { recursive: true });
  for (const n of await readdir(OUT)) if (n.startsWith('.stage-') || n.endsWith('.partial')) await rm(join(OUT, n), { recursive: true, force: true });
  const t0 = process.hrtime.bigint();
  const built: string[] = [];
  const shaFile = `${RAW}.sha256`;
  if (!existsSync(RAW)) {
    console.log('building the 4 GiB reference disk (GPT, ext4 with ~1.6 GB of data, FAT) …');
    const s = process.hrtime.bigint();
    const partial = await buildReferenceDiskDetailed(OUT, { size: 4 * GIB, dataBytes: 1.6e9, table: 'gpt', name: 'reference-4g.raw.partial' });
    await rename(partial.path, RAW);
    await rm(shaFile, { force: true });
    for (const img of IMAGES) await rm(join(OUT, img.file), { force: true }); // derived from the old disk
    built.push('reference-4g.raw');
    console.log(`  reference-4g.raw: ${(Number(process.hrtime.bigint() - s) / 1e9).toFixed(1)} s`);
  }
  let rawSha256: string;
  if (existsSync(shaFile) && (await stat(shaFile)).mtimeMs >= (await stat(RAW)).mtimeMs) {
    rawSha256 = (await readFile(shaFile, 'utf8')).trim();
  } else {
    rawSha256 = await sha256File(RAW);
    await writeFile(shaFile, rawSha256 + '\n');
  }
  for (const img of IMAGES) {
    const path = join(OUT, img.file);
    if (existsSync(path)) continue;
    const s = process.hrtime.bigint();
    await mustExec('qemu-img', ['convert', '-f', 'raw', ...img.convertArgs, RAW, `${path}.partial`]);
    await rename(`${path}.partial`, path);
    built.push(img.file);
    console.log(`  ${img.file}: ${(Number(process.hrtime.bigint() - s) / 1e9).toFixed(1)} s`);
  }
  return { seconds: Number(process.hrtime.bigint() - t0) / 1e9, built, rawSha256 };
}

/** One line saying whether the images were built or found in the cache. */
export function describeBuild(build: BuildInfo): string {
  return build.built.length ? `build: ${build.seconds.toFixed(1)} s (built ${build.built.join(', ')})` : `build: cached in ${OUT} (${build.seconds.toFixed(1)} s to check)`;
}

export async function virtualSize(path: string): Promise<number> {
  const info = JSON.parse((await mustExec('qemu-img', ['info', '--output=json', path])).stdout) as { 'virtual-size': number };
  return info['virtual-size'];
}

/** Fails early, with the package to install, when a tool the benchmarks need is missing. */
export async function requireTools(): Promise<string> {
  if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} (GNU time) is missing: apt-get install -y time`);
  if ((await exec('qemu-img', ['--version'])).code !== 0) throw new Error('qemu-img is missing: apt-get install -y qemu-utils');
  return (await exec('qemu-img', ['--version'])).stdout.split('\n')[0]!;
}

export interface BenchArgs {
  runs: number;
  /** Names given with --only (undefined: all). */
  only?: string[];
}

/** Parses `--runs N` (default 3) and, when `allowOnly`, `--only a,b`. */
export function parseBenchArgs(argv: string[], usage: string, allowOnly = false): BenchArgs {
  let runs = 3;
  let only: string[] | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--runs') runs = Number(argv[++i]);
    else if (argv[i]?.startsWith('--runs=')) runs = Number(argv[i]!.slice('--runs='.length));
    else if (allowOnly && argv[i] === '--only') only = (argv[++i] ?? '').split(',').filter(Boolean);
    else if (allowOnly && argv[i]?.startsWith('--only=')) only = argv[i]!.slice('--only='.length).split(',').filter(Boolean);
    else throw new Error(`unknown argument ${argv[i]} (usage: ${usage})`);
  }
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs needs a positive integer');
  if (only && only.length === 0) throw new Error('--only needs a comma-separated list of names');
  return only ? { runs, only } : { runs };
}

/** A plain-text table: first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(header), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}
