// A throwaway PostgreSQL server for tests (Debian's postgresql package): initdb into a fresh
// directory owned by the `postgres` system user, the server on 127.0.0.1 and a free port with
// fsync off, stopped (fast shutdown, then SIGKILL) and removed by stop(). Authentication: trust,
// except for the role PASSWORD_ROLE (created by the test), which must give its password.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A role the server checks passwords for (scram-sha-256); every other role is trusted. */
export const PASSWORD_ROLE = 'ferry_pw';

export interface Postgres {
  url: string;
  stop(): Promise<void>;
}

function binDir(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'initdb'))) : [];
  if (versions.length === 0) throw new Error('PostgreSQL is not installed (Debian package postgresql; scripts/setup.sh installs it)');
  return join(root, versions.sort((a, b) => Number(b) - Number(a))[0]!, 'bin');
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startPostgres(): Promise<Postgres> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pg-'));
  chmodSync(dir, 0o755);
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  chownSync(dir, uid, gid);
  const data = join(dir, 'data');
  let server: ChildProcess | undefined;
  const stop = async (): Promise<void> => {
    if (server && server.exitCode === null && server.signalCode === null) {
      const exited = new Promise<void>((r) => server!.once('exit', () => r()));
      server.kill('SIGINT'); // fast shutdown
      const t = setTimeout(() => server!.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    // Run as the postgres user directly (no runuser in between: the server is our own child).
    const as = { uid, gid, cwd: dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C.UTF-8' } };
    execFileSync(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8'], { ...as, stdio: ['ignore', 'ignore', 'pipe'] });
    writeFileSync(
      join(data, 'pg_hba.conf'),
      `local all all trust\nhost all ${PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n`,
    );
    chownSync(join(data, 'pg_hba.conf'), uid, gid);
    const port = await freePort();
    server = spawn(join(bin, 'postgres'), ['-D', data, '-k', dir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=50'], {
      ...as,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let log = '';
    server.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    for (let i = 0; ; i++) {
      try {
        execFileSync(join(bin, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port), '-q']);
        break;
      } catch {
        if (i > 100 || server.exitCode !== null) throw new Error(`PostgreSQL did not start:\n${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
