// STUB: replaced by the vmdk driver implementation.
import type { ImageDriver } from '../types.js';
export const vmdkDriver: ImageDriver = {
  format: 'vmdk',
  probe: () => 0,
  open: () => Promise.reject(new Error('not implemented')),
};
