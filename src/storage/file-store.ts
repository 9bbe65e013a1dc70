// A local directory as an object store (file:///DIR/KEY): the embedded default, so the same
// upload/download/import commands work with no server. Objects are plain files (KEY), their
// metadata and ETag live in DIR/.ferry-meta/KEY.json, and a multipart upload is a directory
// DIR/.ferry-uploads/ID/ holding one data file that every part is written into at its place
// ((n−1) × part size; all-zero parts stay holes) plus one record per part (its MD5 and size).
// Complete checks that the parts are contiguous and renames the data file into place: no copy.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, fromSystemError } from '../errors.js';
import { isAllZero } from '../io/zero.js';
import { multipartEtag, type ObjectInfo, type ObjectStore, type PartInfo, type UploadInfo } from './store.js';

const UPLOADS = '.ferry-uploads';
const META = '.ferry-meta';

interface UploadMeta {
  key: string;
  partSize: number;
  metadata: Record<string, string>;
  initiated: string;
}

interface StoredMeta {
  etag: string;
  metadata: Record<string, string>;
}

const md5 = (b: Buffer) => createHash('md5').update(b).digest();

export class FileStore implements ObjectStore {
  readonly name: string;
  readonly uniformParts = true;
  bytesRead = 0;

  constructor(readonly dir: string) {
    this.name = `file://${dir}`;
  }

  private objectPath(key: string): string {
    if (!key || key.includes('/') || key.startsWith('.')) {
      throw new FerryError('USAGE', `${this.name}: '${key}' is not a valid object name here`, { remedy: 'Use a plain file name that does not start with a dot.' });
    }
    return join(this.dir, key);
  }

  private uploadDir(uploadId: string): string {
    if (!/^[0-9a-f]{32}$/.test(uploadId)) throw new FerryError('USAGE', `${this.name}: '${uploadId}' is not an upload id of this store`, { remedy: 'List uploads with `ferry storage uploads`.' });
    return join(this.dir, UPLOADS, uploadId);
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const path = this.objectPath(key);
    let st;
    try {
      st = await stat(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        await this.probe();
        return undefined;
      }
      throw fromSystemError(err, path);
    }
    let meta: StoredMeta = { etag: '', metadata: {} };
    try {
      meta = JSON.parse(await readFile(join(this.dir, META, `${key}.json`), 'utf8')) as StoredMeta;
    } catch {
      // a file put there by hand: no metadata
    }
    return { size: st.size, etag: meta.etag, metadata: meta.metadata };
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    const done = await this.getRangeInto(key, offset, buf);
    return done === length ? buf : buf.subarray(0, done);
  }

