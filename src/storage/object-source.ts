// Random access to an object in a store, as a ByteSource the image drivers read through: range
// requests in 256 KiB blocks kept in a bounded cache, so `ferry image info s3://…` fetches only the
// blocks its metadata lives in. Sequential reading is detected and turned into readahead: whole
// runs of blocks fetched with one request each, several requests in flight, the window doubling
// up to 64 MiB. Runs of up to 16 MiB (was 8) and a 64 MiB window (was 32) took an import of the
// 1.1 GB reference qcow2 from Swift from 12.7–13.8 s to 11.6–12.4 s: a range request costs the
// server ~15 ms of CPU and Ferry about as much (the SDK's request pipeline), so fewer of them
// leave more of the two cores to decompression. Retries with backoff come from the store (the SDK's standard retry mode).
// A run is kept as the pieces its response arrived in (when the store gives them: S3), so each
// byte is copied once, from the HTTP parser's buffer to the reader's — no run-sized buffer per
// request to fill and then drop (measured on a 1.1 GB import: full garbage collections 90 -> 69,
// ~0.3 s less copying on the main thread).
import { FerryError } from '../errors.js';
import type { ByteSource } from '../io/byte-source.js';
import type { ObjectStore } from './store.js';

const BLOCK = 256 * 1024;
const RUN_BLOCKS = 64; // one request fetches at most 16 MiB
const MAX_WINDOW_BLOCKS = 256; // readahead up to 64 MiB
const CACHE_BLOCKS = MAX_WINDOW_BLOCKS + 64; // 80 MiB of blocks: the readahead window and recent metadata (a cached block keeps its whole run, up to 16 MiB, alive: ~96 MiB at most)

export interface ObjectSourceStats {
  requests: number;
  bytesFetched: number;
}

/** One fetched run: the pieces of a response, in order, and where each starts in the run. */
class Run {
  private readonly starts: number[] = [];
  readonly length: number;

  constructor(private readonly pieces: Buffer[]) {
    let at = 0;
    for (const p of pieces) {
      this.starts.push(at);
      at += p.length;
    }
    this.length = at;
  }

  /** Copies run bytes [from, to) to `out` at `at`. */
  copy(from: number, to: number, out: Buffer, at: number): void {
    // The last piece starting at or before `from` (binary search: a run has ~130 pieces).
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= from) lo = mid;
      else hi = mid - 1;
    }
    for (let i = lo; from < to; i++) {
      const piece = this.pieces[i]!;
      const start = this.starts[i]!;
      const n = Math.min(to, start + piece.length) - from;
      piece.copy(out, at, from - start, from - start + n);
      at += n;
      from += n;
    }
  }
}

/** A cached block: its run and where the block starts in it (a block ends BLOCK later or at the run's end). */
interface Block {
  run: Run;
  from: number;
}

export class ObjectSource implements ByteSource {
  readonly name: string;
  private readonly cache = new Map<number, Promise<Block>>();
  private lastBlock = -2;
  private window = 0;
  /** Bytes read sequentially since the last jump (readahead starts after 1 MiB of them). */
  private sequential = 0;
  /** Highest block requested so far by readahead. */
  private requestedUpTo = -1;
  readonly stats: ObjectSourceStats = { requests: 0, bytesFetched: 0 };

  constructor(
    private readonly store: ObjectStore,
    readonly key: string,
    readonly size: number,
    /** Close the store with the source (when the source owns it). */
    private readonly ownsStore = false,
  ) {
    this.name = `${store.name}/${key}`;
  }

  static async open(store: ObjectStore, key: string, ownsStore = false): Promise<ObjectSource> {
    const info = await store.head(key);
    if (!info) {
      throw new FerryError('OBJECT_NOT_FOUND', `${store.name}/${key}: no such object`, {
        remedy: 'Check the key (keys are case-sensitive); if it was being uploaded, run the upload again.',
      });
    }
    return new ObjectSource(store, key, info.size, ownsStore);
  }

  private blocks(): number {
    return Math.ceil(this.size / BLOCK);
  }

