// Online migration end to end: `ferry receive` in one network namespace, `ferry migrate` in
// another, joined by a veth pair shaped with tc to 100 Mbit/s. The source is a loop device with an
// MBR and an ext4 file system ~40 % full whose free space holds stale random bytes (as on a used
// server); targets are loop devices holding other stale bytes. Checked with the system's own tools:
// e2fsck -fn on the target, every file's SHA-256 (both file systems mounted read-only), and every
// allocated block (from dumpe2fs) equal. Then: a second run after 1 % of the files changed sends
// only what changed; a last round with the file system frozen while a writer keeps writing gives a
// clean target; a wrong token, a wrong fingerprint and a plain-TCP client are refused and logged;
// a kill -9 of the sender and a 20 s cut of the link both end in a verified target.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { netPair, type NetPair } from './netns.js';

const BIN = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const MiB = 1024 * 1024;
const DISK = 384 * MiB;
const PART = MiB; // partition start
const LINK_BYTES_PER_S = 100e6 / 8;
let dir = '';
let net: NetPair;
let receiver: ChildProcess | undefined;
let recvLog = '';
let fingerprint = '';
let token = '';
let srcFile = '';
let srcDev = '';
const targets: Record<string, { file: string; dev: string }> = {};
const loops: string[] = [];
const mounts: string[] = [];
const children = new Set<ChildProcess>();
let firstRunBytes = 0;

function loop(file: string, offset?: number): string {
  const dev = execFileSync('losetup', ['--find', '--show', ...(offset ? ['-o', String(offset)] : []), file], { encoding: 'utf8' }).trim();
  loops.push(dev);
  return dev;
}

function unloop(dev: string): void {
  spawnSync('losetup', ['-d', dev]);
  loops.splice(loops.indexOf(dev), 1);
}

function mount(dev: string, at: string, ro: boolean): void {
  mkdirSync(at, { recursive: true });
  execFileSync('mount', ['-t', 'ext4', ...(ro ? ['-o', 'ro,noload'] : []), dev, at]);
  mounts.push(at);
}

function umount(at: string): void {
  execFileSync('umount', [at]);
  mounts.splice(mounts.indexOf(at), 1);
}

interface Ran {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** `ferry migrate` in the source namespace (async: the test keeps reading the receiver's log). */
function migrate(args: string[], onStderr?: (line: string) => void): Promise<Ran> & { child: ChildProcess } {
  const cmd = net.exec(net.a, [process.execPath, BIN, 'migrate', '--json', ...args]);
  const child = spawn(cmd[0]!, cmd.slice(1), {
    env: { ...process.env, FERRY_STATE_DIR: join(dir, 'sender-state'), FERRY_DEBUG: '' },
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (onStderr) for (const l of d.toString().split('\n')) if (l) onStderr(l);
  });
  const done = new Promise<Ran>((resolve) =>
    child.on('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stdout, stderr });
    }),
  );
  return Object.assign(done, { child });
}

const target = (name: string) => ['--target', `${net.addrB}:7878`, '--fingerprint', fingerprint, '--token', token, '--disk', `${srcDev}=${name}`];

interface Report {
  disks: { verified: boolean; checked: number; mismatches: number; used: number }[];
  rounds: { bytesSent: number; chunksSent: number; chunks: number; dataBytes: number; frozen: boolean; seconds: number }[];
  bytesSent: number;
  seconds: number;
  effectiveRate: number;
}

function report(r: Ran): Report {
  assert.doesNotMatch(r.stdout + r.stderr, /\n\s+at .+:\d+:\d+/, 'a stack trace was printed');
  try {
    return JSON.parse(r.stdout) as Report;
  } catch {
    assert.fail(`no JSON report (exit ${r.code} ${r.signal ?? ''}): ${r.stdout.slice(0, 400)} ${r.stderr.slice(-800)}`);
  }
}

function errorOf(r: Ran): { code: string; message: string; remedy: string } {
  return (JSON.parse(r.stdout) as { error: { code: string; message: string; remedy: string } }).error;
}

/** Allocated block ranges of the ext4 file system at `offset` of `file`, from dumpe2fs (the oracle). */
function allocated(file: string, offset: number): { blockSize: number; used: [number, number][] } {
  const dev = loop(file, offset);
  let out: string;
  try {
    out = execFileSync('dumpe2fs', [dev], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 * MiB });
  } finally {
    unloop(dev);
  }
  const blockSize = Number(/Block size:\s+(\d+)/.exec(out)![1]);
  const count = Number(/Block count:\s+(\d+)/.exec(out)![1]);
  const free: [number, number][] = [];
  for (const m of out.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1]!.split(',').map((x) => x.trim()).filter(Boolean)) {
      const [a, b] = part.split('-').map(Number);
      free.push([a!, b ?? a!]);
    }
  }
  free.sort((x, y) => x[0] - y[0]);
  const used: [number, number][] = [];
  let pos = 0;
  for (const [a, b] of free) {
    if (a > pos) used.push([pos, a - pos]);
    pos = b + 1;
  }
  if (pos < count) used.push([pos, count - pos]);
  return { blockSize, used };
}

