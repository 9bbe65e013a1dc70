// Structural check of an opened VMDK (never throws for damage): descriptor/extent consistency
// (sizes, files long enough), grain directory and grain tables inside the file, redundant GD
// agreeing with the GD, grains inside the file and outside the metadata, no two grains
// overlapping, and for streamOptimized the marker stream, the footer and the end-of-stream marker.
import { FerryError } from '../../errors.js';
import type { CheckProblem, CheckReport } from '../types.js';
import { FLAG_NL_DETECT, SECTOR } from './header.js';
import type { SparseExtentRec, VmdkState } from './model.js';
import { footerMismatches, walkStream } from './stream.js';

const MAX_PROBLEMS = 100;
/** Grains whose host ranges are collected for the overlap test (beyond this, overlap is not checked). */
const MAX_TRACKED_GRAINS = 8 * 1024 * 1024;

class Collector {
  readonly problems: CheckProblem[] = [];
  corruptions = 0;
  warnings = 0;
  add(p: CheckProblem): void {
    if (p.severity === 'corruption') this.corruptions++;
    else this.warnings++;
    if (this.problems.length < MAX_PROBLEMS) this.problems.push(p);
  }
}

function describe(err: unknown): string {
  return err instanceof FerryError ? err.message : String(err);
}

/** Growable list of host ranges [start, end) with a label index, sorted later for the overlap test. */
class Ranges {
  starts = new Float64Array(1024);
  ends = new Float64Array(1024);
  guest = new Float64Array(1024);
  n = 0;
  labels: string[] = [];
  full = false;
  add(start: number, end: number, guestOffset: number): void {
    if (this.n >= MAX_TRACKED_GRAINS) {
      this.full = true;
      return;
    }
    if (this.n === this.starts.length) {
      const grow = (a: Float64Array) => {
        const b = new Float64Array(a.length * 2);
        b.set(a);
        return b;
      };
      this.starts = grow(this.starts);
      this.ends = grow(this.ends);
      this.guest = grow(this.guest);
    }
    this.starts[this.n] = start;
    this.ends[this.n] = end;
    this.guest[this.n] = guestOffset;
    this.n++;
  }
}

