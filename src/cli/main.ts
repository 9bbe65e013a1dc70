// The `ferry` command line: a thin layer over the library. Builds the command tree (commander),
// turns every failure into one reported FerryError with a stable code and exit code (never a stack
// trace), and returns the process exit code to bin/ferry.js.
import { Command, CommanderError } from 'commander';
import { toolVersion } from '../version.js';
import { FerryError, ExitCode } from '../errors.js';
import { registerImageCommands } from './commands/image.js';
import { registerTransferCommands } from './commands/transfer.js';
import { registerImportCommand } from './commands/import.js';
import { registerJobsCommands } from './commands/jobs.js';
import { registerOnlineCommands } from './commands/online.js';
import { registerFleetCommands, registerServerCommand, registerWorkerCommand } from './commands/fleet.js';
import { asFerryError, printError } from './output.js';


/** Set by a command's action: its exit code (0 unless the command says otherwise, e.g. check). */
export interface RunState {
  exitCode: number;
}

export function buildProgram(state: RunState): Command {
  const program = new Command('ferry')
    .description('Move virtual disks and servers: inspect, check, convert, upload and migrate disk images (qcow2, VHD, VMDK, raw).')
    .version(toolVersion(), '-V, --version')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      // commander's own error text is replaced by ours (see run()).
      outputError: () => {},
    });
  registerImageCommands(program, state);
  registerTransferCommands(program, state);
  registerImportCommand(program, state);
  registerJobsCommands(program, state);
  registerOnlineCommands(program, state);
  registerFleetCommands(program, state);
  registerServerCommand(program);
  registerWorkerCommand(program);
  return program;
}

/** Runs the CLI with `argv` (without node and script); resolves to the exit code. */
export async function run(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const state: RunState = { exitCode: ExitCode.OK };
  const program = buildProgram(state);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return state.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return ExitCode.OK;
      // Help shown because a command is missing (`ferry`, `ferry image`): a usage error.
      if (err.code === 'commander.help') return err.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE;
      const message = err.message.replace(/^error: /, '');
      const usage = new FerryError('USAGE', message, { remedy: 'See `ferry --help` or `ferry COMMAND --help` for the usage.' });
      printError(usage, json);
      return usage.exitCode;
    }
    const e = asFerryError(err);
    printError(e, json);
    return e.exitCode;
  }
}
