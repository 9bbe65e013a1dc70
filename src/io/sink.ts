// Output targets for writers: a new image file written under a temporary name in the target's
// directory and renamed into place only when complete (a failed or killed run never leaves a file
// that looks finished), or a block device written in place (opened O_EXCL, so a mounted or
// otherwise busy device is refused). Write errors become FerryErrors naming the cause and remedy
// (full file system, read-only, permission). Writers that flush everything to the disk anyway
// (imports) may write aligned pieces with O_DIRECT, past the page cache (SinkOptions.directWrites).
import { writeSync, writevSync } from 'node:fs';
import { constants, type FileHandle, open, rename, rm, stat, statfs } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ferryNative, fsExt } from '../lazy-modules.js';
import { FerryError } from '../errors.js';

const SEEK_END = 2;

export interface Sink {
  /** The final path (for messages and names written into images, e.g. a VMDK extent name). */
  readonly path: string;
  /** Where the bytes are until commit, when not at `path` (files: a temporary name). */
  readonly tempPath?: string;
  readonly isBlockDevice: boolean;
  /** Size of the device (block devices), or undefined for files. */
  readonly deviceSize: number | undefined;
  /**
   * Whether several write()/writev() calls may be in flight at once (each at its own position).
   * Sinks that stream their bytes in order (an object upload, a remote receiver) leave it unset:
   * callers then wait for each write before the next.
   */
  readonly concurrentWrites?: boolean;
  /** Writes all of `buf` at `position`. */
  write(buf: Buffer, position: number): Promise<void>;
  /** Writes several buffers back to back starting at `position`. */
  writev(bufs: Buffer[], position: number): Promise<void>;
  /** Sets the file length (files only; extends with a hole). */
  truncate(size: number): Promise<void>;
  /**
   * Reserves disk blocks for [offset, offset+length) before they are written (files only; may
   * extend the file: writers truncate to their final size). Writing into reserved blocks avoids the
   * kernel's block-by-block delayed allocation. A no-op where the file system cannot do it; a full
   * file system is TARGET_NO_SPACE.
   */
  reserve(offset: number, length: number): Promise<void>;
  /** Writes everything written so far to stable storage (fdatasync), keeping the sink open. */
  flush?(): Promise<void>;
  /** Flushes to stable storage and puts the file in place under its final name. */
  commit(): Promise<void>;
  /** Removes the temporary file (files) and closes. Idempotent; never throws. */
  abort(): Promise<void>;
}

export interface SinkOptions {
  /** Replace an existing regular file at the path (default: refuse). */
  overwrite?: boolean;
  /**
   * Flush the data to stable storage before the file gets its final name, so that even after a
   * power loss a file under the final name is complete. Default: false for files (as qemu-img, cp
   * and dd do: the rename alone already protects against a failed or killed run), true for block
   * devices (a disk written in place must be on the disk when Ferry says it is done).
   */
  sync?: boolean;
  /**
   * Resumable writing (files): write under this fixed temporary path, keeping what an earlier,
   * interrupted run left there (no truncation), and keep it when the sink is aborted so a later
   * run can go on. Used by import jobs, which record how far the file is known to be written.
   */
  partialPath?: string;
  /**
   * Write with blocking calls on the calling thread, one piece after the other, instead of handing
   * each write to the thread pool (default: false). For a process that does nothing else while it
   * writes — the CLI's `image convert`: an event loop serving requests must not block. Measured on
   * the 4 GiB reference disk, raw → qcow2 (6 alternating runs each): 1.23 s with writes on the
   * pool, 1.12 s blocking; raw → zstd qcow2 3.77 → 3.58 s; zlib qcow2 → raw 2.89 → 2.72 s. A write
   * handed to the pool waits for a thread to wake, and the loop to learn it is done; reads still
   * run ahead on the pool meanwhile.
   */
  blockingWrites?: boolean;
  /**
   * Write whole, aligned pieces with O_DIRECT, past the page cache (others go through it), for
   * writers that flush everything to the disk anyway (import jobs checkpoint with fdatasync every
   * 32 MiB): the copy into the page cache and its write-back cost more CPU than the write itself.
   * A file system that refuses O_DIRECT (at open, or EINVAL on a write) is written through the cache.
   * Measured here, writing 1.7 GB with dd: 2.5–3.6 CPU-s through the cache, 0.1 with O_DIRECT.
   */
  directWrites?: boolean;
}

