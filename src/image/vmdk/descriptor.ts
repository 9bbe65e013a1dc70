// VMDK text descriptor: recognising one (probe), and parsing it into header fields (version, CID,
// parentCID, createType, parentFileNameHint), extent lines and the disk database (ddb.*). Pure
// functions over bytes; no file access (extent files are opened by index.ts through the context).
import { corrupt } from '../../errors.js';

/** Descriptors larger than this are refused (real ones are a few hundred bytes). */
export const MAX_DESCRIPTOR_SIZE = 1024 * 1024;
/** Bound on the number of extent lines (a 62 TiB twoGbMaxExtent disk has ~31 000). */
export const MAX_EXTENTS = 32768;

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';
export type ExtentType = 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'VMFSRDM' | 'VMFSRAW' | 'SESPARSE';
const EXTENT_TYPES: readonly string[] = ['FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'VMFSRDM', 'VMFSRAW', 'SESPARSE'];

export interface ExtentLine {
  /** 1-based line number in the descriptor, for messages. */
  line: number;
  access: ExtentAccess;
  /** Size in 512-byte sectors. */
  sectors: number;
  type: ExtentType;
  /** File name as written (absent for ZERO extents). */
  file?: string;
  /** Start offset inside the file, in sectors (FLAT/VMFS). */
  offset: number;
}

export interface Descriptor {
  version?: string;
  cid?: string;
  parentCid?: string;
  createType?: string;
  parentFileNameHint?: string;
  encoding?: string;
  extents: ExtentLine[];
  /** All key = value pairs, including ddb.* entries, quotes removed. */
  fields: Record<string, string>;
}

/** True when `buf` plausibly starts with a VMDK text descriptor (a standalone descriptor file). */
export function looksLikeDescriptor(buf: Buffer): boolean {
  if (buf.length < 16) return false;
  const window = buf.subarray(0, Math.min(buf.length, 4096));
  const text = window.toString('latin1');
  if (text.startsWith('# Disk DescriptorFile')) return true;
  // Otherwise: mostly printable text holding both a createType and a version line.
  let nul = window.indexOf(0);
  if (nul < 0) nul = window.length;
  const body = text.slice(0, nul);
  let bad = 0;
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if (c < 9 || (c > 13 && c < 32)) bad++;
  }
  if (bad > 0) return false;
  return /^\s*createType\s*=/m.test(body) && /^\s*version\s*=\s*\d/m.test(body);
}

function unquote(v: string): string {
  const t = v.trim();
  return t.length >= 2 && t.startsWith('"') && t.endsWith('"') ? t.slice(1, -1) : t;
}

const EXTENT_RE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)")?(?:\s+(\d+))?\s*$/;

/**
 * Parses descriptor text. `where` names the file (and offset) in messages. Unknown lines are ignored
 * (as VMware and qemu do); malformed extent lines are errors.
 */
export function parseDescriptor(bytes: Buffer, where: string): Descriptor {
  if (bytes.length > MAX_DESCRIPTOR_SIZE) {
    throw corrupt(`${where}: the VMDK descriptor is ${bytes.length} bytes, more than the ${MAX_DESCRIPTOR_SIZE}-byte limit`, {
      field: 'descriptor',
      size: bytes.length,
    });
  }
  // Embedded descriptors are NUL-padded: the text ends at the first NUL.
  const nul = bytes.indexOf(0);
  const raw = nul >= 0 ? bytes.subarray(0, nul) : bytes;
  let text = raw.toString('utf8');
  const enc = /^\s*encoding\s*=\s*"?([^"\r\n]*)"?/m.exec(raw.toString('latin1'))?.[1]?.trim().toLowerCase();
  if (enc && enc !== 'utf-8' && enc !== 'utf8') text = raw.toString('latin1');
  const d: Descriptor = { extents: [], fields: {} };
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '').trim();
    if (line.length === 0 || line.startsWith('#')) continue;
    const m = EXTENT_RE.exec(line);
    if (m) {
      if (d.extents.length >= MAX_EXTENTS) {
        throw corrupt(`${where}: the descriptor lists more than ${MAX_EXTENTS} extents`, { field: 'extents', line: i + 1 });
      }
      const type = m[3]!.toUpperCase();
      if (!EXTENT_TYPES.includes(type)) {
        throw corrupt(`${where}: descriptor line ${i + 1}: unknown extent type '${m[3]}' in "${line}"`, { field: 'extent type', line: i + 1 });
      }
      const sectors = Number(m[2]);
      const offset = m[5] === undefined ? 0 : Number(m[5]);
      if (!Number.isSafeInteger(sectors) || sectors <= 0 || sectors * 512 > Number.MAX_SAFE_INTEGER || !Number.isSafeInteger(offset * 512)) {
        throw corrupt(`${where}: descriptor line ${i + 1}: impossible extent size or offset in "${line}"`, { field: 'extent sectors', line: i + 1 });
      }
      if (type !== 'ZERO' && m[4] === undefined) {
        throw corrupt(`${where}: descriptor line ${i + 1}: ${type} extent without a file name in "${line}"`, { field: 'extent file', line: i + 1 });
      }
      if ((type === 'SPARSE' || type === 'VMFSSPARSE' || type === 'ZERO') && m[5] !== undefined && offset !== 0) {
        throw corrupt(`${where}: descriptor line ${i + 1}: ${type} extents take no offset: "${line}"`, { field: 'extent offset', line: i + 1 });
      }
      d.extents.push({
        line: i + 1,
        access: m[1] as ExtentAccess,
        sectors,
        type: type as ExtentType,
        ...(m[4] !== undefined ? { file: m[4] } : {}),
        offset,
      });
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq).trim();
    const value = unquote(line.slice(eq + 1));
    d.fields[key] = value;
    switch (key) {
      case 'version':
        d.version = value;
        break;
      case 'CID':
        d.cid = value.toLowerCase();
        break;
      case 'parentCID':
        d.parentCid = value.toLowerCase();
        break;
      case 'createType':
        d.createType = value;
        break;
      case 'parentFileNameHint':
        d.parentFileNameHint = value;
        break;
      case 'encoding':
        d.encoding = value;
        break;
      default:
        break;
    }
  }
  return d;
}

/** True when the descriptor names a parent (differencing / delta disk). */
export function hasParent(d: Descriptor): boolean {
  return d.parentFileNameHint !== undefined && d.parentFileNameHint.length > 0;
}
