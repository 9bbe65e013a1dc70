// The parent of a differencing VHD: decoding the platform locators (W2ru/W2ku UTF-16LE Windows
// paths, MacX file URLs, the deprecated Wi2r/Wi2k), choosing candidates (relative ones first), opening
// the parent only through ctx.openBacking (policy: allowed, confined, depth-limited) and verifying
// that its unique id is the one the child was made from.
import { FerryError } from '../../errors.js';
import { readUpTo, type ByteSource } from '../../io/byte-source.js';
import type { DiskImage, OpenContext } from '../types.js';
import { decodeUtf16, type DynamicHeader, type ParentLocator } from './dynamic.js';

/** Locator data longer than this is not a path. */
const MAX_LOCATOR_BYTES = 64 * 1024;

export interface DecodedLocator {
  index: number;
  platform: string;
  /** Decoded path (as stored), or undefined when unreadable. */
  path?: string;
  problem?: string;
}

export async function decodeLocator(src: ByteSource, loc: ParentLocator): Promise<DecodedLocator> {
  const base = { index: loc.index, platform: loc.platform };
  if (loc.platform === 'Mac ') return { ...base, problem: 'Mac OS alias records cannot be resolved' };
  if (loc.dataLength === 0) return { ...base, problem: 'empty locator' };
  if (loc.dataLength > MAX_LOCATOR_BYTES) return { ...base, problem: `locator length ${loc.dataLength} is absurd` };
  if (loc.dataOffset > BigInt(src.size)) return { ...base, problem: `locator data offset ${loc.dataOffset} lies past the end of the file (${src.size})` };
  const at = Number(loc.dataOffset);
  const buf = await readUpTo(src, at, loc.dataLength);
  if (buf.length < loc.dataLength) return { ...base, problem: `locator data at ${at} (+${loc.dataLength}) is cut off by the end of the file` };
  let path: string;
  switch (loc.platform) {
    case 'W2ru':
    case 'W2ku':
      path = decodeUtf16(buf, false);
      break;
    case 'MacX': {
      const s = buf.toString('utf8').replace(/\0.*$/s, '');
      try {
        path = s.startsWith('file:') ? decodeURIComponent(new URL(s).pathname) : s;
      } catch {
        return { ...base, problem: `invalid file URL '${s}'` };
      }
      break;
    }
    case 'Wi2r':
    case 'Wi2k':
      path = buf.toString('latin1').replace(/\0.*$/s, '');
      break;
    default:
      return { ...base, problem: `unknown platform code '${loc.platform}'` };
  }
  return { ...base, path };
}

function windowsToPosix(p: string): string {
  let s = p.replace(/\\/g, '/');
  while (s.startsWith('./')) s = s.slice(2);
  return s;
}

function isWindowsAbsolute(p: string): boolean {
  return /^[A-Za-z]:\//.test(p) || p.startsWith('//');
}

/** Candidate references for the parent, best first (relative locators, then the name, then absolute ones). */
export function parentCandidates(hdr: DynamicHeader, locs: DecodedLocator[]): string[] {
  const order = ['W2ru', 'Wi2r', '', 'MacX', 'W2ku', 'Wi2k'];
  const out: string[] = [];
  const fallbacks: string[] = [];
  const add = (p: string | undefined, windows: boolean) => {
    if (!p) return;
    const s = windows ? windowsToPosix(p) : p;
    if (windows && isWindowsAbsolute(s)) {
      // A Windows drive/UNC path cannot be opened here; the file may have been copied next to the child.
      const baseName = s.slice(s.lastIndexOf('/') + 1);
      if (baseName) fallbacks.push(baseName);
      return;
    }
    if (s && !out.includes(s)) out.push(s);
  };
  for (const platform of order) {
    if (platform === '') {
      add(hdr.parentName, true);
      continue;
    }
    for (const l of locs) if (l.platform === platform) add(l.path, platform !== 'MacX');
  }
  for (const f of fallbacks) if (!out.includes(f)) out.push(f);
  return out;
}

/** Opens the parent named by `candidates` through the backing policy and checks its unique id. */
export async function openParent(
  ctx: OpenContext,
  name: string,
  candidates: string[],
  expectedUuid: string,
  uuidOf: (img: DiskImage) => string | undefined,
): Promise<{ image: DiskImage; reference: string }> {
  if (candidates.length === 0) {
    throw new FerryError('IMAGE_CORRUPT', `${name}: differencing disk names no usable parent (no parent name, no readable parent locator)`, {
      remedy: 'The parent reference is missing or damaged; repair it with the tool that made the chain (Hyper-V "Inspect Disk"/"Reconnect"), or use a merged copy.',
    });
  }
  let firstMissing: FerryError | undefined;
  for (const reference of candidates) {
    let image: DiskImage;
    try {
      image = await ctx.openBacking(reference, 'vpc', 'its parent disk');
    } catch (err) {
      if (err instanceof FerryError && err.code === 'IMAGE_BACKING_MISSING') {
        firstMissing ??= err;
        continue;
      }
      throw err;
    }
    const uuid = uuidOf(image);
    if (uuid !== expectedUuid) {
      await image.close();
      throw new FerryError(
        'IMAGE_CORRUPT',
        `${name}: parent disk '${reference}' has unique id ${uuid ?? 'unknown'}, but this differencing disk was made from a parent with unique id ${expectedUuid}`,
        {
          remedy:
            'The parent was replaced or modified (or a different file carries its name). Reading the child over it would give a corrupted disk. ' +
            'Put the original parent next to the child, or use a merged copy made where the right parent is present.',
          details: { reference, parentUuid: uuid, expectedParentUuid: expectedUuid },
        },
      );
    }
    return { image, reference };
  }
  throw new FerryError('IMAGE_BACKING_MISSING', `${name}: parent disk not found (tried ${candidates.map((c) => `'${c}'`).join(', ')})`, {
    remedy: 'Copy the parent VHD next to the differencing disk (it is part of the disk), then retry.',
    details: { candidates, cause: firstMissing?.message },
  });
}