/** Temporary files of unfinished conversions are named `.NAME.ferry-partial-XXXXXX`. */
export const PARTIAL_MARK = '.ferry-partial-';

function targetError(err: unknown, path: string, what: string): FerryError {
  if (err instanceof FerryError) return err;
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new FerryError('TARGET_NO_SPACE', `${path}: no space left on the target file system while ${what}`, {
        remedy: 'Free space on the target file system (or choose another directory), then run the command again; `ferry image measure` estimates the size needed.',
        cause: err,
      });
    case 'EROFS':
      return new FerryError('TARGET_NOT_WRITABLE', `${path}: the target file system is read-only`, {
        remedy: 'Write the output to a writable file system.',
        cause: err,
      });
    case 'EACCES':
    case 'EPERM':
      return new FerryError('TARGET_NOT_WRITABLE', `${path}: permission denied while ${what}`, {
        remedy: 'Choose an output path you may write to, fix the directory permissions, or run as a user that may write there (block devices need root).',
        cause: err,
      });
    case 'ENOENT':
    case 'ENOTDIR':
      return new FerryError('TARGET_NOT_FOUND', `${path}: the directory ${dirname(path)} does not exist`, {
        remedy: 'Create the directory first, or give an output path in an existing directory.',
        cause: err,
      });
    case 'EBUSY':
      return new FerryError('TARGET_IN_USE', `${path}: the device is in use (mounted, or held by another program)`, {
        remedy: 'Unmount it and stop whatever uses it (check `lsblk`, `fuser -vm DEVICE`), then run the command again.',
        cause: err,
      });
    case 'EISDIR':
      return new FerryError('TARGET_NOT_WRITABLE', `${path}: is a directory`, {
        remedy: 'Give the path of the output file, not a directory.',
        cause: err,
      });
    default:
      return new FerryError('IO_ERROR', `${path}: ${what} failed: ${e?.message ?? String(err)}`, {
        remedy: 'Check the target device or file system (dmesg, free space, permissions).',
        cause: err,
      });
  }
}

/** Written bytes after which a background flush starts (so the final one has little left). */
const FLUSH_EVERY = 64 * 1024 * 1024;

abstract class HandleSink implements Sink {
  readonly concurrentWrites = true;
  /** See SinkOptions.blockingWrites (set by openSink). */
  blockingWrites = false;
  /** The same file opened with O_DIRECT (SinkOptions.directWrites), for aligned pieces. */
  direct: FileHandle | undefined;
  protected closed = false;
  abstract readonly path: string;
  abstract readonly isBlockDevice: boolean;
  abstract readonly deviceSize: number | undefined;
  private unflushed = 0;
  private flushing: Promise<void> | undefined;
  private flushError: unknown;

  constructor(
    protected readonly handle: FileHandle,
    protected readonly durable: boolean,
  ) {}

  /** Starts writing dirty pages back while conversion goes on (fdatasync on the thread pool). */
  private wrote(n: number): void {
    this.unflushed += n;
    if (!this.durable || this.unflushed < FLUSH_EVERY || this.flushing) return;
    this.unflushed = 0;
    this.flushing = this.handle
      .datasync()
      .catch((err: unknown) => {
        this.flushError ??= err;
      })
      .finally(() => {
        this.flushing = undefined;
      });
  }

  async write(buf: Buffer, position: number): Promise<void> {
    await this.writev([buf], position);
  }

  async writev(bufs: Buffer[], position: number): Promise<void> {
    const pieces = cutPieces(bufs, position, WRITE_PIECE, CUT_OFFSET);
    if (pieces.length === 1 || this.blockingWrites) {
      for (const p of pieces) await this.writePiece(p.bufs, p.at, p.length);
      return;
    }
    await inParallel(pieces, PIECES_IN_FLIGHT, (p) => this.writePiece(p.bufs, p.at, p.length));
  }

