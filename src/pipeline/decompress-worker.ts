// Worker-thread entry of the decompression pool: receives decode jobs (one per data chunk, many
// compressed units each), runs them with runDecodeJob and transfers the chunk's bytes back.
import { parentPort } from 'node:worker_threads';
import { describeFailure, runDecodeJob, type DecodeJob, type DecodeReply } from './decode-job.js';

const port = parentPort;
if (!port) throw new Error('decompress-worker.js must run as a worker thread');

port.on('message', (job: DecodeJob | { stop: true }) => {
  if ('stop' in job) {
    // Graceful stop requested by DecompressPool.close(): closing the port ends the thread.
    port.close();
    return;
  }
  let reply: DecodeReply;
  try {
    const out = runDecodeJob(job.inputs, job.outLength, job.ops, job.names);
    // `out` owns its whole ArrayBuffer (allocUnsafeSlow): hand it over without copying.
    reply = { id: job.id, out: out.buffer as ArrayBuffer };
    port.postMessage(reply, [reply.out]);
  } catch (err) {
    reply = { id: job.id, error: describeFailure(err) };
    port.postMessage(reply);
  }
});
