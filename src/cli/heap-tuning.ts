// How the V8 heap is sized for a command: commands that receive bulk data (import, download,
// receive, the queue worker and `jobs retry`) let the heap grow 5x its live size before the next
// full collection (V8 picks ~1.1-3x from its own timings). Ferry's heap is small (~12 MB), and
// receiving over HTTP or TLS allocates a buffer per 64 KiB: with V8's default a full collection
// starts every ~16 MB received (69 for a 1.1 GB import); with this, ~20, and the import's CPU drops
// ~1.4 s (3 alternating pairs on the 2-core reference machine: 8.2-8.7 s user against 9.4-10.5 s).
// V8 reads the flag each time it sizes the heap, so setting it at start-up is enough. Senders
// (upload, migrate) gain nothing from it and would hold ~50 MB more; the long-running control
// plane keeps V8's default too. Called first by both entry points (bin/ferry.js, the agent).
import { setFlagsFromString } from 'node:v8';

const RECEIVERS = new Set(['import', 'download', 'receive', 'worker', 'jobs']);

export function tuneHeapFor(command: string | undefined): void {
  if (command !== undefined && RECEIVERS.has(command)) setFlagsFromString('--heap-growing-percent=400');
}
