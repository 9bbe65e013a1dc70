// The VHD ("vpc") driver: probe by content (the 'conectix' footer at offset 0 for dynamic and
// differencing disks, or in the last 512 bytes for fixed disks) and open: choose a sound footer,
// decide the virtual size by qemu's rule, read the dynamic header, set up the BAT and, for a
// differencing disk, open the parent through the backing policy.
import { FerryError, corrupt, truncated, unsupportedFeature } from '../../errors.js';
import { readExact, readUpTo, type ByteSource } from '../../io/byte-source.js';
import type { ImageDriver, OpenContext, ProbeInput } from '../types.js';
import { Bat, DYN_HEADER_SIZE, bitmapSize, isPowerOfTwo, parseDynamicHeader } from './dynamic.js';
import { DiskType, FOOTER_COOKIE, FOOTER_SIZE, checksumOk, diskTypeName, hex32, parseFooter, type Footer } from './footer.js';
import { MAX_SECTORS, decideVirtualSize } from './geometry.js';
import { VhdImage, type DynamicLayout, type VhdLayout } from './image.js';
import { decodeLocator, openParent, parentCandidates } from './parent.js';

function hasCookie(buf: Buffer, at: number): boolean {
  return at >= 0 && buf.length >= at + 8 && buf.toString('latin1', at, at + 8) === FOOTER_COOKIE;
}

export function probeVhd(input: ProbeInput): number {
  if (hasCookie(input.head, 0)) return 100;
  if (input.tail.length >= FOOTER_SIZE && hasCookie(input.tail, input.tail.length - FOOTER_SIZE)) return 100;
  return 0;
}

const invalid = (name: string, why: string) =>
  new FerryError('IMAGE_CORRUPT', `${name}: invalid VHD image: ${why}`, {
    remedy: 'This file is not a sound VHD. If it is a raw disk, open it with `--format raw`; otherwise re-export it from its origin.',
  });

/** Picks the footer to trust, as qemu does (copy at 0 first, else the end), with fallbacks and warnings. */
function chooseFooter(name: string, head: Footer | undefined, end: Footer | undefined, warnings: string[]): Footer {
  const isSparse = (f: Footer | undefined) => f && (f.diskType === DiskType.DYNAMIC || f.diskType === DiskType.DIFFERENCING);
  if (head && head.diskType !== DiskType.FIXED) {
    if (checksumOk(head)) return head;
    if (end && checksumOk(end) && isSparse(end)) {
      warnings.push(`the footer copy at offset 0 has a bad checksum (stored ${hex32(head.checksum)}, computed ${hex32(head.computedChecksum)}); using the footer at the end of the file`);
      return end;
    }
    warnings.push(`footer checksum mismatch at offset 0 (stored ${hex32(head.checksum)}, computed ${hex32(head.computedChecksum)}); qemu refuses to open this image`);
    return head;
  }
  if (end) {
    if (isSparse(end)) warnings.push('the footer copy at offset 0 is missing; the dynamic disk was opened from the footer at the end of the file');
    if (!checksumOk(end)) warnings.push(`footer checksum mismatch at offset ${end.at} (stored ${hex32(end.checksum)}, computed ${hex32(end.computedChecksum)}); qemu refuses to open this image`);
    return end;
  }
  throw invalid(name, "no 'conectix' footer at offset 0 or in the last 512 bytes");
}

