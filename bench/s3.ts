// The S3 side of the storage benchmarks (bench/upload.ts, bench/import.ts): starts the project's
// Swift server (scripts/s3-server.sh) on 127.0.0.1 with a bucket, sets the environment Ferry, the
// aws CLI and rclone read, and offers the few aws CLI calls the benchmarks need.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { exec, mustExec, OUT, ROOT, sleep, type Proc } from './lib.js';

export const AWS = '/usr/bin/aws'; // Debian's awscli (a pyenv shim may come first on PATH)
export const BUCKET = 'ferry-bench';
const PORT = 18380;
export const ENDPOINT = `http://127.0.0.1:${PORT}`;
const SERVER_DIR = join(OUT, 's3-server');

export function need(cmd: string, pkg: string): void {
  if (!existsSync(cmd)) throw new Error(`${cmd} is missing: apt-get install -y ${pkg}`);
}

/** Starts the server and creates the bucket; returns the function that stops it (idempotent). */
export async function startServer(stateDir: string): Promise<() => Promise<void>> {
  await rm(SERVER_DIR, { recursive: true, force: true });
  const script = join(ROOT, 'scripts', 's3-server.sh');
  let stopped = false;
  const stopSync = () => {
    if (stopped) return;
    stopped = true;
    try {
      execFileSync('bash', [script, 'stop', SERVER_DIR], { stdio: 'inherit' });
    } catch {
      // best effort
    }
  };
  process.once('SIGINT', () => {
    stopSync();
    process.exit(130);
  });
  execFileSync('bash', [script, 'start', SERVER_DIR, String(PORT)], { stdio: ['ignore', 'ignore', 'inherit'] });
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: 'test:tester',
    AWS_SECRET_ACCESS_KEY: 'testing',
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL: ENDPOINT,
    FERRY_STATE_DIR: stateDir,
    RCLONE_CONFIG_BENCH_TYPE: 's3',
    RCLONE_CONFIG_BENCH_PROVIDER: 'Other',
    RCLONE_CONFIG_BENCH_ENDPOINT: ENDPOINT,
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID: 'test:tester',
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY: 'testing',
    RCLONE_CONFIG_BENCH_REGION: 'us-east-1',
  });
  delete process.env.AWS_CA_BUNDLE;
  await awsCli('s3', 'mb', `s3://${BUCKET}`);
  return async () => {
    stopSync();
    await rm(SERVER_DIR, { recursive: true, force: true });
  };
}

export function awsCli(...args: string[]): Promise<Proc> {
  return mustExec(AWS, ['--endpoint-url', ENDPOINT, ...args]);
}

/** Deletes objects (and their Ferry manifests) of the bucket. */
export async function deleteKeys(keys: string[]): Promise<void> {
  for (const k of keys) {
    await exec(AWS, ['--endpoint-url', ENDPOINT, 's3', 'rm', '--only-show-errors', `s3://${BUCKET}/${k}`]);
    await exec(AWS, ['--endpoint-url', ENDPOINT, 's3', 'rm', '--only-show-errors', `s3://${BUCKET}/${k}.ferry.json`]);
  }
  await sleep(1000);
}

export async function objectSize(key: string): Promise<number> {
  const p = await awsCli('s3api', 'head-object', '--bucket', BUCKET, '--key', key);
  return (JSON.parse(p.stdout) as { ContentLength: number }).ContentLength;
}
