// Fleet benchmark: 16 concurrent migrations through one controller on this 2-core machine. A LAN
// of network namespaces (test/netlan.ts): 16 source hosts, each running its own OpenSSH server and
// holding its own disk (64 MiB of random data in an 80 MiB disk), and one target host running one
// `ferry receive` with 16 disks, behind a link shaped with tc to the capacity given (default
// 200 Mbit/s, the only bottleneck). `ferry fleet run --concurrency 16` copies the agent to every
// source and migrates them all at once. Printed: the aggregate rate on the wire while migrating
// (bytes sent by all agents / time from the first migration's start to the last one's end) against
// the link's capacity, the controller's peak memory and each agent's. Targets: ≥ 90 % of
// capacity; agent ≤ 150 MiB RSS. Every target disk is checked against its source.
//
//   bash bench/run-fleet.sh [--hosts N] [--link-mbit M]
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { EXTRA_CA_NOTE, FERRY, OUT, ROOT, exec, sha256File, table, warnIfBusy } from './lib.js';
import { lan, type Lan } from '../test/netlan.js';
import { startSshd, stopSshd, type Sshd } from '../test/sshd.js';

const MiB = 1024 * 1024;
const DISK = 80 * MiB;
const DATA = 64 * MiB;
const DIR = join(OUT, 'fleet');
const AGENT = join(ROOT, 'dist', 'agent', 'ferry-agent');

function args(): { hosts: number; linkMbit: number } {
  let hosts = 16;
  let linkMbit = 200;
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--hosts') hosts = Number(a[++i]);
    else if (a[i] === '--link-mbit') linkMbit = Number(a[++i]);
    else throw new Error(`unknown argument ${a[i]} (usage: node dist/bench/fleet.js [--hosts N] [--link-mbit M])`);
  }
  if (!Number.isInteger(hosts) || hosts < 1 || hosts > 64) throw new Error('--hosts: 1 to 64');
  if (!(linkMbit > 0)) throw new Error('--link-mbit: a positive number');
  return { hosts, linkMbit };
}

interface Report {
  bytesSent: number;
  seconds: number;
  peakRssMiB?: number;
  disks: { verified: boolean }[];
}

