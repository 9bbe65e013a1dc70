// VMDK driver tests against qemu-img: every subformat qemu writes (and a VMware-style stream with a
// footer, a vmfs descriptor, ZERO extents, zeroed grains, a parent link) must read back the same
// bytes as `qemu-img convert -O raw`, map like `qemu-img map`, and check like `qemu-img check`;
// damaged and hostile files must fail with precise FerryErrors.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { FerryError } from '../src/errors.js';
import { fileSha } from './file-sha.js';
import { extents } from '../src/image/extents.js';
import { openImage } from '../src/image/open.js';
import { readVirtual } from '../src/image/read.js';
import type { DiskImage, OpenOptions } from '../src/image/types.js';

const MiB = 1024 * 1024;
let dir: string;
const p = (name: string) => join(dir, name);
const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString();

interface Ext {
  offset: number;
  length: number;
  kind: string;
  depth: number;
}

/** `qemu-img map --output=json`, normalised to Ferry's kinds with adjacent equal runs merged. */
function qemuMap(file: string): Ext[] {
  const rows = JSON.parse(run('qemu-img', ['map', '--output=json', file])) as { start: number; length: number; depth: number; present: boolean; zero: boolean; data: boolean }[];
  const out: Ext[] = [];
  for (const r of rows) {
    const kind = r.data ? 'data' : r.present ? 'zero' : 'unallocated';
    const depth = r.present ? r.depth : 0;
    const last = out[out.length - 1];
    if (last && last.kind === kind && last.depth === depth && last.offset + last.length === r.start) last.length += r.length;
    else out.push({ offset: r.start, length: r.length, kind, depth });
  }
  return out;
}

async function ourMap(img: DiskImage): Promise<Ext[]> {
  const out: Ext[] = [];
  for await (const e of extents(img)) out.push({ offset: e.offset, length: e.length, kind: e.kind, depth: e.kind === 'unallocated' ? 0 : e.depth });
  return out;
}

async function imageSha(img: DiskImage): Promise<string> {
  const h = createHash('sha256');
  const chunk = 64 * MiB;
  for (let o = 0; o < img.virtualSize; o += chunk) h.update(await readVirtual(img, o, Math.min(chunk, img.virtualSize - o)));
  return h.digest('hex');
}

function qemuRawSha(file: string): string {
  const out = p(`ref-${Math.random().toString(36).slice(2)}.raw`);
  run('qemu-img', ['convert', '-O', 'raw', file, out]);
  const sha = fileSha(out);
  rmSync(out);
  return sha;
}

function qemuCheck(file: string): number {
  return spawnSync('qemu-img', ['check', file], { cwd: dir }).status ?? -1;
}

async function withImage<T>(file: string, fn: (img: DiskImage) => Promise<T>, opts: OpenOptions = {}): Promise<T> {
  const img = await openImage(file, opts);
  try {
    return await fn(img);
  } finally {
    await img.close();
  }
}

