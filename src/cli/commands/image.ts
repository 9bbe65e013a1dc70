// `ferry image info | check | map | checksum`: parse options, open the image through the library,
// print the library's document as JSON or as text. No image logic lives here.
import type { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import { checkImage, checksumImage, describeImage, mapImage, type CheckDocument, type InfoDocument, type MapDocument } from '../../image/inspect.js';
import { openImage, openImageSource } from '../../image/open.js';
import type { DiskImage, ImageFormat } from '../../image/types.js';
import { hex, humanBytes, sizeWithBytes, table } from '../format.js';
import { makeOutput } from '../output.js';
import { startProgress } from '../progress.js';
import type { RunState } from '../main.js';
import { formatOption } from './shared.js';
import { addStoreOptions, storeOptions, type StoreFlags } from './transfer.js';
import { isObjectUrl, parseLocation } from '../../storage/location.js';
import { registerImageWriteCommands } from './image-write.js';

interface OpenFlags extends StoreFlags {
  json?: boolean;
  format?: ImageFormat;
  allowBacking?: boolean;
}

/** Opens a local image, or an object (s3://, cos://, file://) through range requests. */
async function withImage<T extends object>(path: string, flags: OpenFlags, fn: (image: DiskImage) => Promise<T>): Promise<T & { transfer?: { requests: number; bytesFetched: number } }> {
  if (isObjectUrl(path)) {
    const [{ openStore }, { ObjectSource }] = await Promise.all([import('../../storage/open-store.js'), import('../../storage/object-source.js')]);
    const loc = parseLocation(path);
    const store = openStore(loc, storeOptions(flags));
    const src = await ObjectSource.open(store, loc.key, true);
    let image: DiskImage;
    try {
      image = await openImageSource(src, flags.format ? { format: flags.format } : {});
    } catch (err) {
      await src.close();
      throw err;
    }
    try {
      const doc = await fn(image);
      return { ...doc, transfer: { requests: src.stats.requests, bytesFetched: src.stats.bytesFetched } };
    } finally {
      await image.close();
    }
  }
  const image = await openImage(path, { ...(flags.format ? { format: flags.format } : {}), allowBacking: flags.allowBacking ?? false });
  try {
    const doc: T = await fn(image);
    return doc;
  } finally {
    await image.close();
  }
}

/** The text line telling what reading an object cost. */
function fetchedNote(doc: { transfer?: { requests: number; bytesFetched: number } }): string {
  return doc.transfer ? `\nread from storage: ${humanBytes(doc.transfer.bytesFetched)} in ${doc.transfer.requests} range request(s)` : '';
}

export function registerImageCommands(program: Command, state: RunState): void {
  const image = program.command('image').description('inspect, check, convert, compare and create disk images');
  registerImageWriteCommands(image, state);

  addStoreOptions(image
    .command('info')
    .description('show format, sizes, compression, backing file, snapshots and partitions of an image')
    .argument('<image>', 'image file (qcow2, vpc/VHD, vmdk, raw, or an OVA)')
    .option('--json', 'print one JSON document')
    .addOption(formatOption())
    .option('--allow-backing', 'follow backing files / parents in the image directory')
    ).action(async (path: string, flags: OpenFlags) => {
      const doc = await withImage(path, flags, describeImage);
      makeOutput(!!flags.json).result(doc, () => renderInfo(doc) + fetchedNote(doc));
    });

  addStoreOptions(image
    .command('check')
    .description('check the structure of an image (exit 0 healthy, 2 corrupt, 3 leaked clusters only)')
    .argument('<image>', 'image file')
    .option('--deep', 'also read and decompress every allocated cluster/grain')
    .option('--json', 'print one JSON document')
    .addOption(formatOption())
    .option('--allow-backing', 'follow backing files / parents in the image directory')
    ).action(async (path: string, flags: OpenFlags & { deep?: boolean }) => {
      const doc = await withImage(path, flags, async (img) => {
        const bar = flags.deep ? startProgress('deep check', img.virtualSize, !!flags.json) : undefined;
        try {
          return await checkImage(img, { deep: !!flags.deep, ...(bar ? { onProgress: (p: number) => bar.update(p) } : {}) });
        } finally {
          bar?.stop();
        }
      });
      makeOutput(!!flags.json).result(doc, () => renderCheck(doc) + fetchedNote(doc));
      state.exitCode = doc.verdict === 'clean' ? ExitCode.OK : doc.verdict === 'leaks' ? ExitCode.LEAKS : ExitCode.CORRUPT;
    });

  addStoreOptions(image
    .command('map')
    .description('list the data / zero / unallocated ranges of the virtual disk (like qemu-img map)')
    .argument('<image>', 'image file')
    .option('--json', 'print one JSON document')
    .addOption(formatOption())
    .option('--allow-backing', 'follow backing files / parents in the image directory')
    ).action(async (path: string, flags: OpenFlags) => {
      const doc = await withImage(path, flags, mapImage);
      makeOutput(!!flags.json).result(doc, () => renderMap(doc) + fetchedNote(doc));
    });

  addStoreOptions(image
    .command('checksum')
    .description('SHA-256 of the virtual disk content (the same for the same disk in any format)')
    .argument('<image>', 'image file')
    .option('--json', 'print one JSON document')
    .addOption(formatOption())
    .option('--allow-backing', 'follow backing files / parents in the image directory')
    ).action(async (path: string, flags: OpenFlags) => {
      const doc = await withImage(path, flags, async (img) => {
        const bar = startProgress('checksum', img.virtualSize, !!flags.json);
        try {
          return await checksumImage(img, (p) => bar.update(p));
        } finally {
          bar.stop();
        }
      });
      makeOutput(!!flags.json).result(doc, () => `${doc.sha256}  ${doc.image}`);
    });
}

function renderInfo(d: InfoDocument): string {
  const lines: string[] = [];
  const field = (name: string, value: string) => lines.push(`${(name + ':').padEnd(15)}${value}`);
  field('image', d.image);
  field('format', `${d.format} (${d.subformat})`);
  field('virtual size', sizeWithBytes(d.virtualSize));
  field('file size', sizeWithBytes(d.fileSize));
  if (d.allocatedSize !== undefined) field('allocated', sizeWithBytes(d.allocatedSize));
  field('content', `data ${humanBytes(d.extents.data)}, zero ${humanBytes(d.extents.zero)}, unallocated ${humanBytes(d.extents.unallocated)}`);
  if (d.clusterSize !== undefined) field(d.format === 'vmdk' ? 'grain size' : d.format === 'vpc' ? 'block size' : 'cluster size', humanBytes(d.clusterSize));
  if (d.compressedBytes > 0) field('compression', `${(d.compression ?? ['yes']).join(', ')} (${humanBytes(d.compressedBytes)} of data in compressed units)`);
  else if (d.compression?.length) field('compression', `none (compression type ${d.compression.join(', ')} declared)`);
  if (d.backing) field('backing file', `${d.backing.path}${d.backing.format ? ` (${d.backing.format})` : ''}${d.backing.resolvedPath ? ` -> ${d.backing.resolvedPath}` : ''}`);
  if (d.files?.length) field('files', d.files.join(', '));
  if (d.features?.length) field('features', d.features.join(', '));
  if (d.snapshots?.length) {
    lines.push('snapshots:');
    const rows = d.snapshots.map((s) => [
      s.id,
      s.name,
      s.virtualSize !== undefined ? humanBytes(s.virtualSize) : '-',
      s.vmStateSize ? humanBytes(s.vmStateSize) : '0',
      s.date ? new Date(s.date * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, '') : '-',
    ]);
    lines.push(indent(table(['ID', 'Tag', 'Disk size', 'VM state', 'Date (UTC)'], rows)));
  }
  const pt = d.partitionTable;
  if (pt.type === 'none') {
    lines.push('partitions:    none found');
  } else {
    lines.push(`partitions (${pt.type.toUpperCase()}${pt.diskGuid ? `, disk ${pt.diskGuid}` : pt.diskId ? `, disk id ${pt.diskId}` : ''}):`);
    const rows = pt.partitions.map((p) => [
      String(p.index) + (p.bootable ? '*' : ''),
      String(p.startSector),
      humanBytes(p.size),
      p.typeName === 'unknown' ? p.type : p.typeName,
      p.name ?? (p.logical ? 'logical' : ''),
    ]);
    lines.push(indent(table(['#', 'Start', 'Size', 'Type', 'Name'], rows)));
  }
  const warnings = [...(d.warnings ?? []), ...pt.warnings];
  for (const w of warnings) lines.push(`warning: ${w}`);
  return lines.join('\n');
}

function renderCheck(d: CheckDocument): string {
  const lines: string[] = [];
  const where = (p: CheckDocument['problems'][number]) =>
    [p.field ? `field ${p.field}` : '', p.offset !== undefined ? `host offset ${hex(p.offset)}` : '', p.guestOffset !== undefined ? `guest offset ${hex(p.guestOffset)}` : '']
      .filter(Boolean)
      .join(', ');
  for (const p of d.problems) {
    const label = p.severity === 'corruption' ? 'ERROR' : p.severity === 'leak' ? 'Leaked' : 'Warning';
    const at = where(p);
    lines.push(`${label}: ${p.message}${at ? ` (${at})` : ''}`);
  }
  if (d.problems.length < d.corruptions + d.leaks) lines.push(`… ${d.corruptions + d.leaks - d.problems.length} more problems not listed`);
  if (d.verdict === 'clean') {
    const deep = d.deep?.ok ? ` (deep check: all allocated data read and decoded, ${humanBytes(d.deep.dataBytes)})` : '';
    lines.push(`${d.image}: no errors were found on the image${deep}.`);
  } else if (d.verdict === 'leaks') {
    lines.push(`${d.image}: ${d.leaks} leaked clusters were found on the image.`);
    lines.push('This means waste of disk space, but no harm to data. `qemu-img check -r leaks` repairs it.');
  } else {
    lines.push(`${d.image}: ${d.corruptions} errors were found on the image.`);
    lines.push('Data may be corrupted, or further writes to the image may corrupt it. Re-export or re-download the image from its origin.');
  }
  return lines.join('\n');
}

function renderMap(d: MapDocument): string {
  const rows = d.extents.map((e) => [hex(e.offset), hex(e.length), e.kind, String(e.depth)]);
  return table(['Offset', 'Length', 'Kind', 'Depth'], rows);
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => '  ' + l)
    .join('\n');
}
