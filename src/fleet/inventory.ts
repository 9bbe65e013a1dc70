// The fleet inventory (`ferry fleet run inventory.yaml`): the source servers, how to reach them over
// SSH, their disks, and the receiver each one migrates to. YAML checked against a strict schema
// with line:column errors; `defaults` fill in what a host leaves out. Secrets can stay out of the
// file (`token_env`).
//
//   defaults:
//     ssh: {user: root, key: ~/.ssh/id_ed25519, known_hosts: ~/.ssh/known_hosts}
//     bandwidth: 100Mbit
//   hosts:
//     - name: web1
//       ssh: {host: 10.0.0.11}
//       target: {address: 10.0.1.11:7878, fingerprint: "AB:…", token_env: WEB1_TOKEN}
//       disks: [{source: /dev/vdb, name: data}]
//   report: {url: "http://10.0.0.9:8787", token_env: FERRY_REPORT_TOKEN}   # optional: agents report to `ferry server`
import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { z } from 'zod';
import { isReportUrl } from '../server/reporter.js';
import { FerryError } from '../errors.js';
import { loadYaml } from '../yaml-config.js';

const SshFields = {
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535),
  user: z.string().min(1),
  /** Private key file; without one, the SSH agent (SSH_AUTH_SOCK). */
  key: z.string().min(1),
  /** OpenSSH known_hosts file used to check host keys (default ~/.ssh/known_hosts). */
  known_hosts: z.string().min(1),
  /** Turn host-key checking off (not recommended; for lab networks). */
  insecure_skip_host_key_check: z.boolean(),
  /** Run the agent with `sudo -n` (the user needs passwordless sudo for it). */
  sudo: z.boolean(),
  /** Where the agent is copied to on the source (a directory that allows executing files). */
  workdir: z.string().startsWith('/', 'an absolute directory, e.g. /tmp'),
  connect_timeout: z.number().positive(),
};

const Target = z
  .object({
    address: z.string().regex(/^(\[[^\]]+\]|[^:\s]+):\d{1,5}$/, 'HOST:PORT, e.g. 10.0.1.11:7878'),
    fingerprint: z.string().regex(/^(sha256:)?([0-9A-Fa-f]{2}:?){32}$/, 'the SHA-256 fingerprint the receiver printed'),
    token: z.string().min(8).optional(),
    token_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
  })
  .strict();

const Options = {
  bandwidth: z.union([z.string(), z.number().positive()]),
  rounds: z.number().int().min(1).max(100),
  streams: z.number().int().min(1).max(32),
  compression: z.union([z.literal(false), z.object({ level: z.number().int().min(1).max(19) }).strict()]),
};

const Host = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'a short name: letters, digits, . _ -'),
    ssh: z.object(SshFields).partial().strict(),
    target: Target,
    disks: z
      .array(z.object({ source: z.string().startsWith('/', 'an absolute path on the source, e.g. /dev/vdb'), name: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'the receiver\'s disk name') }).strict())
      .min(1, 'at least one disk'),
    ...Object.fromEntries(Object.entries(Options).map(([k, v]) => [k, v.optional()])),
  })
  .strict();

const Schema = z
  .object({
    defaults: z
      .object({ ssh: z.object(SshFields).partial().strict().optional(), ...Object.fromEntries(Object.entries(Options).map(([k, v]) => [k, v.optional()])) })
      .strict()
      .optional(),
    hosts: z.array(Host).min(1, 'at least one host'),
    /** A control plane (`ferry server`) every agent reports its progress to, directly from its source. */
    report: z
      .object({
        url: z.string().refine(isReportUrl, 'the server\'s URL, e.g. http://10.0.0.9:8787 (http or https, no user or password in it)'),
        token: z.string().min(8).optional(),
        token_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name').optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((inv, ctx) => {
    const seen = new Set<string>();
    inv.hosts.forEach((h, i) => {
      if (seen.has(h.name)) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'name'], message: `the name ${h.name} is used twice` });
      seen.add(h.name);
      if (!h.ssh.host && !inv.defaults?.ssh?.host) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'ssh'], message: 'no ssh.host' });
    });
  });

