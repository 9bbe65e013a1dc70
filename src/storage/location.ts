// Object locations as users write them: `s3://bucket/key`, `cos://bucket-appid/key` (Tencent COS),
// `file:///dir/key` or `file://dir/key` (a local directory as the object store: the embedded
// default), and `https://host/dir/name` (read-only: a file on a web server or a presigned URL;
// the "bucket" is the directory URL, the key the name with any query). Parsing only; the store for a location is opened by storage/open-store.ts.
import { resolve } from 'node:path';
import { FerryError } from '../errors.js';

export type StoreScheme = 's3' | 'cos' | 'file' | 'http' | 'https';

export interface ObjectLocation {
  scheme: StoreScheme;
  /** Bucket (s3, cos) or the store's root directory (file). */
  bucket: string;
  /** Object key (no leading slash). */
  key: string;
  /** The location as given back to the user: scheme://bucket/key. */
  url: string;
}

const URL_RE = /^(s3|cos|file|https?):\/\/(.*)$/;

/** True when `text` names an object (s3://, cos://, file://) rather than a local path. */
export function isObjectUrl(text: string): boolean {
  return URL_RE.test(text);
}

function bad(text: string, why: string, remedy: string): FerryError {
  return new FerryError('USAGE', `${text}: ${why}`, { remedy });
}

/**
 * Parses an object URL. `requireKey` (default true) refuses a bare bucket. For file:// the last
 * path component is the key and everything before it the store directory.
 */
export function parseLocation(text: string, requireKey = true): ObjectLocation {
  const m = URL_RE.exec(text);
  if (!m) throw bad(text, 'not an object location', 'Write s3://BUCKET/KEY, cos://BUCKET-APPID/KEY or file:///DIR/KEY.');
  const scheme = m[1] as StoreScheme;
  const rest = m[2]!;
  if (scheme === 'http' || scheme === 'https') {
    let u: URL;
    try {
      u = new URL(text);
    } catch {
      throw bad(text, 'not a valid URL', 'Write https://HOST/PATH/NAME.');
    }
    const slash = u.pathname.lastIndexOf('/');
    const name = u.pathname.slice(slash + 1);
    if (requireKey && !name) throw bad(text, 'the URL names a directory, not a file', 'Give the URL of the image file.');
    return { scheme, bucket: `${u.origin}${u.pathname.slice(0, slash + 1)}`, key: name + u.search, url: text };
  }
  if (scheme === 'file') {
    const path = resolve(rest);
    const slash = path.lastIndexOf('/');
    const key = path.slice(slash + 1);
    const dir = path.slice(0, slash) || '/';
    if (requireKey && !key) throw bad(text, 'no object name after the directory', 'Write file:///DIR/NAME.');
    return { scheme, bucket: dir, key, url: `file://${dir === '/' ? '' : dir}/${key}` };
  }
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const key = slash < 0 ? '' : rest.slice(slash + 1);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw bad(text, `'${bucket}' is not a valid bucket name`, 'Bucket names are 3–63 characters: lower-case letters, digits, dots and hyphens.');
  }
  if (scheme === 'cos' && !/-\d+$/.test(bucket)) {
    throw bad(text, `COS bucket names end with the account's APPID ('${bucket}' has none)`, 'Write cos://BUCKETNAME-APPID/KEY, e.g. cos://images-1250000000/disk.qcow2.');
  }
  if (requireKey && !key) throw bad(text, 'no object key after the bucket', `Write ${scheme}://${bucket}/NAME.`);
  if (key.length > 1024) throw bad(text, 'the object key is longer than 1024 bytes', 'Use a shorter key.');
  return { scheme, bucket, key, url: `${scheme}://${bucket}/${key}` };
}

/** The key of the integrity manifest stored beside an object. */
export function manifestKey(key: string): string {
  return `${key}.ferry.json`;
}
