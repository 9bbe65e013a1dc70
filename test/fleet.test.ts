// `ferry fleet run` against real OpenSSH servers: a LAN of network namespaces (test/netlan.ts) with
// four source hosts, each running its own sshd (Debian's openssh-server, its own host key) and
// holding its own disk, and four target hosts, each running `ferry receive`; the controller runs in
// the bridge's namespace. The fourth target (a loop device) is too small: that host fails with TARGET_TOO_SMALL
// while the other three migrate concurrently and verify; nothing is left on the sources. After the
// target is replaced by a large enough one, a re-run migrates only that host. Then a host whose
// key is not in known_hosts, and one whose sshd is down, are refused with their reasons.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, writeSync, closeSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileSha } from './file-sha.js';
import { lan, type Lan } from './netlan.js';
import { startSshd, stopSshd, type Sshd } from './sshd.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const AGENT = fileURLToPath(new URL('../agent/ferry-agent', import.meta.url));
const MiB = 1024 * 1024;
const DISK = 48 * MiB;
const HOSTS = 4;
let dir = '';
let net: Lan;
const children = new Set<ChildProcess>();
const receivers: (ChildProcess | undefined)[] = [];
const fingerprints: string[] = [];
const sshds: Sshd[] = [];
const tokens = Array.from({ length: HOSTS }, () => randomBytes(12).toString('hex'));

const src = (i: number) => join(dir, `src${i}.img`);
const tgtFile = (i: number) => join(dir, `tgt${i}.img`);
/** The fourth target is a loop device (a block device cannot grow: too small is too small). */
let loopDev = '';
const tgt = (i: number) => (i === 3 ? loopDev : tgtFile(i));

function makeLoopTarget(size: number): void {
  if (loopDev) spawnSync('losetup', ['-d', loopDev]);
  writeFileSync(tgtFile(3), '');
  truncateSync(tgtFile(3), size);
  loopDev = execFileSync('losetup', ['--find', '--show', tgtFile(3)], { encoding: 'utf8' }).trim();
}
const srcHost = (i: number) => net.hosts[i]!;
const tgtHost = (i: number) => net.hosts[HOSTS + i]!;

function run(cmd: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd[0]!, cmd.slice(1), { env: { ...process.env, ...env } });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => {
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Waits until host:port accepts connections from namespace `ns`. */
async function waitPort(ns: string, host: string, port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = spawnSync('ip', ['netns', 'exec', ns, 'bash', '-c', `exec 3<>/dev/tcp/${host}/${port}`]);
    if (r.status === 0) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`${host}:${port} does not answer`);
}

async function startReceiver(i: number): Promise<void> {
  const h = tgtHost(i);
  const cmd = net.exec(h.ns, [process.execPath, BIN, 'receive', '--json', '--listen', `${h.addr}:7878`, '--state-dir', join(dir, `recv${i}`), '--token', tokens[i]!, '--disk', `data=${tgt(i)}`]);
  const child = spawn(cmd[0]!, cmd.slice(1));
  receivers[i] = child;
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  for (let n = 0; n < 200 && !out.includes('\n'); n++) await new Promise((r) => setTimeout(r, 50));
  const first = JSON.parse(out.split('\n')[0]!) as { fingerprint: string };
  fingerprints[i] = first.fingerprint;
}

function stopReceiver(i: number): void {
  receivers[i]?.kill('SIGKILL');
  receivers[i] = undefined;
}

/** A source disk: random data at places that differ per host, zeros elsewhere. */
function makeSource(i: number): void {
  const fd = openSync(src(i), 'w');
  try {
    for (let at = i * MiB; at < DISK; at += 6 * MiB) writeSync(fd, randomBytes(MiB + 4096 * i), 0, MiB + 4096 * i, at);
  } finally {
    closeSync(fd);
  }
  truncateSync(src(i), DISK);
}

