// `ferry fleet run|status INVENTORY` (many servers migrated over SSH, see src/fleet/),
// `ferry agent path` (where the single-file agent is), `ferry server` (the control plane,
// src/server/) and `ferry worker` (PostgreSQL mode's import worker, src/queue/).
import type { Command } from 'commander';
import type { HostRecord } from '../../fleet/state.js';
import { ExitCode, FerryError } from '../../errors.js';
import { humanBytes, table } from '../format.js';
import { makeOutput } from '../output.js';
import type { RunState } from '../main.js';
import { intArg, interruptSignal } from './shared.js';
import { parseRate } from './transfer.js';

function hostRow(h: HostRecord & { skipped?: boolean }): string[] {
  const pct = h.percent !== undefined ? `${h.percent}%` : '';
  return [
    h.name,
    h.skipped ? 'succeeded (earlier run)' : h.state,
    h.phase,
    pct,
    h.rate ? `${humanBytes(h.rate)}/s` : '',
    h.state === 'running' && h.etaSeconds !== undefined ? `${h.etaSeconds.toFixed(0)} s` : '',
    h.error ? `${h.error.code}: ${h.error.message}${h.error.remedy ? ` — ${h.error.remedy}` : ''}` : '',
  ];
}

const HEADER = ['host', 'state', 'phase', 'done', 'rate', 'ETA', 'error'];

export function registerFleetCommands(program: Command, state: RunState): void {
  const fleet = program.command('fleet').description('migrate many servers over SSH, driven by an inventory file');

  fleet
    .command('run')
    .description('copy the agent to every host of the inventory over SSH and migrate them, N at a time; hosts that succeeded before are skipped')
    .argument('<inventory>', 'the inventory (YAML): hosts, SSH settings, disks and receivers')
    .option('--concurrency <n>', 'hosts migrated at once (default 4)')
    .option('--bandwidth-total <rate>', 'bandwidth for all hosts together (e.g. 1Gbit), split between the hosts running at once')
    .option('--force', 'migrate hosts that succeeded before again')
    .option('--agent <file>', 'the agent executable to copy (default: the one `npm run build:agent` built)')
    .option('--json', 'one JSON report at the end; host events as JSON lines on stderr')
    .action(async (file: string, flags: { concurrency?: string; bandwidthTotal?: string; force?: boolean; agent?: string; json?: boolean }) => {
      const { loadInventory } = await import('../../fleet/inventory.js');
      const { runFleet } = await import('../../fleet/run.js');
      const inv = loadInventory(file);
      const concurrency = intArg(flags.concurrency, '--concurrency', 1, 64);
      const out = makeOutput(!!flags.json);
      const { signal, dispose } = interruptSignal();
      const last = new Map<string, string>();
      try {
        const result = await runFleet(inv, {
          ...(concurrency ? { concurrency } : {}),
          ...(flags.bandwidthTotal ? { bandwidthTotal: parseRate(flags.bandwidthTotal) } : {}),
          ...(flags.force ? { force: true } : {}),
          ...(flags.agent ? { agent: flags.agent } : {}),
          signal,
          onEvent: (e) => {
            if (flags.json) {
              process.stderr.write(JSON.stringify(e) + '\n');
              return;
            }
            if (e.event === 'skip') return out.note(`${e.host}: skipped (${e.reason})`);
            const h = e.host;
            // A line when the state or phase changes, not for every progress report.
            const key = `${h.state}/${h.phase}`;
            if (last.get(h.name) === key) return;
            last.set(h.name, key);
            if (h.state === 'failed' && h.phase === 'done') return;
            out.note(`${h.name}: ${h.state === 'running' ? h.phase : h.state}${h.error ? ` — ${h.error.code}: ${h.error.message}` : ''}`);
          },
        });
        out.result(result, () =>
          [
            table(HEADER, result.hosts.map(hostRow)),
            `${result.succeeded} migrated, ${result.skipped} skipped (done before), ${result.failed} failed, in ${result.seconds.toFixed(1)} s${result.failed ? '; fix the failures and run again: only those hosts run' : ''}`,
          ].join('\n'),
        );
        if (result.failed > 0) state.exitCode = ExitCode.FAILED;
      } finally {
        dispose();
      }
    });

  fleet
    .command('status')
    .description('the state of each host of the inventory\'s last (or current) run')
    .argument('<inventory>', 'the inventory file')
    .option('--json', 'as JSON')
    .action(async (file: string, flags: { json?: boolean }) => {
      const { resolve } = await import('node:path');
      const { readFleetRecord } = await import('../../fleet/state.js');
      const rec = readFleetRecord(resolve(file));
      const out = makeOutput(!!flags.json);
      if (!rec) {
        out.result({ inventory: resolve(file), hosts: [] }, () => `${file}: no run recorded yet (ferry fleet run ${file})`);
        return;
      }
      out.result(rec, () => `${table(HEADER, Object.values(rec.hosts).map(hostRow))}\nupdated ${rec.updatedAt}`);
    });

  program
    .command('agent')
    .description('the single-file agent copied to source servers')
    .command('path')
    .description('print where the agent executable is (build it with `npm run build:agent`)')
    .option('--json', 'as JSON')
    .action(async (flags: { json?: boolean }) => {
      const { requireAgent } = await import('../../fleet/agent.js');
      const a = requireAgent();
      makeOutput(!!flags.json).result(a, () => a.path);
    });
}

