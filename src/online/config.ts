// The migration config file (`ferry migrate --config ferry.yaml`, written by `ferry init`): YAML,
// checked against a strict schema (zod); every problem is reported with its line and column, all at
// once. Secrets need not be in the file: the token can come from an environment variable
// (`token_env`, default FERRY_TOKEN).
//
//   target: {address: 10.0.0.2:7878, fingerprint: "0B:20:…", token_env: FERRY_TOKEN}
//   disks: [{source: /dev/vda, name: root}]
//   bandwidth: 80Mbit
//   rounds: 2
//   final_round: {freeze: [/srv/data], before: "systemctl stop app"}
//   report: {url: "http://10.0.0.9:8787", token_env: FERRY_REPORT_TOKEN}
import { z } from 'zod';
import { isReportUrl, REPORT_ID } from '../server/reporter.js';
import { loadYaml } from '../yaml-config.js';

const Schema = z
  .object({
    target: z
      .object({
        address: z.string().regex(/^(\[[^\]]+\]|[^:\s]+):\d{1,5}$/, 'HOST:PORT, e.g. 10.0.0.2:7878'),
        fingerprint: z.string().regex(/^(sha256:)?([0-9A-Fa-f]{2}:?){32}$/, 'the SHA-256 fingerprint the receiver printed (64 hex digits, colons allowed)'),
        token: z.string().min(8).optional(),
        token_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
      })
      .strict(),
    disks: z
      .array(z.object({ source: z.string().startsWith('/', 'an absolute path, e.g. /dev/vda'), name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'the receiver\'s disk name') }).strict())
      .min(1, 'at least one disk'),
    bandwidth: z.union([z.string(), z.number().positive()]).optional(),
    streams: z.number().int().min(1).max(32).optional(),
    rounds: z.number().int().min(1).max(100).optional(),
    compression: z.union([z.literal(false), z.object({ level: z.number().int().min(1).max(19) }).strict()]).optional(),
    final_round: z
      .object({
        freeze: z.array(z.string().startsWith('/', 'a mount point')).optional(),
        before: z.string().optional(),
      })
      .strict()
      .nullable()
      .optional(),
    /** A control plane to report progress to (`ferry server`); its token from token_env (default FERRY_REPORT_TOKEN) or token. */
    report: z
      .object({
        url: z.string().refine(isReportUrl, 'the server\'s URL, e.g. http://10.0.0.9:8787 (http or https, no user or password in it)'),
        token: z.string().min(8).optional(),
        token_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
        id: z.string().regex(REPORT_ID, 'letters, digits and . _ : @ - (at most 128)').optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export type MigrateConfig = z.infer<typeof Schema>;

/** Reads and checks a config file; errors name the line and column of each problem. */
export function loadMigrateConfig(file: string): MigrateConfig & { token?: string; reportToken?: string } {
  const cfg = loadYaml(file, Schema, { kind: 'config file', missing: 'Give the path of the file `ferry init` wrote.', remedy: 'Fix the lines named (`ferry init` writes a commented example).' });
  const env = cfg.target.token_env ?? 'FERRY_TOKEN';
  const token = cfg.target.token ?? process.env[env];
  const reportToken = cfg.report ? (cfg.report.token ?? process.env[cfg.report.token_env ?? 'FERRY_REPORT_TOKEN']) : undefined;
  return { ...cfg, ...(token ? { token } : {}), ...(reportToken ? { reportToken } : {}) };
}
