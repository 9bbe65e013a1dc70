// S3-compatible object storage (AWS S3, Tencent COS, MinIO, Ceph, Swift's s3api) through
// @aws-sdk/client-s3: configuration the way users already have it (AWS_* variables, shared
// profiles, --endpoint; COS's SecretId/SecretKey names), retries with backoff for transient
// failures (the SDK's standard mode: 5xx, 503 SlowDown, dropped connections), and translation of
// every failure into a FerryError with a code and a remedy.
//
// Two settings matter for S3-compatible servers: checksums only when an operation requires them
// (the SDK's default aws-chunked checksum uploads get 501 from Swift and break COS), and part
// uploads sent with Content-MD5 and an unsigned payload hash (the MD5 protects the body and is
// signed; the server does not hash every byte twice).
import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { FerryError } from '../errors.js';
import type { ObjectInfo, ObjectStore, PartInfo, UploadInfo } from './store.js';

/** The AWS SDK, loaded on first use: it takes a quarter of a second to load, which every command
 * that never talks to S3 (image conversion, online migration, jobs) would otherwise pay. */
type Sdk = typeof import('@aws-sdk/client-s3');
type HttpHandlerModule = typeof import('@smithy/node-http-handler');
let sdkLoading: Promise<[Sdk, HttpHandlerModule]> | undefined;
function loadSdk(): Promise<[Sdk, HttpHandlerModule]> {
  sdkLoading ??= Promise.all([import('@aws-sdk/client-s3'), import('@smithy/node-http-handler')]);
  return sdkLoading;
}

// The pinned SDK supports Node 20 (Ferry's runtime); its notice about future releases is not the user's concern.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3StoreOptions {
  /** Endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS's own; COS: from the region). */
  endpoint?: string;
  region?: string;
  /** Shared config/credentials profile (default: AWS_PROFILE). */
  profile?: string;
  /** Path-style addressing (default: on for custom endpoints, off for AWS and COS). */
  pathStyle?: boolean;
  /** Parallel connections to keep open. */
  maxSockets?: number;
  /** Attempts per request, first included (default 6). */
  maxAttempts?: number;
  /** COS instead of S3 (virtual-host style, COS endpoint and credential names). */
  cos?: boolean;
}

/** Where the settings came from, for messages. */
function describeEndpoint(endpoint: string | undefined, region: string): string {
  return endpoint ?? `AWS S3 (${region})`;
}

export class S3Store implements ObjectStore {
  readonly name: string;
  readonly reportsCrc64: boolean;
  /**
   * Cloudflare R2 wants every part but the last to be the same size (AWS, COS, MinIO, Ceph and Swift
   * only want 5 MiB at least); FERRY_UNIFORM_PARTS=1 asks for the same of any other endpoint.
   */
  readonly uniformParts: boolean;
  bytesRead = 0;
  private client: S3Client | undefined;
  private connecting: Promise<{ client: S3Client; s3: Sdk }> | undefined;
  private closed = false;
  private readonly config: S3ClientConfig;
  private readonly secure: boolean;
  private readonly sockets: number;
  private readonly endpointText: string;

