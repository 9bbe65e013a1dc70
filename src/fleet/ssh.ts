// SSH to a source server (the ssh2 library): host keys checked against an OpenSSH known_hosts
// file (plain, hashed `|1|…` and `[host]:port` entries; `@revoked` honoured), a key file or the
// SSH agent, commands with their output, files copied over SFTP. Every failure becomes a FerryError
// that names the host and the cause (unreachable, host key unknown or changed, authentication).
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Client, type ClientChannel, type ConnectConfig, type SFTPWrapper } from 'ssh2';
import { FerryError } from '../errors.js';
import type { SshSettings } from './inventory.js';

/** The keys known_hosts lists for host:port (base64 of the key blob), and the revoked ones. */
export function knownKeys(text: string, host: string, port: number): { keys: Set<string>; revoked: Set<string> } {
  const names = port === 22 ? [host, `[${host}]:22`] : [`[${host}]:${port}`];
  const keys = new Set<string>();
  const revoked = new Set<string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const fields = line.split(/\s+/);
    let marker: string | undefined;
    if (fields[0]!.startsWith('@')) marker = fields.shift();
    if (marker === '@cert-authority' || fields.length < 3) continue;
    const [patterns, , key] = fields as [string, string, string];
    const matches = patterns.split(',').some((p) => {
      if (p.startsWith('|1|')) {
        const [, , salt, hash] = p.split('|');
        if (!salt || !hash) return false;
        return names.some((n) => createHmac('sha1', Buffer.from(salt, 'base64')).update(n).digest('base64') === hash);
      }
      return !p.startsWith('!') && names.includes(p);
    });
    if (!matches) continue;
    (marker === '@revoked' ? revoked : keys).add(key);
  }
  return { keys, revoked };
}

export interface ExecResult {
  code: number | null;
  signal?: string;
  stdout: string;
  stderr: string;
}

export class SshSession {
  private constructor(
    private readonly client: Client,
    readonly label: string,
  ) {}

