// OVA containers: a tar archive whose first member is the .ovf descriptor, followed by the manifest
// and the disks. Detection (ustar magic + first member *.ovf), a bounded walk over the tar headers
// (octal or base-256 sizes, pax and GNU long names), and opening the first disk member in place
// through a SliceSource; compressed disks are refused with the `tar -xf` command to extract them.
import { corrupt, FerryError, truncated } from '../errors.js';
import { readExact, readUpTo, SliceSource, type ByteSource } from '../io/byte-source.js';
import { DRIVERS } from './drivers.js';
import type { CheckReport, DiskImage, ImageInfo, ProbeInput, Segment } from './types.js';

const BLOCK = 512;
/** Bound on the number of tar members walked. */
const MAX_MEMBERS = 100000;
/** Bound on pax / GNU long-name data and on the .ovf text read. */
const MAX_META = 1024 * 1024;

export interface TarMember {
  name: string;
  /** Byte offset of the member's data in the archive. */
  offset: number;
  size: number;
  /** tar typeflag ('0' regular file, '5' directory, …). */
  type: string;
}

const cstr = (buf: Buffer, at: number, len: number): string => {
  const part = buf.subarray(at, at + len);
  const nul = part.indexOf(0);
  return part.subarray(0, nul < 0 ? part.length : nul).toString('utf8');
};

function hasUstarMagic(h: Buffer): boolean {
  return h.length >= 512 && h.toString('latin1', 257, 262) === 'ustar';
}

/** Parses a tar numeric field: octal text, or base-256 (high bit of the first byte set). */
function tarNumber(h: Buffer, at: number, len: number): number {
  if ((h[at]! & 0x80) !== 0) {
    let v = BigInt(h[at]! & 0x7f);
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(h[at + i]!);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : -1;
  }
  const text = h.toString('latin1', at, at + len).replace(/\0.*$/s, '').trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) return -1;
  const v = parseInt(text, 8);
  return Number.isSafeInteger(v) ? v : -1;
}

function checksumOk(h: Buffer): boolean {
  const stored = tarNumber(h, 148, 8);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  return stored === sum;
}

function headerName(h: Buffer): string {
  const name = cstr(h, 0, 100);
  const prefix = hasUstarMagic(h) ? cstr(h, 345, 155) : '';
  return prefix ? `${prefix}/${name}` : name;
}

/** Parses pax extended header records ("LEN key=value\n"). */
function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let pos = 0;
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos);
    if (sp < 0) break;
    const len = parseInt(data.toString('latin1', pos, sp), 10);
    if (!Number.isSafeInteger(len) || len <= 0 || pos + len > data.length) break;
    const rec = data.toString('utf8', sp + 1, pos + len).replace(/\n$/, '');
    const eq = rec.indexOf('=');
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    pos += len;
  }
  return out;
}

/** True when the probe input looks like an OVA: a ustar archive whose first file is an .ovf. */
export function isOva(input: ProbeInput): boolean {
  const { head } = input;
  let pos = 0;
  let longName: string | undefined;
  // Skip pax / GNU long-name headers that precede the first file, as far as the head reaches.
  for (let i = 0; i < 4 && pos + BLOCK <= head.length; i++) {
    const h = head.subarray(pos, pos + BLOCK);
    if (!hasUstarMagic(h) || !checksumOk(h)) return false;
    const type = String.fromCharCode(h[156]!);
    const size = tarNumber(h, 124, 12);
    if (size < 0) return false;
    if (type === 'x' || type === 'g' || type === 'L') {
      const data = head.subarray(pos + BLOCK, Math.min(head.length, pos + BLOCK + size));
      if (type === 'x') longName = parsePax(data)['path'] ?? longName;
      if (type === 'L') longName = cstr(data, 0, data.length);
      pos += BLOCK + Math.ceil(size / BLOCK) * BLOCK;
      continue;
    }
    return (longName ?? headerName(h)).toLowerCase().endsWith('.ovf');
  }
  return false;
}

