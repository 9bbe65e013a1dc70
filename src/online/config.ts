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
import { readFileSync } from 'node:fs';
import { LineCounter, isMap, isNode, isScalar, parseDocument } from 'yaml';
import { z } from 'zod';
import { FerryError } from '../errors.js';

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
  })
  .strict();

export type MigrateConfig = z.infer<typeof Schema>;

function invalid(file: string, problems: string[]): FerryError {
  return new FerryError('CONFIG_INVALID', `${file}: ${problems.length} problem(s):\n  ${problems.slice(0, 20).join('\n  ')}`, {
    remedy: 'Fix the lines named above (`ferry init` writes a commented example).',
    details: { problems },
  });
}

/** Reads and checks a config file; errors name the line and column of each problem. */
export function loadMigrateConfig(file: string): MigrateConfig & { token?: string } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new FerryError('FILE_NOT_FOUND', `${file}: cannot read the config file (${(err as NodeJS.ErrnoException).code})`, { remedy: 'Give the path of the file `ferry init` wrote.' });
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  const where = (offset: number | undefined) => {
    if (offset === undefined) return `${file}`;
    const p = lines.linePos(offset);
    return `${file}:${p.line}:${p.col}`;
  };
  if (doc.errors.length) throw invalid(file, doc.errors.map((e) => `${where(e.pos[0])}: ${e.message.split('\n')[0]}`));
  const parsed = Schema.safeParse(doc.toJS());
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      // The deepest node of the path that exists gives the position.
      let node: unknown;
      for (let n = issue.path.length; n >= 0 && !isNode(node); n--) node = doc.getIn(issue.path.slice(0, n) as (string | number)[], true);
      let range = isNode(node) ? node.range : undefined;
      // An unknown key: point at the key itself.
      if (issue.code === 'unrecognized_keys' && isMap(node)) {
        const pair = node.items.find((it) => isScalar(it.key) && issue.keys.includes(String(it.key.value)));
        if (pair && isScalar(pair.key) && pair.key.range) range = pair.key.range;
      }
      const key = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
      return `${where(range?.[0])}: ${key}: ${issue.message}`;
    });
    throw invalid(file, problems);
  }
  const cfg = parsed.data;
  const env = cfg.target.token_env ?? 'FERRY_TOKEN';
  const token = cfg.target.token ?? process.env[env];
  return { ...cfg, ...(token ? { token } : {}) };
}