function inventory(hosts: number[], extra: string[] = []): string {
  const file = join(dir, 'inventory.yaml');
  const lines = [
    '# made by test/fleet.test.ts',
    'defaults:',
    `  ssh: {user: root, key: client, known_hosts: known_hosts, workdir: ${join(dir, 'work')}, connect_timeout: 5}`,
    'hosts:',
  ];
  for (const i of hosts) {
    lines.push(
      `  - name: web${i}`,
      `    ssh: {host: ${srcHost(i).addr}}`,
      `    target: {address: "${tgtHost(i).addr}:7878", fingerprint: "${fingerprints[i]}", ${i === 0 ? 'token_env: WEB0_TOKEN' : `token: ${tokens[i]}`}}`,
      `    disks: [{source: ${src(i)}, name: data}]`,
    );
  }
  writeFileSync(file, [...lines, ...extra].join('\n') + '\n');
  return file;
}

interface HostResult {
  name: string;
  state: string;
  skipped?: boolean;
  startedAt?: string;
  finishedAt?: string;
  error?: { code: string; message: string; remedy?: string };
}

async function fleet(file: string, ...args: string[]): Promise<{ code: number | null; doc: { hosts: HostResult[]; succeeded: number; failed: number; skipped: number }; stderr: string }> {
  const r = await run(net.exec(net.hub, [process.execPath, BIN, 'fleet', 'run', file, '--json', ...args]), { FERRY_STATE_DIR: join(dir, 'controller'), WEB0_TOKEN: tokens[0] });
  let doc;
  try {
    doc = JSON.parse(r.stdout);
  } catch {
    assert.fail(`fleet run printed no JSON report (exit ${r.code}):\n${r.stdout}\n${r.stderr.slice(-3000)}`);
  }
  return { code: r.code, doc, stderr: r.stderr };
}

before(async () => {
  assert.ok(existsSync(AGENT), `${AGENT} missing: the test setup builds it (node scripts/build-agent.mjs)`);
  dir = mkdtempSync(join(tmpdir(), 'ferry-fleet-'));
  mkdirSync(join(dir, 'work'));
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client')]);
  chmodSync(join(dir, 'client'), 0o600);
  net = lan(2 * HOSTS);
  const known: string[] = [];
  for (let i = 0; i < HOSTS; i++) {
    makeSource(i);
    // The fourth target is too small for its source.
    if (i === 3) {
      makeLoopTarget(DISK / 2);
    } else {
      writeFileSync(tgt(i), '');
      truncateSync(tgt(i), DISK);
    }
    sshds[i] = startSshd({ ns: srcHost(i).ns, addr: srcHost(i).addr, dir, name: `src${i}`, clientPub: join(dir, 'client.pub') });
    await startReceiver(i);
  }
  for (let i = 0; i < HOSTS; i++) {
    await waitPort(net.hub, srcHost(i).addr, 22);
    known.push(sshds[i]!.knownHostsLine);
  }
  writeFileSync(join(dir, 'known_hosts'), known.join('\n') + '\n');
});