  constructor(
    readonly bucket: string,
    opts: S3StoreOptions = {},
  ) {
    const env = process.env;
    const region = opts.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? env.COS_REGION ?? (opts.cos ? undefined : 'us-east-1');
    if (!region) {
      throw new FerryError('STORAGE_CONFIG', `cos://${bucket}: no region given`, {
        remedy: 'Pass --region (e.g. ap-guangzhou) or set COS_REGION; the endpoint is https://cos.REGION.myqcloud.com.',
      });
    }
    let endpoint = opts.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
    if (!endpoint && opts.cos) endpoint = `https://cos.${region}.myqcloud.com`;
    if (endpoint && !/^https?:\/\//.test(endpoint)) endpoint = `https://${endpoint}`;
    this.endpointText = describeEndpoint(endpoint, region);
    this.name = `${opts.cos ? 'cos' : 's3'}://${bucket}`;
    this.reportsCrc64 = opts.cos === true;
    this.uniformParts = env.FERRY_UNIFORM_PARTS === '1' || (endpoint !== undefined && /\.r2\.cloudflarestorage\.com(:\d+)?(\/|$)/i.test(endpoint));
    this.secure = !endpoint || endpoint.startsWith('https:');
    this.sockets = opts.maxSockets ?? 16;
    const config: S3ClientConfig = {
      region,
      ...(endpoint ? { endpoint } : {}),
      forcePathStyle: opts.pathStyle ?? (endpoint !== undefined && !opts.cos),
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: opts.maxAttempts ?? 6,
      retryMode: 'standard',
    };
    const id = env.AWS_ACCESS_KEY_ID ?? (opts.cos ? (env.COS_SECRET_ID ?? env.TENCENTCLOUD_SECRETID) : undefined);
    const secret = env.AWS_SECRET_ACCESS_KEY ?? (opts.cos ? (env.COS_SECRET_KEY ?? env.TENCENTCLOUD_SECRETKEY) : undefined);
    if (id && secret) {
      config.credentials = { accessKeyId: id, secretAccessKey: secret, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) };
    } else if (opts.profile) {
      config.profile = opts.profile;
    }
    this.config = config;
  }

