// The object-store interface every backend implements (S3/COS through the AWS SDK, a local
// directory as the embedded default), in the spirit of rclone's small interfaces: whole-object and
// ranged reads, small puts, and multipart uploads (create, part, list, complete, abort) with the
// part size fixed at creation.
export interface ObjectInfo {
  size: number;
  /** As the server reports it, without quotes (MD5 for single puts, "md5-of-md5s-N" for multipart). */
  etag: string;
  /** User metadata (lower-case names without the x-amz-meta- prefix). */
  metadata: Record<string, string>;
  /** COS's CRC-64/XZ of the object (decimal), when the server sends it. */
  crc64?: string;
}

export interface PartInfo {
  partNumber: number;
  /** Without quotes: the MD5 of the part, hex. */
  etag: string;
  size: number;
}

export interface UploadInfo {
  key: string;
  uploadId: string;
  initiated?: Date;
}

export interface ObjectStore {
  /** For messages: s3://bucket, cos://bucket, file:///dir. */
  readonly name: string;
  /** Bytes received from the store by reads (for reports: "info read 12 KiB"). */
  readonly bytesRead: number;
  /** The store reports objects' CRC-64 (COS's x-cos-hash-crc64ecma): uploads compute it to check. */
  readonly reportsCrc64?: boolean;
  /**
   * Every part but the last must be exactly the upload's part size (the file store lays the parts
   * out in one file by number). S3 only asks that no part but the last be under 5 MiB.
   */
  readonly uniformParts?: boolean;
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Reads [offset, offset+length) of the object (clamped to its end). */
  getRange(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  /**
   * The same bytes as the pieces they arrived in, in order (no copy into one buffer: large
   * sequential readers copy each byte once, straight to where it goes). Optional; without it
   * readers use getRange.
   */
  getRangePieces?(key: string, offset: number, length: number, signal?: AbortSignal): Promise<Buffer[]>;
  /**
   * Reads [offset, offset + into.length) into `into` as it arrives (nothing is kept but `into`);
   * resolves to the bytes read (fewer at the object's end). Optional; without it readers use getRange.
   */
  getRangeInto?(key: string, offset: number, into: Buffer, signal?: AbortSignal): Promise<number>;
  /** Stores a small object in one request (with Content-MD5). */
  put(key: string, body: Buffer, contentType?: string): Promise<void>;
  delete(key: string): Promise<void>;
  createMultipart(key: string, metadata: Record<string, string>, partSize: number): Promise<string>;
  /** Uploads one part; `md5` is its MD5 (16 bytes); resolves to the server's ETag (hex). */
  uploadPart(key: string, uploadId: string, partNumber: number, body: Buffer, md5: Buffer, signal?: AbortSignal): Promise<string>;
  /** The parts the server holds for an upload, or undefined when the upload does not exist (any more). */
  listParts(key: string, uploadId: string): Promise<PartInfo[] | undefined>;
  complete(key: string, uploadId: string, parts: { partNumber: number; etag: string }[]): Promise<void>;
  abort(key: string, uploadId: string): Promise<void>;
  /** Multipart uploads in progress (under `prefix`). */
  listUploads(prefix?: string): Promise<UploadInfo[]>;
  /** Checks that the bucket exists and the credentials are accepted (cheap request). */
  probe(): Promise<void>;
  close(): void;
}

/** ETag S3 gives a multipart object: MD5 of the concatenated part MD5s, a dash, the part count. */
export function multipartEtag(partMd5s: Buffer[], md5: (b: Buffer) => Buffer): string {
  return `${md5(Buffer.concat(partMd5s)).toString('hex')}-${partMd5s.length}`;
}