  static async connect(s: SshSettings, signal?: AbortSignal): Promise<SshSession> {
    const label = `${s.user}@${s.host}${s.port === 22 ? '' : `:${s.port}`}`;
    let expected: { keys: Set<string>; revoked: Set<string> } | undefined;
    if (s.checkHostKey) {
      let text = '';
      try {
        text = readFileSync(s.knownHosts, 'utf8');
      } catch {
        // No file: no key is known, reported as an unknown host below.
      }
      expected = knownKeys(text, s.host, s.port);
    }
    let hostKeyProblem: FerryError | undefined;
    const config: ConnectConfig = {
      host: s.host,
      port: s.port,
      username: s.user,
      readyTimeout: s.connectTimeoutSeconds * 1000,
      keepaliveInterval: 10_000,
      keepaliveCountMax: 6,
      hostVerifier: (key: Buffer) => {
        if (!expected) return true;
        const b64 = key.toString('base64');
        if (expected.revoked.has(b64)) {
          hostKeyProblem = new FerryError('SSH_HOST_KEY', `${label}: the server's host key is marked @revoked in ${s.knownHosts}`, { remedy: 'Do not connect: find out why the key was revoked.' });
          return false;
        }
        if (expected.keys.has(b64)) return true;
        hostKeyProblem =
          expected.keys.size > 0
            ? new FerryError('SSH_HOST_KEY', `${label}: the server's host key is not the one ${s.knownHosts} lists for it — possibly a different machine, or someone in between`, {
                remedy: 'Check the server\'s key on its console (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub); if it was reinstalled, update known_hosts (ssh-keygen -R HOST, then ssh-keyscan).',
              })
            : new FerryError('SSH_HOST_KEY', `${label}: host unknown (no key for it in ${s.knownHosts})`, {
                remedy: `Add its key after checking it: ssh-keyscan -p ${s.port} ${s.host} >> ${s.knownHosts} (or set ssh.known_hosts in the inventory).`,
              });
        return false;
      },
    };
    if (s.key) {
      try {
        config.privateKey = readFileSync(s.key);
      } catch (err) {
        throw new FerryError('FILE_NOT_FOUND', `${label}: cannot read the SSH key ${s.key} (${(err as NodeJS.ErrnoException).code})`, { remedy: 'Fix ssh.key in the inventory.' });
      }
    } else if (process.env.SSH_AUTH_SOCK) {
      config.agent = process.env.SSH_AUTH_SOCK;
    } else {
      throw new FerryError('SSH_AUTH_FAILED', `${label}: no SSH key given and no SSH agent running`, { remedy: 'Set ssh.key in the inventory, or start ssh-agent and add the key.' });
    }
    const client = new Client();
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        client.end();
        reject(new FerryError('INTERRUPTED', `${label}: interrupted while connecting`, { remedy: 'Run the fleet again: finished hosts are skipped.' }));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      client.once('ready', () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      client.once('error', (err: Error & { level?: string; code?: string }) => {
        signal?.removeEventListener('abort', onAbort);
        client.end();
        if (hostKeyProblem) return reject(hostKeyProblem);
        if (err.level === 'client-authentication') {
          return reject(new FerryError('SSH_AUTH_FAILED', `${label}: the server refused the key${s.key ? ` ${s.key}` : 's of the SSH agent'}`, { remedy: `Add the public key to ~${s.user}/.ssh/authorized_keys on the server, or fix ssh.user / ssh.key.` }));
        }
        const cause = err.code ?? (err.level === 'client-timeout' ? 'timed out' : err.message);
        reject(new FerryError('SSH_UNREACHABLE', `${label}: cannot connect (${cause})`, { remedy: 'Check that the host is up, the address and port are right, and sshd is running and reachable from here.' }));
      });
      client.connect(config);
    });
    return new SshSession(client, label);
  }

  /** Runs a command; `onStderrLine` sees stderr line by line as it arrives. */
  exec(command: string, opts: { onStderrLine?: (line: string) => void; signal?: AbortSignal } = {}): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      this.client.exec(command, (err: Error | undefined, ch: ClientChannel) => {
        if (err) return reject(new FerryError('SSH_UNREACHABLE', `${this.label}: cannot run a command (${err.message})`, { remedy: 'Check the server (MaxSessions, the user\'s shell).' }));
        let stdout = '';
        let stderr = '';
        let partial = '';
        const onAbort = () => ch.close();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        ch.on('data', (d: Buffer) => {
          stdout += d.toString('utf8');
        });
        ch.stderr.on('data', (d: Buffer) => {
          const text = d.toString('utf8');
          stderr += text;
          if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
          if (!opts.onStderrLine) return;
          partial += text;
          const lines = partial.split('\n');
          partial = lines.pop()!;
          for (const l of lines) opts.onStderrLine(l);
        });
        ch.on('close', (code: number | null, signalName?: string) => {
          opts.signal?.removeEventListener('abort', onAbort);
          if (partial && opts.onStderrLine) opts.onStderrLine(partial);
          resolve({ code: code ?? null, ...(signalName ? { signal: signalName } : {}), stdout, stderr });
        });
      });
    });
  }

  private sftpSession(): Promise<SFTPWrapper> {
    return new Promise((resolve, reject) =>
      this.client.sftp((err, sftp) => (err ? reject(new FerryError('SSH_UNREACHABLE', `${this.label}: SFTP is not available (${err.message})`, { remedy: 'Enable the sftp subsystem in the server\'s sshd_config.' })) : resolve(sftp))),
    );
  }

  /** Copies a local file to `remote` with the given mode. */
  async upload(local: string, remote: string, mode: number): Promise<void> {
    const sftp = await this.sftpSession();
    try {
      await new Promise<void>((resolve, reject) =>
        sftp.fastPut(local, remote, { mode, concurrency: 16, chunkSize: 64 * 1024 }, (err) => (err ? reject(new FerryError('IO_ERROR', `${this.label}: copying ${local} to ${remote} failed (${err.message})`, { remedy: 'Check free space and permissions in ssh.workdir on the source.' })) : resolve())),
      );
    } finally {
      sftp.end();
    }
  }

  /** Writes `text` to `remote` (created with `mode`). */
  async writeFile(remote: string, text: string, mode: number): Promise<void> {
    const sftp = await this.sftpSession();
    try {
      await new Promise<void>((resolve, reject) =>
        sftp.writeFile(remote, text, { mode }, (err) => (err ? reject(new FerryError('IO_ERROR', `${this.label}: writing ${remote} failed (${err.message})`, { remedy: 'Check ssh.workdir on the source.' })) : resolve())),
      );
    } finally {
      sftp.end();
    }
  }

  close(): void {
    this.client.end();
  }
}

/** Quotes a string for a POSIX shell. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
