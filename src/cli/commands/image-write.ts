// `ferry image convert | create | measure | compare`: option parsing (qemu-img's spellings are
// accepted: -O, -c, -o subformat=…,compat=…,cluster_size=…,compression_type=…,force_size=on),
// progress, Ctrl-C handling, and rendering of the library's results. No image logic lives here.
import { Option, type Command } from 'commander';
import { ExitCode } from '../../errors.js';
import { EmptyImage } from '../../image/empty.js';
import { openImage } from '../../image/open.js';
import type { DiskImage, ImageFormat } from '../../image/types.js';
import { SUPPORTED_FORMATS } from '../../image/types.js';
import type { CompressionCodec, WriteSpec } from '../../image/writer.js';
import { humanBytes, sizeWithBytes } from '../format.js';
import { makeOutput } from '../output.js';
import { startProgress } from '../progress.js';
import type { RunState } from '../main.js';
import { formatOption, interruptible, lazyFn, sizeArg, usage } from './shared.js';

const compareImages = lazyFn(() => import('../../pipeline/compare.js'), 'compareImages');
const convertImage = lazyFn(() => import('../../pipeline/convert.js'), 'convertImage');
const measureImage = lazyFn(() => import('../../pipeline/measure.js'), 'measureImage');

interface WriteFlags {
  json?: boolean;
  to?: ImageFormat;
  subformat?: string;
  compress?: CompressionCodec | true;
  clusterSize?: string;
  level?: string;
  exactSize?: boolean;
  alignSize?: string;
  targetIsZero?: boolean;
  overwrite?: boolean;
  options?: string;
  format?: ImageFormat;
  allowBacking?: boolean;
  workers?: string;
  sample?: boolean;
  sync?: boolean;
}


/** Merges qemu-img style `-o key=value,…` into the spec. */
function applyQemuOptions(spec: WriteSpec & { compressionType?: CompressionCodec }, text: string): void {
  for (const item of text.split(',').filter(Boolean)) {
    const [key, value = ''] = item.split('=', 2) as [string, string?];
    switch (key.trim()) {
      case 'subformat':
        spec.subformat = value;
        break;
      case 'compat':
        if (value === '0.10') spec.subformat = 'v2';
        else if (value === '1.1' || value === 'v3') spec.subformat = 'v3';
        else throw usage(`-o compat=${value}: unknown qcow2 compatibility level`, 'Use compat=1.1 (qcow2 v3) or compat=0.10 (v2).');
        break;
      case 'cluster_size':
        spec.clusterSize = sizeArg(value, '-o cluster_size');
        break;
      case 'compression_type':
        if (value !== 'zlib' && value !== 'zstd') throw usage(`-o compression_type=${value}: unknown`, 'Use zlib or zstd.');
        if (spec.compress) spec.compress = value;
        else spec.compressionType = value;
        break;
      case 'force_size':
        spec.exactSize = value === 'on' || value === 'true' || value === '';
        break;
      default:
        throw usage(`-o ${key}: Ferry does not know this option`, 'Known: subformat, compat, cluster_size, compression_type, force_size.');
    }
  }
}

function writeSpec(flags: WriteFlags): WriteSpec {
  if (!flags.to) throw usage('the output format is missing', 'Give it with --to (or -O): raw, qcow2, vpc or vmdk.');
  const spec: WriteSpec & { compressionType?: CompressionCodec } = { format: flags.to };
  if (flags.options) applyQemuOptions(spec, flags.options);
  if (flags.subformat) spec.subformat = flags.subformat;
  if (flags.compress) spec.compress = flags.compress === true ? (spec.compressionType ?? 'zlib') : flags.compress;
  delete spec.compressionType;
  if (flags.clusterSize) spec.clusterSize = sizeArg(flags.clusterSize, '--cluster-size');
  if (flags.level !== undefined) spec.compressLevel = Number(flags.level);
  if (flags.exactSize) spec.exactSize = true;
  if (flags.alignSize) spec.alignSize = sizeArg(flags.alignSize, '--align-size');
  if (flags.targetIsZero) spec.targetIsZero = true;
  return spec;
}

