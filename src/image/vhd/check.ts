// Structural check of a VHD (qemu-img check does not support vpc, so this is the only one): footer
// and dynamic-header checksums, cookies, versions and offsets; the footer at the end and its copy at
// offset 0; BAT placement; every allocated block against the end of the file, the metadata and the
// other blocks. Never throws for damage: every finding is a CheckProblem.
import type { ByteSource } from '../../io/byte-source.js';
import type { CheckProblem, CheckReport } from '../types.js';
import { DYN_HEADER_SIZE, DYN_VERSION, UNALLOCATED } from './dynamic.js';
import { FOOTER_SIZE, NO_DATA_OFFSET, VHD_VERSION, checksumOk, hex32, type Footer } from './footer.js';
import type { VhdLayout } from './image.js';

const MAX_PROBLEMS = 100;
/** At most this many allocated blocks are kept for the overlap analysis (8 bytes each). */
const MAX_TRACKED_BLOCKS = 1024 * 1024;
/** At most this many BAT entries beyond those the virtual size uses are scanned. */
const MAX_SCANNED_ENTRIES = 16 * 1024 * 1024;

interface Region {
  start: number;
  end: number;
  what: string;
}

class Problems {
  readonly list: CheckProblem[] = [];
  corruptions = 0;
  warnings = 0;
  /** True once the list is full: callers may skip building messages and only count. */
  get full(): boolean {
    return this.list.length >= MAX_PROBLEMS;
  }
  add(p: CheckProblem): void {
    if (p.severity === 'corruption') this.corruptions++;
    else if (p.severity === 'warning') this.warnings++;
    if (this.list.length < MAX_PROBLEMS) this.list.push(p);
  }
  corrupt(message: string, extra: Omit<CheckProblem, 'severity' | 'message'> = {}): void {
    this.add({ severity: 'corruption', message, ...extra });
  }
  warn(message: string, extra: Omit<CheckProblem, 'severity' | 'message'> = {}): void {
    this.add({ severity: 'warning', message, ...extra });
  }
}

function checkFooterFields(p: Problems, f: Footer, where: string): void {
  if (!checksumOk(f)) {
    p.corrupt(`${where}: checksum ${hex32(f.checksum)} does not match the computed ${hex32(f.computedChecksum)}`, { offset: f.at + 64, field: 'footer.checksum' });
  }
  if (f.version !== VHD_VERSION) p.corrupt(`${where}: file format version ${hex32(f.version)} is not 0x00010000`, { offset: f.at + 12, field: 'footer.version' });
  if ((f.features & 2) === 0) p.warn(`${where}: features ${hex32(f.features)} lacks the reserved bit 0x2 that must always be set`, { offset: f.at + 8, field: 'footer.features' });
}

