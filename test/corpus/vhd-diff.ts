// Builds a differencing VHD (disk type 4) by hand: qemu-img reads them but cannot create them.
// Used by the VHD tests and the corpus. The child names its parent with locators and the parent's
// unique id; each listed block holds the listed sectors (bitmap bits) filled with one byte value.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { vhdChecksum } from '../../src/image/vhd/footer.js';

export interface DiffSpec {
  parent: string;
  parentName?: string;
  locators?: { code: string; data: Buffer }[];
  /** Block index -> sectors present in the child (bitmap bits) and the byte to fill them with. */
  blocks: Map<number, { sectors: number[]; fill: number }>;
  parentUuid?: Buffer;
}

/** Builds a differencing VHD (type 4) over a qemu-made dynamic parent, by hand. */
export function buildDiff(s: DiffSpec): Buffer {
  const parent = readFileSync(s.parent);
  const pf = Buffer.from(parent.subarray(0, 512));
  const ph = parent.subarray(512, 1536);
  const maxEntries = ph.readUInt32BE(28);
  const blockSize = ph.readUInt32BE(32);
  const bitmapBytes = Math.ceil(blockSize / 4096 / 512) * 512;
  const footer = Buffer.from(pf);
  footer.writeUInt32BE(4, 60);
  randomBytes(16).copy(footer, 68);
  footer.writeUInt32BE(vhdChecksum(footer, 64), 64);
  const hdr = Buffer.alloc(1024);
  hdr.write('cxsparse', 0, 'latin1');
  hdr.writeBigUInt64BE(0xffffffffffffffffn, 8);
  const batAt = 1536;
  hdr.writeBigUInt64BE(BigInt(batAt), 16);
  hdr.writeUInt32BE(0x00010000, 24);
  hdr.writeUInt32BE(maxEntries, 28);
  hdr.writeUInt32BE(blockSize, 32);
  (s.parentUuid ?? pf.subarray(68, 84)).copy(hdr, 40);
  const name = Buffer.from(s.parentName ?? '', 'utf16le').swap16();
  name.copy(hdr, 64);
  let pos = Math.ceil((batAt + maxEntries * 4) / 512) * 512;
  const parts: [number, Buffer][] = [];
  (s.locators ?? []).forEach((l, i) => {
    const o = 576 + i * 24;
    hdr.write(l.code, o, 'latin1');
    const space = Math.ceil(l.data.length / 512) * 512;
    hdr.writeUInt32BE(space, o + 4);
    hdr.writeUInt32BE(l.data.length, o + 8);
    hdr.writeBigUInt64BE(BigInt(pos), o + 16);
    parts.push([pos, l.data]);
    pos += space;
  });
  hdr.writeUInt32BE(vhdChecksum(hdr, 36), 36);
  const bat = Buffer.alloc(maxEntries * 4, 0xff);
  for (const [bi, b] of s.blocks) {
    bat.writeUInt32BE(pos / 512, bi * 4);
    const bitmap = Buffer.alloc(bitmapBytes);
    const data = Buffer.alloc(blockSize);
    for (const sec of b.sectors) {
      bitmap[sec >> 3]! |= 0x80 >> (sec & 7);
      data.fill(b.fill, sec * 512, sec * 512 + 512);
    }
    parts.push([pos, bitmap], [pos + bitmapBytes, data]);
    pos += bitmapBytes + blockSize;
  }
  const out = Buffer.alloc(pos + 512);
  footer.copy(out, 0);
  hdr.copy(out, 512);
  bat.copy(out, batAt);
  for (const [at, b] of parts) b.copy(out, at);
  footer.copy(out, pos);
  return out;
}
