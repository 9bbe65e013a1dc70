// Random-access byte sources: the one interface every image driver reads its host bytes through
// (local file or block device today; object storage and HTTP later), plus exact-read helpers that
// turn a short read into a precise "truncated" error.
import { open, type FileHandle } from 'node:fs/promises';
import { fstatSync } from 'node:fs';
import { fsExt } from '../lazy-modules.js';
import { FerryError, fromSystemError, truncated } from '../errors.js';

/** A half-open byte range [offset, offset + length). */
export interface ByteRange {
  offset: number;
  length: number;
}

export interface ByteSource {
  /** Path or URL, used in messages. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Reads up to `length` bytes at `position` into `buf`; fewer only at end of data. */
  read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<number>;
  /**
   * Optional capability: ranges of [offset, offset+length) that hold data in the underlying storage
   * (holes of a sparse file are left out). Absent means "all of it holds data".
   */
  dataRanges?(offset: number, length: number): Promise<ByteRange[]>;
  close(): Promise<void>;
}

/** Reads exactly `length` bytes at `position`, or throws IMAGE_TRUNCATED naming `what`. */
export async function readExact(src: ByteSource, position: number, length: number, what: string): Promise<Buffer> {
  if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0) {
    throw new FerryError('IMAGE_CORRUPT', `${src.name}: ${what} lies at an impossible position (${position}, ${length} bytes)`, {
      remedy: 'The image header holds absurd values; the file is damaged or not what its header claims.',
      details: { position, length },
    });
  }
  if (position + length > src.size) {
    throw truncated(`${src.name}: ${what} (bytes ${position}..${position + length})`, position + length, src.size);
  }
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const n = await src.read(buf, done, length - done, position + done);
    if (n === 0) throw truncated(`${src.name}: ${what}`, position + length, position + done);
    done += n;
  }
  return buf;
}

/** Reads up to `length` bytes at `position`; the result is shorter only at the end of the source. */
export async function readUpTo(src: ByteSource, position: number, length: number): Promise<Buffer> {
  const avail = Math.max(0, Math.min(length, src.size - position));
  const buf = Buffer.allocUnsafe(avail);
  let done = 0;
  while (done < avail) {
    const n = await src.read(buf, done, avail - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done === avail ? buf : buf.subarray(0, done);
}

const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** A local file or block device opened read-only. */
export class FileSource implements ByteSource {
  private constructor(
    readonly name: string,
    private readonly handle: FileHandle,
    readonly size: number,
    readonly isBlockDevice: boolean,
  ) {}

  static async open(path: string): Promise<FileSource> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw fromSystemError(err, path);
    }
    try {
      const st = fstatSync(handle.fd);
      if (st.isDirectory()) throw fromSystemError(Object.assign(new Error('is a directory'), { code: 'EISDIR' }), path);
      const isBlock = st.isBlockDevice();
      // A block device reports st_size 0: its size is where SEEK_END lands.
      const size = isBlock ? Number(fsExt().seekSync(handle.fd, 0, SEEK_END)) : st.size;
      return new FileSource(path, handle, size, isBlock);
    } catch (err) {
      await handle.close();
      throw fromSystemError(err, path);
    }
  }

  async read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<number> {
    if (position >= this.size || length === 0) return 0;
    const n = Math.min(length, this.size - position);
    try {
      const { bytesRead } = await this.handle.read(buf, bufOffset, n, position);
      return bytesRead;
    } catch (err) {
      throw fromSystemError(err, this.name);
    }
  }

  async dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    const end = Math.min(this.size, offset + length);
    if (this.isBlockDevice) return offset < end ? [{ offset, length: end - offset }] : [];
    const out: ByteRange[] = [];
    let pos = offset;
    while (pos < end) {
      let dataStart: number;
      try {
        dataStart = Number(fsExt().seekSync(this.handle.fd, pos, SEEK_DATA));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENXIO') break; // no data after pos
        // File systems without SEEK_DATA support: treat everything as data.
        return [{ offset, length: end - offset }];
      }
      if (dataStart >= end) break;
      let holeStart = Number(fsExt().seekSync(this.handle.fd, dataStart, SEEK_HOLE));
      if (holeStart > end) holeStart = end;
      out.push({ offset: dataStart, length: holeStart - dataStart });
      pos = holeStart;
    }
    return out;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** A window [start, start + size) of another source: a disk inside an OVA (tar) or a partition. */
export class SliceSource implements ByteSource {
  constructor(
    private readonly inner: ByteSource,
    private readonly start: number,
    readonly size: number,
    readonly name: string,
    private readonly ownsInner = false,
  ) {}

  read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<number> {
    if (position >= this.size) return Promise.resolve(0);
    return this.inner.read(buf, bufOffset, Math.min(length, this.size - position), this.start + position);
  }

  async dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    const end = Math.min(this.size, offset + length);
    if (!this.inner.dataRanges) return offset < end ? [{ offset, length: end - offset }] : [];
    const inner = await this.inner.dataRanges(this.start + offset, end - offset);
    return inner.map((r) => ({ offset: r.offset - this.start, length: r.length }));
  }

  async close(): Promise<void> {
    if (this.ownsInner) await this.inner.close();
  }
}