export interface SshSettings {
  host: string;
  port: number;
  user: string;
  key?: string;
  knownHosts: string;
  checkHostKey: boolean;
  sudo: boolean;
  workdir: string;
  connectTimeoutSeconds: number;
}

export interface FleetHost {
  name: string;
  ssh: SshSettings;
  target: { address: string; fingerprint: string; token: string };
  disks: { source: string; name: string }[];
  bandwidth?: string | number;
  rounds?: number;
  streams?: number;
  compression?: false | { level: number };
}

export interface Inventory {
  file: string;
  hosts: FleetHost[];
  /** Where agents report to (the token goes into each host's config, removed with it after the run). */
  report?: { url: string; token: string };
}

function expandHome(path: string, base: string): string {
  if (path === '~' || path.startsWith('~/')) return homedir() + path.slice(1);
  return resolve(base, path);
}

/** Reads and checks an inventory; relative key and known_hosts paths are relative to its directory. */
export function loadInventory(file: string): Inventory {
  const inv = loadYaml(file, Schema, { kind: 'inventory', missing: 'Give the path of an inventory file (its format is in the README, under `ferry fleet run`).', remedy: 'Fix the lines named (see `ferry fleet run --help` and the README for the inventory format).' });
  const base = resolve(file, '..');
  const d = inv.defaults ?? {};
  const hosts = inv.hosts.map((h): FleetHost => {
    const s = { ...d.ssh, ...h.ssh };
    const tokenEnv = h.target.token_env ?? 'FERRY_TOKEN';
    const token = h.target.token ?? process.env[tokenEnv];
    if (!token) {
      throw new FerryError('CONFIG_INVALID', `${file}: host ${h.name}: no token (not in the file, and ${tokenEnv} is not set)`, {
        remedy: `Set ${tokenEnv} to the token its receiver printed, or give target.token.`,
      });
    }
    const opt = <K extends keyof typeof Options>(k: K) => (h as Record<string, unknown>)[k] ?? (d as Record<string, unknown>)[k];
    return {
      name: h.name,
      ssh: {
        host: s.host!,
        port: s.port ?? 22,
        user: s.user ?? 'root',
        ...(s.key ? { key: expandHome(s.key, base) } : {}),
        knownHosts: expandHome(s.known_hosts ?? '~/.ssh/known_hosts', base),
        checkHostKey: s.insecure_skip_host_key_check !== true,
        sudo: s.sudo ?? false,
        workdir: s.workdir ?? '/tmp',
        connectTimeoutSeconds: s.connect_timeout ?? 15,
      },
      target: { address: h.target.address, fingerprint: h.target.fingerprint, token },
      disks: h.disks,
      ...(opt('bandwidth') !== undefined ? { bandwidth: opt('bandwidth') as string | number } : {}),
      ...(opt('rounds') !== undefined ? { rounds: opt('rounds') as number } : {}),
      ...(opt('streams') !== undefined ? { streams: opt('streams') as number } : {}),
      ...(opt('compression') !== undefined ? { compression: opt('compression') as false | { level: number } } : {}),
    };
  });
  let report: Inventory['report'];
  if (inv.report) {
    const env = inv.report.token_env ?? 'FERRY_REPORT_TOKEN';
    const token = inv.report.token ?? process.env[env];
    if (!token) throw new FerryError('CONFIG_INVALID', `${file}: report: no token (not in the file, and ${env} is not set)`, { remedy: `Set ${env} to the token \`ferry server\` printed, or give report.token.` });
    report = { url: inv.report.url, token };
  }
  return { file: resolve(file), hosts, ...(report ? { report } : {}) };
}
