// Worker-thread entry of the worker pool: runs decode jobs (assemble a chunk from compressed units,
// see decode-job.ts) and encode jobs (zero-detect and compress a chunk into units, see
// encode-job.ts), transferring the resulting buffers back without copying.
import { parentPort } from 'node:worker_threads';
import { describeFailure, runDecodeJob, type DecodeOp } from './decode-job.js';
import { encodeChunk, type UnitEncoding } from './encode-job.js';
import type { PoolReply } from './worker-pool.js';

const port = parentPort;
if (!port) throw new Error('pool-worker.js must run as a worker thread');

interface DecodeMessage {
  type: 'decode';
  id: number;
  inputs: ArrayBuffer[];
  outLength: number;
  ops: DecodeOp[];
  names: string[];
  /** Buffer to decode into (recycled by the caller); a new one when absent. */
  out?: ArrayBuffer;
}

/** Result of a decode job: the chunk's bytes, and the input buffers handed back for reuse. */
export interface DecodeResult {
  out: ArrayBuffer;
  inputs: ArrayBuffer[];
}

interface EncodeMessage {
  type: 'encode';
  id: number;
  input: ArrayBuffer;
  /** Bytes of `input` that hold the chunk (from byte 0). */
  length: number;
  unitSize: number;
  encoding: UnitEncoding;
}

/** Result of an encode job: the input comes back (raw units live in it) with the compressed bytes. */
export interface EncodeResult {
  input: ArrayBuffer;
  units: number[];
  out: ArrayBuffer;
}

port.on('message', (job: DecodeMessage | EncodeMessage | { stop: true }) => {
  if ('stop' in job) {
    // Graceful stop requested by WorkerPool.close(): closing the port ends the thread.
    port.close();
    return;
  }
  try {
    if (job.type === 'decode') {
      const out = runDecodeJob(job.inputs, job.outLength, job.ops, job.names, job.out);
      // `out` starts at byte 0 of its own ArrayBuffer: hand it over without copying.
      const result: DecodeResult = { out: out.buffer as ArrayBuffer, inputs: job.inputs };
      const reply: PoolReply = { id: job.id, result };
      port.postMessage(reply, [result.out, ...job.inputs]);
    } else {
      const enc = encodeChunk(Buffer.from(job.input, 0, job.length), job.unitSize, job.encoding);
      const result: EncodeResult = { input: job.input, units: enc.units, out: enc.out.buffer as ArrayBuffer };
      const reply: PoolReply = { id: job.id, result };
      port.postMessage(reply, enc.out.length > 0 ? [job.input, result.out] : [job.input]);
    }
  } catch (err) {
    const reply: PoolReply = { id: job.id, error: describeFailure(err) };
    port.postMessage(reply);
  }
});