  /** One vectored write of `total` bytes; a short write (normally a full disk) goes on buffer by buffer. */
  private async writePiece(bufs: Buffer[], position: number, total: number): Promise<void> {
    let written: number;
    const align = directAlign();
    const direct = this.direct && position % align === 0 && total % align === 0 && ferryNative()!.alignedTo!(bufs, align) ? this.direct : undefined;
    const handle = direct ?? this.handle;
    try {
      if (this.blockingWrites) written = bufs.length === 1 ? writeSync(handle.fd, bufs[0]!, 0, total, position) : writevSync(handle.fd, bufs, position);
      else written = bufs.length === 1 ? (await handle.write(bufs[0]!, 0, total, position)).bytesWritten : (await handle.writev(bufs, position)).bytesWritten;
    } catch (err) {
      if (direct && (err as NodeJS.ErrnoException).code === 'EINVAL') {
        // The file system wants another alignment (or no direct I/O at all): write through the cache.
        this.dropDirect();
        return this.writePiece(bufs, position, total);
      }
      throw targetError(err, this.path, `writing ${total} bytes at offset ${position}`);
    }
    this.wrote(written);
    if (written === total) return;
    let pos = position;
    for (const b of bufs) {
      const skip = Math.min(b.length, Math.max(0, position + written - pos));
      if (skip < b.length) await this.writeAll(b.subarray(skip), pos + skip);
      pos += b.length;
    }
  }

  private async writeAll(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < buf.length) {
        const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, position + done);
        if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
        done += bytesWritten;
      }
    } catch (err) {
      throw targetError(err, this.path, `writing ${buf.length} bytes at offset ${position + done}`);
    }
    this.wrote(buf.length);
  }

  private canReserve = ferryNative()?.fallocate !== undefined;
  /** Free bytes at the last statfs, less what was reserved since. */
  private freeSeen: number | undefined;

  async reserve(offset: number, length: number): Promise<void> {
    if (!this.canReserve || this.isBlockDevice || length <= 0) return;
    // A large reservation on a nearly full file system would take blocks the data may need (and a
    // failed fallocate can keep part of what it took): there, write without reserving.
    if (length >= 1024 * 1024) {
      // statfs only when the free space last seen could have run low since (not for every write).
      if (this.freeSeen === undefined || this.freeSeen < length + 2 * TIGHT_SPACE) {
        const free = await freeSpace(this.path);
        this.freeSeen = free ?? Infinity;
        if (free !== undefined && free < length + TIGHT_SPACE) return;
      }
      this.freeSeen -= length;
    }
    try {
      ferryNative()!.fallocate!(this.handle.fd, offset, length);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') throw targetError(err, this.path, `reserving ${length} bytes at offset ${offset}`);
      this.canReserve = false; // not supported here: write without reserving
    }
  }

  async flush(): Promise<void> {
    try {
      await this.handle.datasync();
    } catch (err) {
      throw targetError(err, this.path, 'flushing to disk');
    }
  }

  async truncate(size: number): Promise<void> {
    if (this.isBlockDevice) return;
    try {
      await this.handle.truncate(size);
    } catch (err) {
      throw targetError(err, this.path, `setting the file size to ${size}`);
    }
  }

  /** Stops writing with O_DIRECT (FileHandle.close waits for the writes still using the handle). */
  private async closeDirect(): Promise<void> {
    const direct = this.direct;
    this.direct = undefined;
    await direct?.close().catch(() => {});
  }

  private dropDirect(): void {
    void this.closeDirect();
  }

  protected async syncAndClose(): Promise<void> {
    await this.closeDirect();
    try {
      await this.flushing;
      if (this.flushError) throw this.flushError;
      if (this.durable) await this.handle.sync();
    } catch (err) {
      throw targetError(err, this.path, 'flushing to disk');
    }
    this.closed = true;
    await this.handle.close();
  }

  /** Waits for a background flush, so closing does not race it. */
  protected async settle(): Promise<void> {
    await this.flushing;
    await this.closeDirect();
  }

  abstract commit(): Promise<void>;
  abstract abort(): Promise<void>;
}