  /** The SDK and the client, made on first use. */
  private connect(): Promise<{ client: S3Client; s3: Sdk }> {
    this.connecting ??= loadSdk().then(([s3, http]) => {
      if (this.closed) throw new FerryError('INTERRUPTED', `${this.name}: the store was closed`, { remedy: 'Run the command again.' });
      const client = new s3.S3Client({
        ...this.config,
        requestHandler: new http.NodeHttpHandler({
          connectionTimeout: 10_000,
          requestTimeout: 300_000,
          ...(this.secure
            ? { httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: this.sockets }) }
            : { httpAgent: new HttpAgent({ keepAlive: true, maxSockets: this.sockets }) }),
        }),
      });
      this.addMiddleware(client);
      this.client = client;
      return { client, s3 };
    });
    return this.connecting;
  }

  private addMiddleware(client: S3Client): void {
    // Part uploads: the body is protected by its (signed) Content-MD5; no SHA-256 of the payload.
    client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'UploadPartCommand') {
          const req = args.request as { headers?: Record<string, string> };
          if (req.headers) req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
        }
        return next(args);
      },
      { step: 'build', name: 'ferryUnsignedPartPayload' },
    );
    // COS sends the object's CRC-64 in its own header: keep it on the output.
    client.middlewareStack.add(
      (next) => async (args) => {
        const result = await next(args);
        const headers = (result.response as { headers?: Record<string, string> }).headers;
        const crc = headers?.['x-cos-hash-crc64ecma'];
        if (crc) (result.output as { ferryCrc64?: string }).ferryCrc64 = crc;
        return result;
      },
      { step: 'deserialize', name: 'ferryCosCrc64' },
    );
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const { client, s3 } = await this.connect();
      const r = await client.send(new s3.HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      const crc = (r as { ferryCrc64?: string }).ferryCrc64;
      return {
        size: r.ContentLength ?? 0,
        etag: unquote(r.ETag),
        metadata: r.Metadata ?? {},
        ...(crc ? { crc64: crc } : {}),
      };
    } catch (err) {
      if (status(err) === 404 && !isNoSuchBucket(err)) {
        // HEAD has no body: tell a missing bucket from a missing key.
        await this.probe();
        return undefined;
      }
      if (status(err) === 403) await this.probe(); // bad credentials are reported as such
      throw this.translate(err, `reading the properties of ${this.name}/${key}`, key);
    }
  }

  async getRange(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const pieces = await this.getRangePieces(key, offset, length, signal);
    return pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
  }

  async getRangePieces(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer[]> {
    if (length <= 0) return [];
    try {
      const { client, s3 } = await this.connect();
      const r = await client.send(new s3.GetObjectCommand({ Bucket: this.bucket, Key: key, Range: `bytes=${offset}-${offset + length - 1}` }), signal ? { abortSignal: signal } : {});
      const pieces = await bodyPieces(r.Body as AsyncIterable<Uint8Array>, length);
      for (const p of pieces) this.bytesRead += p.length;
      return pieces;
    } catch (err) {
      if (status(err) === 416) return [];
      throw this.translate(err, `reading ${this.name}/${key} (bytes ${offset}..${offset + length})`, key);
    }
  }

  async getRangeInto(key: string, offset: number, into: Buffer, signal?: AbortSignal): Promise<number> {
    if (into.length === 0) return 0;
    try {
      const { client, s3 } = await this.connect();
      const r = await client.send(new s3.GetObjectCommand({ Bucket: this.bucket, Key: key, Range: `bytes=${offset}-${offset + into.length - 1}` }), signal ? { abortSignal: signal } : {});
      let at = 0;
      for await (const chunk of r.Body as AsyncIterable<Uint8Array>) {
        const n = Math.min(chunk.length, into.length - at);
        if (n > 0) into.set(n === chunk.length ? chunk : chunk.subarray(0, n), at);
        at += n;
      }
      this.bytesRead += at;
      return at;
    } catch (err) {
      if (status(err) === 416) return 0;
      throw this.translate(err, `reading ${this.name}/${key} (bytes ${offset}..${offset + into.length})`, key);
    }
  }

  async put(key: string, body: Buffer, contentType = 'application/octet-stream'): Promise<void> {
    try {
      const { client, s3 } = await this.connect();
      await client.send(
        new s3.PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentType: contentType, ContentMD5: createHash('md5').update(body).digest('base64') }),
      );
    } catch (err) {
      throw this.translate(err, `writing ${this.name}/${key}`, key);
    }
  }

  async delete(key: string): Promise<void> {
    try {
      const { client, s3 } = await this.connect();
      await client.send(new s3.DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      if (status(err) === 404) return;
      throw this.translate(err, `deleting ${this.name}/${key}`, key);
    }
  }

  async createMultipart(key: string, metadata: Record<string, string>): Promise<string> {
    try {
      const { client, s3 } = await this.connect();
      const r = await client.send(new s3.CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key, Metadata: metadata, ContentType: 'application/octet-stream' }));
      if (!r.UploadId) throw new Error('the server returned no UploadId');
      return r.UploadId;
    } catch (err) {
      throw this.translate(err, `starting an upload to ${this.name}/${key}`, key);
    }
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Buffer, md5: Buffer, signal?: AbortSignal): Promise<string> {
    try {
      const { client, s3 } = await this.connect();
      const r = await client.send(
        new s3.UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, Body: body, ContentLength: body.length, ContentMD5: md5.toString('base64') }),
        signal ? { abortSignal: signal } : {},
      );
      return unquote(r.ETag);
    } catch (err) {
      throw this.translate(err, `uploading part ${partNumber} of ${this.name}/${key}`, key);
    }
  }

  async listParts(key: string, uploadId: string): Promise<PartInfo[] | undefined> {
    const parts: PartInfo[] = [];
    let marker: string | undefined;
    try {
      const { client, s3 } = await this.connect();
      for (let page = 0; page < 100; page++) {
        const r = await client.send(new s3.ListPartsCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, ...(marker ? { PartNumberMarker: marker } : {}) }));
        for (const p of r.Parts ?? []) parts.push({ partNumber: p.PartNumber ?? 0, etag: unquote(p.ETag), size: p.Size ?? 0 });
        if (!r.IsTruncated) return parts;
        marker = r.NextPartNumberMarker;
        if (!marker) return parts;
      }
      return parts;
    } catch (err) {
      if (errorName(err) === 'NoSuchUpload' || status(err) === 404) return undefined;
      throw this.translate(err, `listing the parts of an upload to ${this.name}/${key}`, key);
    }
  }

  async complete(key: string, uploadId: string, parts: { partNumber: number; etag: string }[]): Promise<void> {
    try {
      const { client, s3 } = await this.connect();
      await client.send(
        new s3.CompleteMultipartUploadCommand({
          Bucket: this.bucket,
          Key: key,
          UploadId: uploadId,
          MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: `"${p.etag}"` })) },
        }),
      );
    } catch (err) {
      throw this.translate(err, `completing the upload to ${this.name}/${key}`, key);
    }
  }

  async abort(key: string, uploadId: string): Promise<void> {
    try {
      const { client, s3 } = await this.connect();
      await client.send(new s3.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }));
    } catch (err) {
      if (errorName(err) === 'NoSuchUpload' || status(err) === 404) return;
      throw this.translate(err, `aborting the upload to ${this.name}/${key}`, key);
    }
  }

  async listUploads(prefix?: string): Promise<UploadInfo[]> {
    const out: UploadInfo[] = [];
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    try {
      const { client, s3 } = await this.connect();
      for (let page = 0; page < 1000; page++) {
        const r = await client.send(
          new s3.ListMultipartUploadsCommand({ Bucket: this.bucket, ...(prefix ? { Prefix: prefix } : {}), ...(keyMarker ? { KeyMarker: keyMarker } : {}), ...(idMarker ? { UploadIdMarker: idMarker } : {}) }),
        );
        for (const u of r.Uploads ?? []) if (u.Key && u.UploadId) out.push({ key: u.Key, uploadId: u.UploadId, ...(u.Initiated ? { initiated: u.Initiated } : {}) });
        if (!r.IsTruncated) break;
        keyMarker = r.NextKeyMarker;
        idMarker = r.NextUploadIdMarker;
      }
      return out;
    } catch (err) {
      throw this.translate(err, `listing the uploads in ${this.name}`);
    }
  }

  async probe(): Promise<void> {
    try {
      const { client, s3 } = await this.connect();
      await client.send(new s3.HeadBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      if (status(err) === 404) throw bucketMissing(this.name, this.endpointText);
      if (status(err) !== 403 && status(err) !== 400) throw this.translate(err, `opening ${this.name}`);
      // HEAD answers carry no error body: ask again with a request whose answer says why.
      try {
        const { client, s3 } = await this.connect();
        await client.send(new s3.ListObjectsV2Command({ Bucket: this.bucket, MaxKeys: 1 }));
      } catch (e2) {
        const name = errorName(e2);
        if (name === 'AccessDenied') return; // valid credentials without list permission: go on
        throw this.translate(e2, `opening ${this.name}`);
      }
    }
  }

  close(): void {
    this.closed = true;
    this.client?.destroy();
  }

  /** Translates an SDK or network failure into a FerryError. */
  translate(err: unknown, doing: string, key?: string): FerryError {
    if (err instanceof FerryError) return err;
    const name = errorName(err);
    const code = status(err);
    const msg = (err as Error)?.message ?? String(err);
    const sys = (err as NodeJS.ErrnoException)?.code;
    if (name === 'AbortError') {
      return new FerryError('INTERRUPTED', `${doing}: interrupted`, { remedy: 'Run the command again: an upload resumes where it stopped.' });
    }
    if (name === 'CredentialsProviderError' || /Could not load credentials/i.test(msg)) {
      return new FerryError('AUTH_FAILED', `${doing}: no credentials found for ${this.endpointText}`, {
        remedy:
          'Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for COS: COS_SECRET_ID and COS_SECRET_KEY), or name a profile of ~/.aws/credentials with --profile / AWS_PROFILE.',
      });
    }
    if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || name === 'InvalidToken' || name === 'ExpiredToken' || code === 401) {
      return new FerryError('AUTH_FAILED', `${doing}: ${this.endpointText} rejected the credentials (${name || code}: ${msg})`, {
        remedy:
          'Check the access key and secret (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the profile in use), that they belong to this endpoint and region, and that the machine clock is right (signatures expire after 15 minutes of skew).',
        details: { server: name, status: code },
      });
    }
    if (name === 'NoSuchBucket') return bucketMissing(this.name, this.endpointText);
    if (name === 'NoSuchKey' || (code === 404 && key !== undefined)) {
      return new FerryError('OBJECT_NOT_FOUND', `${this.name}/${key ?? ''}: no such object`, {
        remedy: 'Check the key (keys are case-sensitive; list them with `aws s3 ls` or the console); if it was being uploaded, run the upload again.',
      });
    }
    if (name === 'AccessDenied' || code === 403) {
      return new FerryError('ACCESS_DENIED', `${doing}: access denied by ${this.endpointText} (${msg})`, {
        remedy: 'The credentials are valid but not allowed to do this: grant them s3:GetObject/PutObject/ListMultipartUploadParts/AbortMultipartUpload on the bucket, or use other credentials.',
        details: { server: name, status: code },
      });
    }
    if (name === 'SlowDown' || name === 'ThrottlingException' || name === 'TooManyRequests' || code === 503 || code === 429) {
      return new FerryError('STORAGE_THROTTLED', `${doing}: ${this.endpointText} kept asking to slow down (${name || code}) after several retries with backoff`, {
        remedy: 'The server is overloaded or rate-limits this account: run again later, or lower --concurrency / set --bandwidth.',
        details: { server: name, status: code },
      });
    }
    if (sys && ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE'].includes(sys)) {
      return new FerryError('STORAGE_UNREACHABLE', `${doing}: cannot reach ${this.endpointText} (${sys})`, {
        remedy: 'Check the endpoint URL (--endpoint / AWS_ENDPOINT_URL), the network and any proxy or firewall; an interrupted upload resumes when run again.',
        details: { errno: sys },
      });
    }
    if (name === 'TimeoutError' || name === 'RequestTimeout' || /timed? ?out/i.test(msg)) {
      return new FerryError('STORAGE_UNREACHABLE', `${doing}: ${this.endpointText} did not answer in time`, {
        remedy: 'Check the network to the endpoint; an interrupted upload resumes when run again.',
      });
    }
    return new FerryError('STORAGE_ERROR', `${doing}: ${this.endpointText} failed: ${name ? name + ': ' : ''}${msg}`, {
      remedy: 'Run again (transient server errors are retried automatically); if it persists, check the server status and its logs for this request.',
      details: { server: name, status: code },
    });
  }
}

