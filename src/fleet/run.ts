// `ferry fleet run`: migrates every host of an inventory, N at a time. For each host: SSH in
// (host key checked), copy the single-file agent into a private temporary directory, write its
// config there (owner-only; it holds the token), run `ferry-agent migrate --config … --json`,
// follow its events (progress, rate, ETA), then remove the directory — agent, config and token —
// whether the host succeeded or not. A failing host is recorded with its code, message and remedy
// and the others go on. A total bandwidth budget is split between the hosts running at once. The
// record (state.ts) makes a re-run skip the hosts that succeeded.
import { basename } from 'node:path';
import { ErrorCodes, FerryError, type ErrorCode } from '../errors.js';
import { roundShare } from '../online/progress.js';
import type { MigrateEvent, MigrateReport } from '../online/sender.js';
import { requireAgent } from './agent.js';
import type { FleetHost, Inventory } from './inventory.js';
import { SshSession, shq } from './ssh.js';
import { fleetStateFile, readFleetRecord, writeFleetRecord, type FleetRecord, type HostPhase, type HostRecord } from './state.js';

export interface FleetOptions {
  /** Hosts migrated at once (default 4). */
  concurrency?: number;
  /** Bytes/s for all hosts together, split evenly between those running at once. */
  bandwidthTotal?: number;
  /** Run hosts that already succeeded again. */
  force?: boolean;
  agent?: string;
  signal?: AbortSignal;
  onEvent?: (e: FleetEvent) => void;
}

export type FleetEvent = { event: 'host'; host: HostRecord } | { event: 'skip'; host: string; reason: string };

export interface FleetResult {
  inventory: string;
  hosts: (HostRecord & { skipped?: boolean })[];
  succeeded: number;
  failed: number;
  skipped: number;
  seconds: number;
}

function asError(err: unknown): { code: string; message: string; remedy?: string } {
  if (err instanceof FerryError) return { code: err.code, message: err.message, ...(err.remedy ? { remedy: err.remedy } : {}) };
  return { code: 'INTERNAL', message: String((err as Error)?.message ?? err) };
}

/** The agent's config for one host (YAML; JSON is YAML). */
function agentConfig(h: FleetHost, bandwidth: number | undefined, report: { url: string; token: string; id: string } | undefined): string {
  const bw = bandwidth !== undefined ? bandwidth : h.bandwidth;
  return JSON.stringify(
    {
      target: { address: h.target.address, fingerprint: h.target.fingerprint, token: h.target.token },
      disks: h.disks,
      ...(bw !== undefined ? { bandwidth: bw } : {}),
      ...(h.rounds !== undefined ? { rounds: h.rounds } : {}),
      ...(h.streams !== undefined ? { streams: h.streams } : {}),
      ...(h.compression !== undefined ? { compression: h.compression } : {}),
      ...(report ? { report } : {}),
    },
    null,
    2,
  );
}

/** The agent's final JSON document (the report, or {"error": …}). */
function parseAgentOutput(stdout: string): { report?: MigrateReport; error?: { code: string; message: string; remedy?: string } } | undefined {
  const text = stdout.trim();
  if (!text) return undefined;
  try {
    const doc = JSON.parse(text) as { error?: { code: string; message: string; remedy?: string } } & MigrateReport;
    return doc.error ? { error: doc.error } : { report: doc };
  } catch {
    return undefined;
  }
}

