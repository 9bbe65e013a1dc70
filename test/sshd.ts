// Test helper: a real OpenSSH server (Debian's /usr/sbin/sshd) inside a network namespace of the
// test's own, with its own ed25519 host key, accepting one client key as root; and the
// known_hosts line for it. The caller kills it (pid file) and removes the namespace.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Sshd {
  child: ChildProcess;
  pidFile: string;
  /** `ADDR KEYTYPE BASE64` for a known_hosts file. */
  knownHostsLine: string;
}

/** Starts sshd in namespace `ns` on `addr`:22; its files are `dir/NAME.*`; `clientPub` may log in. */
export function startSshd(opts: { ns: string; addr: string; dir: string; name: string; clientPub: string }): Sshd {
  mkdirSync('/run/sshd', { recursive: true });
  const key = join(opts.dir, `${opts.name}.hostkey`);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
  const cfg = join(opts.dir, `${opts.name}.sshd.conf`);
  const pidFile = join(opts.dir, `${opts.name}.sshd.pid`);
  writeFileSync(
    cfg,
    [
      `ListenAddress ${opts.addr}`,
      'Port 22',
      `HostKey ${key}`,
      `PidFile ${pidFile}`,
      `AuthorizedKeysFile ${opts.clientPub}`,
      'StrictModes no',
      'UsePAM no',
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'Subsystem sftp internal-sftp',
      'MaxStartups 64',
      'LogLevel ERROR',
    ].join('\n') + '\n',
  );
  const child = spawn('ip', ['netns', 'exec', opts.ns, '/usr/sbin/sshd', '-D', '-e', '-f', cfg], { stdio: 'ignore' });
  const pub = readFileSync(`${key}.pub`, 'utf8').trim().split(' ');
  return { child, pidFile, knownHostsLine: `${opts.addr} ${pub[0]} ${pub[1]}` };
}

/** Kills an sshd started by startSshd (its -D process stays a child of `ip netns exec`). */
export function stopSshd(s: Sshd): void {
  s.child.kill('SIGKILL');
  try {
    process.kill(Number(readFileSync(s.pidFile, 'utf8')), 'SIGKILL');
  } catch {
    // not running
  }
}
