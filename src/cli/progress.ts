// Progress display for long work: a bar with rate and ETA on an interactive terminal (stderr); with
// --json, one JSON line per second on stderr ({"progress": {...}}) so scripts can follow along while
// stdout stays one result document; nothing otherwise.
import { cliProgress } from '../lazy-modules.js';
import { humanBytes } from './format.js';

export interface Progress {
  update(done: number): void;
  stop(): void;
}

const NONE: Progress = { update: () => {}, stop: () => {} };

export function startProgress(label: string, total: number, json: boolean): Progress {
  if (total <= 0) return NONE;
  const started = Date.now();
  if (json) {
    let last = 0;
    let done = 0;
    const emit = () => {
      const secs = Math.max(0.001, (Date.now() - started) / 1000);
      const rate = done / secs;
      const eta = rate > 0 ? Math.round((total - done) / rate) : null;
      process.stderr.write(JSON.stringify({ progress: { task: label, done, total, percent: Math.floor((done / total) * 1000) / 10, bytesPerSecond: Math.round(rate), etaSeconds: eta } }) + '\n');
    };
    return {
      update(d) {
        done = d;
        if (Date.now() - last >= 1000) {
          last = Date.now();
          emit();
        }
      },
      stop() {
        if (last !== 0) emit();
      },
    };
  }
  if (!process.stderr.isTTY) return NONE;
  const bar = new (cliProgress().SingleBar)(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% | {doneH}/{totalH} | {rate}/s | ETA {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: true,
      etaBuffer: 50,
    },
    cliProgress().Presets.shades_classic,
  );
  bar.start(total, 0, { doneH: '0 B', totalH: humanBytes(total), rate: '0 B' });
  return {
    update(done) {
      const secs = Math.max(0.001, (Date.now() - started) / 1000);
      bar.update(done, { doneH: humanBytes(done), totalH: humanBytes(total), rate: humanBytes(Math.round(done / secs)) });
    },
    stop() {
      bar.stop();
    },
  };
}
