// STUB: replaced by the OVA container implementation.
import type { ByteSource } from '../io/byte-source.js';
import type { DiskImage, ProbeInput } from './types.js';
export function isOva(_input: ProbeInput): boolean {
  return false;
}
export async function openOvaDisk(
  _src: ByteSource,
  _path: string,
  _openInner: (inner: ByteSource, innerName: string) => Promise<DiskImage>,
): Promise<DiskImage> {
  throw new Error('not implemented');
}
