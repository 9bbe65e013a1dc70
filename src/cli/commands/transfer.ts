// `ferry upload | download | verify | storage uploads | storage gc`: option parsing, progress,
// Ctrl-C handling and rendering for the object-storage commands. The work is in src/transfer/.
import { Option, type Command } from 'commander';
import { SUPPORTED_FORMATS, type ImageFormat } from '../../image/types.js';
import type { CompressionCodec } from '../../image/writer.js';
import type { StoreOptions } from '../../storage/open-store.js';
import { humanBytes, table } from '../format.js';
import { makeOutput } from '../output.js';
import { startProgress } from '../progress.js';
import type { RunState } from '../main.js';
import { formatOption, intArg, interruptSignal, lazyFn, sizeArg, usage } from './shared.js';

const downloadObject = lazyFn(() => import('../../transfer/download.js'), 'downloadObject');
const uploadImage = lazyFn(() => import('../../transfer/upload.js'), 'uploadImage');
const verifyObject = lazyFn(() => import('../../transfer/verify.js'), 'verifyObject');
/** The storage modules, for the commands that use them directly. */
async function storageModules() {
  const [{ parseLocation }, { openStore }, { loadCheckpoint, removeCheckpoint }] = await Promise.all([
    import('../../storage/location.js'),
    import('../../storage/open-store.js'),
    import('../../transfer/checkpoint.js'),
  ]);
  return { parseLocation, openStore, loadCheckpoint, removeCheckpoint };
}

export interface StoreFlags {
  endpoint?: string;
  region?: string;
  profile?: string;
  pathStyle?: boolean;
}

function optionalSize(text: string | undefined, what: string): number | undefined {
  return text === undefined ? undefined : sizeArg(text, what);
}

function countArg(text: string | undefined, what: string, min = 1): number | undefined {
  return intArg(text, what, min, 256);
}

/** Parses a rate: 100M or 100MB/s (bytes per second), 800Mbit, 1Gbps (bits per second). */
export function parseRate(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b|bit|bps|bit\/s|b\/s|)$/i.exec(text.trim().replace(/\/s$/i, ''));
  if (!m) throw usage(`bandwidth '${text}' is not a rate`, 'Write bytes per second (e.g. 50M, 50MB) or bits per second (e.g. 400Mbit, 1Gbps).');
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't']!;
  const bin = m[3] ? { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't']! : mult;
  const unit = m[4]!.toLowerCase();
  const bits = unit === 'bit' || unit === 'bps' || (unit === 'b' && m[4] === 'b');
  const n = Number(m[1]) * bin;
  return Math.max(1, Math.round(bits ? n / 8 : n));
}

export function storeOptions(flags: StoreFlags): StoreOptions {
  return {
    ...(flags.endpoint ? { endpoint: flags.endpoint } : {}),
    ...(flags.region ? { region: flags.region } : {}),
    ...(flags.profile ? { profile: flags.profile } : {}),
    ...(flags.pathStyle !== undefined ? { pathStyle: flags.pathStyle } : {}),
  };
}

export function addStoreOptions(cmd: Command): Command {
  return cmd
    .option('--endpoint <url>', 'S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS; COS: from the region)')
    .option('--region <name>', 'region (default: AWS_REGION, else us-east-1; COS: COS_REGION)')
    .option('--profile <name>', 'profile of ~/.aws/config and credentials (default: AWS_PROFILE)')
    .option('--path-style', 'path-style addressing (default for custom endpoints)')
    .option('--virtual-host', 'virtual-host-style addressing (bucket in the host name)');
}

function flagsToStore(flags: StoreFlags & { virtualHost?: boolean }): StoreOptions {
  return storeOptions({ ...flags, ...(flags.virtualHost ? { pathStyle: false } : {}) });
}

