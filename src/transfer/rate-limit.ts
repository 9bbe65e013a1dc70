// A bandwidth limit shared by everything that sends (the parts of an upload in flight): a token
// bucket refilled at `bytesPerSecond`, allowing a burst of one second. `take(n)` waits until n
// bytes may go.
import { setTimeout as sleep } from 'node:timers/promises';

export class RateLimiter {
  private tokens: number;
  private last = performance.now();
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly bytesPerSecond: number) {
    this.tokens = bytesPerSecond;
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.bytesPerSecond, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
  }

  /** Waits until `bytes` may be sent (callers are served in order). */
  take(bytes: number, signal?: AbortSignal): Promise<void> {
    const turn = this.queue.then(async () => {
      this.refill();
      this.tokens -= bytes;
      if (this.tokens < 0) await sleep((-this.tokens / this.bytesPerSecond) * 1000, undefined, signal ? { signal } : {});
    });
    this.queue = turn.catch(() => {});
    return turn;
  }
}
