// Worker-thread entry of the worker pool: runs decode jobs (assemble a chunk from compressed units,
// see decode-job.ts), encode jobs (zero-detect and compress a chunk into units, see
// encode-job.ts) and digest jobs (MD5/SHA-256 of an upload part). Buffers come as references (buffer-pool.ts): ranges of a shared arena are read
// and written in place; owned buffers were transferred here and are transferred back.
import { createHash } from 'node:crypto';
import { parentPort, type TransferListItem } from 'node:worker_threads';
import { fromRef, refTo, type BufRef } from './buffer-pool.js';
import { crc64 } from '../storage/crc64.js';
import { describeFailure, runDecodeJob, type DecodeOp } from './decode-job.js';
import { encodeChunk, type UnitEncoding } from './encode-job.js';
import type { PoolReply } from './worker-pool.js';

const port = parentPort;
if (!port) throw new Error('pool-worker.js must run as a worker thread');

interface DecodeMessage {
  type: 'decode';
  id: number;
  inputs: BufRef[];
  /** Where the chunk is assembled (its length is the chunk's). */
  out: BufRef;
  ops: DecodeOp[];
  names: string[];
}

/** Result of a decode job: the chunk's bytes, and the input buffers handed back for reuse. */
export interface DecodeResult {
  out: BufRef;
  inputs: BufRef[];
}

interface EncodeMessage {
  type: 'encode';
  id: number;
  input: BufRef;
  /** Room for the compressed bytes (when absent or too small, a buffer of the worker's own). */
  out?: BufRef;
  unitSize: number;
  encoding: UnitEncoding;
}

/** Result of an encode job: the input (raw units live in it) and the compressed bytes. */
export interface EncodeResult {
  input: BufRef;
  units: number[];
  out: BufRef;
}

interface DigestMessage {
  type: 'digest';
  id: number;
  input: BufRef;
  algorithms: string[];
}

/** Result of a digest job: the input handed back and one digest per algorithm. */
export interface DigestResult {
  input: BufRef;
  digests: Uint8Array[];
}

/** Hands a reference back: shared ranges as they are, owned buffers transferred again. */
function back(ref: BufRef, transfer: TransferListItem[]): BufRef {
  if ('owned' in ref && !transfer.includes(ref.owned)) transfer.push(ref.owned);
  return ref;
}

port.on('message', (job: DecodeMessage | EncodeMessage | DigestMessage | { stop: true }) => {
  if ('stop' in job) {
    // Graceful stop requested by WorkerPool.close(): closing the port ends the thread.
    port.close();
    return;
  }
  try {
    const transfer: TransferListItem[] = [];
    let result: DecodeResult | EncodeResult | DigestResult;
    if (job.type === 'digest') {
      const data = fromRef(job.input);
      const digest = (a: string): Uint8Array => {
        if (a !== 'crc64') return createHash(a).update(data).digest();
        const out = Buffer.alloc(8);
        out.writeBigUInt64BE(crc64(data));
        return out;
      };
      result = { input: back(job.input, transfer), digests: job.algorithms.map(digest) };
    } else if (job.type === 'decode') {
      runDecodeJob(job.inputs.map(fromRef), job.out.length, job.ops, job.names, fromRef(job.out));
      result = { out: back(job.out, transfer), inputs: job.inputs.map((r) => back(r, transfer)) };
    } else {
      const into = job.out ? fromRef(job.out) : undefined;
      const enc = encodeChunk(fromRef(job.input), job.unitSize, job.encoding, into);
      const out = into && enc.out.buffer === into.buffer && enc.out.byteOffset === into.byteOffset ? back({ ...job.out!, length: enc.out.length }, transfer) : refTo(enc.out, transfer);
      result = { input: back(job.input, transfer), units: enc.units, out };
    }
    const reply: PoolReply = { id: job.id, result };
    port.postMessage(reply, transfer);
  } catch (err) {
    const reply: PoolReply = { id: job.id, error: describeFailure(err) };
    port.postMessage(reply);
  }
});
