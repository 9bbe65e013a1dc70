// Ferry side of the read benchmark: opens one image with the library, consumes every chunk of
// streamVirtual() over the whole virtual disk and discards it (the counterpart of qemu-img writing
// to its null-co driver), then prints ONE JSON line: virtual and data bytes, its own wall time, and
// the process's CPU time (user+sys, all threads including decompression workers) and peak RSS.
//
//   node dist/bench/read-sink.js IMAGE [--workers N] [--chunk-size BYTES]
import { openImage } from '../src/image/open.js';
import { streamVirtual, type StreamOptions } from '../src/pipeline/virtual-stream.js';

export interface SinkResult {
  image: string;
  format: string;
  virtualBytes: number;
  dataBytes: number;
  chunks: number;
  /** Wall time of open + read + close, measured inside the process (excludes Node start-up). */
  innerWallSeconds: number;
  userSeconds: number;
  systemSeconds: number;
  cpuSeconds: number;
  /** Peak resident set size in KiB (getrusage ru_maxrss). */
  maxRssKiB: number;
}

function parseArgs(argv: string[]): { image: string; stream: StreamOptions } {
  const stream: StreamOptions = {};
  let image: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`);
      return v;
    };
    if (a === '--workers') stream.workers = value();
    else if (a === '--chunk-size') stream.chunkSize = value();
    else if (a === '--in-flight') stream.maxInFlightBytes = value();
    else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else image = a;
  }
  if (!image) throw new Error('usage: read-sink.js IMAGE [--workers N] [--chunk-size BYTES]');
  return { image, stream };
}

async function main(): Promise<void> {
  const { image: path, stream } = parseArgs(process.argv.slice(2));
  const t0 = process.hrtime.bigint();
  const image = await openImage(path);
  let virtualBytes = 0;
  let dataBytes = 0;
  let chunks = 0;
  try {
    for await (const c of streamVirtual(image, stream)) {
      if (c.data) dataBytes += c.data.length;
      c.release?.(); // a real consumer hands each chunk's buffer back once done with it
      virtualBytes += c.length;
      chunks++;
    }
  } finally {
    await image.close();
  }
  const innerWallSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage();
  const result: SinkResult = {
    image: path,
    format: image.format,
    virtualBytes,
    dataBytes,
    chunks,
    innerWallSeconds,
    userSeconds: cpu.user / 1e6,
    systemSeconds: cpu.system / 1e6,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    maxRssKiB: process.resourceUsage().maxRSS,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`read-sink: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