function workersArg(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > 256) throw usage(`--workers ${text}: not a number of threads`, 'Give 0 (no worker threads) up to 256.');
  return n;
}


function addWriteOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('-O, --to <format>', 'output format').choices([...SUPPORTED_FORMATS]))
    .option('--subformat <name>', 'qcow2: v3|v2; vpc: dynamic|fixed; vmdk: streamOptimized|monolithicSparse')
    .addOption(new Option('--compress [codec]', 'qcow2: compress clusters (zlib, the default, or zstd)').choices(['zlib', 'zstd']))
    .addOption(new Option('-c', 'compress (as qemu-img -c): same as --compress').implies({ compress: true }))
    .option('--cluster-size <size>', 'qcow2 cluster size (512 to 2M, default 64K)')
    .option('--level <n>', 'compression level: zstd 1–19 (default 3), zlib 1–9 (default 6); lower is faster, higher smaller')
    .option('--exact-size', 'vpc: keep the exact virtual size (no CHS rounding; what Hyper-V and Azure want)')
    .option('--align-size <size>', 'round the virtual size up to a multiple of this (e.g. 1M for Azure)')
    .option('-o, --options <list>', "qemu-img style options: subformat=…,compat=0.10|1.1,cluster_size=…,compression_type=…,force_size=on")
    .option('--json', 'print one JSON document (progress as JSON lines on stderr)');
}

