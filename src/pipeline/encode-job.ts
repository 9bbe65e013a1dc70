// Encoding one data chunk for a writer: the chunk is cut into the writer's units (qcow2 clusters,
// VMDK grains, …); all-zero units are dropped (zero detection even inside "allocated" data), the
// others are kept raw or compressed with the writer's codec. Runs in a pool worker (compressed
// outputs) or on the calling thread (uncompressed outputs), with the same result either way.
import { constants as zc, deflateRawSync, deflateSync } from 'node:zlib';
import { isAllZero } from '../io/zero.js';
import { zstd, type ZstdCCtx } from '../lazy-modules.js';

export { isAllZero };


/** How a writer wants its units encoded. */
export interface UnitEncoding {
  /** 'none': units stay raw (zero detection only). */
  codec: 'none' | 'deflate' | 'zlib' | 'zstd';
  /** Compression level (codec default when absent). */
  level?: number;
  /**
   * A unit whose compressed form is larger than this many bytes is stored raw (qcow2: a cluster
   * that does not shrink). Infinity: every unit is stored compressed (VMDK stream grains).
   */
  rawAbove: number;
  /** Compress the last, partial unit as a whole zero-padded unit (VMDK grains, qcow2 clusters). */
  padLast: boolean;
}

export const UNIT_ZERO = 0;
export const UNIT_RAW = 1;
export const UNIT_COMPRESSED = 2;

/** Result of encoding a chunk: units kept, as flat records of UNIT_FIELDS numbers each. */
export interface EncodedChunk {
  /** Per kept unit: [offset in chunk, virtual length, kind (UNIT_RAW | UNIT_COMPRESSED), start in `out`, length in `out`]. */
  units: number[];
  /** Compressed bytes of all UNIT_COMPRESSED units, back to back (in `into` when they fit). */
  out: Buffer;
}
export const UNIT_FIELDS = 5;

let zstdCtx: ZstdCCtx | undefined;
let probeCtx: ZstdCCtx | undefined;
const PROBE_SLICE = 2048;
const probeIn = Buffer.alloc(3 * PROBE_SLICE);
let probeOut: Buffer | undefined;

/**
 * True when a unit looks incompressible (random or already compressed data): three 2 KiB slices
 * (start, middle, end) compressed together at zstd's fastest level shrink by less than 3 %.
 * Such units are stored raw without spending a full compression on them — the result of which
 * would have been thrown away (qcow2 keeps a cluster raw when it does not shrink) or saved almost
 * nothing.
 */
function looksIncompressible(unit: Buffer): boolean {
  if (unit.length < 8 * PROBE_SLICE) return false;
  unit.copy(probeIn, 0, 0, PROBE_SLICE);
  const mid = Math.floor(unit.length / 2 / 512) * 512;
  unit.copy(probeIn, PROBE_SLICE, mid, mid + PROBE_SLICE);
  unit.copy(probeIn, 2 * PROBE_SLICE, unit.length - PROBE_SLICE);
  probeCtx ??= new (zstd().CCtx)();
  probeOut ??= Buffer.alloc(zstd().compressBound(3 * PROBE_SLICE));
  const n = probeCtx.compress(probeOut, probeIn, 1);
  return n > probeIn.length * 0.97;
}

/** Collects compressed units back to back, in `into` while they fit, else in buffers of its own. */
class Output {
  private parts: Buffer[] = [];
  length = 0;

  constructor(private readonly into: Buffer | undefined) {}

  /** Room at the end of `into` for `n` more bytes, if any. */
  room(n: number): Buffer | undefined {
    return this.into && this.parts.length === 0 && this.length + n <= this.into.length ? this.into.subarray(this.length, this.length + n) : undefined;
  }

  /** Records `n` bytes written into the room last returned. */
  wrote(n: number): void {
    this.length += n;
  }

  append(b: Buffer): void {
    const room = this.room(b.length);
    if (room) {
      b.copy(room);
    } else {
      if (this.parts.length === 0 && this.length > 0) this.parts.push(Buffer.from(this.into!.subarray(0, this.length)));
      this.parts.push(b);
    }
    this.length += b.length;
  }

  /** The bytes: a view of `into`, or one buffer of its own (owning its ArrayBuffer from byte 0). */
  result(): Buffer {
    if (this.parts.length === 0) return this.into ? this.into.subarray(0, this.length) : Buffer.allocUnsafeSlow(0);
    const out = Buffer.allocUnsafeSlow(this.length);
    let pos = 0;
    for (const p of this.parts) pos += p.copy(out, pos);
    return out;
  }
}

function compressUnit(unit: Buffer, enc: UnitEncoding, out: Output): number {
  switch (enc.codec) {
    case 'deflate': {
      // qcow2: raw deflate with a 4 KiB window (qemu reads with windowBits -12).
      const b = deflateRawSync(unit, { level: enc.level ?? zc.Z_DEFAULT_COMPRESSION, windowBits: 12, memLevel: 9 });
      out.append(b);
      return b.length;
    }
    case 'zlib': {
      const b = deflateSync(unit, { level: enc.level ?? zc.Z_DEFAULT_COMPRESSION });
      out.append(b);
      return b.length;
    }
    case 'zstd': {
      zstdCtx ??= new (zstd().CCtx)();
      const bound = zstd().compressBound(unit.length);
      const room = out.room(bound);
      if (room) {
        const n = zstdCtx.compress(room, unit, enc.level ?? 3);
        out.wrote(n);
        return n;
      }
      const dst = Buffer.allocUnsafe(bound);
      const n = zstdCtx.compress(dst, unit, enc.level ?? 3);
      out.append(dst.subarray(0, n));
      return n;
    }
    default:
      throw new Error(`no compression for codec ${enc.codec}`);
  }
}

/**
 * Encodes `chunk` (whose first byte is at a unit boundary) into units of `unitSize`.
 * Raw units' bytes stay in `chunk`; the record says where.
 */
export function encodeChunk(chunk: Buffer, unitSize: number, enc: UnitEncoding, into?: Buffer): EncodedChunk {
  const units: number[] = [];
  const out = new Output(into);
  for (let at = 0; at < chunk.length; at += unitSize) {
    const len = Math.min(unitSize, chunk.length - at);
    const unit = chunk.subarray(at, at + len);
    if (isAllZero(unit)) continue;
    if (enc.codec === 'none') {
      // Merge with the previous raw unit when contiguous: fewer, larger writes.
      const last = units.length - UNIT_FIELDS;
      if (last >= 0 && units[last + 2] === UNIT_RAW && units[last]! + units[last + 1]! === at) units[last + 1]! += len;
      else units.push(at, len, UNIT_RAW, 0, 0);
      continue;
    }
    let input = unit;
    if (len < unitSize && enc.padLast) {
      input = Buffer.alloc(unitSize);
      unit.copy(input);
    }
    if (enc.rawAbove !== Infinity && looksIncompressible(input)) {
      units.push(at, len, UNIT_RAW, 0, 0);
      continue;
    }
    const start = out.length;
    const n = compressUnit(input, enc, out);
    if (n > enc.rawAbove) {
      // Stored raw: drop the compressed bytes just appended (they are at the end).
      out.length = start;
      units.push(at, len, UNIT_RAW, 0, 0);
    } else {
      units.push(at, len, UNIT_COMPRESSED, start, n);
    }
  }
  return { units, out: out.result() };
}
