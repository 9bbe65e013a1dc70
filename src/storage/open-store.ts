// Opens the store a location lives in: S3 (and S3-compatible) and COS through the AWS SDK, a local
// directory for file://, plain HTTP(S) range reads for https:// (read-only). Connection settings
// come from StoreOptions (CLI flags) first, then the environment (see s3-store.ts).
import { FileStore } from './file-store.js';
import { HttpStore } from './http-store.js';
import type { ObjectLocation } from './location.js';
import { S3Store, type S3StoreOptions } from './s3-store.js';
import type { ObjectStore } from './store.js';

export type StoreOptions = Omit<S3StoreOptions, 'cos'>;

export function openStore(loc: ObjectLocation, opts: StoreOptions = {}): ObjectStore {
  if (loc.scheme === 'file') return new FileStore(loc.bucket);
  if (loc.scheme === 'http' || loc.scheme === 'https') return new HttpStore(loc.bucket);
  return new S3Store(loc.bucket, { ...opts, cos: loc.scheme === 'cos' });
}
