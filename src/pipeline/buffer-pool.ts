// Chunk buffers for the streaming engine, in a shared, page-aligned arena.
//
// Why: reading a disk moves gigabytes through multi-MiB buffers. Fresh buffers cost page faults
// and garbage collection; and Node's own large buffers start 16 bytes past a page boundary, where
// the kernel's copy into them (read) runs about 3× slower than into an aligned buffer (measured
// here: 4 MiB preads into page-aligned buffers 175 ms vs 600 ms for the same 1.2 GB). So the pool
// carves fixed-size, 64 KiB-aligned slots out of a shared WebAssembly memory. The memory is a
// SharedArrayBuffer, so worker threads read and write the same slots: jobs carry (offset, length)
// references instead of transferring or copying buffers. When every slot is in use, take() falls
// back to an ordinary buffer of its own (transferred to workers as before).
//
// A SharedArrayBuffer that went to a worker and came back is a new object over the same memory,
// so give() cannot recognise the arena by identity: the arena's first page holds a random tag, and
// a buffer over memory carrying this pool's tag is one of its slots.
import { randomBytes } from 'node:crypto';
import type { TransferListItem } from 'node:worker_threads';

const WASM_PAGE = 64 * 1024;
const TAG_BYTES = 16;

/** The part of the WebAssembly API used here (the project's TypeScript lib has no DOM/wasm types). */
interface SharedMemory {
  readonly buffer: SharedArrayBuffer;
}
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => SharedMemory;
};

/** A buffer as a worker job refers to it: a range of a shared arena, or an owned (transferred) one. */
export type BufRef =
  | { shared: SharedArrayBuffer; offset: number; length: number }
  | { owned: ArrayBuffer; offset: number; length: number };

/** The reference to pass for `buf`; owned buffers are added to `transfer` (and detached by postMessage). */
export function refTo(buf: Buffer, transfer: TransferListItem[]): BufRef {
  const ab = buf.buffer;
  if (ab instanceof SharedArrayBuffer) return { shared: ab, offset: buf.byteOffset, length: buf.length };
  if (!transfer.includes(ab)) transfer.push(ab);
  return { owned: ab, offset: buf.byteOffset, length: buf.length };
}

/** The bytes a reference names (in the worker, or back on the main thread). */
export function fromRef(ref: BufRef): Buffer {
  return 'shared' in ref ? Buffer.from(ref.shared, ref.offset, ref.length) : Buffer.from(ref.owned, ref.offset, ref.length);
}

export class BufferPool {
  /** Size of a slot (a multiple of 64 KiB). */
  readonly slotSize: number;
  private readonly memory: SharedMemory | undefined;
  private readonly free: number[] = [];
  private readonly inUse = new Set<number>();
  private carved = 0;
  private readonly tag: Buffer;

  constructor(
    size: number,
    /** Number of slots (address space is reserved for all; pages are used as slots are touched). */
    private readonly slots: number,
  ) {
    this.slotSize = Math.ceil(size / WASM_PAGE) * WASM_PAGE;
    // One more page in front: the tag.
    const pages = (this.slotSize * slots) / WASM_PAGE + 1;
    this.tag = randomBytes(TAG_BYTES);
    try {
      this.memory = slots > 0 && size > 0 ? new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }) : undefined;
    } catch {
      this.memory = undefined; // no address space for it: ordinary buffers only
    }
    if (this.memory) this.tag.copy(Buffer.from(this.memory.buffer, 0, TAG_BYTES));
  }

  /** Whether `buf` lies in this pool's arena (also when its SharedArrayBuffer came back from a worker). */
  private owns(buf: Buffer): boolean {
    const ab = buf.buffer;
    if (!this.memory) return false;
    if (ab === this.memory.buffer) return true;
    return ab instanceof SharedArrayBuffer && ab.byteLength === this.memory.buffer.byteLength && this.tag.equals(Buffer.from(ab, 0, TAG_BYTES));
  }

  /** A buffer of `length` bytes (contents undefined): an arena slot when one is free. */
  take(length: number): Buffer {
    return this.tryTake(length) ?? Buffer.allocUnsafeSlow(length);
  }

  /** An arena slot of `length` bytes, or undefined when none is free (or it would not fit). */
  tryTake(length: number): Buffer | undefined {
    if (!this.memory || length > this.slotSize) return undefined;
    const at = this.free.pop() ?? (this.carved < this.slots ? WASM_PAGE + this.carved++ * this.slotSize : -1);
    if (at < 0) return undefined;
    this.inUse.add(at);
    return Buffer.from(this.memory.buffer, at, length);
  }

  /** Gives a slot back (buffers not from this arena are left to the garbage collector; twice is once). */
  give(buf: Buffer | undefined): void {
    if (!buf || !this.owns(buf) || !this.inUse.delete(buf.byteOffset)) return;
    this.free.push(buf.byteOffset);
  }

  /** Slots handed out and not given back (for tests). */
  get slotsInUse(): number {
    return this.inUse.size;
  }
}