function sameAllocatedBlocks(srcPath: string, dstPath: string): number {
  const { blockSize, used } = allocated(srcPath, PART);
  const a = openSync(srcPath, 'r');
  const b = openSync(dstPath, 'r');
  let blocks = 0;
  try {
    for (const [first, n] of used) {
      const len = n * blockSize;
      const x = Buffer.alloc(len);
      const y = Buffer.alloc(len);
      readAll(a, x, PART + first * blockSize);
      readAll(b, y, PART + first * blockSize);
      assert.ok(x.equals(y), `allocated blocks ${first}..${first + n - 1} differ`);
      blocks += n;
    }
  } finally {
    closeSync(a);
    closeSync(b);
  }
  return blocks;
}

function readAll(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) break;
    done += n;
  }
}

/** SHA-256 of every regular file under `root`, by relative path. */
function fileHashes(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p, r);
      else if (e.isFile()) out.set(r, createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(root, '');
  return out;
}

function fileCount(root: string): number {
  let n = 0;
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.isFile()) n++;
    }
  };
  walk(root);
  return n;
}

/** e2fsck -fn of the ext4 file system in `file`: exit 0 means clean. */
function fsck(file: string): { code: number | null; out: string } {
  const dev = loop(file, PART);
  try {
    const r = spawnSync('e2fsck', ['-fn', dev], { encoding: 'utf8' });
    return { code: r.status, out: r.stdout + r.stderr };
  } finally {
    unloop(dev);
  }
}