async function openVhd(src: ByteSource, ctx: OpenContext): Promise<VhdImage> {
  const name = ctx.path;
  if (src.size < FOOTER_SIZE) throw truncated(`${name}: VHD footer`, FOOTER_SIZE, src.size);
  const warnings: string[] = [];
  const headBuf = await readUpTo(src, 0, FOOTER_SIZE);
  const headFooter = hasCookie(headBuf, 0) ? parseFooter(headBuf, 0) : undefined;
  const endAt = src.size - FOOTER_SIZE;
  const endBuf = endAt > 0 ? await readExact(src, endAt, FOOTER_SIZE, 'footer at the end of the file') : Buffer.alloc(0);
  const endFooter = hasCookie(endBuf, 0) ? parseFooter(endBuf, endAt) : undefined;
  const footer = chooseFooter(name, headFooter, endFooter, warnings);
  const subformat = diskTypeName(footer.diskType);
  if (!subformat) {
    throw invalid(name, `footer at offset ${footer.at} has disk type ${footer.diskType} (expected 2 fixed, 3 dynamic or 4 differencing)`);
  }
  if (subformat !== 'fixed' && footer === headFooter) {
    if (!endFooter) warnings.push(`no footer at the end of the file (offset ${endAt}): the file is truncated or damaged`);
    else if (!endFooter.raw.equals(headFooter.raw)) warnings.push('the footer at the end of the file differs from its copy at offset 0');
  }
  const size = decideVirtualSize(footer);
  if (size.sectors > MAX_SECTORS) {
    throw unsupportedFeature(
      `${name}: the VHD declares ${size.size} bytes (${size.rule}); VHDs larger than 2040 GiB are outside the format (qemu refuses them too)`,
      'Check the image origin: the footer size fields are probably damaged.',
      { virtualSize: size.size },
    );
  }
  const layout: VhdLayout = { subformat, footer, size, warnings, ...(headFooter ? { headFooter } : {}), ...(endFooter ? { endFooter } : {}) };
  if (subformat === 'fixed') {
    if (size.size > src.size - FOOTER_SIZE) {
      warnings.push(`the file is too short for its ${size.size}-byte virtual size: it needs ${size.size + FOOTER_SIZE} bytes but has ${src.size}`);
    }
    return new VhdImage(src, name, layout);
  }

  // Dynamic / differencing.
  if (footer.dataOffset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw corrupt(`${name}: footer data_offset 0x${footer.dataOffset.toString(16)} (the dynamic header position) is absurd`, { field: 'data_offset' });
  }
  const hdrAt = Number(footer.dataOffset);
  const header = parseDynamicHeader(await readExact(src, hdrAt, DYN_HEADER_SIZE, 'dynamic disk header'), hdrAt);
  if (!header.cookieOk) throw invalid(name, `no 'cxsparse' dynamic disk header at offset ${hdrAt} (footer field data_offset)`);
  if (header.checksum !== header.computedChecksum) {
    warnings.push(`dynamic header checksum mismatch at offset ${hdrAt} (stored ${hex32(header.checksum)}, computed ${hex32(header.computedChecksum)})`);
  }
  if (!isPowerOfTwo(header.blockSize) || header.blockSize < 512) {
    throw corrupt(`${name}: dynamic header at offset ${hdrAt}: block_size ${header.blockSize} is not a power of two of at least 512`, { field: 'block_size' });
  }
  const blocksNeeded = Math.ceil(size.size / header.blockSize);
  if (size.size / header.blockSize > 0xffffffff) throw corrupt(`${name}: too many blocks for block_size ${header.blockSize}`, { field: 'block_size' });
  if (header.maxTableEntries * header.blockSize < size.size) {
    throw corrupt(
      `${name}: dynamic header at offset ${hdrAt}: max_table_entries ${header.maxTableEntries} x block_size ${header.blockSize} covers less than the ${size.size}-byte virtual size`,
      { field: 'max_table_entries' },
    );
  }
  if (header.tableOffset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw corrupt(`${name}: dynamic header table_offset 0x${header.tableOffset.toString(16)} is absurd`, { field: 'table_offset' });
  }
  const dynamic: DynamicLayout = {
    header,
    // Only the entries the virtual size can use are ever looked up; check() scans the whole table.
    bat: new Bat(src, Number(header.tableOffset), header.maxTableEntries),
    blockSize: header.blockSize,
    bitmapSize: bitmapSize(header.blockSize),
  };
  layout.dynamic = dynamic;
  const batEnd = Number(header.tableOffset) + Math.min(header.maxTableEntries, blocksNeeded) * 4;
  if (batEnd > src.size) warnings.push(`the BAT (offset ${header.tableOffset}) is cut off by the end of the file: it needs ${batEnd} bytes but the file has ${src.size}`);
  if (subformat === 'dynamic') return new VhdImage(src, name, layout);

  const locators = [];
  for (const l of header.locators) locators.push(await decodeLocator(src, l));
  layout.locators = locators;
  const parent = await openParent(ctx, name, parentCandidates(header, locators), header.parentUuid, (img) => (img instanceof VhdImage ? img.uuid : undefined));
  return new VhdImage(src, name, layout, parent);
}

export const vhdDriver: ImageDriver = {
  format: 'vpc',
  probe: probeVhd,
  open: (src, ctx) => openVhd(src, ctx),
};
