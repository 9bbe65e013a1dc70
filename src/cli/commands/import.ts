// `ferry import SOURCE --target TARGET`: option parsing, progress, Ctrl-C handling and rendering
// for the offline import (src/migrate/import.ts).
import type { Command } from 'commander';
import type { ImageFormat } from '../../image/types.js';
import { importImage } from '../../migrate/import.js';
import { humanBytes } from '../format.js';
import { makeOutput } from '../output.js';
import { startProgress } from '../progress.js';
import type { RunState } from '../main.js';
import { formatOption, interruptSignal } from './shared.js';
import { addStoreOptions, storeOptions, type StoreFlags } from './transfer.js';

interface ImportFlags extends StoreFlags {
  target: string;
  format?: ImageFormat;
  verify?: boolean;
  overwrite?: boolean;
  json?: boolean;
  virtualHost?: boolean;
}

export function registerImportCommand(program: Command, state: RunState): void {
  void state;
  addStoreOptions(
    program
      .command('import')
      .description('put an image (s3://, cos://, file:// object or local file) onto a target disk (raw file or block device), checked first and verified')
      .argument('<source>', 'the image: s3://BUCKET/KEY, cos://…, file:///DIR/NAME or a local file')
      .requiredOption('--target <path>', 'target disk: a raw file (created sparse) or a block device')
      .addOption(formatOption())
      .option('--verify', 'without a manifest: re-read the target and compare it with the source')
      .option('--overwrite', 'replace an existing target file')
      .option('--json', 'print one JSON document (progress as JSON lines on stderr)'),
  ).action(async (source: string, flags: ImportFlags) => {
    const { signal, dispose } = interruptSignal();
    let bar: ReturnType<typeof startProgress> | undefined;
    try {
      const r = await importImage(source, flags.target, {
        ...(flags.format ? { format: flags.format } : {}),
        ...(flags.verify ? { verify: true } : {}),
        ...(flags.overwrite ? { overwrite: true } : {}),
        store: storeOptions({ ...flags, ...(flags.virtualHost ? { pathStyle: false } : {}) }),
        signal,
        onProgress: (p) => {
          bar ??= startProgress('import', p.total, !!flags.json);
          bar.update(p.position);
        },
      });
      bar?.stop();
      makeOutput(!!flags.json).result(r, () =>
        `${r.source} (${r.format}, ${humanBytes(r.virtualSize)}) -> ${r.target}: ${humanBytes(r.dataBytes)} of data in ${r.seconds.toFixed(1)} s` +
        (r.bytesFetched !== undefined ? `, ${humanBytes(r.bytesFetched)} fetched` : '') +
        `\nverified: ${r.verified === 'manifest' ? `content matches the upload's manifest (${r.digest})` : r.verified === 'reread' ? 'target re-read and compared with the source' : 'no (no manifest; pass --verify to re-read the target)'}`,
      );
    } finally {
      bar?.stop();
      dispose();
    }
  });
}