export async function runFleet(inv: Inventory, opts: FleetOptions = {}): Promise<FleetResult> {
  const started = Date.now();
  const agent = requireAgent(opts.agent);
  const concurrency = Math.max(1, Math.min(opts.concurrency ?? 4, 64));
  const previous = readFleetRecord(inv.file);
  const record: FleetRecord = { inventory: inv.file, updatedAt: '', hosts: {} };
  const skipped = new Set<string>();
  for (const h of inv.hosts) {
    const before = previous?.hosts[h.name];
    if (before?.state === 'succeeded' && !opts.force) {
      record.hosts[h.name] = before;
      skipped.add(h.name);
      opts.onEvent?.({ event: 'skip', host: h.name, reason: `succeeded on ${before.finishedAt ?? 'an earlier run'}` });
    } else {
      record.hosts[h.name] = { name: h.name, state: 'pending', phase: 'waiting', attempts: before?.attempts ?? 0 };
    }
  }
  let lastWrite = 0;
  const save = (force: boolean) => {
    if (!force && Date.now() - lastWrite < 1000) return;
    lastWrite = Date.now();
    writeFleetRecord(record);
  };
  save(true);

  const update = (name: string, change: Partial<HostRecord>, important = false) => {
    const rec = (record.hosts[name] = { ...record.hosts[name]!, ...change });
    save(important);
    opts.onEvent?.({ event: 'host', host: rec });
  };

  const perHostBandwidth = opts.bandwidthTotal ? Math.floor(opts.bandwidthTotal / Math.min(concurrency, inv.hosts.length - skipped.size || 1)) : undefined;

  // The first wave (the hosts started at once) begins migrating together, once all of them have
  // the agent (or failed to get it, or after two minutes): the link is then shared from the start
  // instead of the first hosts running alone while the others are still being copied to.
  const queue = inv.hosts.filter((h) => !skipped.has(h.name));
  const wave = new Set(queue.slice(0, concurrency).map((h) => h.name));
  let openGate: () => void = () => {};
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  const ready = (name: string) => {
    if (wave.delete(name) && wave.size === 0) openGate();
  };
  if (wave.size === 0) openGate();

  const runHost = async (h: FleetHost): Promise<void> => {
    const phase = (p: HostPhase) => update(h.name, { phase: p }, true);
    update(h.name, { state: 'running', phase: 'connecting', attempts: record.hosts[h.name]!.attempts + 1, startedAt: new Date().toISOString() }, true);
    let ssh: SshSession | undefined;
    let dir: string | undefined;
    try {
      ssh = await SshSession.connect(h.ssh, opts.signal);
      const mk = await ssh.exec(`umask 077 && mktemp -d ${shq(`${h.ssh.workdir.replace(/\/+$/, '')}/ferry-agent.XXXXXXXX`)}`);
      dir = mk.stdout.trim();
      if (mk.code !== 0 || !dir.startsWith('/')) {
        throw new FerryError('IO_ERROR', `${ssh.label}: cannot make a directory in ${h.ssh.workdir} (${mk.stderr.trim() || `exit ${mk.code}`})`, { remedy: 'Set ssh.workdir to a writable directory on the source.' });
      }
      phase('copying agent');
      const exe = `${dir}/ferry-agent`;
      let copied = false;
      if (agent.gzipped) {
        // A third of the bytes; unpacked on the source (gzip checks its CRC), if it has gzip.
        await ssh.upload(agent.gzipped, `${exe}.gz`, 0o600);
        const unpack = await ssh.exec(`gzip -dc ${shq(`${exe}.gz`)} > ${shq(exe)} && chmod 700 ${shq(exe)} && rm -f ${shq(`${exe}.gz`)}`);
        copied = unpack.code === 0;
      }
      if (!copied) await ssh.upload(agent.path, exe, 0o700);
      await ssh.writeFile(`${dir}/ferry.yaml`, agentConfig(h, perHostBandwidth, inv.report && {
        ...inv.report,
        // The id a server reading this controller's records gives the host (listed once, not twice).
        id: `fleet:${basename(fleetStateFile(inv.file), '.json')}:${h.name}`,
      }), 0o600);
      if (wave.has(h.name)) {
        ready(h.name);
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([gate, new Promise<void>((resolve) => (timer = setTimeout(resolve, 120_000)))]);
        clearTimeout(timer);
      }
      phase('preflight');
      const sudo = h.ssh.sudo ? 'sudo -n ' : '';
      const command = `${sudo}${shq(`${dir}/ferry-agent`)} migrate --config ${shq(`${dir}/ferry.yaml`)} --json`;
      let moving = 0;
      const res = await ssh.exec(command, {
        ...(opts.signal ? { signal: opts.signal } : {}),
        onStderrLine: (line) => {
          let e: MigrateEvent;
          try {
            e = JSON.parse(line) as MigrateEvent;
          } catch {
            return; // not an event (e.g. a warning of the shell)
          }
          const warning = (e as { warning?: { message?: string } }).warning;
          if (warning?.message) {
            update(h.name, { warning: warning.message.slice(0, 500) }, true);
            return;
          }
          if (e.event === 'preflight') {
            moving = e.disks.reduce((n, d) => n + d.used, 0);
            update(h.name, { phase: 'migrating', bytesToMove: moving, percent: 0 }, true);
          } else if (e.event === 'progress') {
            update(h.name, { phase: 'migrating', bytesSent: e.bytesSent, percent: Math.floor(100 * roundShare(e) + 1e-9), rate: e.rate, ...(e.etaSeconds !== undefined ? { etaSeconds: e.etaSeconds } : {}) });
          } else if (e.event === 'round') {
            update(h.name, { phase: 'verifying', percent: 100 }, true);
          }
        },
      });
      if (opts.signal?.aborted) throw new FerryError('INTERRUPTED', `${h.name}: interrupted`, { remedy: 'Run the fleet again: the migration resumes, finished hosts are skipped.' });
      const out = parseAgentOutput(res.stdout);
      if (res.code !== 0 || !out?.report) {
        const e = out?.error;
        if (e) {
          const code = (e.code in ErrorCodes ? e.code : 'AGENT_FAILED') as ErrorCode;
          throw new FerryError(code, `${h.name}: ${e.message}`, { remedy: e.remedy ?? 'See the message; run `ferry fleet run` again to retry this host.' });
        }
        const why = res.stderr.trim().split('\n').filter((l) => !l.startsWith('{')).slice(-3).join(' | ') || `exit ${res.code ?? res.signal}`;
        throw new FerryError('AGENT_FAILED', `${h.name}: the agent failed on the source (${why})`, {
          remedy: res.code === 126 || /Permission denied|noexec/i.test(why) ? `${h.ssh.workdir} may be mounted noexec on the source: set ssh.workdir to another directory.` : 'See the message; run `ferry fleet run` again to retry this host.',
        });
      }
      const report = out.report;
      if (!report.disks.every((d) => d.verified)) throw new FerryError('CHECKSUM_MISMATCH', `${h.name}: the target does not match the source after the migration`, { remedy: 'Run the fleet again for this host.' });
      update(h.name, { state: 'succeeded', phase: 'cleaning up', percent: 100, bytesSent: report.bytesSent, report, finishedAt: new Date().toISOString() }, true);
    } catch (err) {
      update(h.name, { state: 'failed', error: asError(err), finishedAt: new Date().toISOString() }, true);
    } finally {
      ready(h.name); // a host that failed before migrating must not hold the others back
      if (ssh && dir) {
        // The agent, its config and the token go, whatever happened.
        await ssh.exec(`rm -rf ${shq(dir)}`).catch(() => undefined);
      }
      ssh?.close();
      const rec = record.hosts[h.name]!;
      update(h.name, { phase: 'done', ...(rec.state === 'succeeded' ? { error: undefined } : {}) } as Partial<HostRecord>, true);
    }
  };

  const workers = Array.from({ length: Math.min(concurrency, queue.length) }, async () => {
    for (let h = queue.shift(); h; h = queue.shift()) {
      if (opts.signal?.aborted) {
        update(h.name, { state: 'failed', error: { code: 'INTERRUPTED', message: 'not started: the run was interrupted', remedy: 'Run the fleet again.' } }, true);
        continue;
      }
      await runHost(h);
    }
  });
  await Promise.all(workers);
  save(true);
  const hosts = inv.hosts.map((h) => ({ ...record.hosts[h.name]!, ...(skipped.has(h.name) ? { skipped: true } : {}) }));
  return {
    inventory: inv.file,
    hosts,
    succeeded: hosts.filter((h) => h.state === 'succeeded' && !h.skipped).length,
    failed: hosts.filter((h) => h.state === 'failed').length,
    skipped: skipped.size,
    seconds: (Date.now() - started) / 1000,
  };
}