/** Reads [offset, offset+length) of a host file. */
function readRange(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/**
 * Compares content with `qemu-img convert -O raw` (whole disk, or only `regions` for multi-GiB
 * disks, where hashing everything would take too long), the map with `qemu-img map`, and the
 * check verdict with `qemu-img check`.
 */
async function assertMatchesQemu(file: string, opts: OpenOptions = {}, regions?: [number, number][]): Promise<void> {
  await withImage(
    file,
    async (img) => {
      if (!regions) {
        assert.equal(await imageSha(img), qemuRawSha(file), `${file}: content differs from qemu-img convert -O raw`);
      } else {
        const ref = p('ref-regions.raw');
        run('qemu-img', ['convert', '-O', 'raw', file, ref]);
        try {
          assert.equal(statSync(ref).size, img.virtualSize);
          for (const [off, len] of regions) {
            assert.ok((await readVirtual(img, off, len)).equals(readRange(ref, off, len)), `${file}: content differs at ${off}+${len}`);
          }
        } finally {
          rmSync(ref);
        }
      }
      assert.deepEqual(await ourMap(img), qemuMap(file), `${file}: map differs from qemu-img map`);
      const rep = await img.check();
      const q = qemuCheck(file);
      assert.equal(q, 0, `qemu-img check ${file}`);
      assert.equal(rep.verdict, 'clean', JSON.stringify(rep.problems));
    },
    opts,
  );
}

async function rejects(promise: Promise<unknown>, code: string, pattern?: RegExp): Promise<FerryError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof FerryError, `expected FerryError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return err;
  }
  assert.fail(`expected ${code}`);
}

/** A small raw disk: random data, zero runs, a hole, and a size that is not grain-aligned. */
function makeRaw(name: string, size = 5 * MiB + 1536): Buffer {
  const buf = Buffer.alloc(size);
  randomBytes(300000).copy(buf, 0);
  randomBytes(70000).copy(buf, 2 * MiB);
  randomBytes(1536).copy(buf, 5 * MiB);
  writeFileSync(p(name), buf);
  return buf;
}

/** Writes a VMware-style streamOptimized file: header with GD_AT_END, grains, GTs, GD, footer, EOS. */
function writeVmwareStream(file: string, raw: Buffer, opts: { padLastGrain: boolean }): void {
  const grain = 65536;
  const sectors = raw.length / 512;
  const grains = Math.ceil(raw.length / grain);
  const gdEntries = Math.ceil(grains / 512);
  const parts: Buffer[] = [];
  let pos = 0;
  const put = (b: Buffer) => {
    const padded = Buffer.alloc(Math.ceil(b.length / 512) * 512);
    b.copy(padded);
    parts.push(padded);
    const at = pos;
    pos += padded.length;
    return at / 512;
  };
  const header = (gdOffset: bigint) => {
    const h = Buffer.alloc(512);
    h.write('KDMV', 0, 'latin1');
    h.writeUInt32LE(3, 4);
    h.writeUInt32LE(0x30001, 8);
    h.writeBigUInt64LE(BigInt(sectors), 12);
    h.writeBigUInt64LE(128n, 20);
    h.writeBigUInt64LE(1n, 28);
    h.writeBigUInt64LE(2n, 36);
    h.writeUInt32LE(512, 44);
    h.writeBigUInt64LE(0n, 48);
    h.writeBigUInt64LE(gdOffset, 56);
    h.writeBigUInt64LE(128n, 64);
    h.write('\n \r\n', 73, 'latin1');
    h.writeUInt16LE(1, 77);
    return h;
  };
  const meta = (val: number, type: number) => {
    const m = Buffer.alloc(512);
    m.writeBigUInt64LE(BigInt(val), 0);
    m.writeUInt32LE(type, 12);
    return m;
  };
  put(header(0xffffffffffffffffn));
  put(Buffer.from(`# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="streamOptimized"\n\nRW ${sectors} SPARSE "x.vmdk"\n\nddb.adapterType = "lsilogic"\n`));
  put(Buffer.alloc(128 * 512 - pos));
  const gt = new Uint32Array(gdEntries * 512);
  for (let i = 0; i < grains; i++) {
    let data = raw.subarray(i * grain, Math.min(raw.length, (i + 1) * grain));
    if (data.every((b) => b === 0)) continue;
    if (opts.padLastGrain && data.length < grain) {
      const full = Buffer.alloc(grain);
      data.copy(full);
      data = full;
    }
    const z = deflateSync(data);
    const m = Buffer.alloc(12 + z.length);
    m.writeBigUInt64LE(BigInt(i * 128), 0);
    m.writeUInt32LE(z.length, 8);
    z.copy(m, 12);
    gt[i] = put(m);
  }
  const gd = Buffer.alloc(gdEntries * 4);
  for (let t = 0; t < gdEntries; t++) {
    put(meta(4, 1));
    const tb = Buffer.alloc(2048);
    for (let k = 0; k < 512; k++) tb.writeUInt32LE(gt[t * 512 + k]!, k * 4);
    gd.writeUInt32LE(put(tb), t * 4);
  }
  put(meta(Math.ceil(gd.length / 512), 2));
  const gdSector = put(gd);
  put(meta(1, 3));
  put(header(BigInt(gdSector)));
  put(meta(0, 0));
  writeFileSync(file, Buffer.concat(parts));
}

