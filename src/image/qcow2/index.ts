// The qcow2 driver (read-only): probing by magic and version, opening (header validation, snapshot
// table, backing file through the context's policy), see image.ts / map.ts / check.ts.
import { FerryError, unsupportedFeature } from '../../errors.js';
import type { ByteSource } from '../../io/byte-source.js';
import type { DiskImage, ImageDriver, ImageFormat, OpenContext, ProbeInput } from '../types.js';
import { QCOW2_MAGIC, readHeader } from './header.js';
import { Qcow2Image } from './image.js';
import { readSnapshots } from './snapshots.js';

function probe({ head }: ProbeInput): number {
  if (head.length < 8 || head.readUInt32BE(0) !== QCOW2_MAGIC) return 0;
  const version = head.readUInt32BE(4);
  return version >= 2 ? 100 : 0; // version 1 is qcow, named by probe.ts
}

const BACKING_FORMATS: Record<string, ImageFormat> = { qcow2: 'qcow2', raw: 'raw', file: 'raw', vpc: 'vpc', vmdk: 'vmdk' };

async function openBacking(h: { backingFile?: string; backingFormat?: string }, ctx: OpenContext): Promise<DiskImage | undefined> {
  const ref = h.backingFile;
  if (ref === undefined) return undefined;
  if (/^[a-z][a-z0-9+.-]*:/i.test(ref)) {
    throw new FerryError('IMAGE_PATH_REFUSED', `${ctx.path}: the backing file reference '${ref}' is a protocol or JSON reference, not a file name; Ferry refuses to follow it`, {
      remedy: 'Flatten the image where its backing chain is reachable: `qemu-img convert -O qcow2 IN OUT.qcow2`, then use OUT.qcow2.',
      details: { reference: ref },
    });
  }
  let format: ImageFormat | undefined;
  if (h.backingFormat !== undefined) {
    format = BACKING_FORMATS[h.backingFormat];
    if (!format) {
      throw unsupportedFeature(
        `${ctx.path}: the backing file '${ref}' has format '${h.backingFormat}', which Ferry does not read`,
        'Flatten the image with qemu-img: `qemu-img convert -O qcow2 IN OUT.qcow2`, then use OUT.qcow2.',
        { reference: ref, backingFormat: h.backingFormat },
      );
    }
  }
  return ctx.openBacking(ref, format, 'its backing file');
}

async function open(src: ByteSource, ctx: OpenContext): Promise<DiskImage> {
  const header = await readHeader(src);
  const snapshots = await readSnapshots(src, header);
  const backing = await openBacking(header, ctx);
  return new Qcow2Image(src, ctx.path, header, snapshots, backing);
}

export const qcow2Driver: ImageDriver = { format: 'qcow2', probe, open };