function bucketMissing(name: string, endpoint: string): FerryError {
  return new FerryError('BUCKET_NOT_FOUND', `${name}: no such bucket at ${endpoint}`, {
    remedy: 'Check the bucket name (and for COS its -APPID suffix), the endpoint and the region; create the bucket first if needed.',
  });
}

function unquote(etag: string | undefined): string {
  return (etag ?? '').replace(/^"|"$/g, '').toLowerCase();
}

function errorName(err: unknown): string {
  return (err as { name?: string; Code?: string })?.Code ?? (err as { name?: string })?.name ?? '';
}

function status(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

function isNoSuchBucket(err: unknown): boolean {
  return errorName(err) === 'NoSuchBucket';
}

/**
 * Reads a response body into one buffer of the expected length (one copy per network chunk,
 * instead of collecting the chunks and concatenating them). A longer body is cut at `length`.
 */
/** A response body as the buffers it arrived in (at most `length` bytes; the HTTP parser gives each its own). */
async function bodyPieces(body: AsyncIterable<Uint8Array>, length: number): Promise<Buffer[]> {
  const pieces: Buffer[] = [];
  let at = 0;
  for await (const chunk of body) {
    const n = Math.min(chunk.length, length - at);
    if (n > 0) {
      const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      pieces.push(n === b.length ? b : b.subarray(0, n));
    }
    at += n;
  }
  return pieces;
}
