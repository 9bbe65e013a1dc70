// Test helper: a real S3 server (OpenStack Swift with s3api, started by scripts/s3-server.sh) in
// a temporary directory on free ports, a bucket in it, and the environment that points Ferry's
// S3 client at it. stop() ends every daemon and removes the directory.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';

const SCRIPT = fileURLToPath(new URL('../../scripts/s3-server.sh', import.meta.url));

export interface S3Server {
  endpoint: string;
  env: Record<string, string>;
  client: S3Client;
  createBucket(name: string): Promise<void>;
  stop(): void;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A base port with it and the next four free. */
export async function freePorts(count = 5): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 30000);
    let ok = true;
    for (let i = 0; i < count && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
  throw new Error('no free ports');
}

export async function startS3Server(): Promise<S3Server> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-s3-'));
  const port = await freePorts();
  try {
    execFileSync('bash', [SCRIPT, 'start', dir, String(port)], { stdio: ['ignore', 'pipe', 'inherit'], timeout: 120_000 });
  } catch (err) {
    try {
      execFileSync('bash', [SCRIPT, 'stop', dir]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    throw err;
  }
  const endpoint = `http://127.0.0.1:${port}`;
  const env = { AWS_ACCESS_KEY_ID: 'test:tester', AWS_SECRET_ACCESS_KEY: 'testing', AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: endpoint };
  const client = new S3Client({
    region: 'us-east-1',
    endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 8,
  });
  let stopped = false;
  // The daemons run in sessions of their own: stop them even when this process is ended early.
  const onExit = () => {
    if (!stopped) {
      stopped = true;
      try {
        execFileSync('bash', [SCRIPT, 'stop', dir], { stdio: 'ignore', timeout: 30_000 });
      } catch {
        // best effort
      }
      rmSync(dir, { recursive: true, force: true });
    }
  };
  process.once('exit', onExit);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      onExit();
      process.exit(130);
    });
  }
  return {
    endpoint,
    env,
    client,
    createBucket: async (name) => {
      // A Swift just started (or on a loaded machine) may answer 503 SlowDown for a while.
      for (let attempt = 1; ; attempt++) {
        try {
          await client.send(new CreateBucketCommand({ Bucket: name }));
          return;
        } catch (err) {
          const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
          if (attempt >= 12 || (status !== 503 && status !== 500)) throw err;
          await new Promise((r) => setTimeout(r, 500 * attempt));
        }
      }
    },
    stop: () => {
      if (stopped) return;
      stopped = true;
      client.destroy();
      try {
        execFileSync('bash', [SCRIPT, 'stop', dir], { stdio: 'inherit', timeout: 60_000 });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
