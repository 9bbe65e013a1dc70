// The registry of supported image drivers, probed in order (raw is the fallback, see open.ts).
import { qcow2Driver } from './qcow2/index.js';
import { rawDriver } from './raw.js';
import { vhdDriver } from './vhd/index.js';
import { vmdkDriver } from './vmdk/index.js';
import type { ImageDriver } from './types.js';

export const DRIVERS: readonly ImageDriver[] = [qcow2Driver, vhdDriver, vmdkDriver, rawDriver];
