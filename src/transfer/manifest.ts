// The Ferry manifest stored beside every uploaded object (KEY.ferry.json): what the object is
// (format, virtual size), how it was uploaded (size, ETag, part size and part MD5s), and the
// digest of its virtual content (transfer/content-hash.ts), so that a download, an import or
// `ferry verify` can prove later that the bytes are intact — structure checks cannot see damaged
// data, and an object's ETag says nothing about the disk inside it.
import { FerryError } from '../errors.js';
import { manifestKey } from '../storage/location.js';
import type { ObjectInfo, ObjectStore } from '../storage/store.js';
import type { ContentDigest } from './content-hash.js';

export interface Manifest {
  ferry: 'manifest';
  version: 1;
  tool: string;
  created: string;
  object: {
    key: string;
    size: number;
    etag: string;
    partSize: number;
    /** Size of part 1 (it may be larger than the others: image metadata is held in it). */
    firstPartSize: number;
    partMd5: string[];
  };
  image: { format: string; subformat?: string; virtualSize: number };
  content: ContentDigest;
  source: { name: string; format: string; virtualSize: number };
}

/** Metadata names Ferry puts on an uploaded object (x-amz-meta-…; kept far below the 2 KiB limits). */
export const META = {
  token: 'ferry-upload-token',
  format: 'ferry-format',
  virtualSize: 'ferry-virtual-size',
  manifest: 'ferry-manifest',
} as const;

export async function writeManifest(store: ObjectStore, m: Manifest): Promise<void> {
  await store.put(manifestKey(m.object.key), Buffer.from(JSON.stringify(m, null, 1) + '\n'), 'application/json');
}

/** The manifest of `key`, or undefined when there is none. Throws on a manifest that is not one. */
export async function readManifest(store: ObjectStore, key: string): Promise<Manifest | undefined> {
  const mkey = manifestKey(key);
  const info = await store.head(mkey);
  if (!info) return undefined;
  if (info.size > 64 * 1024 * 1024) throw badManifest(store, mkey, `it is ${info.size} bytes long`);
  const text = (await store.getRange(mkey, 0, info.size)).toString('utf8');
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch {
    throw badManifest(store, mkey, 'it is not JSON');
  }
  if (m?.ferry !== 'manifest' || m.version !== 1 || !m.object || !m.content || !Array.isArray(m.content.chunks)) throw badManifest(store, mkey, 'it is not a Ferry manifest of version 1');
  return m;
}

/**
 * Checks an object's size and ETag against its manifest: UPLOAD_INCOMPLETE when the size differs
 * (truncated or replaced), CHECKSUM_MISMATCH when the ETag does (replaced after the upload).
 */
export function checkObjectAgainstManifest(url: string, info: ObjectInfo, m: Manifest): void {
  if (info.size !== m.object.size) {
    throw new FerryError('UPLOAD_INCOMPLETE', `${url}: the object is ${info.size} bytes, but the upload recorded ${m.object.size}`, {
      remedy: 'The object is truncated or was replaced after the upload: upload the image again.',
      details: { size: info.size, expected: m.object.size },
    });
  }
  if (info.etag && m.object.etag && info.etag !== m.object.etag) {
    throw new FerryError('CHECKSUM_MISMATCH', `${url}: the object's ETag ${info.etag} is not the one the upload recorded (${m.object.etag})`, {
      remedy: 'The object was replaced after the upload: upload the image again.',
    });
  }
}

/** Throws CHECKSUM_MISMATCH naming the first damaged chunk when `got` is not the manifest's content. */
export function checkContentAgainstManifest(got: ContentDigest, m: Manifest, what: string, remedy: string): void {
  if (got.digest === m.content.digest) return;
  const bad = got.chunks.findIndex((h, i) => h !== m.content.chunks[i]);
  throw new FerryError('CHECKSUM_MISMATCH', `${what}: the disk content differs from what was uploaded, first in chunk ${bad} (virtual bytes ${bad * got.chunkSize}..${(bad + 1) * got.chunkSize})`, {
    remedy,
    details: { chunk: bad, offset: bad * got.chunkSize },
  });
}

function badManifest(store: ObjectStore, key: string, why: string): FerryError {
  return new FerryError('CHECKSUM_MISMATCH', `${store.name}/${key}: the manifest is unreadable: ${why}`, {
    remedy: 'The manifest was damaged or replaced; upload the image again with `ferry upload` to store a new one.',
  });
}
