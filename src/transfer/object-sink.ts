// A Sink (io/sink.ts) that writes an object by multipart upload while the data is produced: the
// image writers write into it exactly as into a file, and every filled part goes to the store
// with its Content-MD5, several at a time. No temporary file, memory bounded by the parts in
// flight.
//
// Writers lay their output down in increasing order, except for metadata at the start (qcow2
// header and L1 table, VHD header and BAT, VMDK sparse header and tables) rewritten at the end.
// So part 1 — `headBytes` long, at least 5 MiB — stays in memory until commit and is uploaded last (S3
// assembles parts by number, not by arrival); later parts are uploaded as soon as the write
// position passes them. Gaps (holes of a sparse output) are zeros; a part that is all zeros is
// never even filled: it shares one zero buffer whose MD5 is computed once.
//
// Resume: parts whose MD5 matches a part the server already holds (`held`, from the checkpoint
// and ListParts) are not sent again. `onPart` reports each part as it is settled, for the
// checkpoint.
import { createHash } from 'node:crypto';
import { FerryError } from '../errors.js';
import type { Sink } from '../io/sink.js';
import { BufferPool } from '../pipeline/buffer-pool.js';
import type { WorkerPool } from '../pipeline/worker-pool.js';
import type { ObjectStore } from '../storage/store.js';
import type { RateLimiter } from './rate-limit.js';
import { crc64 } from '../storage/crc64.js';

export interface SettledPart {
  partNumber: number;
  /** Hex MD5 of the part = its ETag. */
  md5: string;
  size: number;
  /** False when the server already held it (resume). */
  sent: boolean;
  /** CRC-64/XZ of the part (when asked for: COS). */
  crc64?: bigint;
}

export interface ObjectSinkOptions {
  store: ObjectStore;
  key: string;
  uploadId: string;
  partSize: number;
  /** Parts uploaded at the same time. */
  concurrency: number;
  /** Parts the server holds already, by number: hex MD5. */
  held?: Map<number, string>;
  /** Workers for the MD5s (else this thread). */
  pool?: WorkerPool;
  limiter?: RateLimiter;
  onPart?: (p: SettledPart) => void;
  /** Bytes acknowledged by the server so far. */
  onSent?: (bytes: number) => void;
  /**
   * The upload was completed already (a run killed after Complete): send nothing, only check that
   * every part matches `held`, and do not complete again.
   */
  verifyOnly?: boolean;
  /** Also compute each part's CRC-64 (COS checks objects with it). */
  crc64?: boolean;
}

interface OpenPart {
  number: number;
  buf: Buffer | undefined; // undefined while nothing but zeros was written
  /** Bytes of `buf` from its start that hold written data or zeros (the rest is undefined). */
  filled: number;
}

const zeroMd5s = new Map<number, Buffer>();
/**
 * Least size of part 1, which stays in memory until the end: S3's minimum part size (5 MiB), not a
 * whole part (with 16 MiB parts, 11 MiB less held for the whole upload). Stores whose parts must
 * all be the same size (file://) get a whole part.
 */
export const FIRST_PART_MIN = 5 * 1024 * 1024;

export class ObjectSink implements Sink {
  readonly path: string;
  readonly isBlockDevice = false;
  readonly deviceSize = undefined;
  private readonly o: ObjectSinkOptions;
  private head: Buffer = Buffer.alloc(0);
  private headFixed = false;
  private headBytes: number;
  private headLength = 0;
  private current: OpenPart | undefined;
  /** Object size so far: the end of the furthest write (or a truncate). */
  private size = 0;
  private readonly slots: BufferPool;
  private readonly inFlight = new Set<Promise<void>>();
  private failure: unknown;
  private readonly aborter = new AbortController();
  private readonly settled: SettledPart[] = [];
  private zero: Buffer | undefined;
  bytesSent = 0;
  private done = false;

  constructor(options: ObjectSinkOptions & { headBytes?: number }) {
    this.o = options;
    this.path = `${options.store.name}/${options.key}`;
    this.headBytes = options.headBytes ?? 0;
    // Parts in flight plus the one being filled (seal() waits for room before the next is started).
    this.slots = new BufferPool(options.partSize, options.concurrency + 1);
  }

