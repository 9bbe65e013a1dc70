// The virtual size of a VHD, decided exactly as qemu's vpc driver (7.2) does: from the CHS geometry
// (cylinders x heads x sectors x 512) unless the creator application is one that uses the footer's
// current_size ("win " Hyper-V, "qem2" qemu force_size, "d2v " Disk2vhd, "tap\0" XenServer, "CTXS"
// XenConverter), or the geometry is the maximum 65535/16/255 (then current_size avoids truncation).
import type { Footer } from './footer.js';

/** 65535 x 16 x 255 sectors: the largest CHS geometry, used by big disks. */
export const MAX_GEOMETRY_SECTORS = 65535 * 16 * 255;
/** qemu refuses VHDs larger than 2040 GiB (0xff000000 sectors). */
export const MAX_SECTORS = 0xff000000;

const CURRENT_SIZE_CREATORS = ['win ', 'qem2', 'd2v ', 'CTXS'];

export interface SizeDecision {
  /** Size in bytes. */
  size: number;
  /** Size in 512-byte sectors (the same, as qemu counts it). */
  sectors: number;
  rule: 'chs' | 'current_size';
  /** Why this rule, for info. */
  reason: string;
  geometrySectors: number;
}

export function usesCurrentSize(f: Footer): boolean {
  const app = f.creatorAppRaw.toString('latin1');
  return CURRENT_SIZE_CREATORS.includes(app) || app === 'tap\0';
}

export function decideVirtualSize(f: Footer): SizeDecision {
  const geometrySectors = f.cylinders * f.heads * f.sectorsPerTrack;
  const byApp = usesCurrentSize(f);
  if (byApp || geometrySectors === MAX_GEOMETRY_SECTORS) {
    // qemu: total_sectors = current_size / 512 (rounded down); a u64 beyond MAX_SECTORS is refused later.
    const sectorsBig = f.currentSize / 512n;
    const sectors = sectorsBig > BigInt(Number.MAX_SAFE_INTEGER) / 512n ? Number.MAX_SAFE_INTEGER : Number(sectorsBig);
    return {
      size: sectors * 512,
      sectors,
      rule: 'current_size',
      reason: byApp ? `creator application '${f.creatorApp}' sizes disks by current_size` : 'CHS geometry is the maximum 65535/16/255',
      geometrySectors,
    };
  }
  return { size: geometrySectors * 512, sectors: geometrySectors, rule: 'chs', reason: `creator application '${f.creatorApp}' sizes disks by CHS geometry`, geometrySectors };
}
