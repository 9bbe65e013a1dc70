// Small process and hashing helpers shared by the test corpus builders and the corpus tests:
// run an external tool (qemu-img, sfdisk, mke2fs…) with a clear error naming the command, check
// whether a tool exists, and hash files or zero padding with bounded memory.
import { execFile } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Runs `cmd args`; rejects (with stderr) unless the exit code is in `okCodes` (default [0]). */
export function run(cmd: string, args: string[], opts: { okCodes?: number[]; input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  const okCodes = opts.okCodes ?? [0];
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { maxBuffer: 64 * 1024 * 1024, encoding: 'utf8', env: opts.env ?? process.env },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        if (!okCodes.includes(code)) {
          reject(new Error(`command failed (exit ${code}): ${cmd} ${args.join(' ')}\n${stderr || (err ? err.message : '')}`));
          return;
        }
        resolve({ stdout, stderr, code });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** True when `name` is an executable on PATH (or in the sbin directories, where mkfs tools live). */
export async function haveTool(name: string): Promise<boolean> {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const d of dirs) {
    if (!d) continue;
    try {
      await access(join(d, name), constants.X_OK);
      return true;
    } catch {
      // not here
    }
  }
  return false;
}

/** Resolves a tool that may live in an sbin directory not on PATH. */
export async function toolPath(name: string): Promise<string> {
  for (const d of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin']) {
    if (!d) continue;
    try {
      await access(join(d, name), constants.X_OK);
      return join(d, name);
    } catch {
      // not here
    }
  }
  throw new Error(`${name} is not installed (Debian: apt-get install -y ${name === 'sfdisk' ? 'fdisk' : name})`);
}

const ZERO_CHUNK = Buffer.alloc(4 * 1024 * 1024);

/** Feeds `n` zero bytes into `hash`. */
export function hashZeros(hash: Hash, n: number): void {
  while (n > 0) {
    const k = Math.min(n, ZERO_CHUNK.length);
    hash.update(k === ZERO_CHUNK.length ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, k));
    n -= k;
  }
}

/** Feeds the whole file into `hash` (streaming). Returns the number of bytes hashed. */
export async function hashFileInto(hash: Hash, path: string): Promise<number> {
  let n = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) {
    hash.update(chunk as Buffer);
    n += (chunk as Buffer).length;
  }
  return n;
}

/** SHA-256 (hex) of a file, optionally followed by zeros up to `padTo` bytes. */
export async function sha256File(path: string, padTo?: number): Promise<string> {
  const h = createHash('sha256');
  const n = await hashFileInto(h, path);
  if (padTo !== undefined && padTo > n) hashZeros(h, padTo - n);
  return h.digest('hex');
}
