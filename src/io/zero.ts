// Zero detection for buffers: the one test every data path uses to leave zero ranges out
// (holes in files, unallocated clusters, parts not sent twice).

/** Largest unit: qcow2's 2 MiB clusters. */
const ZERO = Buffer.alloc(2 * 1024 * 1024);

/** True when every byte of `buf` is zero (memcmp against a zero page, no JS loop). */
export function isAllZero(buf: Buffer): boolean {
  for (let at = 0; at < buf.length; at += ZERO.length) {
    const n = Math.min(ZERO.length, buf.length - at);
    if (!buf.subarray(at, at + n).equals(n === ZERO.length ? ZERO : ZERO.subarray(0, n))) return false;
  }
  return true;
}