/** A new file written as `.NAME.ferry-partial-XXXXXX` next to NAME, renamed into place by commit(). */
class FileSink extends HandleSink {
  readonly isBlockDevice = false;
  readonly deviceSize = undefined;
  private removed = false;

  constructor(
    handle: FileHandle,
    readonly path: string,
    readonly tempPath: string,
    durable: boolean,
    /** Keep the temporary file on abort (resumable writing). */
    private readonly keep = false,
  ) {
    super(handle, durable);
  }

  async commit(): Promise<void> {
    await this.syncAndClose();
    try {
      await rename(this.tempPath, this.path);
    } catch (err) {
      await this.abort();
      throw targetError(err, this.path, 'renaming the finished file into place');
    }
    // Make the rename itself durable.
    if (!this.durable) return;
    try {
      const dir = await open(dirname(this.path), 'r');
      await dir.sync().catch(() => {});
      await dir.close();
    } catch {
      // Some file systems cannot open/sync directories: the data itself is synced.
    }
  }

  async abort(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.settle();
      await this.handle.close().catch(() => {});
    }
    if (!this.removed && !this.keep) {
      this.removed = true;
      await rm(this.tempPath, { force: true }).catch(() => {});
    }
  }
}

/** A block device written in place. */
class DeviceSink extends HandleSink {
  readonly isBlockDevice = true;

  constructor(
    handle: FileHandle,
    readonly path: string,
    readonly deviceSize: number,
    durable: boolean,
  ) {
    super(handle, durable);
  }

  async commit(): Promise<void> {
    await this.syncAndClose();
  }

  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.settle();
    await this.handle.close().catch(() => {});
  }
}

/** Opens `path` for writing a new image (see the module comment). */
export async function openSink(path: string, opts: SinkOptions = {}): Promise<Sink> {
  let st: Awaited<ReturnType<typeof stat>> | undefined;
  try {
    st = await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw targetError(err, path, 'looking at the target');
  }
  if (st?.isBlockDevice()) {
    let handle: FileHandle;
    try {
      // O_EXCL on a block device: EBUSY when it is mounted or opened exclusively elsewhere.
      handle = await open(path, constants.O_WRONLY | constants.O_EXCL);
    } catch (err) {
      throw targetError(err, path, 'opening the device');
    }
    const device = new DeviceSink(handle, path, Number(fsExt().seekSync(handle.fd, 0, SEEK_END)), opts.sync ?? true);
    device.blockingWrites = opts.blockingWrites ?? false;
    if (opts.directWrites) device.direct = await openDirect(handle, path);
    return device;
  }
  if (st?.isDirectory()) throw targetError(Object.assign(new Error('is a directory'), { code: 'EISDIR' }), path, 'opening');
  if (st && !opts.overwrite) {
    throw new FerryError('TARGET_EXISTS', `${path}: the output file already exists`, {
      remedy: 'Choose another output name, delete the file, or pass --overwrite to replace it.',
    });
  }
  if (st && !st.isFile()) {
    throw new FerryError('TARGET_NOT_WRITABLE', `${path}: is neither a regular file nor a block device`, {
      remedy: 'Write the image to a regular file or a block device.',
    });
  }
  const tempPath = opts.partialPath ?? join(dirname(path), `.${basename(path)}${PARTIAL_MARK}${randomBytes(3).toString('hex')}`);
  let handle: FileHandle;
  try {
    handle = await open(tempPath, constants.O_RDWR | constants.O_CREAT | (opts.partialPath ? 0 : constants.O_EXCL), 0o644);
  } catch (err) {
    throw targetError(err, path, 'creating the output file');
  }
  const file = new FileSink(handle, path, tempPath, opts.sync ?? false, opts.partialPath !== undefined);
  file.blockingWrites = opts.blockingWrites ?? false;
  if (opts.directWrites) file.direct = await openDirect(handle, tempPath);
  return file;
}

