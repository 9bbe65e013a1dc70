// Test helper: SHA-256 of a file or block device (or of its first `length` bytes), read in 8 MiB
// pieces so large disks do not need to fit in memory.
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';

export function fileSha(path: string, length = Number.MAX_SAFE_INTEGER): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(8 * 1024 * 1024);
    for (let pos = 0; pos < length; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, length - pos), pos);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}
