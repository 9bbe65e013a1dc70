// The integrity digest of a disk's virtual content, as stored in a Ferry manifest: the content is
// cut into fixed 4 MiB chunks (the last may be shorter), each chunk gets its SHA-256, and the
// content digest is the SHA-256 of the concatenated chunk digests (a one-level hash list). Unlike
// one SHA-256 over the whole disk, this finds *which* chunk is damaged, lets an interrupted
// transfer be checked piecewise, and costs nothing for zero ranges: a chunk of zeros has a known
// digest, so only data is hashed. `ferry verify` and `ferry download` recompute it.
//
// Feed the content in increasing order: data with `data()`, zero ranges with `zeros()`. With an
// OffloadedHashing, chunks are assembled in buffers of their own (or taken as they are when a
// data piece is exactly one chunk: dataAsync) and hashed elsewhere, e.g. on the worker pool.
import { createHash, type Hash } from 'node:crypto';

export const MANIFEST_CHUNK = 4 * 1024 * 1024;
export const DIGEST_ALGORITHM = 'sha256-chunks-4MiB';

const zeroDigests = new Map<number, Buffer>();
let zeroBuf: Buffer | undefined;

/** SHA-256 of `length` zero bytes (cached per length). */
function zeroDigest(length: number): Buffer {
  let d = zeroDigests.get(length);
  if (!d) {
    zeroBuf ??= Buffer.alloc(MANIFEST_CHUNK);
    d = createHash('sha256').update(zeroBuf.subarray(0, length)).digest();
    zeroDigests.set(length, d);
  }
  return d;
}

export interface ContentDigest {
  algorithm: typeof DIGEST_ALGORITHM;
  chunkSize: number;
  /** Hex SHA-256 of the concatenated chunk digests. */
  digest: string;
  /** Hex SHA-256 of each chunk. */
  chunks: string[];
}

/** Hashing on other threads: a digest function and buffers to assemble chunks in. */
export interface OffloadedHashing {
  /** SHA-256 of `data` (e.g. on a worker thread); `data` stays untouched until it settles. */
  digest: (data: Buffer) => Promise<Buffer>;
  /** A buffer of MANIFEST_CHUNK bytes to assemble a chunk in, and its return. */
  take: () => Buffer;
  give: (b: Buffer) => void;
}

export class ContentHasher {
  private position = 0;
  private current: Hash | undefined;
  /** Offloaded mode: the chunk being assembled (pieces copied in, gaps zeroed). */
  private cell: Buffer | undefined;
  /** Bytes of the current chunk fed so far. */
  private filled = 0;
  private readonly digests: (Buffer | Promise<Buffer>)[] = [];
  /** Digests computed elsewhere and not settled yet, and who waits for their number to fall. */
  private outstanding = 0;
  /** The most digests that were running elsewhere at once (for tests and diagnostics). */
  peakBacklog = 0;
  private waiters: (() => void)[] = [];

  constructor(
    readonly total: number,
    private readonly offload?: OffloadedHashing,
  ) {}

  private chunkLength(index: number): number {
    return Math.min(MANIFEST_CHUNK, this.total - index * MANIFEST_CHUNK);
  }

  private finishChunk(): void {
    const index = this.digests.length;
    if (this.cell) {
      const cell = this.cell;
      const len = this.chunkLength(index);
      if (this.filled < len) cell.fill(0, this.filled, len);
      const p = this.track(this.offload!.digest(cell.subarray(0, len)));
      p.catch(() => {}).finally(() => this.offload!.give(cell));
      this.digests.push(p);
      this.cell = undefined;
    } else {
      this.digests.push(this.current ? this.current.digest() : zeroDigest(this.chunkLength(index)));
    }
    this.current = undefined;
    this.filled = 0;
  }

  private track(p: Promise<Buffer>): Promise<Buffer> {
    this.outstanding++;
    this.peakBacklog = Math.max(this.peakBacklog, this.outstanding);
    const settled = () => {
      this.outstanding--;
      for (const w of this.waiters.splice(0)) w();
    };
    p.then(settled, settled);
    return p;
  }