async function checkSparse(rec: SparseExtentRec, index: number, c: Collector, stats: Record<string, number>): Promise<void> {
  const sp = rec.sparse;
  const file = sp.file;
  const h = sp.header;
  const name = file.name;
  const what = `extent ${index} (${name})`;
  if (rec.line && rec.line.sectors !== h.capacity) {
    c.add({
      severity: 'corruption',
      field: `descriptor line ${rec.line.line} sectors`,
      message: `${what}: the descriptor declares ${rec.line.sectors} sectors but the sparse header capacity is ${h.capacity}`,
    });
  }
  if (h.kind === 'KDMV') {
    if ((rec.primary.flags & FLAG_NL_DETECT) !== 0 && !rec.primary.newlineCheckOk) {
      c.add({
        severity: 'corruption',
        field: 'singleEndLineChar..doubleEndLineChar2',
        offset: 73,
        message: `${what}: the newline check bytes of the header are altered: the file went through a text-mode (ASCII) transfer, which corrupts binary data`,
      });
    }
    if (rec.primary.uncleanShutdown) {
      c.add({ severity: 'warning', field: 'uncleanShutdown', offset: 72, message: `${what}: the disk was not closed cleanly (uncleanShutdown = 1)` });
    }
    if (h.overHead * SECTOR > file.size) {
      c.add({
        severity: 'corruption',
        field: 'overHead',
        message: `${what}: truncated: the metadata area (overHead) needs ${h.overHead * SECTOR} bytes but the file has ${file.size}`,
      });
    }
  }
  const gdBytes = sp.gdEntries * 4;
  const ranges = new Ranges();
  const meta: { start: number; end: number; label: string }[] = [{ start: 0, end: SECTOR, label: 'header' }];
  if (h.descriptorOffset > 0 && h.descriptorSize > 0) {
    meta.push({ start: h.descriptorOffset * SECTOR, end: (h.descriptorOffset + h.descriptorSize) * SECTOR, label: 'embedded descriptor' });
  }
  meta.push({ start: h.gdOffset * SECTOR, end: h.gdOffset * SECTOR + gdBytes, label: 'grain directory' });

  // Redundant grain directory.
  let rgd: Uint32Array | undefined;
  try {
    rgd = await sp.loadRgd();
    if (rgd) meta.push({ start: h.rgdOffset * SECTOR, end: h.rgdOffset * SECTOR + gdBytes, label: 'redundant grain directory' });
  } catch (err) {
    c.add({ severity: 'corruption', field: 'rgdOffset', offset: h.rgdOffset * SECTOR, message: `${what}: ${describe(err)}` });
  }

  const gtBytes = sp.numGTEsPerGT * 4;
  const grainSpan = sp.numGTEsPerGT * sp.grainBytes;
  let allocated = 0;
  let zeroed = 0;
  let rgdMismatches = 0;
  for (let gdi = 0; gdi < sp.gdEntries; gdi++) {
    const sector = sp.gd[gdi]!;
    if (rgd && (rgd[gdi] === 0) !== (sector === 0)) {
      rgdMismatches++;
      c.add({
        severity: 'corruption',
        field: `redundant grain directory entry ${gdi}`,
        offset: h.rgdOffset * SECTOR + gdi * 4,
        message: `${what}: grain directory entry ${gdi} is ${sector === 0 ? 'empty' : 'set'} but the redundant grain directory entry is ${rgd[gdi] === 0 ? 'empty' : 'set'}`,
      });
    }
    if (sector === 0) continue;
    let gt: Uint32Array;
    try {
      gt = await sp.readGtAt(sector, `grain directory entry ${gdi}`);
    } catch (err) {
      c.add({ severity: 'corruption', field: `grain directory entry ${gdi}`, offset: sector * SECTOR, guestOffset: rec.start + gdi * grainSpan, message: `${what}: ${describe(err)}` });
      continue;
    }
    meta.push({ start: sector * SECTOR, end: sector * SECTOR + gtBytes, label: `grain table ${gdi}` });
    if (rgd && rgd[gdi] !== 0 && rgd[gdi] !== sector) {
      try {
        const rgt = await sp.readGtAt(rgd[gdi]!, `redundant grain directory entry ${gdi}`);
        meta.push({ start: rgd[gdi]! * SECTOR, end: rgd[gdi]! * SECTOR + gtBytes, label: `redundant grain table ${gdi}` });
        let diff = -1;
        for (let i = 0; i < gt.length; i++) {
          if (gt[i] !== rgt[i]) {
            diff = i;
            break;
          }
        }
        if (diff >= 0) {
          rgdMismatches++;
          c.add({
            severity: 'corruption',
            field: `redundant grain table ${gdi}`,
            offset: rgd[gdi]! * SECTOR + diff * 4,
            guestOffset: rec.start + gdi * grainSpan + diff * sp.grainBytes,
            message: `${what}: grain table ${gdi} and its redundant copy differ (first at entry ${diff}: ${gt[diff]} vs ${rgt[diff]})`,
          });
        }
      } catch (err) {
        c.add({ severity: 'corruption', field: `redundant grain directory entry ${gdi}`, offset: rgd[gdi]! * SECTOR, message: `${what}: ${describe(err)}` });
      }
    }
    for (let i = 0; i < gt.length; i++) {
      const e = gt[i]!;
      if (e === 0) continue;
      const gi = gdi * sp.numGTEsPerGT + i;
      const guestStart = gi * sp.grainBytes;
      const guestOffset = rec.start + guestStart;
      if (guestStart >= sp.sizeBytes) {
        c.add({ severity: 'warning', field: `grain table ${gdi} entry ${i}`, guestOffset, message: `${what}: grain table ${gdi} entry ${i} is set for a grain beyond the capacity` });
        continue;
      }
      if (e === 1 && sp.zeroGrain) {
        zeroed++;
        continue;
      }
      const host = e * SECTOR;
      const field = `grain table ${gdi} entry ${i}`;
      if (h.kind === 'KDMV' && e < h.overHead) {
        c.add({ severity: 'corruption', field, offset: host, guestOffset, message: `${what}: grain for guest offset ${guestOffset} points to host offset ${host}, inside the metadata area (overHead ${h.overHead} sectors)` });
        continue;
      }
      if (host >= file.size) {
        c.add({ severity: 'corruption', field, offset: host, guestOffset, message: `${what}: grain for guest offset ${guestOffset} at host offset ${host} lies beyond the end of the ${file.size}-byte file` });
        continue;
      }
      let end: number;
      if (sp.compressed) {
        try {
          const m = await sp.marker(e, gi);
          end = m.dataOffset + m.size;
          if (end > file.size) throw new Error(`the compressed grain at host offset ${host} (${m.size} bytes) runs past the end of the ${file.size}-byte file`);
        } catch (err) {
          c.add({ severity: 'corruption', field, offset: host, guestOffset, message: `${what}: ${describe(err)}` });
          continue;
        }
        stats['compressedGrains'] = (stats['compressedGrains'] ?? 0) + 1;
      } else {
        const needed = Math.ceil(Math.min(sp.grainBytes, sp.sizeBytes - guestStart) / SECTOR) * SECTOR;
        end = host + needed;
        if (end > file.size) {
          c.add({
            severity: 'corruption',
            field,
            offset: host,
            guestOffset,
            message: `${what}: truncated: the grain for guest offset ${guestOffset} needs host bytes ${host}..${end} but the file has ${file.size}`,
          });
          continue;
        }
      }
      allocated++;
      ranges.add(host, end, guestOffset);
    }
  }
  stats['allocatedGrains'] = (stats['allocatedGrains'] ?? 0) + allocated;
  stats['zeroedGrains'] = (stats['zeroedGrains'] ?? 0) + zeroed;
  if (rgdMismatches) stats['rgdMismatches'] = (stats['rgdMismatches'] ?? 0) + rgdMismatches;

  // Overlaps: grains with each other and with metadata.
  const metaStart = ranges.n;
  for (const m of meta) {
    if (m.end > m.start) ranges.add(m.start, m.end, -1);
    ranges.labels.push(m.label);
  }
  if (ranges.full) {
    c.add({ severity: 'warning', message: `${what}: more than ${MAX_TRACKED_GRAINS} grains: the overlap test was skipped for the rest` });
  }
  const order = Array.from({ length: ranges.n }, (_, i) => i).sort((a, b) => ranges.starts[a]! - ranges.starts[b]! || a - b);
  let prev = -1;
  for (const i of order) {
    if (prev >= 0 && ranges.starts[i]! < ranges.ends[prev]!) {
      const label = (k: number) => (k >= metaStart ? ranges.labels[k - metaStart]! : `the grain for guest offset ${ranges.guest[k]}`);
      c.add({
        severity: 'corruption',
        field: 'grain table entry',
        offset: ranges.starts[i]!,
        ...(ranges.guest[i]! >= 0 ? { guestOffset: ranges.guest[i]! } : {}),
        message: `${what}: ${label(i)} at host offset ${ranges.starts[i]} overlaps ${label(prev)} (host ${ranges.starts[prev]}..${ranges.ends[prev]})`,
      });
    }
    if (prev < 0 || ranges.ends[i]! > ranges.ends[prev]!) prev = i;
  }

  // streamOptimized: the marker stream, the footer and the end-of-stream marker.
  if (sp.compressed && sp.markers) {
    const walk = await walkStream(file, h, sp.grainBytes).catch((err: unknown) => {
      c.add({ severity: 'corruption', field: 'stream', message: `${what}: ${describe(err)}` });
      return undefined;
    });
    if (walk) {
      for (const p of walk.problems) c.add({ severity: 'corruption', field: p.field, offset: p.offset, message: `${what}: ${p.message}` });
      stats['streamGrains'] = (stats['streamGrains'] ?? 0) + walk.grains;
      if (rec.usesFooter) {
        if (!walk.sawEos) {
          c.add({ severity: 'corruption', field: 'end-of-stream marker', offset: walk.end, message: `${what}: missing stream footer / end-of-stream marker: the stream ends at host offset ${walk.end} without one (truncated?)` });
        }
        const mism = footerMismatches(rec.primary, h);
        for (const m of mism) c.add({ severity: 'corruption', field: 'footer', message: `${what}: the stream footer does not match the header: ${m}` });
      }
      if (walk.grains < allocated && walk.problems.length === 0) {
        c.add({ severity: 'corruption', field: 'stream', message: `${what}: the grain tables map ${allocated} grains but the stream holds only ${walk.grains}` });
      }
    }
  }
}