  /** Size of part 1 (the part held in memory): the bytes the writer may rewrite, at least S3's minimum part. */
  get headSize(): number {
    return Math.max(this.o.store.uniformParts ? this.o.partSize : Math.min(FIRST_PART_MIN, this.o.partSize), this.headBytes);
  }

  /** Sets the bytes the writer may rewrite at the start (before the first write). */
  setHeadBytes(n: number): void {
    if (this.headFixed) throw new FerryError('INTERNAL', 'setHeadBytes after the first write', { remedy: 'Please report this bug.' });
    this.headBytes = n;
  }

  private fixHead(): void {
    if (this.headFixed) return;
    this.headFixed = true;
    this.head = Buffer.alloc(this.headSize);
  }

  /** The part holding byte `pos` (part 1 is headSize long, the others partSize). */
  private partOf(pos: number): number {
    return pos < this.head.length ? 1 : 2 + Math.floor((pos - this.head.length) / this.o.partSize);
  }

  private partStart(n: number): number {
    return n === 1 ? 0 : this.head.length + (n - 2) * this.o.partSize;
  }

  private partEnd(n: number): number {
    return n === 1 ? this.head.length : this.partStart(n) + this.o.partSize;
  }

  async write(buf: Buffer, position: number): Promise<void> {
    this.check();
    this.fixHead();
    let at = 0;
    while (at < buf.length) {
      const pos = position + at;
      const n = this.partOf(pos);
      const len = Math.min(buf.length - at, this.partEnd(n) - pos);
      const piece = buf.subarray(at, at + len);
      if (n === 1) {
        piece.copy(this.head, pos);
        this.headLength = Math.max(this.headLength, pos + len);
      } else {
        await this.moveTo(n);
        const part = this.current!;
        part.buf ??= this.slots.take(this.o.partSize);
        const at = pos - this.partStart(n);
        // Part buffers are reused: zero only the gap a write skips (writers mostly append).
        if (at > part.filled) part.buf.fill(0, part.filled, at);
        piece.copy(part.buf, at);
        part.filled = Math.max(part.filled, at + len);
      }
      at += len;
    }
    this.size = Math.max(this.size, position + buf.length);
  }

  async writev(bufs: Buffer[], position: number): Promise<void> {
    let pos = position;
    for (const b of bufs) {
      await this.write(b, pos);
      pos += b.length;
    }
  }

  async truncate(size: number): Promise<void> {
    this.check();
    this.fixHead();
    if (size < this.size && this.partOf(Math.max(0, size - 1)) < (this.current?.number ?? 1)) {
      throw new FerryError('INTERNAL', `${this.path}: the writer shrank the object below parts already uploaded`, { remedy: 'Please report this bug.' });
    }
    this.size = size;
  }

  async reserve(): Promise<void> {}

  private check(): void {
    if (this.failure) throw this.failure;
    if (this.done) throw new FerryError('INTERNAL', `${this.path}: written after commit or abort`, { remedy: 'Please report this bug.' });
  }

  /** Makes part `n` the open part, sealing the parts before it (a write went past them). */
  private async moveTo(n: number): Promise<void> {
    if (this.current && this.current.number === n) return;
    if (this.current && n < this.current.number) {
      throw new FerryError('INTERNAL', `${this.path}: the writer went back to part ${n} after part ${this.current.number} was started`, {
        remedy: 'Please report this bug (the output format writes out of order).',
      });
    }
    const from = this.current ? this.current.number : 2;
    if (this.current) await this.seal(this.current, this.o.partSize);
    // Parts skipped entirely are zeros.
    for (let k = this.current ? from + 1 : from; k < n; k++) await this.seal({ number: k, buf: undefined, filled: 0 }, this.o.partSize);
    this.current = { number: n, buf: undefined, filled: 0 };
  }

  private zeroBuffer(length: number): Buffer {
    if (!this.zero || this.zero.length < length) this.zero = Buffer.alloc(Math.max(length, this.o.partSize));
    return this.zero.subarray(0, length);
  }

