// STUB: replaced by the qcow2 driver implementation.
import type { ImageDriver } from '../types.js';
export const qcow2Driver: ImageDriver = {
  format: 'qcow2',
  probe: () => 0,
  open: () => Promise.reject(new Error('not implemented')),
};
