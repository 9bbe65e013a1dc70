// Opening an image: detection by content (never by name), dispatch to the format's driver, the
// policy for host-path references (extent files confined to the image's directory, backing files
// only when allowed, with a depth limit and loop detection), and OVA containers.
import { dirname, isAbsolute, relative, resolve, sep } from 'node:path';
import { realpath } from 'node:fs/promises';
import { FerryError, fromSystemError } from '../errors.js';
import { FileSource, readUpTo, type ByteSource } from '../io/byte-source.js';
import { DRIVERS } from './drivers.js';
import { isOva, openOvaDisk } from './ova.js';
import { detectForeign } from './probe.js';
import { rawDriver } from './raw.js';
import type { DiskImage, ImageDriver, ImageFormat, OpenContext, OpenOptions, ProbeInput } from './types.js';
import { SUPPORTED_FORMATS } from './types.js';

export const DEFAULT_MAX_CHAIN_DEPTH = 16;
const PROBE_HEAD = 64 * 1024;
const PROBE_TAIL = 1024;

export async function readProbeInput(src: ByteSource): Promise<ProbeInput> {
  const head = await readUpTo(src, 0, PROBE_HEAD);
  const tailStart = Math.max(0, src.size - PROBE_TAIL);
  const tail = await readUpTo(src, tailStart, src.size - tailStart);
  return { head, tail, size: src.size };
}

export interface Detection {
  driver: ImageDriver;
  /** Set when the file is an OVA container. */
  ova?: boolean;
}

/** Detects the format of `src` by content; throws IMAGE_UNSUPPORTED_FORMAT / IMAGE_UNKNOWN_FORMAT. */
export function detect(input: ProbeInput, name: string): Detection {
  let best: ImageDriver | undefined;
  let bestScore = 0;
  for (const d of DRIVERS) {
    const score = d.probe(input);
    if (score > bestScore) {
      best = d;
      bestScore = score;
    }
  }
  if (best && bestScore > 1) return { driver: best };
  if (isOva(input)) return { driver: rawDriver, ova: true };
  const foreign = detectForeign(input);
  if (foreign) {
    throw new FerryError('IMAGE_UNSUPPORTED_FORMAT', `${name}: this is a ${foreign.name}, which Ferry does not import (supported: qcow2, vpc/VHD, vmdk, raw)`, {
      remedy: foreign.remedy.charAt(0).toUpperCase() + foreign.remedy.slice(1) + '.',
      details: { detectedFormat: foreign.id },
    });
  }
  if (input.size === 0) {
    throw new FerryError('IMAGE_UNKNOWN_FORMAT', `${name}: the file is empty`, {
      remedy: 'An empty file is no disk image: the copy or export that produced it failed. Produce it again.',
      details: { detectedFormat: 'empty' },
    });
  }
  if (input.size % 512 !== 0) {
    throw new FerryError(
      'IMAGE_UNKNOWN_FORMAT',
      `${name}: unknown data: no disk image signature found, and its size (${input.size} bytes) is not a whole number of 512-byte sectors, so it is not a raw disk either`,
      {
        remedy:
          'Check that this is the disk image and that it was copied completely (compare its size with the original). ' +
          'If it really is a raw disk, pass `--format raw`.',
        details: { detectedFormat: 'unknown', size: input.size },
      },
    );
  }
  return { driver: rawDriver };
}

interface ChainState {
  options: Required<Pick<OpenOptions, 'allowBacking' | 'maxChainDepth'>>;
  /** Real paths already opened in this chain (loop detection). */
  seen: Set<string>;
}

/** Resolves `reference` against `baseDir` and refuses anything outside it (symlinks included). */
export async function confine(baseDir: string, reference: string, what: string, imageName: string): Promise<string> {
  const refused = (why: string) =>
    new FerryError('IMAGE_PATH_REFUSED', `${imageName}: ${what} refers to '${reference}', ${why}; Ferry refuses to read it`, {
      remedy:
        'Referenced files must lie in the same directory as the image (or below it). Copy them next to the image ' +
        'and fix the reference, or flatten the image into a single file with `qemu-img convert` (or `ferry image convert`).',
      details: { reference, baseDir },
    });
  if (reference.length === 0 || reference.includes('\0')) throw refused('an empty or invalid path');
  const realBase = await realpath(baseDir);
  const candidate = isAbsolute(reference) ? reference : resolve(realBase, reference);
  const lexical = relative(realBase, resolve(candidate));
  if (lexical.startsWith('..') || isAbsolute(lexical)) throw refused(`a path outside the image's directory ${realBase}`);
  let real: string;
  try {
    real = await realpath(candidate);
  } catch (err) {
    const e = fromSystemError(err, candidate);
    if (e.code === 'FILE_NOT_FOUND') {
      throw new FerryError('IMAGE_BACKING_MISSING', `${imageName}: ${what} '${reference}' does not exist (looked for ${candidate})`, {
        remedy: `Copy ${what} next to the image (it is part of the disk), then retry.`,
        details: { reference, resolved: candidate },
      });
    }
    throw e;
  }
  if (real !== realBase && !real.startsWith(realBase + sep)) throw refused(`which resolves (through a symbolic link) to ${real}, outside ${realBase}`);
  return real;
}