/** `ferry server`: the control plane (REST API, web console, metrics) over this state directory. */
export function registerServerCommand(program: Command): void {
  program
    .command('server')
    .description('the control plane: REST API (/api/), web console (/) and Prometheus metrics (/metrics) for every import and fleet migration')
    .option('--listen <addr>', 'HOST:PORT to serve on', '127.0.0.1:8787')
    .option('--data-dir <dir>', 'the state directory to show and use (default: FERRY_STATE_DIR, else ~/.local/state/ferry)')
    .option('--token <token>', 'the API token (default: FERRY_SERVER_TOKEN, else a new one, printed)')
    .option('--report-token <token>', 'the token that may only send reports (`--report` of migrate/import; default: FERRY_SERVER_REPORT_TOKEN, else a new one, printed)')
    .option('--database <url>', 'PostgreSQL mode: imports go to this shared job database (postgres://USER@HOST/DB; default FERRY_DATABASE_URL) and `ferry worker`s run them')
    .option('--json', 'first line: {address, token, reportToken, console}; then one JSON log line per request')
    .action(async (flags: { listen: string; dataDir?: string; token?: string; reportToken?: string; database?: string; json?: boolean }) => {
      if (flags.dataDir) process.env.FERRY_STATE_DIR = flags.dataDir;
      const { startServer } = await import('../../server/server.js');
      const { databaseUrl } = await import('../../queue/pg-jobs.js');
      const token = flags.token ?? process.env.FERRY_SERVER_TOKEN;
      const reportToken = flags.reportToken ?? process.env.FERRY_SERVER_REPORT_TOKEN;
      const database = databaseUrl(flags.database);
      const srv = await startServer({
        listen: flags.listen,
        ...(token ? { token } : {}),
        ...(reportToken ? { reportToken } : {}),
        ...(database ? { database } : {}),
        onRequest: (r) => process.stderr.write(JSON.stringify({ at: new Date().toISOString(), ...r }) + '\n'),
      });
      const link = `http://${srv.address}/#token=${encodeURIComponent(srv.token)}`;
      if (flags.json) process.stdout.write(JSON.stringify({ address: srv.address, token: srv.token, reportToken: srv.reportToken, console: link }) + '\n');
      else process.stdout.write(`ferry server on http://${srv.address}/ (API under /api/, metrics at /metrics)\ntoken: ${token ? 'as given' : srv.token}\nreport token (for --report of migrate and import; it can only send reports): ${reportToken ? 'as given' : srv.reportToken}\nconsole: ${link}\n`);
      const { signal, dispose } = interruptSignal();
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      dispose();
      await srv.close();
    });
}

/** `ferry worker`: runs imports queued in PostgreSQL mode, next to other workers. */
export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description('PostgreSQL mode: take imports queued through `ferry server --database` and run them (start one on each machine that shares the load)')
    .option('--database <url>', 'the shared job database, postgres://USER@HOST/DB (default FERRY_DATABASE_URL)')
    .option('--name <name>', 'this worker\'s name in the jobs it runs (default HOST:hash of the state directory, the same at every start)')
    .option('--concurrency <n>', 'imports run at once by this worker', '1')
    .option('--poll <seconds>', 'how often an idle worker asks the queue for work (0.5 or more)', '2')
    .option('--data-dir <dir>', 'where this worker keeps its imports\' checkpoints (default: FERRY_STATE_DIR, else ~/.local/state/ferry)')
    .option('--json', 'one JSON line per job started and finished')
    .action(async (flags: { database?: string; name?: string; concurrency: string; poll: string; dataDir?: string; json?: boolean }) => {
      if (flags.dataDir) process.env.FERRY_STATE_DIR = flags.dataDir;
      const { databaseUrl, redactUrl } = await import('../../queue/pg-jobs.js');
      const { runWorker } = await import('../../queue/worker.js');
      const database = databaseUrl(flags.database);
      if (!database) throw new FerryError('USAGE', 'ferry worker needs the job database', { remedy: 'Give --database postgres://USER@HOST/DB or set FERRY_DATABASE_URL.' });
      const concurrency = intArg(flags.concurrency, '--concurrency', 1, 64)!;
      const pollSeconds = Number(flags.poll);
      if (!(pollSeconds >= 0.5 && pollSeconds <= 600)) throw new FerryError('USAGE', `--poll must be 0.5..600 seconds, not ${flags.poll}`, { remedy: 'For example --poll 2.' });
      const { signal, dispose } = interruptSignal();
      const line = (doc: Record<string, unknown>) => process.stdout.write(flags.json ? JSON.stringify({ at: new Date().toISOString(), ...doc }) + '\n' : `${Object.values(doc).map((v) => (typeof v === 'object' ? JSON.stringify(v) : String(v))).join(' ')}\n`);
      try {
        await runWorker({
          database,
          concurrency,
          pollSeconds,
          signal,
          ...(flags.name ? { name: flags.name } : {}),
          onReady: (name) => line({ event: 'ready', worker: name, database: redactUrl(database), concurrency }),
          onEvent: (e) => line({ ...e }),
        });
      } finally {
        dispose();
      }
    });
}
