// `ferry receive` (migration mode on the target machine) and `ferry migrate` (on the source):
// option parsing, JSON-lines events, and rendering for src/online/.
import type { Command } from 'commander';
import { roundShare } from '../../online/progress.js';
import type { MigrateEvent } from '../../online/sender.js';
import { existsSync, writeFileSync } from 'node:fs';
import { humanBytes } from '../format.js';
import { makeOutput } from '../output.js';
import type { RunState } from '../main.js';
import { addReportOptions, intArg, interruptSignal, lazyFn, openReporter, type ReportFlags, usage, withReport } from './shared.js';
import { parseRate } from './transfer.js';

const migrate = lazyFn(() => import('../../online/sender.js'), 'migrate');
const startReceiver = lazyFn(() => import('../../online/receiver.js'), 'startReceiver');

function pairs(list: string[], what: string, example: string): [string, string][] {
  return list.map((p) => {
    const i = p.indexOf('=');
    if (i <= 0 || i === p.length - 1) throw usage(`${what} '${p}' is not A=B`, `For example ${example}.`);
    return [p.slice(0, i), p.slice(i + 1)];
  });
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

export function registerOnlineCommands(program: Command, state: RunState): void {
  void state;
  program
    .command('receive')
    .description('put this machine in migration mode: receive disks from `ferry migrate` over TLS')
    .requiredOption('--listen <addr>', 'HOST:PORT to listen on (e.g. 0.0.0.0:7878)')
    .option('--disk <name=path>', 'a target disk the sender may write (repeatable): NAME=/dev/sdX or a file', collect)
    .option('--token <token>', 'the token senders must present (default: FERRY_TOKEN, else a new random one, printed once)')
    .option('--state-dir <dir>', 'where the certificate and the record of written chunks live')
    .option('--json', 'JSON lines: first {address, fingerprint, token}, then events')
    .action(async (flags: { listen: string; disk?: string[]; token?: string; stateDir?: string; json?: boolean }) => {
      const disks = pairs(flags.disk ?? [], '--disk', '--disk root=/dev/vdb').map(([name, path]) => ({ name, path }));
      const token = flags.token ?? process.env.FERRY_TOKEN;
      // The receiver keeps receiving when whoever reads its log goes away.
      process.stdout.on('error', () => {});
      process.stderr.on('error', () => {});
      const line = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
      // Events before the address line are held back: that line comes first.
      let early: object[] | undefined = [];
      const r = await startReceiver({
        listen: flags.listen,
        disks,
        ...(token ? { token } : {}),
        ...(flags.stateDir ? { stateDir: flags.stateDir } : {}),
        onEvent: (e) => {
          if (e.event === 'listening') return;
          if (flags.json) {
            if (early) early.push({ ...e, at: new Date().toISOString() });
            else line({ ...e, at: new Date().toISOString() });
          } else process.stderr.write(`${new Date().toISOString()} ${e.event} ${Object.entries(e).filter(([k]) => k !== 'event').map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join(' ')}\n`);
        },
      });
      if (flags.json) {
        line({ address: r.address, fingerprint: r.fingerprint, token: r.token, disks: disks.map((d) => d.name) });
        for (const e of early) line(e);
      } else {
        process.stdout.write(`receiving on ${r.address} (disks: ${disks.map((d) => `${d.name}=${d.path}`).join(', ')})\n`);
        process.stdout.write(`certificate fingerprint: ${r.fingerprint}\n`);
        process.stdout.write(token ? 'token: as given\n' : `token: ${r.token}\n`);
        process.stdout.write(`on the source: ferry migrate --target ADDRESS:${r.port} --fingerprint ${r.fingerprint} --token … --disk SOURCE=${disks[0]?.name ?? 'NAME'}\n`);
      }
      early = undefined;
      const { signal, dispose } = interruptSignal();
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      dispose();
      await r.close();
    });

  addReportOptions(program
    .command('migrate')
    .description('stream this machine\'s disks to a receiver: used blocks only, compressed, verified; resumable and incremental')
    .option('--config <file>', 'settings from this YAML file (`ferry init` writes one); flags override it')
    .option('--target <addr>', 'the receiver, HOST:PORT')
    .option('--token <token>', 'the receiver\'s token (default: FERRY_TOKEN)')
    .option('--fingerprint <sha256>', 'the receiver\'s certificate fingerprint, as it printed it')
    .option('--disk <source=name>', 'a source disk and the receiver\'s name for it (repeatable): /dev/vda=root', collect)
    .option('--bandwidth <rate>', 'limit the rate on the wire: bytes/s (10M) or bits/s (80Mbit)')
    .option('--rounds <n>', 'rounds in all; each after the first sends only what changed (default 1)')
    .option('--streams <n>', 'parallel TLS streams, each compressing on its own (default 1: one context finds repeats across the whole disk; more for long, lossy links)')
    .option('--level <n>', 'zstd level 1–19 (default 3)')
    .option('--no-compress', 'send data uncompressed')
    .option('--freeze <mountpoint>', 'freeze this file system during the last round (repeatable)', collect)
    .option('--before-final-round <command>', 'run this shell command before the last round (e.g. stop services); it must succeed')
    .option('--dry-run', 'connect, check and estimate, then stop')
    .option('--json', 'one JSON document at the end; events as JSON lines on stderr'))
    .action(async (flags: ReportFlags & { config?: string; target?: string; token?: string; fingerprint?: string; disk?: string[]; bandwidth?: string; rounds?: string; streams?: string; level?: string; compress: boolean; freeze?: string[]; beforeFinalRound?: string; dryRun?: boolean; json?: boolean }) => {
      // The config schema (zod, yaml) is loaded only when a config file is given.
      const cfg = flags.config ? (await import('../../online/config.js')).loadMigrateConfig(flags.config) : undefined;
      const token = flags.token ?? cfg?.token ?? process.env.FERRY_TOKEN;
      if (!token) throw usage('no token', 'Pass --token or set FERRY_TOKEN (the receiver printed it when it started).');
      const targetAddr = flags.target ?? cfg?.target.address;
      const fingerprint = flags.fingerprint ?? cfg?.target.fingerprint;
      if (!targetAddr || !fingerprint) throw usage('no receiver given', 'Pass --target HOST:PORT and --fingerprint FP (or --config FILE).');
      const disks = flags.disk?.length ? pairs(flags.disk, '--disk', '--disk /dev/vda=root').map(([source, name]) => ({ source, name })) : (cfg?.disks ?? []);
      if (disks.length === 0) throw usage('no disk to migrate', 'Give at least one --disk SOURCE=NAME.');
      const level = !flags.compress || cfg?.compression === false ? undefined : (intArg(flags.level, '--level', 1, 19) ?? (cfg?.compression ? cfg.compression.level : 3));
      const bandwidth = flags.bandwidth ?? (cfg?.bandwidth !== undefined ? String(cfg.bandwidth) : undefined);
      const rounds = flags.rounds ? intArg(flags.rounds, '--rounds', 1, 100) : cfg?.rounds;
      const streams = flags.streams ? intArg(flags.streams, '--streams', 1, 32) : cfg?.streams;
      const freeze = flags.freeze?.length ? flags.freeze : cfg?.final_round?.freeze;
      const before = flags.beforeFinalRound ?? cfg?.final_round?.before;
      const reporter = await openReporter(
        { url: flags.report ?? cfg?.report?.url, token: flags.reportToken ?? cfg?.reportToken, id: flags.reportId ?? cfg?.report?.id, ...(cfg?.report?.token_env ? { tokenEnv: cfg.report.token_env } : {}) },
        { kind: 'migration', source: disks.map((d) => d.source).join(', '), target: `${targetAddr} (${disks.map((d) => d.name).join(', ')})`, idParts: ['migrate', targetAddr, ...disks.map((d) => d.name)] },
        !!flags.json,
      );
      const { signal, dispose } = interruptSignal();
      const out = makeOutput(!!flags.json);
      let toMove = 0;
      const onEvent = (e: MigrateEvent) => {
        if (reporter) {
          if (e.event === 'preflight') {
            toMove = e.disks.reduce((a, d) => a + d.used, 0);
            reporter.update({ state: 'preflight', phase: 'preflight', bytesTotal: toMove });
          } else if (e.event === 'progress') {
            // Rate and ETA are the sender's own (on the wire).
            reporter.update({ state: 'running', phase: `round ${e.round}`, bytesDone: Math.round(toMove * roundShare(e)), bytesTotal: toMove, bytesSent: e.bytesSent, rate: e.rate, eta: e.etaSeconds ?? null });
          } else if (e.event === 'round') {
            const last = e.round >= (rounds ?? 1);
            reporter.update({ ...(last ? { state: 'verifying' as const } : {}), phase: `round ${e.round} done${e.frozen ? ' (frozen)' : ''}: ${e.chunksSent} of ${e.chunks} chunks sent${last ? '; verifying on the receiver' : ''}` });
          } else if (e.event === 'reconnect') {
            reporter.update({ phase: `reconnecting (attempt ${e.attempt}: ${e.reason})`.slice(0, 200) });
          }
        }
        if (flags.json) {
          process.stderr.write(JSON.stringify(e) + '\n');
          return;
        }
        if (e.event === 'preflight') {
          for (const d of e.disks) out.note(`${d.name} <- ${d.source}: ${humanBytes(d.size)}, ${humanBytes(d.used)} to move (${d.regions.map((r) => r.what).join('; ')})`);
          if (e.estimateSeconds !== undefined) out.note(`estimate at the bandwidth limit: ${e.estimateSeconds.toFixed(0)} s before compression`);
        } else if (e.event === 'progress') {
          process.stderr.write(`\rround ${e.round}: ${e.chunksDone}/${e.chunks} chunks, ${humanBytes(e.bytesSent)} sent at ${humanBytes(e.rate)}/s${e.etaSeconds !== undefined ? `, ETA ${e.etaSeconds.toFixed(0)} s` : ''}   `);
        } else if (e.event === 'round') {
          process.stderr.write('\n');
          out.note(`round ${e.round}${e.frozen ? ' (frozen)' : ''}: ${e.chunksSent} of ${e.chunks} chunks sent, ${humanBytes(e.bytesSent)} on the wire for ${humanBytes(e.dataBytes)} of data, ${e.seconds.toFixed(1)} s`);
        } else if (e.event === 'reconnect') {
          out.note(`connection lost (${e.reason}); retrying (attempt ${e.attempt})`);
        }
      };
      try {
        const report = await withReport(
          reporter,
          () =>
            migrate({
              target: targetAddr,
              token,
              fingerprint,
              disks,
              level,
              ...(bandwidth ? { bandwidth: parseRate(bandwidth) } : {}),
              ...(rounds ? { rounds } : {}),
              ...(streams ? { streams } : {}),
              ...(freeze?.length ? { freeze } : {}),
              ...(before ? { beforeFinalRound: before } : {}),
              ...(flags.dryRun ? { dryRun: true } : {}),
              signal,
              onEvent,
            }),
          (r) => ({ phase: r.dryRun ? 'dry run' : `${r.rounds.length} round(s), verified`, bytesDone: toMove, bytesTotal: toMove, bytesSent: r.bytesSent }),
        );
        out.result(report, () =>
          report.dryRun
            ? 'dry run: the receiver is reachable, accepted the token and has room for every disk'
            : [
                ...report.disks.map((d) => `${d.name}: ${d.verified ? `verified (${d.checked} chunks re-read on the target match)` : 'NOT verified'}`),
                `${humanBytes(report.bytesSent)} sent in ${report.seconds.toFixed(1)} s; effective rate ${humanBytes(report.effectiveRate)}/s of disk`,
              ].join('\n'),
        );
      } finally {
        dispose();
      }
    });

  program
    .command('init')
    .description('write a commented migration config for this machine (its disks detected)')
    .option('--output <file>', 'where to write it', 'ferry.yaml')
    .option('--target <addr>', 'the receiver, HOST:PORT')
    .option('--fingerprint <sha256>', 'the receiver\'s certificate fingerprint')
    .option('--force', 'replace an existing file')
    .option('--json', 'print the detected disks as JSON too')
    .action(async (flags: { output: string; target?: string; fingerprint?: string; force?: boolean; json?: boolean }) => {
      if (existsSync(flags.output) && !flags.force) throw usage(`${flags.output} exists`, 'Pass --force to replace it, or --output another file.');
      const { configText, detectDisks } = await import('../../online/init.js');
      const disks = detectDisks();
      writeFileSync(flags.output, configText(disks, { ...(flags.target ? { address: flags.target } : {}), ...(flags.fingerprint ? { fingerprint: flags.fingerprint } : {}) }), { mode: 0o600 });
      makeOutput(!!flags.json).result({ file: flags.output, disks }, () => `wrote ${flags.output} (${disks.length} disk(s): ${disks.map((d) => d.device).join(', ') || 'none found'}); edit it, then: FERRY_TOKEN=… ferry migrate --config ${flags.output}`);
    });
}