/** Lists the members of the tar archive in `src` (bounded by its size). */
export async function listTar(src: ByteSource): Promise<TarMember[]> {
  const out: TarMember[] = [];
  let pos = 0;
  let pending: { name?: string; size?: number } = {};
  while (pos + BLOCK <= src.size) {
    if (out.length >= MAX_MEMBERS) throw corrupt(`${src.name}: the archive has more than ${MAX_MEMBERS} members`, { field: 'tar' });
    const h = await readExact(src, pos, BLOCK, `tar header at offset ${pos}`);
    if (h.every((b) => b === 0)) break;
    if (!checksumOk(h)) throw corrupt(`${src.name}: the tar header at offset ${pos} has a bad checksum`, { field: 'tar header checksum', offset: pos });
    const type = h[156] === 0 ? '0' : String.fromCharCode(h[156]!);
    let size = tarNumber(h, 124, 12);
    if (size < 0) throw corrupt(`${src.name}: the tar header at offset ${pos} has an invalid size field`, { field: 'tar size', offset: pos });
    const dataOffset = pos + BLOCK;
    if (type === 'x' || type === 'g' || type === 'L' || type === 'K') {
      if (size > MAX_META) throw corrupt(`${src.name}: the tar extended header at offset ${pos} is ${size} bytes`, { field: 'tar extended header', offset: pos });
      const data = await readExact(src, dataOffset, size, `tar extended header at offset ${pos}`);
      if (type === 'x') {
        const pax = parsePax(data);
        if (pax['path'] !== undefined) pending.name = pax['path'];
        if (pax['size'] !== undefined && /^\d+$/.test(pax['size'])) pending.size = Number(pax['size']);
      } else if (type === 'L') pending.name = cstr(data, 0, data.length);
      pos = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
      continue;
    }
    if (pending.size !== undefined && Number.isSafeInteger(pending.size)) size = pending.size;
    const name = pending.name ?? headerName(h);
    pending = {};
    if (dataOffset + size > src.size) {
      throw truncated(`${src.name}: tar member '${name}' (data at ${dataOffset}, ${size} bytes)`, dataOffset + size, src.size, { member: name });
    }
    out.push({ name, offset: dataOffset, size, type });
    pos = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
  }
  return out;
}

/** hrefs of disk files the .ovf declares as compressed (ovf:compression="gzip"). */
function compressedHrefs(ovf: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of ovf.matchAll(/<(?:\w+:)?File\b[^>]*>/g)) {
    const tag = m[0];
    const href = /\b(?:\w+:)?href\s*=\s*"([^"]*)"/.exec(tag)?.[1];
    const comp = /\b(?:\w+:)?compression\s*=\s*"([^"]*)"/.exec(tag)?.[1];
    if (href && comp && comp !== 'identity') out.set(href, comp);
  }
  return out;
}