/**
 * Alignment of offsets, lengths and memory for O_DIRECT writes: enough for any logical block size
 * up to 4 KiB, and whole memory pages, so a direct piece and a cached one never share a page of
 * the page cache (pages are 64 KiB on some kernels).
 */
function directAlign(): number {
  return Math.max(4096, ferryNative()?.pageSize ?? 4096);
}

/**
 * The file `handle` has open, opened again for writing with O_DIRECT (through /proc/self/fd, so it
 * is the same file even if its path was replaced meanwhile), or undefined where that is not
 * possible (file system, no native addon, FERRY_DIRECT_WRITES=0).
 */
async function openDirect(handle: FileHandle, path: string): Promise<FileHandle | undefined> {
  if (!ferryNative()?.alignedTo || constants.O_DIRECT === undefined || process.env.FERRY_DIRECT_WRITES === '0') return undefined;
  for (const p of [`/proc/self/fd/${handle.fd}`, path]) {
    try {
      const direct = await open(p, constants.O_WRONLY | constants.O_DIRECT);
      // The same file (/proc may be missing; a path may have been replaced): else no direct writes.
      const [a, b] = await Promise.all([handle.stat(), direct.stat()]);
      if (a.dev === b.dev && a.ino === b.ino && a.rdev === b.rdev) return direct;
      await direct.close();
    } catch {
      // try the next way, or write through the cache
    }
  }
  return undefined;
}

/** Free bytes for an unprivileged writer on the file system holding `path`'s directory. */
export async function freeSpace(path: string): Promise<number | undefined> {
  try {
    const s = await statfs(dirname(path));
    return s.bavail * s.bsize;
  } catch {
    return undefined;
  }
}

/**
 * Gathers writes that continue each other into one vectored write (writers append most of their
 * output sequentially); a write elsewhere, or enough pending bytes, flushes. Blocks are reserved
 * before they are written: `ahead` reserves in large steps past the end (formats that append and
 * truncate to their final size at the end), `exact` only what is written (sparse layouts).
 */
export class WriteBatcher {
  private bufs: Buffer[] = [];
  private at = 0;
  private len = 0;
  private reservedEnd = 0;

  constructor(
    private readonly sink: Sink,
    private readonly reserve: 'ahead' | 'exact' = 'ahead',
    private readonly limit = 8 * 1024 * 1024,
  ) {}

  async put(buf: Buffer, position: number): Promise<void> {
    if (buf.length === 0) return;
    if (this.len > 0 && this.at + this.len !== position) await this.flush();
    if (this.len === 0) this.at = position;
    this.bufs.push(buf);
    this.len += buf.length;
    if (this.len >= this.limit) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.len === 0) return;
    const bufs = this.bufs;
    const at = this.at;
    const len = this.len;
    this.bufs = [];
    this.len = 0;
    if (this.reserve === 'exact') {
      await this.sink.reserve(at, len);
    } else if (at + len > this.reservedEnd) {
      const from = Math.max(this.reservedEnd, at);
      const to = Math.max(at + len, from + RESERVE_STEP);
      await this.sink.reserve(from, to - from);
      this.reservedEnd = to;
    }
    await this.sink.writev(bufs, at);
  }
}

/** How far ahead appending writers reserve blocks. */
const RESERVE_STEP = 64 * 1024 * 1024;
/** Free space that must remain beyond a reservation of 1 MiB or more, or it is skipped. */
const TIGHT_SPACE = 256 * 1024 * 1024;

