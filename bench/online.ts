// Online-migration benchmark: Ferry and the usual ways of moving a server's disk, side by side in
// one run, between two network namespaces joined by a veth pair shaped with tc to 100 Mbit/s.
//  1. builds (once, cached in bench/out/online/) the source disk the issue describes: 1 GiB, MBR,
//     ext4 ~39 % used (100 MB random, the rest text and program files), its free space full of
//     stale random bytes; and a 1 GiB disk of random data (no file system);
//  2. times, each onto a fresh target: `ferry migrate` (receiver in the other namespace);
//     `dd | gzip -1 | nc` of the whole disk; `rsync -aHAX` and `rsync -aHAXz` of the mounted
//     file system to an rsync daemon; and `ferry migrate` of the random disk;
//  3. prints each one's wall time and effective rate (disk bytes per second) as a multiple of the
//     link rate; targets: Ferry's wall ≤ rsync -aHAXz's, and ≥ 95 % of line rate on random data.
//
//   bash bench/run-online.sh [--runs N]
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { FERRY, OUT, median, mustExec, exec, parseBenchArgs, table, warnIfBusy, EXTRA_CA_NOTE } from './lib.js';
import { netPair, type NetPair } from '../test/netns.js';

const DIR = join(OUT, 'online');
const SRC = join(DIR, 'source.img');
const RANDOM = join(DIR, 'random.img');
const SIZE = 1024 ** 3;
const PART = 1024 * 1024;
const LINK = 100e6 / 8;

async function sh(cmd: string): Promise<string> {
  return (await mustExec('bash', ['-c', cmd])).stdout.trim();
}

