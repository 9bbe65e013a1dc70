// Reading virtual disk content from any DiskImage through its map(): zero segments are filled,
// host segments are read (adjacent host runs coalesced into one read), compressed units are
// decoded (with a one-unit cache so sequential sub-unit reads decode once).
import { FerryError } from '../errors.js';
import { readExact } from '../io/byte-source.js';
import { decompressUnit } from './decompress.js';
import type { DiskImage, Segment } from './types.js';

type CompressedSource = Extract<Segment['source'], { type: 'compressed' }>;

/** Decoded-unit cache keyed by (file, host offset). */
export class UnitCache {
  private key: { file: unknown; offset: number } | undefined;
  private data: Buffer | undefined;

  async get(src: CompressedSource): Promise<Buffer> {
    if (this.data && this.key && this.key.file === src.file && this.key.offset === src.offset) return this.data;
    const avail = Math.max(0, Math.min(src.length, src.file.size - src.offset));
    const raw = await readExact(src.file, src.offset, avail, `compressed unit at host offset ${src.offset}`);
    const data = decompressUnit(src.codec, raw, src.unitSize, `${src.file.name}: compressed unit at host offset ${src.offset}`);
    this.key = { file: src.file, offset: src.offset };
    this.data = data;
    return data;
  }
}

/** Fills `out` (starting at out[0]) with the bytes of `segments`, which must be contiguous. */
export async function readSegments(segments: Segment[], out: Buffer, cache = new UnitCache()): Promise<void> {
  if (segments.length === 0) return;
  const base = segments[0]!.offset;
  let i = 0;
  while (i < segments.length) {
    const seg = segments[i]!;
    const at = seg.offset - base;
    const src = seg.source;
    if (src.type === 'zero') {
      out.fill(0, at, at + seg.length);
      i++;
    } else if (src.type === 'host') {
      // Coalesce following segments that continue the same file contiguously.
      let len = seg.length;
      let j = i + 1;
      while (j < segments.length) {
        const next = segments[j]!;
        const ns = next.source;
        if (ns.type !== 'host' || ns.file !== src.file || ns.offset !== src.offset + len) break;
        len += next.length;
        j++;
      }
      const buf = await readExact(src.file, src.offset, len, `data for virtual offset ${seg.offset}`);
      buf.copy(out, at);
      i = j;
    } else {
      const unit = await cache.get(src);
      if (src.skip + seg.length > unit.length) {
        throw new FerryError('INTERNAL', `compressed segment exceeds its unit (${src.skip}+${seg.length} > ${unit.length})`, {
          remedy: 'This is a bug in Ferry; please report it with the output of `ferry image info --json`.',
        });
      }
      unit.copy(out, at, src.skip, src.skip + seg.length);
      i++;
    }
  }
}

/** Reads [offset, offset+length) of the virtual disk. Reading past the end is an error. */
export async function readVirtual(image: DiskImage, offset: number, length: number, cache?: UnitCache): Promise<Buffer> {
  if (offset < 0 || length < 0 || offset + length > image.virtualSize) {
    throw new FerryError('USAGE', `read of ${length} bytes at ${offset} is outside the ${image.virtualSize}-byte disk`, {
      remedy: 'Read within the virtual size shown by `ferry image info`.',
    });
  }
  const out = Buffer.allocUnsafe(length);
  if (length === 0) return out;
  const segments = await image.map(offset, length);
  assertCovers(segments, offset, length, image.name);
  await readSegments(segments, out, cache);
  return out;
}

/** Verifies the map() contract (ordered, adjacent, covering); a violation is a driver bug. */
export function assertCovers(segments: Segment[], offset: number, length: number, name: string): void {
  let pos = offset;
  for (const s of segments) {
    if (s.offset !== pos || s.length <= 0) {
      throw new FerryError('INTERNAL', `${name}: map() returned a gap or overlap at virtual offset ${pos}`, {
        remedy: 'This is a bug in Ferry; please report it with the output of `ferry image info --json`.',
      });
    }
    pos += s.length;
  }
  if (pos !== offset + length) {
    throw new FerryError('INTERNAL', `${name}: map() covered ${pos - offset} of ${length} bytes`, {
      remedy: 'This is a bug in Ferry; please report it with the output of `ferry image info --json`.',
    });
  }
}
