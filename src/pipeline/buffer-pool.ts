// Reusable chunk buffers for the streaming engine: reading a disk allocates one buffer per chunk,
// and fresh multi-MiB buffers cost page faults and garbage collection. A pool hands out views of
// recycled ArrayBuffers of one size (larger requests get a buffer of their own) and takes them back
// when a consumer is done. Buffers transferred to a worker come back as new ArrayBuffer objects
// over the same memory; those are given back too.

export class BufferPool {
  private readonly free: ArrayBuffer[] = [];

  constructor(
    /** Size of pooled buffers. */
    readonly size: number,
    /** Most buffers kept for reuse. */
    private readonly keep: number,
  ) {}

  /** A buffer of `length` bytes starting at byte 0 of its ArrayBuffer (contents undefined). */
  take(length: number): Buffer {
    if (length > this.size) return Buffer.allocUnsafeSlow(length);
    const ab = this.free.pop() ?? new ArrayBuffer(this.size);
    return Buffer.from(ab, 0, length);
  }

  /** Returns a buffer's memory to the pool (ignored when it is not a pool-sized buffer). */
  give(buffer: ArrayBuffer | Buffer | undefined): void {
    if (!buffer) return;
    const ab = buffer instanceof ArrayBuffer ? buffer : buffer.buffer;
    if (!(ab instanceof ArrayBuffer) || ab.byteLength !== this.size || this.free.length >= this.keep) return;
    // A detached buffer (transferred away) has byteLength 0 and was filtered above.
    this.free.push(ab);
  }
}