async function build(): Promise<void> {
  mkdirSync(DIR, { recursive: true });
  if (!existsSync(RANDOM)) await sh(`head -c ${SIZE} /dev/urandom > ${RANDOM}.tmp && mv ${RANDOM}.tmp ${RANDOM}`);
  if (existsSync(SRC)) return;
  const t0 = Date.now();
  await sh(`head -c ${SIZE} /dev/urandom > ${SRC}.tmp`);
  await sh(`printf 'label: dos\\nstart=2048, type=83\\n' | sfdisk -q ${SRC}.tmp`);
  const dev = await sh(`losetup --find --show -o ${PART} ${SRC}.tmp`);
  const m = join(DIR, 'fill');
  try {
    await sh(`mkfs.ext4 -q -F -E nodiscard ${dev} && mkdir -p ${m} && mount ${dev} ${m}`);
    writeFileSync(join(m, 'random.bin'), randomBytes(100 * 1000 * 1000));
    mkdirSync(join(m, 'files'));
    const pct = async () => Number(/(\d+)%/.exec(await sh(`df --output=pcent ${m}`))![1]);
    const roots = ['/usr/share', '/usr/lib/x86_64-linux-gnu', '/usr/lib/python3', '/usr/bin'];
    let n = 0;
    const walk = async (d: string): Promise<boolean> => {
      let entries;
      try {
        entries = readdirSync(d, { withFileTypes: true });
      } catch {
        return false;
      }
      for (const e of entries) {
        const p = join(d, e.name);
        if (e.isDirectory()) {
          if (await walk(p)) return true;
        } else if (e.isFile()) {
          try {
            if (statSync(p).size > 8 * 1024 * 1024) continue;
            await mustExec('cp', [p, join(m, 'files', `${n++}-${e.name}`)]);
          } catch {
            continue;
          }
          if (n % 200 === 0 && (await pct()) >= 39) return true;
        }
      }
      return false;
    };
    for (const r of roots) if (await walk(r)) break;
    console.log(`built the source disk: ext4 ${await pct()}% used, ${n} files (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  } finally {
    await exec('umount', [m]);
    await exec('losetup', ['-d', dev]);
  }
  await sh(`mv ${SRC}.tmp ${SRC}`);
}

/** A fresh sparse target file and its loop device. */
async function freshTarget(name: string): Promise<{ file: string; dev: string }> {
  const file = join(DIR, `${name}.img`);
  rmSync(file, { force: true });
  await sh(`truncate -s ${SIZE} ${file}`);
  return { file, dev: await sh(`losetup --find --show ${file}`) };
}

function inNs(net: NetPair, ns: string, cmd: string[]): ChildProcess {
  const c = net.exec(ns, cmd);
  return spawn(c[0]!, c.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
}

async function firstLine(c: ChildProcess): Promise<string> {
  let out = '';
  let err = '';
  c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    // Keep reading after the first line: the receiver goes on logging.
    c.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    c.once('close', () => reject(new Error(`the receiver did not start: ${err.trim()}`)));
  });
}

/** Stops a child and waits for it (if it still runs). */
async function stop(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const closed = new Promise((r) => c.once('close', r));
  c.kill('SIGTERM');
  await closed;
}

async function timed(cmd: string[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  await mustExec(cmd[0]!, cmd.slice(1));
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function ferryRun(net: NetPair, source: string): Promise<{ wall: number; sent: number }> {
  const t = await freshTarget('ferry-target');
  const state = join(DIR, 'receiver-state');
  rmSync(state, { recursive: true, force: true });
  const recv = inNs(net, net.b, [process.execPath, FERRY, 'receive', '--json', '--listen', `${net.addrB}:7878`, '--state-dir', state, '--disk', `root=${t.dev}`]);
  try {
    const hello = JSON.parse(await firstLine(recv)) as { fingerprint: string; token: string };
    const t0 = process.hrtime.bigint();
    const p = await exec('ip', ['netns', 'exec', net.a, process.execPath, FERRY, 'migrate', '--json', '--target', `${net.addrB}:7878`, '--fingerprint', hello.fingerprint, '--token', hello.token, '--disk', `${source}=root`, ...(process.env.FERRY_MIGRATE_ARGS ?? '').split(' ').filter(Boolean)]);
    if (p.code !== 0) throw new Error(`ferry migrate failed (exit ${p.code}): ${p.stdout}`);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const rep = JSON.parse(p.stdout) as { bytesSent: number; seconds: number; rounds: { seconds: number }[]; disks: { verified: boolean }[] };
    if (process.env.FERRY_BENCH_VERBOSE) console.log(`  ferry: total ${rep.seconds.toFixed(1)} s, sending ${rep.rounds.map((r) => r.seconds.toFixed(1)).join('+')} s`);
    if (!rep.disks[0]?.verified) throw new Error('ferry: not verified');
    return { wall, sent: rep.bytesSent };
  } finally {
    await stop(recv);
    await exec('losetup', ['-d', t.dev]);
  }
}

async function ddGzipNc(net: NetPair, source: string): Promise<number> {
  const t = join(DIR, 'dd-target.img');
  rmSync(t, { force: true });
  const recv = inNs(net, net.b, ['bash', '-c', `nc -l ${net.addrB} 9000 | gunzip > ${t}`]);
  await new Promise((r) => setTimeout(r, 300));
  const closed = new Promise((r) => recv.once('close', r));
  const wall = await timed(['ip', 'netns', 'exec', net.a, 'bash', '-c', `dd if=${source} bs=4M status=none | gzip -1 | nc -N ${net.addrB} 9000`]);
  await closed;
  if (statSync(t).size !== SIZE) throw new Error('dd | gzip | nc: incomplete copy');
  return wall;
}

async function rsyncRun(net: NetPair, z: boolean): Promise<number> {
  const src = await sh(`losetup --find --show -r -o ${PART} ${SRC}`);
  const t = await freshTarget('rsync-target');
  const dst = await sh(`losetup --find --show -o ${PART} ${t.file}`);
  const ms = join(DIR, 'ms');
  const mt = join(DIR, 'mt');
  mkdirSync(ms, { recursive: true });
  mkdirSync(mt, { recursive: true });
  await sh(`mkfs.ext4 -q -F ${dst} && mount -o ro ${src} ${ms} && mount ${dst} ${mt}`);
  const conf = join(DIR, 'rsyncd.conf');
  writeFileSync(conf, `uid = root\ngid = root\nuse chroot = no\npid file = ${join(DIR, 'rsyncd.pid')}\n[mod]\npath = ${mt}\nread only = no\n`);
  const daemon = inNs(net, net.b, ['rsync', '--daemon', '--no-detach', `--config=${conf}`, `--address=${net.addrB}`, '--port=8873']);
  try {
    await new Promise((r) => setTimeout(r, 500));
    return await timed(['ip', 'netns', 'exec', net.a, 'rsync', z ? '-aHAXz' : '-aHAX', `${ms}/`, `rsync://${net.addrB}:8873/mod/`]);
  } finally {
    await stop(daemon);
    await exec('umount', [ms]);
    await exec('umount', [mt]);
    await exec('losetup', ['-d', src]);
    await exec('losetup', ['-d', dst]);
    await exec('losetup', ['-d', t.dev]);
  }
}

async function main(): Promise<void> {
  const args = parseBenchArgs(process.argv.slice(2), 'node dist/bench/online.js [--runs N] [--only ferry,rsyncz,rsync,dd,random]', true);
  const want = (k: string) => !args.only || args.only.includes(k);
  await build();
  await warnIfBusy();
  const net = netPair('100mbit');
  const srcDev = await sh(`losetup --find --show -r ${SRC}`);
  const rndDev = await sh(`losetup --find --show -r ${RANDOM}`);
  const runs: Record<string, number[]> = { ferry: [], dd: [], rsync: [], rsyncz: [], random: [] };
  let sent = 0;
  try {
    for (let i = 1; i <= args.runs; i++) {
      console.log(`run ${i}/${args.runs} …`);
      if (want('ferry')) {
        const f = await ferryRun(net, srcDev);
        runs.ferry!.push(f.wall);
        sent = f.sent;
      }
      if (want('rsyncz')) runs.rsyncz!.push(await rsyncRun(net, true));
      if (want('rsync')) runs.rsync!.push(await rsyncRun(net, false));
      if (want('random')) runs.random!.push((await ferryRun(net, rndDev)).wall);
      if (want('dd')) runs.dd!.push(await ddGzipNc(net, srcDev));
      console.log('  ' + Object.entries(runs).filter(([, v]) => v.length).map(([k, v]) => `${k} ${v.at(-1)!.toFixed(1)} s`).join(', '));
    }
  } finally {
    await exec('losetup', ['-d', srcDev]);
    await exec('losetup', ['-d', rndDev]);
    net.remove();
  }
  const line = SIZE / LINK;
  const m = (k: string) => (runs[k]!.length ? median(runs[k]!) : NaN);
  const eff = (w: number) => `${(line / w).toFixed(2)}×`;
  const rows = [
    ['ferry migrate', m('ferry').toFixed(1), eff(m('ferry')), `≤ rsync -aHAXz (${m('rsyncz').toFixed(1)} s)`, m('ferry') <= m('rsyncz') ? 'PASS' : 'FAIL'],
    ['rsync -aHAXz', m('rsyncz').toFixed(1), eff(m('rsyncz')), '', ''],
    ['rsync -aHAX', m('rsync').toFixed(1), eff(m('rsync')), '', ''],
    ['dd | gzip -1 | nc', m('dd').toFixed(1), eff(m('dd')), '', ''],
    ['ferry migrate, random-data disk', m('random').toFixed(1), eff(m('random')), '≥ 0.95× line rate', line / m('random') >= 0.95 ? 'PASS' : 'FAIL'],
  ];
  console.log(`\n1 GiB disk (ext4 ~39 % used, stale data in free space) over a veth pair shaped to 100 Mbit/s; whole disk at line rate ${line.toFixed(1)} s; median of ${args.runs} run(s); ferry sent ${(sent / 1e6).toFixed(0)} MB`);
  if (EXTRA_CA_NOTE) console.log(EXTRA_CA_NOTE);
  console.log(table(['path', 'wall s', 'effective rate', 'target', ''], rows));
  writeFileSync(join(OUT, 'online-results.json'), JSON.stringify({ runs, lineSeconds: line, ferryBytesSent: sent }, null, 2) + '\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
