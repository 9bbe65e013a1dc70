// A read-only "store" for images published over HTTP(S): `https://host/path/disk.qcow2` (a web
// server, a CDN, a public or presigned bucket URL). HEAD gives the size, Range GETs give the bytes
// (the server must answer ranges with 206; a server that does not is named), a manifest is looked
// for beside the file (`disk.qcow2.ferry.json`; absent or refused means none). Transient failures
// (connection reset, 5xx, 429) are retried with backoff. TLS is verified against the system's CAs
// plus NODE_EXTRA_CA_CERTS (for private CAs and self-signed servers).
import { FerryError } from '../errors.js';
import type { ObjectInfo, ObjectStore } from './store.js';

const ATTEMPTS = 5;
const MANIFEST_SUFFIX = '.ferry.json';

function readOnly(url: string): FerryError {
  return new FerryError('USAGE', `${url}: HTTP(S) locations are read-only: Ferry can import from them, not upload to them`, {
    remedy: 'Upload to s3://, cos:// or file:// instead.',
  });
}

/** The S3-style ETag (MD5 hex, or MD5-of-MD5s-N) a server sends, else '' (web servers' ETags are their own). */
function s3Etag(header: string | null): string {
  const t = (header ?? '').replace(/^W\//, '').replace(/"/g, '');
  return /^[0-9a-f]{32}(-\d+)?$/.test(t) ? t : '';
}

function networkError(url: string, err: unknown): FerryError {
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  const code = cause?.code ?? '';
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) {
    return new FerryError('STORAGE_UNREACHABLE', `${url}: the server's TLS certificate is not trusted (${code})`, {
      remedy: 'Use the server name its certificate is for; for a private CA or a self-signed server, point NODE_EXTRA_CA_CERTS at its CA certificate (PEM).',
      cause: err,
    });
  }
  return new FerryError('STORAGE_UNREACHABLE', `${url}: cannot reach the server (${code || cause?.message || (err as Error).message})`, {
    remedy: 'Check the URL, the network and any proxy or firewall between here and the server.',
    cause: err,
  });
}

function httpError(url: string, status: number, what: string): FerryError {
  if (status === 404 || status === 410) {
    return new FerryError('OBJECT_NOT_FOUND', `${url}: no such file on the server (HTTP ${status})`, {
      remedy: 'Check the URL (paths are case-sensitive); a presigned URL may have expired.',
    });
  }
  if (status === 401 || status === 403) {
    return new FerryError('ACCESS_DENIED', `${url}: the server refused access (HTTP ${status})`, {
      remedy: 'Check that the URL is public, or use a fresh presigned URL (they expire).',
    });
  }
  if (status === 429) {
    return new FerryError('STORAGE_THROTTLED', `${url}: the server keeps asking to slow down (HTTP 429)`, {
      remedy: 'Try again later.',
    });
  }
  return new FerryError('STORAGE_ERROR', `${url}: ${what} failed with HTTP ${status}`, {
    remedy: 'The server had a problem: try again later, or download the file and import it from disk.',
  });
}

const retryable = (status: number) => status === 429 || status >= 500;

export class HttpStore implements ObjectStore {
  readonly name: string;
  bytesRead = 0;

  /** `base`: the URL of the directory (ending in '/'), keys are names in it (with any query). */
  constructor(private readonly base: string) {
    this.name = base.replace(/\/$/, '');
  }

  private url(key: string): string {
    // A manifest beside a file whose URL has a query (presigned): the query is the file's only.
    if (key.endsWith(MANIFEST_SUFFIX) && key.includes('?')) key = key.slice(0, key.indexOf('?')) + MANIFEST_SUFFIX;
    return this.base + key;
  }

  private async request(url: string, init: RequestInit, what: string): Promise<Response> {
    let last: unknown;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(8000, 250 * 2 ** attempt)));
      try {
        const res = await fetch(url, init);
        if (retryable(res.status) && attempt < ATTEMPTS - 1) {
          await res.body?.cancel();
          last = httpError(url, res.status, what);
          continue;
        }
        return res;
      } catch (err) {
        if ((init.signal as AbortSignal | undefined)?.aborted) throw err;
        last = networkError(url, err);
        // A certificate problem does not go away by retrying.
        if (/not trusted/.test((last as FerryError).message)) throw last;
      }
    }
    throw last;
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const url = this.url(key);
    const res = await this.request(url, { method: 'HEAD' }, 'HEAD');
    if (res.status === 404 || res.status === 410) return undefined;
    // A refused manifest (e.g. beside a presigned URL) is no manifest.
    if (key.endsWith(MANIFEST_SUFFIX) && (res.status === 401 || res.status === 403)) return undefined;
    if (!res.ok) throw httpError(url, res.status, 'HEAD');
    const length = Number(res.headers.get('content-length') ?? NaN);
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new FerryError('STORAGE_ERROR', `${url}: the server does not say how large the file is (no Content-Length)`, {
        remedy: 'Download the file (curl -O) and import it from disk.',
      });
    }
    if (!key.endsWith(MANIFEST_SUFFIX) && (res.headers.get('accept-ranges') ?? '').toLowerCase() === 'none') {
      throw new FerryError('STORAGE_ERROR', `${url}: the server does not serve byte ranges (Accept-Ranges: none), which reading an image in place needs`, {
        remedy: 'Serve the file from a server that supports range requests (any common web server or object store), or download it and import it from disk.',
      });
    }
    // The server's own validators identify this version of the file (for resuming an import).
    const metadata: Record<string, string> = {};
    for (const h of ['etag', 'last-modified']) {
      const v = res.headers.get(h);
      if (v) metadata[`http-${h}`] = v;
    }
    return { size: length, etag: s3Etag(res.headers.get('etag')), metadata };
  }

  async getRange(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    if (length <= 0) return Buffer.alloc(0);
    const url = this.url(key);
    const res = await this.request(url, { headers: { range: `bytes=${offset}-${offset + length - 1}` }, ...(signal ? { signal } : {}) }, 'a range read');
    if (res.status === 416) {
      await res.body?.cancel();
      return Buffer.alloc(0);
    }
    if (res.status === 200 && !(offset === 0 && Number(res.headers.get('content-length')) <= length)) {
      await res.body?.cancel();
      throw new FerryError('STORAGE_ERROR', `${url}: the server ignored a range request (answered 200 with the whole file)`, {
        remedy: 'Serve the file from a server that supports range requests, or download it and import it from disk.',
      });
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw httpError(url, res.status, 'a range read');
    }
    const buf = Buffer.from(await res.arrayBuffer());
    this.bytesRead += buf.length;
    return buf.length > length ? buf.subarray(0, length) : buf;
  }

  put(): Promise<void> {
    return Promise.reject(readOnly(this.name));
  }
  delete(): Promise<void> {
    return Promise.reject(readOnly(this.name));
  }
  createMultipart(): Promise<string> {
    return Promise.reject(readOnly(this.name));
  }
  uploadPart(): Promise<string> {
    return Promise.reject(readOnly(this.name));
  }
  listParts(): Promise<undefined> {
    return Promise.reject(readOnly(this.name));
  }
  complete(): Promise<void> {
    return Promise.reject(readOnly(this.name));
  }
  abort(): Promise<void> {
    return Promise.reject(readOnly(this.name));
  }
  listUploads(): Promise<never[]> {
    return Promise.resolve([]);
  }
  async probe(): Promise<void> {}
  close(): void {}
}