  /**
   * Resolves once fewer than `n` digests computed elsewhere are still running: a producer that
   * waits for this before each piece (data or zeros) cannot run ahead of the hashing (a data piece
   * of at most one chunk, or a zero run, finishes at most one chunk being assembled, so at most `n`
   * are hashing and one is filling).
   */
  async backlogBelow(n: number): Promise<void> {
    while (this.outstanding >= n) await new Promise<void>((r) => this.waiters.push(r));
  }

  /**
   * Feeds `data` at `offset` like data(), but when it is exactly one whole chunk, hands the hashing
   * to `digest` (e.g. a worker thread) and returns the promise of it: `data` must stay unchanged
   * until it settles. Returns undefined when the data was hashed here.
   */
  dataAsync(offset: number, data: Buffer, digest: (data: Buffer) => Promise<Buffer>): Promise<Buffer> | undefined {
    if (offset > this.position) this.zeros(this.position, offset - this.position);
    if (offset === this.position && this.filled === 0 && data.length === this.chunkLength(this.digests.length)) {
      const p = this.track(digest(data));
      p.catch(() => {}); // observed by result()
      this.digests.push(p);
      this.position += data.length;
      return p;
    }
    this.data(offset, data);
    return undefined;
  }

  /** Feeds `data` at `offset` (must equal the bytes fed so far; gaps are fed as zeros first). */
  data(offset: number, data: Buffer): void {
    if (offset > this.position) this.zeros(this.position, offset - this.position);
    if (offset !== this.position) throw new RangeError(`content hashed out of order: ${offset} after ${this.position}`);
    let at = 0;
    while (at < data.length) {
      const room = MANIFEST_CHUNK - this.filled;
      const n = Math.min(room, data.length - at);
      if (this.offload) {
        // Assemble the chunk (a copy is far cheaper than hashing here); hash it elsewhere.
        if (!this.cell) {
          this.cell = this.offload.take();
          if (this.filled > 0) this.cell.fill(0, 0, this.filled);
        }
        data.copy(this.cell, this.filled, at, at + n);
        this.filled += n;
        at += n;
        if (this.filled === this.chunkLength(this.digests.length)) this.finishChunk();
        continue;
      }
      if (!this.current) {
        this.current = createHash('sha256');
        if (this.filled > 0) feedZeros(this.current, this.filled);
      }
      this.current.update(data.subarray(at, at + n));
      this.filled += n;
      at += n;
      if (this.filled === this.chunkLength(this.digests.length)) this.finishChunk();
    }
    this.position += data.length;
  }

  /** Feeds `length` zero bytes at `offset`. */
  zeros(offset: number, length: number): void {
    if (offset !== this.position) throw new RangeError(`content hashed out of order: ${offset} after ${this.position}`);
    let left = length;
    while (left > 0) {
      const chunkLen = this.chunkLength(this.digests.length);
      const n = Math.min(chunkLen - this.filled, left);
      if (this.current) feedZeros(this.current, n);
      else if (this.cell) this.cell.fill(0, this.filled, this.filled + n);
      this.filled += n;
      left -= n;
      if (this.filled === chunkLen) this.finishChunk();
    }
    this.position += length;
  }

  /** The digest (zeros are assumed up to the total). */
  async result(): Promise<ContentDigest> {
    if (this.position < this.total) this.zeros(this.position, this.total - this.position);
    if (this.filled > 0) this.finishChunk();
    const digests = await Promise.all(this.digests);
    return {
      algorithm: DIGEST_ALGORITHM,
      chunkSize: MANIFEST_CHUNK,
      digest: createHash('sha256').update(Buffer.concat(digests)).digest('hex'),
      chunks: digests.map((d) => d.toString('hex')),
    };
  }
}

function feedZeros(h: Hash, length: number): void {
  zeroBuf ??= Buffer.alloc(MANIFEST_CHUNK);
  for (let left = length; left > 0; ) {
    const n = Math.min(left, zeroBuf.length);
    h.update(zeroBuf.subarray(0, n));
    left -= n;
  }
}