export function registerImageWriteCommands(image: Command, state: RunState): void {
  addWriteOptions(
    image
      .command('convert')
      .description('convert an image to another format (qcow2, vpc/VHD, vmdk, raw), compressing on all cores')
      .argument('<source>', 'image to read (any supported format)')
      .argument('<target>', 'output file (written under a temporary name, renamed when complete), or a block device for raw'),
  )
    .option('--target-is-zero', 'raw onto a block device that already reads as zeros: do not write zero ranges')
    .option('--overwrite', 'replace an existing output file')
    .option('--sync', 'flush the output to disk before it gets its final name (durable even after a power loss; slower)')
    .option('--no-sync', 'do not flush, even onto a block device')
    .addOption(formatOption())
    .option('--allow-backing', 'follow backing files / parents in the image directory')
    .option('--workers <n>', 'worker threads for compression (default: all cores)')
    .action(async (src: string, dst: string, flags: WriteFlags) => {
      const spec = writeSpec(flags);
      const workers = workersArg(flags.workers);
      const img = await openImage(src, { ...(flags.format ? { format: flags.format } : {}), allowBacking: flags.allowBacking ?? false });
      try {
        const bar = startProgress('convert', img.virtualSize, !!flags.json);
        const r = await interruptible((signal) =>
          convertImage(img, dst, spec, { overwrite: !!flags.overwrite, ...(flags.sync !== undefined ? { sync: flags.sync } : {}), blockingWrites: true, signal, onProgress: (p) => bar.update(p.position), ...(workers !== undefined ? { workers } : {}) }).finally(() => bar.stop()),
        );
        makeOutput(!!flags.json).result(r, () => {
          const o = r.output;
          const grew = o.virtualSize !== r.source.virtualSize ? ` (virtual size ${sizeWithBytes(o.virtualSize)}: rounded up from ${r.source.virtualSize})` : '';
          const comp = r.units.compressed ? `, ${r.units.compressed} units compressed` : '';
          return (
            `${r.source.image} (${r.source.format}, ${humanBytes(r.source.virtualSize)}) -> ${o.path} (${o.format} ${o.subformat}${spec.compress ? `, ${spec.compress}` : ''})${grew}\n` +
            `wrote ${humanBytes(o.fileSize)} from ${humanBytes(r.dataBytes)} of data${comp} in ${r.seconds.toFixed(1)} s (${humanBytes(Math.round(r.source.virtualSize / Math.max(r.seconds, 0.001)))}/s of disk)`
          );
        });
      } finally {
        await img.close();
      }
    });

  addWriteOptions(
    image
      .command('create')
      .description('create an empty image of a given virtual size')
      .argument('<file>', 'the new image file')
      .argument('<size>', 'virtual size, e.g. 10G'),
  )
    .option('--overwrite', 'replace an existing file')
    .action(async (file: string, sizeText: string, flags: WriteFlags) => {
      const spec = writeSpec(flags);
      const size = sizeArg(sizeText, 'size');
      const r = await convertImage(new EmptyImage(size), file, spec, { overwrite: !!flags.overwrite });
      makeOutput(!!flags.json).result(r.output, () => `created ${file}: ${r.output.format} ${r.output.subformat}, virtual size ${sizeWithBytes(r.output.virtualSize)}, file ${humanBytes(r.output.fileSize)}`);
    });

  addWriteOptions(
    image
      .command('measure')
      .description('size of the output a conversion would write, without writing it')
      .argument('<image>', 'image to measure'),
  )
    .option('--sample', 'compress a sample of the data and extrapolate (fast estimate)')
    .addOption(formatOption())
    .option('--allow-backing', 'follow backing files / parents in the image directory')
    .action(async (path: string, flags: WriteFlags) => {
      const spec = writeSpec(flags);
      const img = await openImage(path, { ...(flags.format ? { format: flags.format } : {}), allowBacking: flags.allowBacking ?? false });
      try {
        const bar = startProgress('measure', img.virtualSize, !!flags.json);
        const r = await measureImage(img, spec, { sample: !!flags.sample, onProgress: (p) => bar.update(p.position) }).finally(() => bar.stop());
        makeOutput(!!flags.json).result({ image: path, ...r }, () =>
          [
            `required size: ${r.requiredBytes}${r.estimated ? ' (estimated from a sample)' : ''}`,
            `file size: ${r.fileSize}`,
            `virtual size: ${r.virtualSize}`,
            `source data: ${humanBytes(r.dataBytes)}${r.estimated ? `, ${humanBytes(r.sampledBytes)} of it encoded` : ''}`,
          ].join('\n'),
        );
      } finally {
        await img.close();
      }
    });

  image
    .command('compare')
    .description('compare the content of two images (exit 0 identical, 1 different, like qemu-img compare)')
    .argument('<a>', 'first image')
    .argument('<b>', 'second image')
    .option('-s, --strict', 'images of different sizes are different')
    .addOption(new Option('-f, --format <format>', 'format of the first image').choices([...SUPPORTED_FORMATS]))
    .addOption(new Option('-F, --format-b <format>', 'format of the second image').choices([...SUPPORTED_FORMATS]))
    .option('--allow-backing', 'follow backing files / parents in the image directories')
    .option('--json', 'print one JSON document')
    .action(async (pa: string, pb: string, flags: { strict?: boolean; format?: ImageFormat; formatB?: ImageFormat; allowBacking?: boolean; json?: boolean }) => {
      const allowBacking = flags.allowBacking ?? false;
      const a = await openImage(pa, { ...(flags.format ? { format: flags.format } : {}), allowBacking });
      let b: DiskImage | undefined;
      try {
        b = await openImage(pb, { ...(flags.formatB ? { format: flags.formatB } : {}), allowBacking });
        const bar = startProgress('compare', Math.max(a.virtualSize, b.virtualSize), !!flags.json);
        const r = await compareImages(a, b, { strict: !!flags.strict, onProgress: (p) => bar.update(p) }).finally(() => bar.stop());
        makeOutput(!!flags.json).result({ a: pa, b: pb, ...r }, () => {
          const lines: string[] = [];
          if (r.sizeA !== r.sizeB) lines.push(r.reason === 'size' ? 'Strict mode: Image size mismatch!' : 'Warning: Image size mismatch!');
          if (r.identical) lines.push('Images are identical.');
          else if (r.firstDifference !== undefined) lines.push(`Content mismatch at offset ${r.firstDifference}!`);
          return lines.join('\n');
        });
        state.exitCode = r.identical ? ExitCode.OK : ExitCode.FAILED;
      } finally {
        await b?.close();
        await a.close();
      }
    });
}