export async function checkVmdk(s: VmdkState): Promise<CheckReport> {
  const c = new Collector();
  const stats: Record<string, number> = { extents: s.extents.length };
  for (let i = 0; i < s.extents.length; i++) {
    const e = s.extents[i]!;
    try {
      if (e.kind === 'flat') {
        const need = e.fileOffset + e.size;
        if (e.file.size < need) {
          c.add({
            severity: 'corruption',
            field: e.line ? `descriptor line ${e.line.line}` : 'extent',
            offset: e.file.size,
            guestOffset: e.start + Math.max(0, e.file.size - e.fileOffset),
            message: `extent ${i} (${e.file.name}): truncated: the flat extent needs ${need} bytes (offset ${e.fileOffset} + ${e.size}) but the file has ${e.file.size}`,
          });
        }
      } else if (e.kind === 'sparse') {
        await checkSparse(e, i, c, stats);
      }
    } catch (err) {
      c.add({ severity: 'corruption', message: `extent ${i}: ${describe(err)}` });
    }
  }
  if (s.parent) {
    const pr = await s.parent.check();
    for (const p of pr.problems) c.add({ ...p, message: `parent ${s.parent.name}: ${p.message}` });
    if (pr.verdict === 'corrupt' && pr.corruptions === 0) c.corruptions++;
  }
  // Corruptions first.
  const problems = [...c.problems].sort((a, b) => (a.severity === 'corruption' ? 0 : 1) - (b.severity === 'corruption' ? 0 : 1));
  return {
    format: 'vmdk',
    verdict: c.corruptions > 0 ? 'corrupt' : 'clean',
    corruptions: c.corruptions,
    leaks: 0,
    problems,
    stats,
  };
}