export async function checkVhd(src: ByteSource, l: VhdLayout): Promise<CheckReport> {
  const p = new Problems();
  const stats: Record<string, number> = {};
  const f = l.footer;
  const size = src.size;
  const endAt = size - FOOTER_SIZE;

  if (l.subformat === 'fixed') {
    checkFooterFields(p, f, `footer at offset ${f.at}`);
    if (f.dataOffset !== NO_DATA_OFFSET) {
      p.warn(`footer data_offset is 0x${f.dataOffset.toString(16)}; a fixed disk should have 0xffffffffffffffff`, { offset: f.at + 16, field: 'footer.data_offset' });
    }
    const dataSize = endAt;
    if (dataSize < l.size.size) {
      p.corrupt(`file too short for a fixed disk: the ${l.size.size}-byte virtual disk plus its footer need ${l.size.size + FOOTER_SIZE} bytes, the file has ${size} (truncated)`, {
        offset: size,
        guestOffset: Math.max(0, dataSize),
        field: 'file size',
      });
    } else if (BigInt(dataSize) < f.currentSize) {
      p.warn(`footer current_size ${f.currentSize} exceeds the ${dataSize} data bytes before the footer`, { offset: f.at + 48, field: 'footer.current_size' });
    }
    stats.virtualSize = l.size.size;
    return report(p, stats);
  }

  // Dynamic / differencing: both footers.
  const head = l.headFooter;
  const end = l.endFooter;
  if (head) checkFooterFields(p, head, 'footer copy at offset 0');
  else p.corrupt('the footer copy at offset 0 is missing (dynamic disks carry one)', { offset: 0, field: 'footer copy' });
  if (end) {
    checkFooterFields(p, end, `footer at the end of the file (offset ${endAt})`);
    if (head && !end.raw.equals(head.raw)) p.corrupt(`the footer at the end of the file (offset ${endAt}) differs from its copy at offset 0`, { offset: endAt, field: 'footer' });
  } else {
    p.corrupt(`no footer at the end of the file (offset ${endAt}): the file is truncated or its last sector is damaged`, { offset: endAt, field: 'footer' });
  }
  if (f.savedState) p.warn('the disk is marked as being in a saved state (a suspended VM): its content may be inconsistent', { offset: f.at + 84, field: 'footer.saved_state' });

  const dyn = l.dynamic!;
  const h = dyn.header;
  if (h.checksum !== h.computedChecksum) {
    p.corrupt(`dynamic header at offset ${h.at}: checksum ${hex32(h.checksum)} does not match the computed ${hex32(h.computedChecksum)}`, { offset: h.at + 36, field: 'dynamic_header.checksum' });
  }
  if (h.version !== DYN_VERSION) p.corrupt(`dynamic header at offset ${h.at}: version ${hex32(h.version)} is not 0x00010000`, { offset: h.at + 24, field: 'dynamic_header.version' });
  if (h.dataOffset !== NO_DATA_OFFSET) p.warn(`dynamic header data_offset is 0x${h.dataOffset.toString(16)}; it should be 0xffffffffffffffff`, { offset: h.at + 8, field: 'dynamic_header.data_offset' });

  const bs = dyn.blockSize;
  const blocksNeeded = Math.ceil(l.size.size / bs);
  const blockBytes = dyn.bitmapSize + bs;
  stats.blockSize = bs;
  stats.maxTableEntries = h.maxTableEntries;
  stats.blocksNeeded = blocksNeeded;
  if (h.maxTableEntries > blocksNeeded) {
    p.warn(`max_table_entries ${h.maxTableEntries} exceeds the ${blocksNeeded} blocks of the ${l.size.size}-byte virtual size`, { offset: h.at + 28, field: 'dynamic_header.max_table_entries' });
  }

  // Metadata regions.
  const batStart = dyn.bat.offset;
  const batBytes = h.maxTableEntries * 4;
  const regions: Region[] = [
    { start: 0, end: FOOTER_SIZE, what: 'footer copy at offset 0' },
    { start: h.at, end: h.at + DYN_HEADER_SIZE, what: 'dynamic header' },
    { start: batStart, end: batStart + batBytes, what: 'BAT' },
  ];
  if (h.at < FOOTER_SIZE) p.corrupt(`dynamic header offset ${h.at} overlaps the footer copy at offset 0`, { offset: h.at, field: 'footer.data_offset' });
  if (batStart % 512 !== 0) p.warn(`BAT offset ${batStart} is not sector aligned`, { offset: h.at + 16, field: 'dynamic_header.table_offset' });
  if (batStart < h.at + DYN_HEADER_SIZE && batStart + batBytes > h.at) {
    p.corrupt(`BAT (offset ${batStart}, ${batBytes} bytes) overlaps the dynamic header at ${h.at}`, { offset: batStart, field: 'dynamic_header.table_offset' });
  }
  if (batStart < FOOTER_SIZE) p.corrupt(`BAT offset ${batStart} overlaps the footer copy at offset 0`, { offset: batStart, field: 'dynamic_header.table_offset' });
  if (batStart + batBytes > endAt) {
    p.corrupt(
      `BAT (offset ${batStart}, ${h.maxTableEntries} entries = ${batBytes} bytes) extends past the data area of the file: it needs ${batStart + batBytes + FOOTER_SIZE} bytes with the end footer, the file has ${size}`,
      { offset: batStart, field: 'dynamic_header.max_table_entries' },
    );
  }
  for (const loc of h.locators) {
    const st = Number(loc.dataOffset);
    const len = Math.max(loc.dataLength, 0);
    if (loc.dataOffset > BigInt(size) || st + len > size) {
      p.corrupt(`parent locator ${loc.index} (${loc.platform}) data at ${loc.dataOffset} (+${len}) lies past the end of the file (${size})`, { offset: 576 + loc.index * 24 + h.at, field: `parent_locator[${loc.index}]` });
    } else if (len > 0) {
      regions.push({ start: st, end: st + len, what: `parent locator ${loc.index} (${loc.platform})` });
    }
  }
  for (const d of l.locators ?? []) {
    if (d.problem) p.warn(`parent locator ${d.index} (${d.platform}): ${d.problem}`, { field: `parent_locator[${d.index}]` });
  }

  // BAT entries.
  const entriesInFile = Math.max(0, Math.min(h.maxTableEntries, Math.floor((size - batStart) / 4)));
  const toScan = Math.min(entriesInFile, Math.max(blocksNeeded, MAX_SCANNED_ENTRIES));
  if (toScan < entriesInFile) p.warn(`only the first ${toScan} of ${h.maxTableEntries} BAT entries were checked`, { field: 'dynamic_header.max_table_entries' });
  const blockIndex: number[] = [];
  const blockStart: number[] = [];
  let tracked = true;
  let allocated = 0;
  let pastEof = 0;
  let maxEnd = 0;
  for (let i = 0; i < toScan; ) {
    const page = await dyn.bat.page(Math.floor(i / dyn.bat.pageEntries), false);
    const first = Math.floor(i / dyn.bat.pageEntries) * dyn.bat.pageEntries;
    for (let k = i - first; k < page.length && first + k < toScan; k++) {
      const e = page[k]!;
      const bi = first + k;
      if (e === UNALLOCATED) continue;
      allocated++;
      const start = e * 512;
      const blockEnd = start + blockBytes;
      maxEnd = Math.max(maxEnd, blockEnd);
      if (blockEnd > endAt) {
        pastEof++;
        if (p.full) {
          p.corruptions++;
          continue;
        }
        p.corrupt(
          `BAT entry ${bi} (guest offset ${bi * bs}) points to sector ${e}: its block spans host bytes ${start}..${blockEnd} past the end of the data area; the file is truncated: it needs at least ${blockEnd + FOOTER_SIZE} bytes but has ${size}`,
          { offset: batStart + bi * 4, guestOffset: bi * bs, field: `BAT[${bi}]` },
        );
        continue; // not tracked for overlaps: already corrupt
      }
      if (bi >= blocksNeeded && p.full) p.warnings++;
      else if (bi >= blocksNeeded) p.warn(`BAT entry ${bi} is allocated but lies beyond the ${l.size.size}-byte virtual size`, { offset: batStart + bi * 4, field: `BAT[${bi}]` });
      if (tracked) {
        if (blockIndex.length >= MAX_TRACKED_BLOCKS) {
          tracked = false;
          p.warn(`more than ${MAX_TRACKED_BLOCKS} allocated blocks: overlap analysis skipped`);
        } else {
          blockIndex.push(bi);
          blockStart.push(start);
        }
      }
    }
    i = first + page.length;
    if (page.length < dyn.bat.pageEntries && i < toScan) break; // cut off by EOF (reported above)
  }
  stats.allocatedBlocks = allocated;
  stats.blocksPastEof = pastEof;
  if (maxEnd > 0 && maxEnd + FOOTER_SIZE > size) stats.expectedFileSize = maxEnd + FOOTER_SIZE;

  if (tracked && blockIndex.length > 0) {
    const n = blockIndex.length;
    for (let j = 0; j < n; j++) {
      const bi = blockIndex[j]!;
      const start = blockStart[j]!;
      for (const r of regions) {
        if (start < r.end && r.start < start + blockBytes) {
          p.corrupt(`block ${bi} (guest offset ${bi * bs}, host ${start}..${start + blockBytes}) overlaps the ${r.what} (host ${r.start}..${r.end})`, {
            offset: start,
            guestOffset: bi * bs,
            field: `BAT[${bi}]`,
          });
        }
      }
    }
    const order = Array.from({ length: n }, (_, j) => j).sort((a, b) => blockStart[a]! - blockStart[b]!);
    for (let j = 1; j < n; j++) {
      const a = order[j - 1]!;
      const b = order[j]!;
      if (blockStart[b]! < blockStart[a]! + blockBytes) {
        p.corrupt(
          `block ${blockIndex[b]} (host ${blockStart[b]}..${blockStart[b]! + blockBytes}) overlaps block ${blockIndex[a]} (host ${blockStart[a]}..${blockStart[a]! + blockBytes}): two guest ranges share host bytes`,
          { offset: blockStart[b]!, guestOffset: blockIndex[b]! * bs, field: `BAT[${blockIndex[b]}]` },
        );
      }
    }
  }
  return report(p, stats);
}

function report(p: Problems, stats: Record<string, number>): CheckReport {
  const order = { corruption: 0, leak: 1, warning: 2 } as const;
  const problems = [...p.list].sort((a, b) => order[a.severity] - order[b.severity]);
  return {
    format: 'vpc',
    verdict: p.corruptions > 0 ? 'corrupt' : 'clean',
    corruptions: p.corruptions,
    leaks: 0,
    problems,
    stats: { ...stats, warnings: p.warnings },
  };
}