after(() => {
  // Each step on its own: one failing must not leave the rest behind.
  const attempt = (f: () => void) => {
    try {
      f();
    } catch {
      // already gone
    }
  };
  for (const c of children) attempt(() => c.kill('SIGKILL'));
  for (let i = 0; i < HOSTS; i++) attempt(() => stopReceiver(i));
  for (const sd of sshds) attempt(() => stopSshd(sd));
  attempt(() => net?.remove());
  attempt(() => {
    if (loopDev) spawnSync('losetup', ['-d', loopDev]);
  });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A control plane in the bridge's namespace, with a state directory of its own: it knows the fleet only from the agents' reports. */
async function controlPlane(): Promise<{ url: string; token: string; jobs: () => Promise<{ id: string; state: string; reported?: boolean; percent: number; error: { code: string } | null }[]> }> {
  const token = randomBytes(12).toString('hex');
  const cmd = net.exec(net.hub, [process.execPath, BIN, 'server', '--listen', `${net.hubAddr}:8787`, '--data-dir', join(dir, 'control-plane'), '--token', token, '--json']);
  const child = spawn(cmd[0]!, cmd.slice(1));
  children.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  for (let n = 0; n < 200 && !out.includes('\n'); n++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(out.includes('\n'), 'ferry server did not start');
  const { reportToken } = JSON.parse(out.split('\n')[0]!) as { reportToken: string };
  const url = `http://${net.hubAddr}:8787`;
  const jobs = async () => {
    const get = `fetch(${JSON.stringify(`${url}/api/jobs`)}, {headers: {authorization: 'Bearer ' + process.env.T}}).then((r) => r.text()).then((t) => process.stdout.write(t))`;
    const r = await run(net.exec(net.hub, [process.execPath, '-e', get]), { T: token });
    return (JSON.parse(r.stdout) as { jobs: { id: string; state: string; reported?: boolean; percent: number; error: { code: string } | null }[] }).jobs;
  };
  return { url, token: reportToken, jobs };
}

test('fleet run: four hosts over SSH at once; the one with a too-small target fails with its reason, the others verify; a re-run does only that one', async () => {
  // The agents report to a control plane on the controller's network (the inventory's `report:`).
  const cp = await controlPlane();
  const file = inventory([0, 1, 2, 3], [`report: {url: "${cp.url}", token: ${cp.token}}`]);
  const first = await fleet(file, '--concurrency', '4');
  assert.equal(first.code, 1, `a failed host makes the run exit 1: ${JSON.stringify(first.doc, null, 1)}`);
  const byName = new Map(first.doc.hosts.map((h) => [h.name, h]));
  for (const i of [0, 1, 2]) assert.equal(byName.get(`web${i}`)?.state, 'succeeded', JSON.stringify(byName.get(`web${i}`)));
  const bad = byName.get('web3')!;
  assert.equal(bad.state, 'failed');
  assert.equal(bad.error?.code, 'TARGET_TOO_SMALL', JSON.stringify(bad.error));
  assert.match(bad.error!.message, /web3/);
  assert.ok(bad.error!.remedy);
  for (const i of [0, 1, 2]) assert.equal(fileSha(tgt(i)), fileSha(src(i)), `target ${i} differs from its source`);
  // Concurrent: every successful host started before any of them finished.
  const ok = [0, 1, 2].map((i) => byName.get(`web${i}`)!);
  const lastStart = Math.max(...ok.map((h) => Date.parse(h.startedAt!)));
  const firstEnd = Math.min(...ok.map((h) => Date.parse(h.finishedAt!)));
  assert.ok(lastStart < firstEnd, `hosts ran one after another (last start ${lastStart}, first end ${firstEnd})`);
  // Nothing left on the sources: no agent, config or token.
  assert.deepEqual(readdirSync(join(dir, 'work')), []);
  // Progress was reported as events.
  assert.match(first.stderr, /"phase":"migrating"/);
  const span = (h: HostResult) => ((Date.parse(h.finishedAt!) - Date.parse(h.startedAt!)) / 1000).toFixed(1);
  console.log(`# fleet run 1: ${ok.map((h) => `${h.name} succeeded in ${span(h)} s`).join(', ')} (all started before any finished); web3 failed: ${bad.error!.code}: ${bad.error!.message}`);
  // Each agent reported its job from its source to the control plane, which has no fleet records.
  // Ids as a server on the controller would give the hosts: fleet:<its record>:<host>.
  const reported = new Map((await cp.jobs()).map((j) => [j.id.replace(/^fleet:inventory\.yaml-[0-9a-f]{12}:/, 'fleet:'), j]));
  for (const i of [0, 1, 2]) {
    const j = reported.get(`fleet:web${i}`);
    assert.equal(j?.state, 'succeeded', JSON.stringify([...reported.values()]));
    assert.equal(j.reported, true);
    assert.equal(j.percent, 100);
  }
  assert.equal(reported.get('fleet:web3')?.state, 'failed');
  assert.equal(reported.get('fleet:web3')?.error?.code, 'TARGET_TOO_SMALL');
  console.log(`# control plane (fed by the agents' reports only): ${[...reported.values()].map((j) => `${j.id} ${j.state}${j.error ? ` ${j.error.code}` : ''}`).join(', ')}`);

  // Fix the target, run again: only web3 runs.
  stopReceiver(3);
  await new Promise((r) => setTimeout(r, 200)); // the killed receiver lets go of the device
  makeLoopTarget(DISK);
  await startReceiver(3);
  const second = await fleet(file);
  assert.equal(second.code, 0, second.stderr.slice(-2000));
  assert.equal(second.doc.skipped, 3);
  assert.equal(second.doc.succeeded, 1);
  assert.equal(second.doc.failed, 0);
  assert.equal(second.doc.hosts.find((h) => h.name === 'web3')?.state, 'succeeded');
  assert.ok(second.doc.hosts.filter((h) => h.name !== 'web3').every((h) => h.skipped));
  assert.equal(fileSha(tgt(3)), fileSha(src(3)));
  assert.equal((await cp.jobs()).find((j) => j.id.endsWith(':web3'))?.state, 'succeeded', 'the re-run\'s report replaced the failure');
  console.log(`# fleet run 2 (target fixed): ${second.doc.succeeded} migrated, ${second.doc.skipped} skipped, ${second.doc.failed} failed; all four targets identical to their sources`);
  assert.deepEqual(readdirSync(join(dir, 'work')), []);

  const status = await run(net.exec(net.hub, [process.execPath, BIN, 'fleet', 'status', file, '--json']), { FERRY_STATE_DIR: join(dir, 'controller') });
  const rec = JSON.parse(status.stdout) as { hosts: Record<string, { state: string }> };
  assert.deepEqual(Object.values(rec.hosts).map((h) => h.state), ['succeeded', 'succeeded', 'succeeded', 'succeeded']);
});

test('fleet run: an unknown host key and an unreachable host are refused with their reasons', async () => {
  // web1's key removed from known_hosts; web2's sshd stopped.
  const known = readFileSync(join(dir, 'known_hosts'), 'utf8');
  writeFileSync(join(dir, 'known_hosts'), known.split('\n').filter((l) => !l.startsWith(`${srcHost(1).addr} `)).join('\n'));
  stopSshd(sshds[2]!);
  const file = inventory([1, 2]);
  const r = await fleet(file, '--force');
  writeFileSync(join(dir, 'known_hosts'), known);
  assert.equal(r.code, 1);
  const web1 = r.doc.hosts.find((h) => h.name === 'web1')!;
  const web2 = r.doc.hosts.find((h) => h.name === 'web2')!;
  assert.equal(web1.error?.code, 'SSH_HOST_KEY', JSON.stringify(web1));
  assert.match(web1.error!.remedy!, /ssh-keyscan/);
  assert.equal(web2.error?.code, 'SSH_UNREACHABLE', JSON.stringify(web2));
  assert.match(web2.error!.message, /ECONNREFUSED|timed out/);
  console.log(`# refused: ${web1.error!.code}: ${web1.error!.message}; ${web2.error!.code}: ${web2.error!.message}`);
});

test('the agent runs where there is no Node.js: a chroot holding only the agent and the C libraries', async () => {
  const root = join(dir, 'chroot');
  mkdirSync(join(root, 'data'), { recursive: true });
  for (const lib of execFileSync('ldd', [AGENT], { encoding: 'utf8' }).match(/\/lib[^\s]*/g) ?? []) {
    mkdirSync(join(root, lib, '..'), { recursive: true });
    execFileSync('cp', ['-L', lib, join(root, lib)]);
  }
  execFileSync('cp', [AGENT, join(root, 'ferry-agent')]);
  execFileSync('cp', [src(1), join(root, 'data', 'disk.img')]);
  assert.ok(!existsSync(join(root, 'usr')), 'no /usr in the chroot');
  // A fresh target: an empty disk and a receiver without records of the earlier migration.
  stopReceiver(1);
  rmSync(join(dir, 'recv1'), { recursive: true, force: true });
  writeFileSync(tgt(1), '');
  truncateSync(tgt(1), DISK);
  await startReceiver(1);
  const h = tgtHost(1);
  // The chroot runs in a source host's namespace, so it reaches the receiver over the LAN.
  const r = await run(net.exec(srcHost(1).ns, ['/usr/bin/env', '-i', 'PATH=/nonexistent', '/usr/sbin/chroot', root, '/ferry-agent', 'migrate', '--json', '--target', `${h.addr}:7878`, '--fingerprint', fingerprints[1]!, '--token', tokens[1]!, '--disk', '/data/disk.img=data']));
  assert.equal(r.code, 0, r.stdout + r.stderr.slice(-2000));
  const report = JSON.parse(r.stdout) as { disks: { verified: boolean }[] };
  assert.ok(report.disks.every((d) => d.verified));
  assert.equal(fileSha(tgt(1)), fileSha(src(1)));
  console.log(`# agent in a chroot without Node.js (no /usr, PATH=/nonexistent): migrated ${(report as unknown as { bytesSent: number }).bytesSent} bytes, verified, target identical`);
});
