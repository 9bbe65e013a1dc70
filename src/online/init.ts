// `ferry init`: writes a commented migration config for this machine, listing its disks (from
// /sys/block: size, partitions, what is mounted where and with which file system) so that the
// user only fills in the receiver's address and fingerprint.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export interface DetectedDisk {
  device: string;
  size: number;
  partitions: { device: string; size: number; mount?: string; fstype?: string }[];
  mount?: string;
  fstype?: string;
}

const SKIP = /^(loop|ram|zram|sr|fd|nbd|dm-|md)/;

function sectors(path: string): number {
  try {
    return Number(readFileSync(path, 'utf8').trim()) * 512;
  } catch {
    return 0;
  }
}

/** The machine's disks (not loop devices, RAM disks or optical drives). */
export function detectDisks(sys = '/sys/block', mountsFile = '/proc/mounts'): DetectedDisk[] {
  const mounts = new Map<string, { mount: string; fstype: string }>();
  try {
    for (const line of readFileSync(mountsFile, 'utf8').split('\n')) {
      const [dev, mount, fstype] = line.split(' ');
      if (dev?.startsWith('/dev/') && mount && fstype && !mounts.has(dev)) mounts.set(dev, { mount, fstype });
    }
  } catch {
    // no mount table: no mount hints
  }
  if (!existsSync(sys)) return [];
  const disks: DetectedDisk[] = [];
  for (const name of readdirSync(sys).sort()) {
    if (SKIP.test(name)) continue;
    const size = sectors(join(sys, name, 'size'));
    if (size === 0) continue;
    const parts = readdirSync(join(sys, name))
      .filter((p) => p.startsWith(name) && existsSync(join(sys, name, p, 'partition')))
      .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
      .map((p) => ({ device: `/dev/${p}`, size: sectors(join(sys, name, p, 'size')), ...mounts.get(`/dev/${p}`) }));
    disks.push({ device: `/dev/${name}`, size, partitions: parts, ...mounts.get(`/dev/${name}`) });
  }
  return disks;
}

const gib = (n: number) => `${(n / 1024 ** 3).toFixed(1)} GiB`;

/** The config text, commented. */
export function configText(disks: DetectedDisk[], target?: { address?: string; fingerprint?: string }): string {
  const freeze = disks.flatMap((d) => [d, ...d.partitions]).filter((p) => p.mount && p.mount !== '/' && (p.fstype === 'ext4' || p.fstype === 'xfs')).map((p) => p.mount!);
  const out: string[] = [
    '# Ferry online migration: what `ferry migrate --config THIS_FILE` sends, and where.',
    '# Flags given on the command line override these settings.',
    '',
    'target:',
    `  address: ${target?.address ?? '10.0.0.2:7878'}          # the address \`ferry receive\` listens on`,
    `  fingerprint: "${target?.fingerprint ?? 'PASTE:THE:FINGERPRINT:THE:RECEIVER:PRINTED'}"`,
    '  token_env: FERRY_TOKEN           # the token is read from this environment variable (or write token: …)',
    '',
    '# Source disks and the names the receiver knows their targets by (--disk NAME=PATH there).',
    'disks:',
  ];
  if (disks.length === 0) out.push('  - source: /dev/vda', '    name: root');
  disks.forEach((d, i) => {
    out.push(`  # ${d.device}: ${gib(d.size)}${d.partitions.length ? '' : d.mount ? `, ${d.fstype} on ${d.mount}` : ''}`);
    for (const p of d.partitions) out.push(`  #   ${p.device}: ${gib(p.size)}${p.mount ? `, ${p.fstype} on ${p.mount}` : ''}`);
    out.push(`  - source: ${d.device}`, `    name: ${i === 0 ? 'root' : `disk${i}`}`);
  });
  out.push(
    '',
    '# bandwidth: 80Mbit                # limit on the wire (bytes/s like 10M, or bits/s like 80Mbit)',
    '# streams: 4                       # parallel TLS streams',
    '# compression: {level: 3}          # zstd level, or false',
    'rounds: 2                          # the first copies everything, later ones only what changed',
    '',
    '# The last round: stop what writes, freeze file systems for a consistent copy (always thawed).',
    'final_round:',
    `  # before: "systemctl stop my-app"`,
    freeze.length ? `  freeze: [${freeze.join(', ')}]` : '  # freeze: [/srv/data]',
    '',
    '# Report progress to a control plane (`ferry server`); its token from FERRY_REPORT_TOKEN.',
    '# report: {url: "http://10.0.0.9:8787", token_env: FERRY_REPORT_TOKEN}',
    '',
  );
  return out.join('\n');
}
