// STUB: replaced by the vhd driver implementation.
import type { ImageDriver } from '../types.js';
export const vhdDriver: ImageDriver = {
  format: 'vpc',
  probe: () => 0,
  open: () => Promise.reject(new Error('not implemented')),
};