const shellQuote = (s: string) => (/^[\w./:@+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
const extractCmd = (path: string, member: string) => `tar -xf ${shellQuote(path)} ${shellQuote(member)}`;

async function looksLikeImage(src: ByteSource, m: TarMember): Promise<'image' | 'gzip' | 'other'> {
  const head = await readUpTo(src, m.offset, Math.min(m.size, 64 * 1024));
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  const tailStart = Math.max(0, m.size - 1024);
  const tail = await readUpTo(src, m.offset + tailStart, m.size - tailStart);
  const input: ProbeInput = { head, tail, size: m.size };
  return DRIVERS.some((d) => d.format !== 'raw' && d.probe(input) > 1) ? 'image' : 'other';
}

/** A DiskImage inside an OVA: delegates to the disk and adds the container to info(). */
class OvaDisk implements DiskImage {
  readonly format;
  readonly virtualSize;
  readonly name;
  constructor(
    private readonly inner: DiskImage,
    private readonly container: { path: string; member: string; disks: string[]; warnings: string[] },
  ) {
    this.format = inner.format;
    this.virtualSize = inner.virtualSize;
    this.name = inner.name;
  }
  map(offset: number, length: number): Promise<Segment[]> {
    return this.inner.map(offset, length);
  }
  async info(): Promise<ImageInfo> {
    const info = await this.inner.info();
    const warnings = [...(info.warnings ?? []), ...this.container.warnings];
    return {
      ...info,
      details: { ...(info.details ?? {}), container: 'ova', containerPath: this.container.path, member: this.container.member, disks: this.container.disks },
      ...(warnings.length ? { warnings } : {}),
    };
  }
  check(): Promise<CheckReport> {
    return this.inner.check();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Opens the first disk of the OVA in `src` through `openInner`. */
export async function openOvaDisk(
  src: ByteSource,
  path: string,
  openInner: (inner: ByteSource, innerName: string) => Promise<DiskImage>,
): Promise<DiskImage> {
  const members = (await listTar(src)).filter((m) => m.type === '0' || m.type === '7');
  const ovfMember = members.find((m) => m.name.toLowerCase().endsWith('.ovf'));
  const declared = ovfMember ? compressedHrefs((await readUpTo(src, ovfMember.offset, Math.min(ovfMember.size, MAX_META))).toString('utf8')) : new Map<string, string>();
  const candidates: { m: TarMember; compression?: string }[] = [];
  for (const m of members) {
    const lower = m.name.toLowerCase();
    if (lower.endsWith('.ovf') || lower.endsWith('.mf') || lower.endsWith('.cert') || m.size === 0) continue;
    const comp = declared.get(m.name) ?? declared.get(m.name.split('/').pop()!);
    const kind = await looksLikeImage(src, m);
    if (kind === 'image' && !comp) candidates.push({ m });
    else if (comp || kind === 'gzip') candidates.push({ m, compression: comp ?? 'gzip' });
    else if (lower.endsWith('.vmdk')) candidates.push({ m });
  }
  if (candidates.length === 0) {
    throw new FerryError('IMAGE_UNSUPPORTED_FORMAT', `${path}: this OVA holds no disk image Ferry can read (members: ${members.map((m) => m.name).join(', ') || 'none'})`, {
      remedy: `List its contents with \`tar -tvf ${shellQuote(path)}\`, extract the disk with \`tar -xf ${shellQuote(path)} NAME\` and import that file.`,
      details: { container: 'ova', members: members.map((m) => m.name) },
    });
  }
  const head = candidates[0]!;
  if (head.compression) {
    const base = head.m.name.split('/').pop()!;
    throw new FerryError(
      'IMAGE_UNSUPPORTED_FORMAT',
      `${path}: the OVA's disk '${head.m.name}' is stored compressed (${head.compression}) inside the archive; Ferry cannot read it in place`,
      {
        remedy:
          `Extract it with \`${extractCmd(path, head.m.name)}\`, decompress it (\`gunzip -c ${shellQuote(base)} > DISK.vmdk\`, or re-export the OVA ` +
          'without compression), and import the resulting disk.',
        details: { container: 'ova', member: head.m.name, compression: head.compression, command: extractCmd(path, head.m.name) },
      },
    );
  }
  const disks = candidates.map((c) => c.m);
  const first = disks[0]!;
  const innerName = `${path}:${first.name}`;
  const warnings: string[] = [];
  if (disks.length > 1) {
    warnings.push(
      `the OVA holds ${disks.length} disks; Ferry opened the first (${first.name}). Extract the others to import them: ` +
        disks.slice(1).map((d) => `\`${extractCmd(path, d.name)}\``).join(', '),
    );
  }
  const inner = await openInner(new SliceSource(src, first.offset, first.size, innerName, true), innerName);
  return new OvaDisk(inner, { path, member: first.name, disks: disks.map((d) => d.name), warnings });
}