function patch(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  writeSync(fd, bytes, 0, bytes.length, offset);
  closeSync(fd);
}
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-vmdk-'));
  makeRaw('r.raw');
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('vmdk subformats written by qemu-img', () => {
  for (const sub of ['monolithicSparse', 'streamOptimized', 'monolithicFlat']) {
    it(`${sub}: content, map, check and info agree with qemu-img`, async () => {
      const file = `${sub}.vmdk`;
      run('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, 'r.raw', file]);
      await assertMatchesQemu(p(file));
      await withImage(p(file), async (img) => {
        const info = await img.info();
        assert.equal(info.format, 'vmdk');
        assert.equal(info.subformat, sub);
        assert.equal(info.virtualSize, statSync(p('r.raw')).size);
        if (sub !== 'monolithicFlat') assert.equal(info.clusterSize, 65536);
        if (sub === 'streamOptimized') {
          assert.deepEqual(info.compression, ['zlib']);
          const segs = await img.map(0, 65536);
          assert.equal(segs[0]!.source.type, 'compressed');
        }
        if (sub === 'monolithicFlat') assert.equal(info.files?.length, 1);
        assert.ok(typeof info.details?.['CID'] === 'string');
        assert.equal(info.details?.['adapterType'], 'ide');
      });
    });
  }

  it('twoGbMaxExtentSparse and twoGbMaxExtentFlat: several extents', async () => {
    const fd = openSync(p('big.raw'), 'w');
    writeSync(fd, randomBytes(MiB), 0, MiB, 0);
    const size = 2150 * MiB;
    writeSync(fd, randomBytes(MiB), 0, MiB, size - MiB);
    closeSync(fd);
    for (const sub of ['twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']) {
      const file = `${sub}.vmdk`;
      run('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, 'big.raw', file]);
      const G2 = 2048 * MiB;
      await assertMatchesQemu(p(file), {}, [
        [0, 4 * MiB],
        [G2 - 2 * MiB, 4 * MiB],
        [size - 4 * MiB, 4 * MiB],
      ]);
      await withImage(p(file), async (img) => {
        const info = await img.info();
        assert.equal(info.subformat, sub);
        assert.equal(info.files?.length, 2);
        assert.equal(img.virtualSize, size);
      });
      for (const f of run('ls', []).split('\n').filter((n) => n.startsWith(sub))) rmSync(p(f));
    }
    rmSync(p('big.raw'));
  });

  it('zeroed grains (GTE = 1) map as zero, like qemu', async () => {
    run('qemu-img', ['create', '-f', 'vmdk', '-o', 'zeroed_grain=on', 'z.vmdk', '4M']);
    run('qemu-io', ['-c', 'write -P 0x55 0 1M', '-c', 'write -z 64k 128k', '-c', 'write -z 2M 256k', 'z.vmdk']);
    await assertMatchesQemu(p('z.vmdk'));
    await withImage(p('z.vmdk'), async (img) => {
      const m = await ourMap(img);
      assert.ok(m.some((e) => e.kind === 'zero' && e.offset === 65536 && e.length === 131072));
    });
  });

  it('a parent link is refused unless allowed, then read through the chain', async () => {
    run('qemu-img', ['convert', '-O', 'vmdk', 'r.raw', 'base.vmdk']);
    run('qemu-img', ['create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', 'child.vmdk']);
    run('qemu-io', ['-c', 'write -P 0x11 100k 64k', 'child.vmdk']);
    await rejects(openImage(p('child.vmdk')), 'IMAGE_BACKING_REFUSED');
    await assertMatchesQemu(p('child.vmdk'), { allowBacking: true });
    await withImage(
      p('child.vmdk'),
      async (img) => {
        const info = await img.info();
        assert.equal(info.backing?.path, 'base.vmdk');
      },
      { allowBacking: true },
    );
  });
});

describe('hand-written vmdk layouts', () => {
  it('VMware-style streamOptimized (GD_AT_END + footer), with a full last grain', async () => {
    const raw = readFileSync(p('r.raw'));
    writeVmwareStream(p('vm.vmdk'), raw, { padLastGrain: true });
    await assertMatchesQemu(p('vm.vmdk'));
    await withImage(p('vm.vmdk'), async (img) => {
      assert.equal((await img.info()).details?.['streamFooter'], true);
      assert.equal((await img.info()).subformat, 'streamOptimized');
    });
    writeVmwareStream(p('vm2.vmdk'), raw, { padLastGrain: false });
    await assertMatchesQemu(p('vm2.vmdk'));
  });

  it('stream without its footer: missing stream footer', async () => {
    writeVmwareStream(p('cut.vmdk'), readFileSync(p('r.raw')), { padLastGrain: false });
    truncateSync(p('cut.vmdk'), statSync(p('cut.vmdk')).size - 1536);
    assert.notEqual(qemuCheck(p('cut.vmdk')), 0);
    await rejects(openImage(p('cut.vmdk')), 'IMAGE_CORRUPT', /missing stream footer/);
  });

  it('stream whose footer disagrees with its header is corrupt', async () => {
    writeVmwareStream(p('mism.vmdk'), readFileSync(p('r.raw')), { padLastGrain: false });
    patch(p('mism.vmdk'), 4, u32(1)); // header version 1, footer version 3
    await withImage(p('mism.vmdk'), async (img) => {
      const rep = await img.check();
      assert.equal(rep.verdict, 'corrupt');
      assert.ok(rep.problems.some((x) => /footer does not match/.test(x.message)));
    });
  });

  it('vmfs descriptor (VMFS extent type) reads its flat file like qemu', async () => {
    const raw = readFileSync(p('r.raw'));
    writeFileSync(p('v-flat.vmdk'), raw);
    writeFileSync(
      p('v.vmdk'),
      `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\nRW ${raw.length / 512} VMFS "v-flat.vmdk"\n\nddb.adapterType = "lsilogic"\n`,
    );
    await assertMatchesQemu(p('v.vmdk'));
    await withImage(p('v.vmdk'), async (img) => assert.equal((await img.info()).subformat, 'vmfs'));
  });

  it('ZERO extents read as zeros between flat extents', async () => {
    const a = randomBytes(MiB);
    const b = randomBytes(MiB);
    writeFileSync(p('za.bin'), a);
    writeFileSync(p('zb.bin'), Buffer.concat([Buffer.alloc(4096), b]));
    writeFileSync(
      p('zero.vmdk'),
      `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "za.bin" 0\nRW 4096 ZERO\nRW 2048 FLAT "zb.bin" 8\n`,
    );
    await withImage(p('zero.vmdk'), async (img) => {
      assert.equal(img.virtualSize, 4 * MiB);
      const all = await readVirtual(img, 0, 4 * MiB);
      assert.ok(all.subarray(0, MiB).equals(a));
      assert.ok(all.subarray(MiB, 3 * MiB).every((x) => x === 0));
      assert.ok(all.subarray(3 * MiB).equals(b));
      assert.deepEqual(
        (await ourMap(img)).map((e) => e.kind),
        ['data', 'zero', 'data'],
      );
      assert.equal((await img.check()).verdict, 'clean');
    });
  });
});

describe('damaged and hostile vmdk files', () => {
  const fresh = (name: string, sub = 'monolithicSparse') => {
    run('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, 'r.raw', name]);
    return p(name);
  };
  /** GD entry sectors of a qemu monolithicSparse file: [gdOffset, rgdOffset]. */
  const gdOffsets = (file: string) => {
    const h = readFileSync(file).subarray(0, 512);
    return { gd: Number(h.readBigUInt64LE(56)) * 512, rgd: Number(h.readBigUInt64LE(48)) * 512 };
  };

  it('truncated sparse file: check reports it, reads fail with IMAGE_TRUNCATED', async () => {
    const file = fresh('trunc.vmdk');
    truncateSync(file, 400000);
    assert.notEqual(qemuCheck(file), 0);
    await withImage(file, async (img) => {
      const rep = await img.check();
      assert.equal(rep.verdict, 'corrupt');
      assert.ok(rep.problems.some((x) => x.offset !== undefined && /beyond the end|truncated/.test(x.message)));
      await rejects(readVirtual(img, 5 * MiB, 1536), 'IMAGE_TRUNCATED');
    });
  });

  it('grain table offset past EOF: IMAGE_CORRUPT on read, corrupt on check', async () => {
    const file = fresh('gtpast.vmdk');
    const { gd, rgd } = gdOffsets(file);
    patch(file, gd, u32(0x7fffff00));
    patch(file, rgd, u32(0x7fffff00));
    await withImage(file, async (img) => {
      const err = await rejects(readVirtual(img, 0, 4096), 'IMAGE_CORRUPT', /beyond the end/);
      assert.equal(err.details?.['field'], 'grain directory entry 0');
      const rep = await img.check();
      assert.equal(rep.verdict, 'corrupt');
    });
  });

  it('redundant grain directory mismatch and overlapping grains are corruptions', async () => {
    const file = fresh('rgd.vmdk');
    const buf = readFileSync(file);
    const { gd, rgd } = gdOffsets(file);
    const gt = buf.readUInt32LE(gd) * 512;
    const rgt = buf.readUInt32LE(rgd) * 512;
    patch(file, rgt + 4, u32(buf.readUInt32LE(rgt + 4) + 128)); // redundant copy differs
    patch(file, gt + 8, u32(buf.readUInt32LE(gt))); // grain 2 reuses grain 0's host sectors
    await withImage(file, async (img) => {
      const rep = await img.check();
      assert.equal(rep.verdict, 'corrupt');
      assert.ok(rep.problems.some((x) => /redundant copy differ/.test(x.message)));
      assert.ok(rep.problems.some((x) => /overlaps/.test(x.message)));
    });
  });

  it('absurd numGTEsPerGT, grain size or capacity are refused at open', async () => {
    const a = fresh('gtes.vmdk');
    patch(a, 44, u32(0x100000));
    const e1 = await rejects(openImage(a), 'IMAGE_CORRUPT', /numGTEsPerGT/);
    assert.equal(e1.details?.['field'], 'numGTEsPerGT');
    const b = fresh('cap.vmdk');
    patch(b, 12, u64(1n << 50n));
    const e2 = await rejects(openImage(b), 'IMAGE_CORRUPT', /capacity/);
    assert.equal(e2.details?.['field'], 'capacity');
    const c = fresh('grain.vmdk');
    patch(c, 20, u64(3n));
    await rejects(openImage(c), 'IMAGE_CORRUPT', /grainSize/);
  });

  it('corrupted compressed grain: reading throws IMAGE_CORRUPT naming the host offset', async () => {
    const file = fresh('badz.vmdk', 'streamOptimized');
    const first = 65536; // qemu puts the first grain marker at overHead = 128 sectors
    patch(file, first + 12 + 100, randomBytes(400));
    await withImage(file, async (img) => {
      await rejects(readVirtual(img, 0, 65536), 'IMAGE_CORRUPT', new RegExp(`host offset ${first + 12}`));
      assert.equal((await img.check()).verdict, 'clean'); // structure is intact; only data is damaged
    });
  });

  it('extent paths outside the directory are refused', async () => {
    for (const ref of ['/etc/passwd', '../x', 'sub/../../x']) {
      writeFileSync(p('evil.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "${ref}" 0\n`);
      await rejects(openImage(p('evil.vmdk')), 'IMAGE_PATH_REFUSED');
    }
  });

  it('flat extent shorter than declared: truncated with expected vs actual', async () => {
    writeFileSync(p('short-flat.bin'), Buffer.alloc(4096, 7));
    writeFileSync(p('short.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "short-flat.bin" 0\n`);
    await withImage(p('short.vmdk'), async (img) => {
      const rep = await img.check();
      assert.equal(rep.verdict, 'corrupt');
      assert.match(rep.problems[0]!.message, /needs 1048576 bytes .* has 4096/);
      const err = await rejects(readVirtual(img, 0, 8192), 'IMAGE_TRUNCATED');
      assert.equal(err.details?.['actualSize'], 4096);
    });
  });

  it('garbage after a descriptor header and huge descriptors are errors, not crashes', async () => {
    writeFileSync(p('nodesc.vmdk'), '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n');
    await rejects(openImage(p('nodesc.vmdk')), 'IMAGE_CORRUPT', /no extents/);
    writeFileSync(p('badline.vmdk'), '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 8 WEIRD "x"\n');
    await rejects(openImage(p('badline.vmdk')), 'IMAGE_CORRUPT', /unknown extent type/);
  });
});