async function openWithState(path: string, format: ImageFormat | undefined, depth: number, state: ChainState): Promise<DiskImage> {
  let real: string;
  try {
    real = await realpath(path);
  } catch (err) {
    throw fromSystemError(err, path);
  }
  if (state.seen.has(real)) {
    throw new FerryError('IMAGE_CORRUPT', `${path}: the backing chain loops back to ${real}`, {
      remedy: 'The backing references form a cycle; the image chain is broken. Rebuild it from a good copy.',
    });
  }
  state.seen.add(real);
  const src = await FileSource.open(path);
  try {
    return await openSource(src, path, format, depth, state);
  } catch (err) {
    await src.close();
    throw err;
  }
}

async function openSource(src: ByteSource, path: string, format: ImageFormat | undefined, depth: number, state: ChainState): Promise<DiskImage> {
  const input = await readProbeInput(src);
  let driver: ImageDriver;
  if (format) {
    const forced = format === 'raw' ? rawDriver : DRIVERS.find((d) => d.format === format);
    if (!forced || !SUPPORTED_FORMATS.includes(format)) {
      throw new FerryError('USAGE', `unknown format '${format}'`, { remedy: `Use one of: ${SUPPORTED_FORMATS.join(', ')}.` });
    }
    if (format !== 'raw' && forced.probe(input) === 0) {
      let detected = 'something else';
      try {
        const d = detect(input, path);
        detected = d.ova ? 'ova' : d.driver.format;
      } catch (err) {
        if (err instanceof FerryError && typeof err.details?.detectedFormat === 'string') detected = err.details.detectedFormat;
      }
      throw new FerryError('IMAGE_FORMAT_MISMATCH', `${path}: --format ${format} was given, but the file is not ${format} (it looks like ${detected})`, {
        remedy: 'Drop --format to let Ferry detect the format from the content, or give the right file.',
        details: { requestedFormat: format, detectedFormat: detected },
      });
    }
    driver = forced;
  } else {
    const detection = detect(input, path);
    if (detection.ova) return openOvaDisk(src, path, (inner, innerName) => openSource(inner, innerName, undefined, depth, state));
    driver = detection.driver;
  }
  const baseDir = dirname(path);
  const ctx: OpenContext = {
    path,
    options: state.options,
    depth,
    openReferencedFile: async (reference, what) => FileSource.open(await confine(baseDir, reference, what, path)),
    openBacking: async (reference, backingFormat, what) => {
      if (!state.options.allowBacking) {
        throw new FerryError('IMAGE_BACKING_REFUSED', `${path}: the image depends on ${what} '${reference}'; Ferry does not follow backing files unless allowed`, {
          remedy:
            'If you trust this image, pass --allow-backing (the backing file must be in the same directory as the image). ' +
            'Or flatten it into a standalone image first: `qemu-img convert -O qcow2 IMAGE FLAT.qcow2`.',
          details: { reference },
        });
      }
      if (depth + 1 > state.options.maxChainDepth) {
        throw new FerryError('IMAGE_CHAIN_TOO_DEEP', `${path}: the backing chain is deeper than ${state.options.maxChainDepth} images`, {
          remedy: 'Flatten the chain with `qemu-img convert` (commit the overlays), then import the result.',
          details: { maxChainDepth: state.options.maxChainDepth },
        });
      }
      const resolved = await confine(baseDir, reference, what, path);
      return openWithState(resolved, backingFormat, depth + 1, state);
    },
  };
  return driver.open(src, ctx);
}

/** Opens the image at `path` read-only. */
export async function openImage(path: string, options: OpenOptions = {}): Promise<DiskImage> {
  const state: ChainState = {
    options: {
      allowBacking: options.allowBacking ?? false,
      maxChainDepth: options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH,
    },
    seen: new Set(),
  };
  return openWithState(path, options.format, 0, state);
}

/**
 * Opens an image from a byte source that is not a local file (an object in a store). It has no
 * directory, so references to other files (backing files, VMDK extent files) are refused.
 */
export async function openImageSource(src: ByteSource, options: Pick<OpenOptions, 'format'> = {}): Promise<DiskImage> {
  const state: ChainState = { options: { allowBacking: false, maxChainDepth: 0 }, seen: new Set() };
  const input = await readProbeInput(src);
  let driver: ImageDriver;
  if (options.format) {
    driver = options.format === 'raw' ? rawDriver : (DRIVERS.find((d) => d.format === options.format) ?? rawDriver);
    if (options.format !== 'raw' && driver.probe(input) === 0) {
      throw new FerryError('IMAGE_FORMAT_MISMATCH', `${src.name}: --format ${options.format} was given, but the object is not ${options.format}`, {
        remedy: 'Drop --format to let Ferry detect the format from the content.',
        details: { requestedFormat: options.format },
      });
    }
  } else {
    const detection = detect(input, src.name);
    if (detection.ova) return openOvaDisk(src, src.name, (inner) => openImageSource(inner));
    driver = detection.driver;
  }
  const refuse = (reference: string, what: string): never => {
    throw new FerryError('IMAGE_PATH_REFUSED', `${src.name}: the image refers to ${what} '${reference}', which an object in storage cannot have`, {
      remedy: 'Upload a self-contained image: flatten it first (`ferry image convert IMAGE FLAT.qcow2`, or `ferry upload IMAGE DEST --to qcow2`), which folds backing files and extents in.',
      details: { reference },
    });
  };
  const ctx: OpenContext = {
    path: src.name,
    options: state.options,
    depth: 0,
    openReferencedFile: async (reference, what) => refuse(reference, what),
    openBacking: async (reference, _format, what) => refuse(reference, what),
  };
  return driver.open(src, ctx);
}
