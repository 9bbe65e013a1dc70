// Progress display for long work: a bar with rate and ETA on an interactive terminal (stderr),
// nothing otherwise (scripts use --json and get one result document).
import cliProgress from 'cli-progress';
import { humanBytes } from './format.js';

export interface Progress {
  update(done: number): void;
  stop(): void;
}

export function startProgress(label: string, total: number, enabled: boolean): Progress {
  if (!enabled || !process.stderr.isTTY || total <= 0) return { update: () => {}, stop: () => {} };
  const started = Date.now();
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% | {doneH}/{totalH} | {rate}/s | ETA {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: true,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
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
