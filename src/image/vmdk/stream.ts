// streamOptimized specifics: the footer (when the header says gdOffset = GD_AT_END, the real header
// is the copy at EOF−1024, preceded by a FOOTER marker and followed by an END-OF-STREAM marker), and
// a bounded sequential walk over the markers (grains, GT/GD metadata, footer, EOS) used by check().
import { corrupt } from '../../errors.js';
import { readUpTo, type ByteSource } from '../../io/byte-source.js';
import { KDMV_MAGIC, SECTOR, parseKdmvHeader, type SparseHeader } from './header.js';

export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

/** Reads the footer of a stream whose header at offset 0 has gdOffset = GD_AT_END. */
export async function readStreamFooter(file: ByteSource): Promise<SparseHeader> {
  const end = Math.floor(file.size / SECTOR) * SECTOR;
  const at = end - 3 * SECTOR;
  const missing = (why: string) =>
    corrupt(
      `${file.name}: missing stream footer: the streamOptimized header defers to a footer at the end of the file (gdOffset = GD_AT_END), but ${why}. ` +
        'The file is probably truncated (an interrupted download or export)',
      { field: 'footer', offset: Math.max(0, at), fileSize: file.size },
    );
  if (at < SECTOR) throw missing('the file is too small to hold one');
  const buf = await readUpTo(file, at, 3 * SECTOR);
  if (buf.length < 3 * SECTOR) throw missing('it could not be read');
  const footerMarker = { size: buf.readUInt32LE(8), type: buf.readUInt32LE(12) };
  const eos = { val: buf.readBigUInt64LE(2 * SECTOR), size: buf.readUInt32LE(2 * SECTOR + 8), type: buf.readUInt32LE(2 * SECTOR + 12) };
  if (footerMarker.size !== 0 || footerMarker.type !== MARKER_FOOTER) throw missing(`no FOOTER marker lies at host offset ${at}`);
  if (buf.readUInt32LE(SECTOR) !== KDMV_MAGIC) throw missing(`the footer at host offset ${at + SECTOR} has no 'KDMV' magic`);
  if (eos.val !== 0n || eos.size !== 0 || eos.type !== MARKER_EOS) throw missing(`no END-OF-STREAM marker lies at host offset ${at + 2 * SECTOR}`);
  const footer = parseKdmvHeader(buf.subarray(SECTOR, 2 * SECTOR), `${file.name}: stream footer at host offset ${at + SECTOR}`);
  if (footer.gdOffset < 0) {
    throw corrupt(`${file.name}: the stream footer at host offset ${at + SECTOR} also says gdOffset = GD_AT_END`, { field: 'footer gdOffset', offset: at + SECTOR });
  }
  return footer;
}

export interface StreamWalk {
  grains: number;
  sawEos: boolean;
  footerOffset?: number;
  /** Host offset where the walk stopped. */
  end: number;
  problems: { message: string; offset: number; field: string }[];
}

/** A forward-only reader with a 1 MiB window, so walking markers does not do one read per marker. */
class Window {
  private start = 0;
  private buf: Buffer = Buffer.alloc(0);
  constructor(private readonly file: ByteSource) {}
  async get(pos: number, n: number): Promise<Buffer> {
    if (pos < this.start || pos + n > this.start + this.buf.length) {
      this.start = pos;
      this.buf = await readUpTo(this.file, pos, Math.max(n, 1024 * 1024));
    }
    return this.buf.subarray(pos - this.start, pos - this.start + n);
  }
}

/**
 * Walks the markers from the first grain (overHead) to the end-of-stream marker or EOF. Each step
 * advances at least one sector, so the walk is bounded by the file size.
 */
export async function walkStream(file: ByteSource, header: SparseHeader, grainBytes: number): Promise<StreamWalk> {
  const w = new Window(file);
  const out: StreamWalk = { grains: 0, sawEos: false, end: 0, problems: [] };
  const size = file.size;
  let pos = header.overHead * SECTOR;
  while (pos + 16 <= size) {
    const m = await w.get(pos, 16);
    const val = m.readBigUInt64LE(0);
    const len = m.readUInt32LE(8);
    if (len !== 0) {
      if (len > 2 * grainBytes + 4096) {
        out.problems.push({ message: `grain marker at host offset ${pos} declares ${len} compressed bytes for a ${grainBytes}-byte grain`, offset: pos, field: 'grain marker size' });
        break;
      }
      if (pos + 12 + len > size) {
        out.problems.push({ message: `compressed grain at host offset ${pos} (${len} bytes) runs past the end of the ${size}-byte file`, offset: pos, field: 'grain marker size' });
        break;
      }
      if (val * 512n >= BigInt(header.capacity) * 512n) {
        out.problems.push({ message: `grain marker at host offset ${pos} is for sector ${val}, beyond the disk capacity (${header.capacity} sectors)`, offset: pos, field: 'grain marker lba' });
      }
      out.grains++;
      pos = Math.ceil((pos + 12 + len) / SECTOR) * SECTOR;
      continue;
    }
    const type = m.readUInt32LE(12);
    if (type === MARKER_EOS) {
      out.sawEos = true;
      pos += SECTOR;
      break;
    }
    if (type === MARKER_GT || type === MARKER_GD) {
      if (val > BigInt(Math.ceil(size / SECTOR))) {
        out.problems.push({ message: `${type === MARKER_GT ? 'grain table' : 'grain directory'} marker at host offset ${pos} declares ${val} sectors, more than the file holds`, offset: pos, field: 'marker numSectors' });
        break;
      }
      pos += SECTOR + Number(val) * SECTOR;
      continue;
    }
    if (type === MARKER_FOOTER) {
      out.footerOffset = pos + SECTOR;
      pos += 2 * SECTOR;
      continue;
    }
    out.problems.push({ message: `unknown stream marker type ${type} at host offset ${pos}`, offset: pos, field: 'marker type' });
    break;
  }
  out.end = pos;
  return out;
}

/** Header fields that a stream footer must repeat from the header at offset 0. */
export function footerMismatches(head: SparseHeader, footer: SparseHeader): string[] {
  const fields: (keyof SparseHeader)[] = ['version', 'capacity', 'grainSectors', 'numGTEsPerGT', 'overHead', 'compressAlgorithm'];
  return fields.filter((f) => head[f] !== footer[f]).map((f) => `${String(f)}: header ${String(head[f])}, footer ${String(footer[f])}`);
}
