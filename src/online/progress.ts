// The one measure of a migration's progress that every view of it uses (the CLI's reports to the
// control plane, fleet records): kept apart from the sender so that views load nothing heavy.

/**
 * How much of a round a progress event reports done, from 0 to 1: chunks checked, not bytes sent
 * (a resumed or later round skips what the receiver already holds). Every view of a migration's
 * progress (the CLI's report, fleet records) uses this one measure.
 */
export function roundShare(e: { chunksDone: number; chunks: number }): number {
  return e.chunks > 0 ? Math.min(1, e.chunksDone / e.chunks) : 0;
}