interface UploadFlags extends StoreFlags {
  json?: boolean;
  to?: ImageFormat;
  subformat?: string;
  compress?: CompressionCodec | true;
  clusterSize?: string;
  level?: string;
  exactSize?: boolean;
  alignSize?: string;
  partSize?: string;
  concurrency?: string;
  bandwidth?: string;
  workers?: string;
  format?: ImageFormat;
  allowBacking?: boolean;
  abort?: boolean;
  virtualHost?: boolean;
}

export function registerTransferCommands(program: Command, state: RunState): void {
  void state;
  addStoreOptions(
    program
      .command('upload')
      .description('upload a disk image to object storage (s3://, cos://, file://), converting and compressing on the fly; resumable and verified')
      .argument('<source>', 'image file')
      .argument('<dest>', 's3://BUCKET/KEY, cos://BUCKET-APPID/KEY or file:///DIR/NAME')
      .addOption(new Option('-O, --to <format>', 'convert to this format while uploading (default: the file as it is)').choices([...SUPPORTED_FORMATS]))
      .option('--subformat <name>', 'qcow2: v3|v2; vpc: dynamic|fixed; vmdk: streamOptimized|monolithicSparse')
      .addOption(new Option('--compress [codec]', 'compress (qcow2 clusters: zlib, the default, or zstd); implies --to qcow2').choices(['zlib', 'zstd']))
      .option('--cluster-size <size>', 'qcow2 cluster size (default 64K)')
      .option('--level <n>', 'compression level: zstd 1–19 (default 3), zlib 1–9 (default 6); lower is faster, higher smaller')
      .option('--exact-size', 'vpc: keep the exact virtual size')
      .option('--align-size <size>', 'round the virtual size up to a multiple of this')
      .option('--part-size <size>', 'multipart part size (default 16M, larger when needed to stay within 10,000 parts)')
      .option('--concurrency <n>', 'parts uploaded at the same time (default: 48 MiB of parts, at most 6 as-is and 3 when converting; 3 with 16M parts)')
      .option('--bandwidth <rate>', 'limit the upload rate: bytes/s (50M) or bits/s (400Mbit)')
      .option('--workers <n>', 'worker threads for compression and hashing (default: all cores)')
      .addOption(formatOption())
      .option('--allow-backing', 'follow backing files / parents in the image directory')
      .option('--abort', 'discard the interrupted upload to DEST instead of resuming it')
      .option('--json', 'print one JSON document (progress as JSON lines on stderr)'),
  ).action(async (source: string, dest: string, flags: UploadFlags) => {
    const out = makeOutput(!!flags.json);
    const store = flagsToStore(flags);
    if (flags.abort) {
      const { parseLocation, openStore, loadCheckpoint, removeCheckpoint } = await storageModules();
      const loc = parseLocation(dest);
      const saved = loadCheckpoint(loc.url);
      const s = openStore(loc, store);
      try {
        if (saved) await s.abort(loc.key, saved.checkpoint.uploadId);
        removeCheckpoint(loc.url);
        const others = (await s.listUploads(loc.key)).filter((u) => u.key === loc.key);
        const doc = { dest: loc.url, aborted: saved ? saved.checkpoint.uploadId : null, otherUploads: others.map((u) => u.uploadId) };
        out.result(doc, () =>
          (saved ? `aborted the interrupted upload to ${loc.url} (${saved.checkpoint.uploadId})` : `no interrupted upload to ${loc.url} recorded here`) +
          (others.length ? `\n${others.length} other upload(s) to this key exist (not started from this machine): see \`ferry storage uploads\`` : ''),
        );
      } finally {
        s.close();
      }
      return;
    }
    const compress = flags.compress === true ? 'zlib' : flags.compress;
    const { signal, dispose } = interruptSignal();
    let bar: ReturnType<typeof startProgress> | undefined;
    try {
      const partSize = optionalSize(flags.partSize, '--part-size');
      const clusterSize = optionalSize(flags.clusterSize, '--cluster-size');
      const alignSize = optionalSize(flags.alignSize, '--align-size');
      const concurrency = countArg(flags.concurrency, '--concurrency');
      const workers = countArg(flags.workers, '--workers', 0);
      const r = await uploadImage(source, dest, {
        ...(flags.to ? { to: flags.to } : {}),
        ...(flags.subformat ? { subformat: flags.subformat } : {}),
        ...(compress ? { compress } : {}),
        ...(clusterSize ? { clusterSize } : {}),
        ...(flags.level !== undefined ? { compressLevel: Number(flags.level) } : {}),
        ...(flags.exactSize ? { exactSize: true } : {}),
        ...(alignSize ? { alignSize } : {}),
        ...(partSize ? { partSize } : {}),
        ...(concurrency ? { concurrency } : {}),
        ...(workers !== undefined ? { workers } : {}),
        ...(flags.bandwidth ? { bandwidth: parseRate(flags.bandwidth) } : {}),
        ...(flags.format ? { format: flags.format } : {}),
        ...(flags.allowBacking ? { allowBacking: true } : {}),
        store,
        signal,
        onProgress: (p) => {
          bar ??= startProgress('upload', p.total, !!flags.json);
          bar.update(p.position);
        },
      });
      bar?.stop();
      out.result(r, () => {
        const o = r.object;
        return (
          `${r.source.image} (${r.source.format}, ${humanBytes(r.source.virtualSize)}) -> ${r.dest} (${o.format}${o.subformat ? ' ' + o.subformat : ''}, ${humanBytes(o.size)} in ${o.parts} parts)\n` +
          `sent ${humanBytes(r.bytesSent)} in ${r.seconds.toFixed(1)} s (${humanBytes(r.bytesSent / Math.max(r.seconds, 0.001))}/s)` +
          (r.resumed ? `; resumed: ${r.partsResumed} parts were already on the server, ${r.partsSent} sent now` : '') +
          `\nverified: object ETag ${o.etag}; content ${r.content.algorithm} ${r.content.digest}\nmanifest: ${r.manifest}`
        );
      });
    } finally {
      bar?.stop();
      dispose();
    }
  });

  addStoreOptions(
    program
      .command('download')
      .description('download an object to a local file with parallel range requests, verified against its manifest')
      .argument('<source>', 's3://BUCKET/KEY, cos://…, file:///DIR/NAME')
      .argument('<dest>', 'local file')
      .option('--overwrite', 'replace an existing file')
      .option('--concurrency <n>', 'range requests in flight, each of at most 16 MiB (default 4 with 16 MiB parts: 64 MiB, at most 8)')
      .option('--no-verify', 'do not check against the manifest')
      .option('--json', 'print one JSON document (progress as JSON lines on stderr)'),
  ).action(async (source: string, dest: string, flags: StoreFlags & { json?: boolean; overwrite?: boolean; concurrency?: string; verify?: boolean; virtualHost?: boolean }) => {
    const { signal, dispose } = interruptSignal();
    let bar: ReturnType<typeof startProgress> | undefined;
    try {
      const concurrency = countArg(flags.concurrency, '--concurrency');
      const r = await downloadObject(source, dest, {
        overwrite: !!flags.overwrite,
        verify: flags.verify !== false,
        ...(concurrency ? { concurrency } : {}),
        store: flagsToStore(flags),
        signal,
        onProgress: (p) => {
          bar ??= startProgress('download', p.total, !!flags.json);
          bar.update(p.done);
        },
      });
      bar?.stop();
      makeOutput(!!flags.json).result(r, () => `${r.source} -> ${r.path} (${humanBytes(r.size)} in ${r.seconds.toFixed(1)} s); verified: ${r.verified}${r.content ? ` (content ${r.content.digest})` : ''}`);
    } finally {
      bar?.stop();
      dispose();
    }
  });

  addStoreOptions(
    program
      .command('verify')
      .description("check an object against its Ferry manifest: size, parts' MD5s and the disk's content digest (reads the object, writes nothing)")
      .argument('<object>', 's3://BUCKET/KEY, cos://…, file:///DIR/NAME')
      .option('--json', 'print one JSON document'),
  ).action(async (object: string, flags: StoreFlags & { json?: boolean; virtualHost?: boolean }) => {
    let bar: ReturnType<typeof startProgress> | undefined;
    try {
      const r = await verifyObject(object, {
        store: flagsToStore(flags),
        onProgress: (p) => {
          bar ??= startProgress('verify', p.total, !!flags.json);
          bar.update(p.done);
        },
      });
      bar?.stop();
      makeOutput(!!flags.json).result(r, () => `${r.object}: intact (${r.format}, ${humanBytes(r.virtualSize)}; ${r.chunks} chunks match; content ${r.digest})`);
    } finally {
      bar?.stop();
    }
  });

  const storage = program.command('storage').description('object storage housekeeping: list and clean up abandoned multipart uploads');
  addStoreOptions(
    storage
      .command('uploads')
      .description('list multipart uploads in progress (interrupted or abandoned)')
      .argument('<location>', 's3://BUCKET[/PREFIX], cos://…, file:///DIR/')
      .option('--json', 'print one JSON document'),
  ).action(async (location: string, flags: StoreFlags & { json?: boolean; virtualHost?: boolean }) => {
    const { parseLocation, openStore } = await storageModules();
    const loc = parseLocation(location, false);
    const s = openStore(loc, flagsToStore(flags));
    try {
      const ups = await s.listUploads(loc.key);
      const doc = { location: loc.url, uploads: ups.map((u) => ({ key: u.key, uploadId: u.uploadId, initiated: u.initiated?.toISOString() ?? null })) };
      makeOutput(!!flags.json).result(doc, () => (ups.length ? table(['KEY', 'UPLOAD ID', 'STARTED'], doc.uploads.map((u) => [u.key, u.uploadId, u.initiated ?? '?'])) : 'no uploads in progress'));
    } finally {
      s.close();
    }
  });
  addStoreOptions(
    storage
      .command('gc')
      .description('abort multipart uploads older than a given age (their parts cost storage until aborted)')
      .argument('<location>', 's3://BUCKET[/PREFIX], cos://…, file:///DIR/')
      .option('--older-than <age>', 'age such as 30m, 24h, 7d (default 24h)', '24h')
      .option('--dry-run', 'only list what would be aborted')
      .option('--json', 'print one JSON document'),
  ).action(async (location: string, flags: StoreFlags & { json?: boolean; olderThan: string; dryRun?: boolean; virtualHost?: boolean }) => {
    const m = /^(\d+)\s*([smhd])$/.exec(flags.olderThan);
    if (!m) throw usage(`--older-than '${flags.olderThan}' is not an age`, 'Write a number and a unit: 90s, 30m, 24h or 7d.');
    const ageMs = Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2] as 's' | 'm' | 'h' | 'd'];
    const { parseLocation, openStore } = await storageModules();
    const loc = parseLocation(location, false);
    const s = openStore(loc, flagsToStore(flags));
    try {
      const now = Date.now();
      // (an age of 0 takes every upload: server timestamps may be rounded up past "now")
      const old = (await s.listUploads(loc.key)).filter((u) => ageMs === 0 || !u.initiated || now - u.initiated.getTime() >= ageMs);
      if (!flags.dryRun) for (const u of old) await s.abort(u.key, u.uploadId);
      const doc = { location: loc.url, olderThan: flags.olderThan, dryRun: !!flags.dryRun, aborted: old.map((u) => ({ key: u.key, uploadId: u.uploadId })) };
      makeOutput(!!flags.json).result(doc, () => `${flags.dryRun ? 'would abort' : 'aborted'} ${old.length} upload(s)${old.length ? ':\n' + old.map((u) => `  ${u.key} ${u.uploadId}`).join('\n') : ''}`);
    } finally {
      s.close();
    }
  });
}