async function main(): Promise<void> {
  const { hosts: N, linkMbit } = args();
  if (!existsSync(AGENT)) throw new Error(`${AGENT} missing: run npm run build:agent`);
  await warnIfBusy();
  rmSync(DIR, { recursive: true, force: true });
  mkdirSync(join(DIR, 'work'), { recursive: true });
  const children: ChildProcess[] = [];
  const sshds: Sshd[] = [];
  let net: Lan | undefined;
  const cleanup = () => {
    for (const c of children) c.kill('SIGKILL');
    for (const sd of sshds) stopSshd(sd);
    net?.remove();
  };
  process.on('exit', cleanup);
  try {
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(DIR, 'client')]);
    net = lan(N + 1);
    const target = net.hosts[N]!;
    // The link into the target host (egress of the hub's end) is the bottleneck.
    execFileSync('ip', ['netns', 'exec', net.hub, 'tc', 'qdisc', 'add', 'dev', target.hubDev, 'root', 'tbf', 'rate', `${linkMbit}mbit`, 'burst', '256kb', 'latency', '100ms']);
    const known: string[] = [];
    for (let i = 0; i < N; i++) {
      const h = net.hosts[i]!;
      const src = join(DIR, `src${i}.img`);
      const fd = openSync(src, 'w');
      writeSync(fd, randomBytes(DATA), 0, DATA, 4 * MiB);
      closeSync(fd);
      truncateSync(src, DISK);
      writeFileSync(join(DIR, `tgt${i}.img`), '');
      truncateSync(join(DIR, `tgt${i}.img`), DISK);
      const sd = startSshd({ ns: h.ns, addr: h.addr, dir: DIR, name: `src${i}`, clientPub: join(DIR, 'client.pub') });
      sshds.push(sd);
      known.push(sd.knownHostsLine);
    }
    writeFileSync(join(DIR, 'known_hosts'), known.join('\n') + '\n');
    const token = randomBytes(12).toString('hex');
    const recv = spawn('ip', ['netns', 'exec', target.ns, process.execPath, FERRY, 'receive', '--json', '--listen', `${target.addr}:7878`, '--state-dir', join(DIR, 'recv'), '--token', token, ...Array.from({ length: N }, (_, i) => ['--disk', `d${i}=${join(DIR, `tgt${i}.img`)}`]).flat()]);
    children.push(recv);
    let out = '';
    recv.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    for (let n = 0; n < 200 && !out.includes('\n'); n++) await new Promise((r) => setTimeout(r, 50));
    const fingerprint = (JSON.parse(out.split('\n')[0]!) as { fingerprint: string }).fingerprint;
    for (let i = 0; i < N; i++) {
      for (let n = 0; n < 100 && spawnSync('ip', ['netns', 'exec', net.hub, 'bash', '-c', `exec 3<>/dev/tcp/${net.hosts[i]!.addr}/22`]).status !== 0; n++) await new Promise((r) => setTimeout(r, 100));
    }
    const inv = [
      'defaults:',
      `  ssh: {user: root, key: client, known_hosts: known_hosts, workdir: ${join(DIR, 'work')}}`,
      'hosts:',
      ...Array.from({ length: N }, (_, i) => [
        `  - name: src${i}`,
        `    ssh: {host: ${net!.hosts[i]!.addr}}`,
        `    target: {address: "${target.addr}:7878", fingerprint: "${fingerprint}", token: ${token}}`,
        `    disks: [{source: ${join(DIR, `src${i}.img`)}, name: d${i}}]`,
      ]).flat(),
    ].join('\n');
    writeFileSync(join(DIR, 'inventory.yaml'), inv + '\n');

    console.log(`fleet: ${N} sources, each ${DATA / MiB} MiB of random data in a ${DISK / MiB} MiB disk, to one receiver behind a ${linkMbit} Mbit/s link`);
    if (EXTRA_CA_NOTE) console.log(EXTRA_CA_NOTE);
    const run = await exec('/usr/bin/time', ['-f', 'FLEET-TIME %e %M', 'env', `FERRY_STATE_DIR=${join(DIR, 'state')}`, 'ip', 'netns', 'exec', net.hub, process.execPath, FERRY, 'fleet', 'run', join(DIR, 'inventory.yaml'), '--concurrency', String(N), '--json']);
    const time = /FLEET-TIME ([\d.]+) (\d+)/.exec(run.stderr);
    let doc: { hosts: { name: string; state: string; finishedAt?: string; report?: Report; error?: { code: string; message: string } }[]; succeeded: number; failed: number };
    try {
      doc = JSON.parse(run.stdout);
    } catch {
      throw new Error(`fleet run printed no report (exit ${run.code}): ${run.stderr.slice(-2000)}`);
    }
    const rows: string[][] = [];
    let bytes = 0;
    let first = Infinity;
    let last = 0;
    let agentPeak = 0;
    for (const h of doc.hosts) {
      const r = h.report;
      if (h.state !== 'succeeded' || !r) {
        rows.push([h.name, h.state, '', '', '', h.error ? `${h.error.code}: ${h.error.message}` : '']);
        continue;
      }
      const end = Date.parse(h.finishedAt!);
      first = Math.min(first, end - r.seconds * 1000);
      last = Math.max(last, end);
      bytes += r.bytesSent;
      agentPeak = Math.max(agentPeak, r.peakRssMiB ?? 0);
      const i = Number(h.name.slice(3));
      const same = (await sha256File(join(DIR, `src${i}.img`))) === (await sha256File(join(DIR, `tgt${i}.img`)));
      rows.push([h.name, h.state, (r.bytesSent / 1e6).toFixed(1), r.seconds.toFixed(1), String(r.peakRssMiB ?? '?'), same && r.disks.every((d) => d.verified) ? 'identical' : 'DIFFERS']);
    }
    console.log(table(['host', 'state', 'MB sent', 'migrate s', 'agent RSS MiB', 'target'], rows));
    const capacity = (linkMbit * 1e6) / 8;
    const window = (last - first) / 1000;
    const aggregate = bytes / window;
    const ratio = aggregate / capacity;
    const controllerMiB = time ? Number(time[2]) / 1024 : NaN;
    const allOk = doc.failed === 0 && rows.every((r) => r[5] === 'identical');
    console.log(
      `\n${doc.succeeded}/${N} migrated (${allOk ? 'every target identical to its source' : 'NOT all identical'}); fleet run ${time?.[1] ?? '?'} s in all (SSH, agent copies, migrations)\n` +
        `aggregate on the wire while migrating: ${(aggregate / 1e6).toFixed(2)} MB/s over ${window.toFixed(1)} s = ${(100 * ratio).toFixed(1)} % of the ${linkMbit} Mbit/s link (target ≥ 90 %: ${ratio >= 0.9 ? 'PASS' : 'FAIL'})\n` +
        `controller peak RSS ${controllerMiB.toFixed(0)} MiB; agents' peak RSS max ${agentPeak} MiB (target ≤ 150: ${agentPeak > 0 && agentPeak <= 150 ? 'PASS' : 'FAIL'})`,
    );
    writeFileSync(join(OUT, 'fleet-results.json'), JSON.stringify({ date: new Date().toISOString(), hosts: N, linkMbit, aggregateBytesPerSecond: aggregate, ratio, window, controllerPeakMiB: controllerMiB, agentPeakMiB: agentPeak, hostsDoc: doc.hosts.map((h) => ({ name: h.name, state: h.state, report: h.report })) }, null, 2));
    if (!allOk) process.exitCode = 1;
  } finally {
    cleanup();
    process.removeListener('exit', cleanup);
    rmSync(join(DIR, 'work'), { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 1;
});