  async getRangeInto(key: string, offset: number, into: Buffer): Promise<number> {
    const path = this.objectPath(key);
    let fh;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        await this.probe();
        throw new FerryError('OBJECT_NOT_FOUND', `${this.name}/${key}: no such object`, { remedy: 'Check the name; if it was being uploaded, run the upload again.' });
      }
      throw fromSystemError(err, path);
    }
    try {
      let done = 0;
      while (done < into.length) {
        const { bytesRead } = await fh.read(into, done, into.length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      this.bytesRead += done;
      return done;
    } catch (err) {
      throw fromSystemError(err, path);
    } finally {
      await fh.close();
    }
  }

  private async writeMeta(key: string, meta: StoredMeta): Promise<void> {
    await mkdir(join(this.dir, META), { recursive: true });
    await writeFile(join(this.dir, META, `${key}.json`), JSON.stringify(meta));
  }

  async put(key: string, body: Buffer): Promise<void> {
    const path = this.objectPath(key);
    const tmp = join(this.dir, `.${key}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      await mkdir(this.dir, { recursive: true });
      await writeFile(tmp, body);
      await rename(tmp, path);
      await this.writeMeta(key, { etag: md5(body).toString('hex'), metadata: {} });
    } catch (err) {
      await rm(tmp, { force: true });
      throw fromSystemError(err, path);
    }
  }

  async delete(key: string): Promise<void> {
    await rm(this.objectPath(key), { force: true });
    await rm(join(this.dir, META, `${key}.json`), { force: true });
  }

  async createMultipart(key: string, metadata: Record<string, string>, partSize: number): Promise<string> {
    this.objectPath(key);
    const id = randomBytes(16).toString('hex');
    const dir = join(this.dir, UPLOADS, id);
    try {
      await mkdir(join(dir, 'parts'), { recursive: true });
      const meta: UploadMeta = { key, partSize, metadata, initiated: new Date().toISOString() };
      await writeFile(join(dir, 'upload.json'), JSON.stringify(meta));
      await writeFile(join(dir, 'data'), '');
    } catch (err) {
      throw fromSystemError(err, dir);
    }
    return id;
  }

  private async uploadMeta(uploadId: string): Promise<UploadMeta | undefined> {
    try {
      return JSON.parse(await readFile(join(this.uploadDir(uploadId), 'upload.json'), 'utf8')) as UploadMeta;
    } catch {
      return undefined;
    }
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Buffer, partMd5: Buffer): Promise<string> {
    const meta = await this.uploadMeta(uploadId);
    if (!meta || meta.key !== key) throw noSuchUpload(this.name, key, uploadId);
    if (body.length > meta.partSize) throw new FerryError('INTERNAL', `part ${partNumber} is larger than the upload's part size`, { remedy: 'Please report this bug.' });
    // No second MD5 of the body here: the caller computed partMd5 from this very buffer, in this
    // process (an S3 server checks Content-MD5 because the bytes crossed a network; these did not).
    // It cost 1.6 CPU-seconds per GB on the thread that drives the upload.
    const dir = this.uploadDir(uploadId);
    const fh = await open(join(dir, 'data'), 'r+');
    try {
      if (!isAllZero(body)) await fh.write(body, 0, body.length, (partNumber - 1) * meta.partSize);
    } catch (err) {
      throw fromSystemError(err, join(dir, 'data'));
    } finally {
      await fh.close();
    }
    await writeFile(join(dir, 'parts', String(partNumber)), `${partMd5.toString('hex')} ${body.length}`);
    return partMd5.toString('hex');
  }

  async listParts(key: string, uploadId: string): Promise<PartInfo[] | undefined> {
    const meta = await this.uploadMeta(uploadId);
    if (!meta || meta.key !== key) return undefined;
    const dir = join(this.uploadDir(uploadId), 'parts');
    const parts: PartInfo[] = [];
    for (const name of await readdir(dir)) {
      const [etag, size] = (await readFile(join(dir, name), 'utf8')).split(' ');
      parts.push({ partNumber: Number(name), etag: etag!, size: Number(size) });
    }
    return parts.sort((a, b) => a.partNumber - b.partNumber);
  }

  async complete(key: string, uploadId: string, parts: { partNumber: number; etag: string }[]): Promise<void> {
    const meta = await this.uploadMeta(uploadId);
    if (!meta || meta.key !== key) throw noSuchUpload(this.name, key, uploadId);
    const held = new Map((await this.listParts(key, uploadId))!.map((p) => [p.partNumber, p]));
    let total = 0;
    const md5s: Buffer[] = [];
    parts.forEach((p, i) => {
      const h = held.get(p.partNumber);
      if (p.partNumber !== i + 1 || !h || h.etag !== p.etag || (i < parts.length - 1 && h.size !== meta.partSize)) {
        throw new FerryError('UPLOAD_INCOMPLETE', `${this.name}/${key}: part ${p.partNumber} is missing or differs from what was uploaded`, { remedy: 'Run the upload again.' });
      }
      total += h.size;
      md5s.push(Buffer.from(h.etag, 'hex'));
    });
    const dir = this.uploadDir(uploadId);
    const fh = await open(join(dir, 'data'), 'r+');
    try {
      await fh.truncate(total);
    } finally {
      await fh.close();
    }
    await rename(join(dir, 'data'), this.objectPath(key));
    await this.writeMeta(key, { etag: multipartEtag(md5s, md5), metadata: meta.metadata });
    await rm(dir, { recursive: true, force: true });
  }

  async abort(_key: string, uploadId: string): Promise<void> {
    await rm(this.uploadDir(uploadId), { recursive: true, force: true });
  }

  async listUploads(prefix = ''): Promise<UploadInfo[]> {
    let ids: string[];
    try {
      ids = await readdir(join(this.dir, UPLOADS));
    } catch {
      return [];
    }
    const out: UploadInfo[] = [];
    for (const id of ids) {
      const meta = /^[0-9a-f]{32}$/.test(id) ? await this.uploadMeta(id) : undefined;
      if (meta && meta.key.startsWith(prefix)) out.push({ key: meta.key, uploadId: id, initiated: new Date(meta.initiated) });
    }
    return out;
  }

  async probe(): Promise<void> {
    try {
      const st = await stat(this.dir);
      if (!st.isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    } catch {
      throw new FerryError('BUCKET_NOT_FOUND', `${this.name}: no such directory`, { remedy: 'Check the path of the file:// store (uploads create it; downloads and imports need it).' });
    }
  }

  /** Creates the directory (uploads into a new local store). */
  async ensure(): Promise<void> {
    try {
      await mkdir(this.dir, { recursive: true });
    } catch (err) {
      throw fromSystemError(err, this.dir);
    }
  }

  close(): void {}
}

function noSuchUpload(name: string, key: string, uploadId: string): FerryError {
  return new FerryError('UPLOAD_INCOMPLETE', `${name}/${key}: upload ${uploadId} no longer exists`, { remedy: 'Run the upload again; it starts a new upload.' });
}