  /** The part's MD5 (and CRC-64 when asked for), on the worker pool when there is one. */
  private async digests(data: Buffer, isZero: boolean): Promise<{ md5: Buffer; crc?: bigint }> {
    const withCrc = this.o.crc64 === true;
    if (isZero && !withCrc) {
      let d = zeroMd5s.get(data.length);
      if (!d) zeroMd5s.set(data.length, (d = createHash('md5').update(data).digest()));
      return { md5: d };
    }
    if (!this.o.pool) return { md5: createHash('md5').update(data).digest(), ...(withCrc ? { crc: crc64(data) } : {}) };
    // A buffer outside the shared arena would be transferred away: the worker gets a copy.
    const input = data.buffer instanceof SharedArrayBuffer ? data : Buffer.from(data);
    const d = await this.o.pool.digest(input, withCrc ? ['md5', 'crc64'] : ['md5']);
    return { md5: d[0]!, ...(withCrc ? { crc: d[1]!.readBigUInt64BE() } : {}) };
  }

  /** Uploads part `p` (its first `length` bytes), waiting for room among the parts in flight. */
  private async seal(p: OpenPart, length: number): Promise<void> {
    while (this.inFlight.size >= this.o.concurrency) {
      await Promise.race(this.inFlight);
      if (this.failure) throw this.failure;
    }
    if (p.buf && p.filled < length) p.buf.fill(0, p.filled, length);
    const data = p.buf ? p.buf.subarray(0, length) : this.zeroBuffer(length);
    const task = (async () => {
      try {
        const { md5, crc } = await this.digests(data, !p.buf);
        const hex = md5.toString('hex');
        const sent = this.o.held?.get(p.number) !== hex;
        if (sent && this.o.verifyOnly) {
          throw new FerryError('UPLOAD_INCOMPLETE', `${this.path}: part ${p.number} of the completed object differs from the source`, {
            remedy: 'Upload again: the object will be replaced.',
            details: { partNumber: p.number },
          });
        }
        if (sent) {
          await this.o.limiter?.take(data.length, this.aborter.signal);
          await this.o.store.uploadPart(this.o.key, this.o.uploadId, p.number, data, md5, this.aborter.signal);
          this.bytesSent += data.length;
        }
        this.o.onSent?.(data.length);
        const s: SettledPart = { partNumber: p.number, md5: hex, size: data.length, sent, ...(crc !== undefined ? { crc64: crc } : {}) };
        this.settled.push(s);
        this.o.onPart?.(s);
      } catch (err) {
        this.failure ??= err;
        this.aborter.abort();
      } finally {
        if (p.buf && p.buf !== this.head) this.slots.give(p.buf);
      }
    })();
    this.inFlight.add(task);
    void task.finally(() => this.inFlight.delete(task));
  }

  /** Uploads what is left (the last part, then part 1) and completes the upload. */
  async commit(): Promise<void> {
    this.check();
    this.fixHead();
    const size = this.size;
    const lastPart = size === 0 ? 1 : this.partOf(size - 1);
    if (lastPart > 1) {
      await this.moveTo(lastPart);
      await this.seal(this.current!, size - this.partStart(lastPart));
      this.current = undefined;
      await this.seal({ number: 1, buf: this.head, filled: this.head.length }, this.head.length);
    } else {
      await this.seal({ number: 1, buf: this.head, filled: this.head.length }, size);
    }
    await Promise.all(this.inFlight);
    if (this.failure) throw this.failure;
    const parts = [...this.settled].sort((a, b) => a.partNumber - b.partNumber);
    parts.forEach((p, i) => {
      if (p.partNumber !== i + 1) throw new FerryError('INTERNAL', `${this.path}: part ${i + 1} was never uploaded`, { remedy: 'Please report this bug.' });
    });
    this.done = true;
    if (this.o.verifyOnly) return;
    await this.o.store.complete(this.o.key, this.o.uploadId, parts.map((p) => ({ partNumber: p.partNumber, etag: p.md5 })));
  }

  /** The parts in number order (after commit). */
  get parts(): SettledPart[] {
    return [...this.settled].sort((a, b) => a.partNumber - b.partNumber);
  }

  /** Object size (after commit). */
  get objectSize(): number {
    return this.size;
  }

  /** Stops the parts in flight. The upload stays on the server, so that a new run can resume it. */
  async abort(): Promise<void> {
    this.done = true;
    this.aborter.abort();
    await Promise.allSettled(this.inFlight);
  }
}