/**
 * Large writes reach the kernel in pieces of at most WRITE_PIECE bytes, PIECES_IN_FLIGHT at once,
 * cut where the file position is CUT_OFFSET past a multiple of WRITE_PIECE (…, 2 MiB + 64 KiB,
 * 4 MiB + 64 KiB, …), so that no piece covers a whole aligned 2 MiB block. Both measured with
 * `bench/convert` and A/B runs on the 2-core reference VM:
 * - a second write queued on the thread pool keeps the kernel copying while the event loop turns
 *   round (one 4 MiB write at a time left the copy idle between chunks);
 * - the page cache sizes its folios after each write, and on VMs that hand free memory back to the
 *   host (free page reporting: Firecracker, many cloud VMs) some write shapes fill far slower than
 *   others: 1.6 GB in aligned 2 MiB writes took 3.4 s, the same writes shifted off the 2 MiB grid
 *   0.6 s. Of the shapes tried for raw → qcow2 (same run, 3 runs each; qemu-img 0.85–1.17 s):
 *   2 MiB pieces shifted by 64 KiB, 2 at once 0.94–1.21 s; shifted by 1 MiB 1.85–2.12 s; 1 MiB
 *   pieces shifted by 512 KiB, 4 at once 1.62–1.77 s; 256 KiB pieces 1.82–1.85 s; whole 4 MiB
 *   writes ~2.5 s.
 */
export const WRITE_PIECE = 2 * 1024 * 1024;
export const CUT_OFFSET = 64 * 1024;
const PIECES_IN_FLIGHT = 2;

/**
 * Cuts the bytes of `bufs`, to be written at `position`, into pieces of at most `size` bytes that
 * end where the file position is `offset` past a multiple of `size` (the last one where the bytes
 * end). Buffers that are consecutive views of one memory block are joined (fewer iovecs).
 */
export function cutPieces(bufs: Buffer[], position: number, size: number, offset: number): { bufs: Buffer[]; at: number; length: number }[] {
  const pieces: { bufs: Buffer[]; at: number; length: number }[] = [];
  let cur: Buffer[] = [];
  let curAt = position;
  let curLen = 0;
  // Bytes from `at` to the next cut point.
  const room = (at: number) => (Math.floor((at - offset) / size) + 1) * size + offset - at;
  let limit = room(curAt);
  for (const b of bufs) {
    let from = 0;
    while (from < b.length) {
      const n = Math.min(b.length - from, limit - curLen);
      cur.push(from === 0 && n === b.length ? b : b.subarray(from, from + n));
      curLen += n;
      from += n;
      if (curLen === limit) {
        pieces.push({ bufs: joinAdjacent(cur), at: curAt, length: curLen });
        curAt += curLen;
        cur = [];
        curLen = 0;
        limit = room(curAt);
      }
    }
  }
  if (curLen > 0) pieces.push({ bufs: joinAdjacent(cur), at: curAt, length: curLen });
  return pieces;
}

/** Buffers that are consecutive views of one memory block become one view (fewer iovecs). */
export function joinAdjacent(bufs: Buffer[]): Buffer[] {
  if (bufs.length < 2) return bufs;
  const out: Buffer[] = [];
  let cur = bufs[0]!;
  for (let i = 1; i < bufs.length; i++) {
    const b = bufs[i]!;
    if (b.buffer === cur.buffer && b.byteOffset === cur.byteOffset + cur.length) {
      cur = Buffer.from(cur.buffer, cur.byteOffset, cur.length + b.length);
    } else {
      out.push(cur);
      cur = b;
    }
  }
  out.push(cur);
  return out;
}

/**
 * Runs `fn` on each item (each with an offset `at`) with up to `limit` running at once; once all
 * started calls have settled, throws the failure of the item with the lowest offset, if any. After
 * a failure no further item is started.
 */
export async function inParallel<T extends { at: number }>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const running = new Set<Promise<void>>();
  let failure: { error: unknown; at: number } | undefined;
  for (const it of items) {
    if (failure) break;
    // (a synchronous throw becomes this item's failure: started calls are still awaited)
    const settle = (error?: { error: unknown }) => {
      running.delete(w);
      if (error && (!failure || it.at < failure.at)) failure = { error: error.error, at: it.at };
    };
    const w: Promise<void> = Promise.resolve()
      .then(() => fn(it))
      .then(() => settle(), (error: unknown) => settle({ error }));
    running.add(w);
    if (running.size >= limit) await Promise.race(running);
  }
  await Promise.all(running);
  if (failure) throw failure.error;
}
