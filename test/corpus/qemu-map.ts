// Normalizes allocation maps so Ferry's extents and `qemu-img map --output=json` can be compared:
// both sides become ordered runs of (kind, depth) — kind 'data' (qemu data=true), 'zero'
// (data=false, zero=true, present=true) or 'unallocated' (present=false) — with adjacent runs of
// equal kind and depth merged. Also finds the first difference between two run lists.
import type { Extent } from '../../src/image/extents.js';
import type { ExtentKind } from '../../src/image/types.js';
import { run } from './run.js';

export interface MapRun {
  start: number;
  length: number;
  kind: ExtentKind;
  depth: number;
}

/** One entry of `qemu-img map --output=json`. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export interface NormalizeOptions {
  /**
   * Treat the depth of unallocated runs as 0 (qemu reports the depth of the last layer it looked at;
   * the bytes are zeros either way).
   */
  ignoreUnallocatedDepth?: boolean;
}

export function kindOfQemuEntry(e: QemuMapEntry): ExtentKind {
  if (e.data) return 'data';
  if (e.present === false) return 'unallocated';
  return e.zero ? 'zero' : 'data';
}

/** Merges adjacent runs with the same kind and depth (input must be ordered and contiguous). */
export function mergeRuns(runs: Iterable<MapRun>, opts: NormalizeOptions = {}): MapRun[] {
  const out: MapRun[] = [];
  for (const r0 of runs) {
    if (r0.length <= 0) continue;
    const r = { ...r0, depth: opts.ignoreUnallocatedDepth && r0.kind === 'unallocated' ? 0 : r0.depth };
    const last = out[out.length - 1];
    if (last && last.kind === r.kind && last.depth === r.depth && last.start + last.length === r.start) last.length += r.length;
    else out.push(r);
  }
  return out;
}

export function fromQemuMap(entries: QemuMapEntry[], opts: NormalizeOptions = {}): MapRun[] {
  return mergeRuns(
    entries.map((e) => ({ start: e.start, length: e.length, kind: kindOfQemuEntry(e), depth: e.depth })),
    opts,
  );
}

export async function fromExtents(exts: AsyncIterable<Extent> | Iterable<Extent>, opts: NormalizeOptions = {}): Promise<MapRun[]> {
  const runs: MapRun[] = [];
  for await (const e of exts) runs.push({ start: e.offset, length: e.length, kind: e.kind, depth: e.depth });
  return mergeRuns(runs, opts);
}

/** Runs `qemu-img map --output=json` and returns the normalized runs. */
export async function qemuMap(path: string, format: string, opts: NormalizeOptions = {}): Promise<MapRun[]> {
  const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', format, path]);
  return fromQemuMap(JSON.parse(stdout) as QemuMapEntry[], opts);
}

function show(r: MapRun | undefined): string {
  return r ? `${r.kind}@depth${r.depth} [${r.start}, +${r.length})` : 'nothing';
}

/** Describes the first difference between two normalized run lists, or returns undefined when equal. */
export function firstDifference(ours: MapRun[], theirs: MapRun[], labels: [string, string] = ['ferry', 'qemu']): string | undefined {
  const n = Math.max(ours.length, theirs.length);
  for (let i = 0; i < n; i++) {
    const a = ours[i];
    const b = theirs[i];
    if (!a || !b || a.start !== b.start || a.length !== b.length || a.kind !== b.kind || a.depth !== b.depth) {
      return `run #${i} differs: ${labels[0]} has ${show(a)}, ${labels[1]} has ${show(b)} (${ours.length} vs ${theirs.length} runs)`;
    }
  }
  return undefined;
}