  /** Fetches blocks [first, first+count) with one range request. */
  private fetchRun(first: number, count: number): void {
    const offset = first * BLOCK;
    const length = Math.min(count * BLOCK, this.size - offset);
    this.stats.requests++;
    const pieces = this.store.getRangePieces
      ? this.store.getRangePieces(this.key, offset, length)
      : this.store.getRange(this.key, offset, length).then((b) => [b]);
    const run = pieces.then((parts) => {
      const r = new Run(parts);
      this.stats.bytesFetched += r.length;
      if (r.length !== length) {
        throw new FerryError('UPLOAD_INCOMPLETE', `${this.name}: the object ended at ${offset + r.length} bytes, before its recorded size ${this.size}`, {
          remedy: 'The object changed or is being replaced while it is read; read it again once the upload is complete.',
        });
      }
      return r;
    });
    run.catch(() => {});
    for (let i = 0; i < count; i++) {
      const b = first + i;
      const p = run.then((r): Block => ({ run: r, from: i * BLOCK }));
      p.catch(() => this.cache.delete(b)); // a failed block is fetched again next time
      this.cache.set(b, p);
    }
  }

  /** Makes sure blocks [first, last] are cached or being fetched, in runs of missing blocks. */
  private ensure(first: number, last: number): void {
    let b = first;
    while (b <= last) {
      if (this.cache.has(b)) {
        b++;
        continue;
      }
      let n = 1;
      while (b + n <= last && n < RUN_BLOCKS && !this.cache.has(b + n)) n++;
      this.fetchRun(b, n);
      b += n;
    }
  }

  private evict(): void {
    if (this.cache.size <= CACHE_BLOCKS) return;
    // Map order is insertion order: drop the oldest blocks, keeping the readahead ahead of lastBlock.
    for (const b of this.cache.keys()) {
      if (this.cache.size <= CACHE_BLOCKS) break;
      if (b > this.lastBlock) continue;
      this.cache.delete(b);
    }
  }

  async read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<number> {
    if (position >= this.size || length <= 0) return 0;
    const end = Math.min(this.size, position + length);
    const first = Math.floor(position / BLOCK);
    const last = Math.floor((end - 1) / BLOCK);
    // Sequential reading (not a few metadata reads that happen to be adjacent) grows the readahead
    // window; a jump resets it.
    if (first === this.lastBlock || first === this.lastBlock + 1) this.sequential += end - position;
    else this.sequential = end - position;
    if (this.sequential >= 1024 * 1024) this.window = Math.min(MAX_WINDOW_BLOCKS, Math.max(RUN_BLOCKS / 4, this.window * 2));
    else this.window = 0;
    this.ensure(first, last);
    // Readahead in large runs: top the window up only when less than half of it is requested
    // ahead, so each request fetches up to RUN_BLOCKS blocks (fewer, larger range requests).
    if (this.window > 0 && this.requestedUpTo - last < this.window / 2) {
      const from = Math.max(last + 1, this.requestedUpTo + 1);
      const to = Math.min(this.blocks() - 1, last + this.window);
      if (from <= to) {
        this.ensure(from, to);
        this.requestedUpTo = to;
      }
    }
    // Take the blocks' promises now: concurrent reads may evict them from the cache meanwhile.
    const wanted: Promise<Block>[] = [];
    for (let b = first; b <= last; b++) {
      const p = this.cache.get(b)!;
      wanted.push(p);
      // Touch: move to the end of the LRU order.
      this.cache.delete(b);
      this.cache.set(b, p);
    }
    let done = 0;
    for (let b = first; b <= last; b++) {
      const block = await wanted[b - first]!;
      const from = Math.max(position, b * BLOCK) - b * BLOCK;
      const to = Math.min(end, (b + 1) * BLOCK) - b * BLOCK;
      block.run.copy(block.from + from, block.from + to, buf, bufOffset + done);
      done += to - from;
    }
    this.lastBlock = last;
    this.evict();
    return done;
  }

  async close(): Promise<void> {
    this.cache.clear();
    if (this.ownsStore) this.store.close();
  }
}