/** Mounts source and target read-only and compares every file. */
function sameFiles(dstFile: string): number {
  const s = loop(srcFile, PART);
  const t = loop(dstFile, PART);
  try {
    mount(s, join(dir, 'ms'), true);
    mount(t, join(dir, 'mt'), true);
    const a = fileHashes(join(dir, 'ms'));
    const b = fileHashes(join(dir, 'mt'));
    assert.equal(b.size, a.size, 'same number of files');
    for (const [p, h] of a) assert.equal(b.get(p), h, `file ${p} differs`);
    return a.size;
  } finally {
    umount(join(dir, 'mt'));
    umount(join(dir, 'ms'));
    unloop(t);
    unloop(s);
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-online-'));
  // The source disk: stale random bytes everywhere, an MBR, ext4 (no discard: the stale bytes stay
  // in the free space) filled to ~40 % with random and compressible files.
  srcFile = join(dir, 'source.img');
  const fd = openSync(srcFile, 'w');
  for (let at = 0; at < DISK; at += 8 * MiB) writeSync(fd, randomBytes(8 * MiB), 0, 8 * MiB, at);
  closeSync(fd);
  execFileSync('sfdisk', ['-q', srcFile], { input: 'label: dos\nstart=2048, type=83\n' });
  const part = loop(srcFile, PART);
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-b', '4096', part]);
  const m = join(dir, 'fill');
  mount(part, m, false);
  writeFileSync(join(m, 'random.bin'), randomBytes(40 * MiB));
  mkdirSync(join(m, 'text'));
  const lorem = 'Ferry moves servers and disks. Every byte counts, every block is checked. ';
  for (let i = 0; i < 300; i++) writeFileSync(join(m, 'text', `file-${i}.txt`), `${i} `.padEnd(64, '.') + lorem.repeat(2000 + ((i * 37) % 1500)));
  const usedPct = () => {
    const s = execFileSync('df', ['--output=pcent', m], { encoding: 'utf8' });
    return Number(/(\d+)%/.exec(s)![1]);
  };
  // Top up with binaries until ~40 % is used.
  for (const d of readdirSync('/usr/lib/x86_64-linux-gnu')) {
    if (usedPct() >= 40) break;
    const p = join('/usr/lib/x86_64-linux-gnu', d);
    try {
      const st = statSync(p);
      if (st.isFile() && st.size < 4 * MiB) execFileSync('cp', [p, join(m, 'text')]);
    } catch {
      // unreadable or vanished: skip
    }
  }
  console.log(`# source file system ${usedPct()}% used`);
  umount(m);
  unloop(part);
  srcDev = loop(srcFile);
  for (const name of ['root', 'root2', 'root3', 'root4']) {
    const file = join(dir, `${name}.img`);
    writeFileSync(file, Buffer.alloc(0));
    execFileSync('truncate', ['-s', String(DISK), file]);
    if (name === 'root') {
      // Other stale bytes on the main target.
      const t = openSync(file, 'r+');
      const junk = Buffer.alloc(8 * MiB, 0xee);
      for (let at = 0; at < DISK; at += 8 * MiB) writeSync(t, junk, 0, junk.length, at);
      closeSync(t);
    }
    targets[name] = { file, dev: loop(file) };
  }
  net = netPair('100mbit');
  const args = ['receive', '--json', '--listen', `${net.addrB}:7878`, '--state-dir', join(dir, 'receiver-state'), ...Object.entries(targets).flatMap(([n, t]) => ['--disk', `${n}=${t.dev}`])];
  const cmd = net.exec(net.b, [process.execPath, BIN, ...args]);
  receiver = spawn(cmd[0]!, cmd.slice(1), { env: { ...process.env, FERRY_DEBUG: '' } });
  receiver.stdout!.on('data', (d: Buffer) => (recvLog += d.toString()));
  receiver.stderr!.on('data', (d: Buffer) => (recvLog += d.toString()));
  for (let i = 0; i < 200 && !recvLog.includes('\n'); i++) await new Promise((r) => setTimeout(r, 50));
  const first = JSON.parse(recvLog.split('\n')[0]!) as { address: string; fingerprint: string; token: string };
  fingerprint = first.fingerprint;
  token = first.token;
  assert.match(fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
});

after(() => {
  for (const c of children) c.kill('SIGKILL');
  receiver?.kill('SIGKILL');
  for (const m of [...mounts].reverse()) spawnSync('umount', ['-l', m]);
  for (const l of [...loops].reverse()) spawnSync('losetup', ['-d', l]);
  net?.remove();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('migrate over a 100 Mbit/s link: e2fsck clean, every file and every allocated block identical', async () => {
  const started = Date.now();
  const r = await migrate(target('root'));
  const wall = (Date.now() - started) / 1000;
  assert.equal(r.code, 0, r.stdout + r.stderr.slice(-2000));
  const rep = report(r);
  assert.equal(rep.disks[0]!.verified, true);
  firstRunBytes = rep.bytesSent;
  const f = fsck(targets.root!.file);
  assert.equal(f.code, 0, f.out);
  const files = sameFiles(targets.root!.file);
  const blocks = sameAllocatedBlocks(srcFile, targets.root!.file);
  assert.ok(readFileSync(targets.root!.file).subarray(0, 512).equals(readFileSync(srcFile).subarray(0, 512)), 'the MBR was copied');
  const lineTime = DISK / LINK_BYTES_PER_S;
  console.log(
    `# ${(DISK / MiB).toFixed(0)} MiB disk, ${(rep.disks[0]!.used / MiB).toFixed(0)} MiB used: ${(rep.bytesSent / MiB).toFixed(1)} MiB sent in ${wall.toFixed(1)} s ` +
      `(whole disk at line rate: ${lineTime.toFixed(1)} s; effective ${(lineTime / wall).toFixed(2)}× line rate); ${files} files and ${blocks} allocated blocks identical`,
  );
});

test('incremental: 1 % of the files change while the sender runs; the next round sends only what changed', async () => {
  const part = loop(srcFile, PART);
  const m = join(dir, 'edit');
  mount(part, m, false);
  try {
    const files = readdirSync(join(m, 'text')).filter((n) => n.endsWith('.txt'));
    const all = fileCount(m);
    const change = Math.max(1, Math.round(all / 100)); // 1 % of the files
    // The hook runs on the source between the rounds, while the file system stays mounted.
    const edits = files.slice(0, change).map((n) => `printf 'changed %s' "$(date +%s%N)" | dd of=${join(m, 'text', n)} bs=1 seek=100 conv=notrunc status=none`);
    const r = await migrate([...target('root4'), '--rounds', '2', '--before-final-round', `${edits.join(' && ')} && sync`]);
    assert.equal(r.code, 0, r.stdout + r.stderr.slice(-2000));
    const rep = report(r);
    const [first, next] = rep.rounds;
    const ratio = next!.bytesSent / first!.bytesSent;
    console.log(
      `# changed ${change} of ${all} files between the rounds: round 1 sent ${(first!.bytesSent / MiB).toFixed(1)} MiB, round 2 ${(next!.bytesSent / 1024).toFixed(0)} KiB in ${next!.chunksSent} of ${next!.chunks} chunks = ${(100 * ratio).toFixed(2)}% of round 1`,
    );
    assert.ok(next!.chunksSent > 0, 'the changes were sent');
    assert.ok(ratio <= 0.03, `round 2 sent ${(100 * ratio).toFixed(2)}% of round 1`);
  } finally {
    umount(m);
    unloop(part);
  }
  sameFiles(targets.root4!.file);
});

test('a last round with the file system frozen, while a writer keeps writing, gives a clean target', async () => {
  const part = loop(srcFile, PART);
  const m = join(dir, 'live');
  mount(part, m, false);
  mkdirSync(join(m, 'live'), { recursive: true });
  const writer = spawn('bash', ['-c', `i=0; while true; do head -c 262144 /dev/urandom > ${m}/live/f$i; i=$(( (i+1) % 40 )); done`], { stdio: 'ignore' });
  children.add(writer);
  try {
    await new Promise((r) => setTimeout(r, 500));
    const r = await migrate([...target('root'), '--rounds', '2', '--freeze', m]);
    assert.equal(r.code, 0, r.stdout + r.stderr.slice(-2000));
    const rep = report(r);
    assert.equal(rep.rounds.length, 2);
    assert.equal(rep.rounds[1]!.frozen, true);
    console.log(`# live source: round 1 sent ${(rep.rounds[0]!.bytesSent / MiB).toFixed(2)} MiB, frozen round 2 sent ${(rep.rounds[1]!.bytesSent / MiB).toFixed(2)} MiB in ${rep.rounds[1]!.seconds.toFixed(1)} s`);
  } finally {
    writer.kill('SIGKILL');
    children.delete(writer);
    await new Promise((r) => setTimeout(r, 200));
    umount(m);
    unloop(part);
  }
  const f = fsck(targets.root!.file);
  assert.equal(f.code, 0, f.out);
});

test('a wrong token, a wrong fingerprint and a plain-TCP client are refused and logged; no secret is printed', async () => {
  const before = recvLog.length;
  const bad = await migrate(['--target', `${net.addrB}:7878`, '--fingerprint', fingerprint, '--token', 'not-the-token', '--disk', `${srcDev}=root2`]);
  assert.equal(bad.code, 10);
  assert.equal(errorOf(bad).code, 'TOKEN_REJECTED');
  const wrongFp = fingerprint.replace(/^../, fingerprint.startsWith('00') ? '11' : '00');
  const mitm = await migrate(['--target', `${net.addrB}:7878`, '--fingerprint', wrongFp, '--token', token, '--disk', `${srcDev}=root2`]);
  assert.equal(mitm.code, 10);
  assert.equal(errorOf(mitm).code, 'FINGERPRINT_MISMATCH');
  assert.ok(!mitm.stdout.includes(token) && !mitm.stderr.includes(token), 'the token is not printed');
  // A plain TCP client, from the source namespace.
  const plain = spawnSync('ip', ['netns', 'exec', net.a, 'bash', '-c', `exec 3<>/dev/tcp/${net.addrB}/7878; printf 'HELLO PLAIN\\r\\n\\r\\n' >&3; timeout 3 cat <&3 >/dev/null; true`]);
  assert.equal(plain.status, 0);
  await new Promise((r) => setTimeout(r, 500));
  const log = recvLog.slice(before);
  assert.match(log, /"event":"rejected".*wrong token/);
  assert.match(log, /"event":"rejected".*not a TLS client/);
  assert.ok(!recvLog.split('\n').slice(1).join('\n').includes(token), 'the receiver logs no token');
});

test('kill -9 of the sender, and a 20 s cut of the link: both resume and end verified', async () => {
  // kill -9 once some chunks are acknowledged.
  let killedAt = 0;
  const run1 = migrate(target('root2'), (l) => {
    const e = JSON.parse(l) as { event: string; chunksDone?: number };
    if (e.event === 'progress' && (e.chunksDone ?? 0) >= 8 && !killedAt) {
      killedAt = e.chunksDone!;
      run1.child.kill('SIGKILL');
    }
  });
  const r1 = await run1;
  assert.equal(r1.signal, 'SIGKILL', `the sender was to be killed: ${r1.stderr.slice(-500)}`);
  const r2 = await migrate(target('root2'));
  assert.equal(r2.code, 0, r2.stdout + r2.stderr.slice(-2000));
  const rep2 = report(r2);
  const total = rep2.rounds[0]!.chunks;
  const resent = rep2.rounds[0]!.chunksSent + killedAt - total;
  console.log(`# kill -9 after ${killedAt} acknowledged chunks of ${total}: the rerun sent ${rep2.rounds[0]!.chunksSent} (re-sent ${Math.max(0, resent)} chunk(s) in flight at the kill)`);
  assert.ok(rep2.rounds[0]!.chunksSent <= total - killedAt + 4, 'at most the 4 streams\' chunks in flight are sent again');
  assert.equal(rep2.disks[0]!.verified, true);

  // Cut the link for 20 s mid-copy.
  let cut = false;
  const run3 = migrate(target('root3'), (l) => {
    const e = JSON.parse(l) as { event: string; chunksDone?: number };
    if (e.event === 'progress' && (e.chunksDone ?? 0) >= 8 && !cut) {
      cut = true;
      net.linkDown();
      // As when a NAT or firewall between the machines forgets the connections: reset them.
      spawnSync('ip', ['netns', 'exec', net.a, 'ss', '-K', 'dst', net.addrB]);
      setTimeout(() => net.linkUp(), 20_000);
    }
  });
  const r3 = await run3;
  assert.ok(cut, 'the link was cut');
  assert.equal(r3.code, 0, r3.stdout + r3.stderr.slice(-2000));
  const rep3 = report(r3);
  assert.equal(rep3.disks[0]!.verified, true);
  assert.ok(rep3.seconds >= 20, 'the run outlasted the cut');
  const reconnects = r3.stderr.split('\n').filter((l) => l.includes('"reconnect"')).length;
  console.log(`# link cut for 20 s: ${reconnects} reconnect attempt(s), finished in ${rep3.seconds.toFixed(1)} s, ${(rep3.bytesSent / MiB).toFixed(1)} MiB sent (first run of the same disk: ${(firstRunBytes / MiB).toFixed(1)} MiB)`);
  assert.equal(fsck(targets.root3!.file).code, 0);
});
