// Tests for src/image/partitions.ts: GPT and MBR (with extended/logical) tables written by sfdisk
// are read back and compared with `sfdisk --json`; damaged GPT headers/arrays fall back to the backup
// with a warning; garbage never throws.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage } from '../src/image/open.js';
import { readVirtual } from '../src/image/read.js';
import { crc32, readPartitionTable, type PartitionTable } from '../src/image/partitions.js';
import { run, toolPath } from './corpus/run.js';
import { buildReferenceDiskDetailed } from './corpus/reference-disk.js';

const MIB = 1024 * 1024;

interface SfdiskPartition {
  node: string;
  start: number;
  size: number;
  type: string;
  uuid?: string;
  name?: string;
  bootable?: boolean;
  attrs?: string;
}
interface SfdiskTable {
  label: 'gpt' | 'dos';
  id: string;
  sectorsize?: number;
  partitions: SfdiskPartition[];
}

let dir = '';
let sfdisk = '';

async function makeDisk(name: string, size: number, script: string[]): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, '');
  await truncate(path, size);
  await run(sfdisk, ['-q', '--no-reread', '--no-tell-kernel', path], { input: script.join('\n') + '\n' });
  return path;
}

async function sfdiskJson(path: string): Promise<SfdiskTable> {
  const { stdout } = await run(sfdisk, ['--json', path]);
  return (JSON.parse(stdout) as { partitiontable: SfdiskTable }).partitiontable;
}

async function readTable(path: string): Promise<PartitionTable> {
  const image = await openImage(path, { format: 'raw' });
  try {
    return await readPartitionTable(image);
  } finally {
    await image.close();
  }
}

function partNumber(node: string): number {
  const m = /(\d+)$/.exec(node);
  assert.ok(m, `sfdisk node ${node} has no number`);
  return Number(m[1]);
}

function assertMatchesSfdisk(ours: PartitionTable, theirs: SfdiskTable): void {
  assert.equal(ours.type, theirs.label === 'dos' ? 'mbr' : 'gpt');
  if (theirs.label === 'gpt') assert.equal(ours.diskGuid, theirs.id.toUpperCase());
  else assert.equal(`0x${ours.diskId}`, theirs.id);
  assert.equal(ours.partitions.length, theirs.partitions.length, 'number of partitions');
  for (const [i, p] of theirs.partitions.entries()) {
    const q = ours.partitions[i]!;
    const what = `partition ${p.node}`;
    assert.equal(q.index, partNumber(p.node), `${what}: index`);
    assert.equal(q.startSector, p.start, `${what}: start`);
    assert.equal(q.sectors, p.size, `${what}: size`);
    assert.equal(q.start, p.start * (theirs.sectorsize ?? 512), `${what}: byte start`);
    if (theirs.label === 'gpt') {
      assert.equal(q.type, p.type.toUpperCase(), `${what}: type`);
      assert.equal(q.guid, p.uuid?.toUpperCase(), `${what}: uuid`);
      assert.equal(q.name, p.name || undefined, `${what}: name`);
      assert.equal(q.bootable ?? false, (p.attrs ?? '').includes('LegacyBIOSBootable'), `${what}: bootable`);
    } else {
      assert.equal(q.mbrType, parseInt(p.type, 16), `${what}: type`);
      assert.equal(q.bootable ?? false, p.bootable ?? false, `${what}: bootable`);
    }
    assert.notEqual(q.typeName, 'unknown', `${what}: type name for ${q.type}`);
  }
}

/** Writes the on-disk bytes of a GUID in text form (first three fields little-endian). */
function guidBytes(text: string): Buffer {
  const h = text.replace(/-/g, '');
  const b = Buffer.from(h, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

/** A minimal GPT writer (protective MBR, primary and backup headers and arrays) for any sector size. */
async function writeGpt(path: string, ss: number, diskBytes: number, parts: { type: string; first: number; last: number; name: string }[]): Promise<void> {
  const total = diskBytes / ss;
  const n = 128;
  const arraySectors = (n * 128) / ss;
  const array = Buffer.alloc(n * 128);
  parts.forEach((p, i) => {
    const e = array.subarray(i * 128, (i + 1) * 128);
    guidBytes(p.type).copy(e, 0);
    guidBytes(`AAAAAAAA-0000-4000-8000-00000000000${i}`).copy(e, 16);
    e.writeBigUInt64LE(BigInt(p.first), 32);
    e.writeBigUInt64LE(BigInt(p.last), 40);
    e.write(p.name, 56, 'utf16le');
  });
  const header = (my: number, alt: number, entries: number) => {
    const h = Buffer.alloc(ss);
    h.write('EFI PART', 0, 'latin1');
    h.writeUInt32LE(0x00010000, 8);
    h.writeUInt32LE(92, 12);
    h.writeBigUInt64LE(BigInt(my), 24);
    h.writeBigUInt64LE(BigInt(alt), 32);
    h.writeBigUInt64LE(BigInt(2 + arraySectors), 40);
    h.writeBigUInt64LE(BigInt(total - 2 - arraySectors), 48);
    guidBytes('01234567-89AB-4CDE-8F01-23456789ABCD').copy(h, 56);
    h.writeBigUInt64LE(BigInt(entries), 72);
    h.writeUInt32LE(n, 80);
    h.writeUInt32LE(128, 84);
    h.writeUInt32LE(crc32(array), 88);
    h.writeUInt32LE(crc32(h.subarray(0, 92)), 16);
    return h;
  };
  const mbr = Buffer.alloc(512);
  mbr[446 + 4] = 0xee;
  mbr.writeUInt32LE(1, 446 + 8);
  mbr.writeUInt32LE(Math.min(0xffffffff, total - 1), 446 + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const fh = await open(path, 'r+');
  try {
    await fh.write(mbr, 0, 512, 0);
    await fh.write(header(1, total - 1, 2), 0, ss, ss);
    await fh.write(array, 0, array.length, 2 * ss);
    await fh.write(array, 0, array.length, (total - 1 - arraySectors) * ss);
    await fh.write(header(total - 1, 1, total - 1 - arraySectors), 0, ss, (total - 1) * ss);
  } finally {
    await fh.close();
  }
}

const GPT_SCRIPT = [
  'label: gpt',
  'label-id: 01234567-89AB-4CDE-8F01-23456789ABCD',
  'start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="bios"',
  'start=4096, size=20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition", attrs="LegacyBIOSBootable"',
  'start=24576, size=16384, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"',
  'start=40960, size=20480, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name="lvm"',
  'start=61440, size=30720, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root ünïcode"',
  'start=92160, size=20480, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
];

const MBR_SCRIPT = [
  'label: dos',
  'label-id: 0x12345678',
  'start=2048, size=20480, type=83, bootable',
  'start=22528, size=10240, type=7',
  'start=32768, size=90112, type=5',
  'start=34816, size=8192, type=82',
  'start=45056, size=16384, type=8e',
  'start=63488, size=20480, type=83',
];

describe('partition tables', () => {
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-parts-'));
    sfdisk = await toolPath('sfdisk');
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('crc32 matches the standard check value', () => {
    assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
    assert.equal(crc32(Buffer.alloc(0)), 0);
  });

  it('reads a GPT with several partition types like sfdisk', async () => {
    const path = await makeDisk('gpt.raw', 64 * MIB, GPT_SCRIPT);
    const ours = await readTable(path);
    assert.deepEqual(ours.warnings, []);
    assert.equal(ours.header, 'primary');
    assertMatchesSfdisk(ours, await sfdiskJson(path));
    assert.deepEqual(
      ours.partitions.map((p) => p.typeName),
      ['BIOS boot', 'EFI System', 'Linux swap', 'Linux LVM', 'Linux filesystem', 'Microsoft basic data'],
    );
  });

  it('reads an MBR with primary, extended and logical partitions like sfdisk', async () => {
    const path = await makeDisk('mbr.raw', 64 * MIB, MBR_SCRIPT);
    const ours = await readTable(path);
    assert.deepEqual(ours.warnings, []);
    const theirs = await sfdiskJson(path);
    assert.equal(theirs.partitions.length, 6, 'sfdisk sees 3 primary + 3 logical');
    assertMatchesSfdisk(ours, theirs);
    assert.deepEqual(
      ours.partitions.map((p) => [p.index, p.typeName, p.logical ?? false]),
      [
        [1, 'Linux', false],
        [2, 'HPFS/NTFS/exFAT', false],
        [3, 'Extended', false],
        [5, 'Linux swap / Solaris', true],
        [6, 'Linux LVM', true],
        [7, 'Linux', true],
      ],
    );
  });

  it('falls back to the backup GPT when the primary header CRC is wrong', async () => {
    const path = await makeDisk('gpt-badhdr.raw', 64 * MIB, GPT_SCRIPT);
    const theirs = await sfdiskJson(path);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([0xff]), 0, 1, 512 + 60); // inside the disk GUID: header CRC no longer matches
    await fh.close();
    const ours = await readTable(path);
    assert.equal(ours.header, 'backup');
    assert.ok(ours.warnings.some((w) => /primary GPT is damaged/.test(w) && /header CRC32/.test(w)), ours.warnings.join('; '));
    assertMatchesSfdisk({ ...ours }, theirs);
  });

  it('falls back to the backup GPT when the primary entry array CRC is wrong', async () => {
    const path = await makeDisk('gpt-badarray.raw', 64 * MIB, GPT_SCRIPT);
    const theirs = await sfdiskJson(path);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([0x42]), 0, 1, 2 * 512 + 128 * 3 + 60); // a byte of entry 4
    await fh.close();
    const ours = await readTable(path);
    assert.equal(ours.header, 'backup');
    assert.ok(ours.warnings.some((w) => /entry array CRC32/.test(w)), ours.warnings.join('; '));
    assertMatchesSfdisk(ours, theirs);
  });

  it('warns when the backup GPT is damaged but uses the primary', async () => {
    const path = await makeDisk('gpt-badbackup.raw', 64 * MIB, GPT_SCRIPT);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from('XXXX'), 0, 4, 64 * MIB - 512);
    await fh.close();
    const ours = await readTable(path);
    assert.equal(ours.header, 'primary');
    assert.equal(ours.partitions.length, 6);
    assert.ok(ours.warnings.some((w) => /backup GPT header/.test(w)), ours.warnings.join('; '));
  });

  it('reports none with a warning when both GPT copies are bad', async () => {
    const path = await makeDisk('gpt-bothbad.raw', 64 * MIB, GPT_SCRIPT);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([0xff]), 0, 1, 512 + 60);
    await fh.write(Buffer.from([0xff]), 0, 1, 64 * MIB - 512 + 60);
    await fh.close();
    const ours = await readTable(path);
    assert.equal(ours.type, 'none');
    assert.ok(ours.warnings.some((w) => /protective MBR/.test(w)), ours.warnings.join('; '));
    assert.ok(ours.warnings.some((w) => /no valid GPT/.test(w)), ours.warnings.join('; '));
  });

  it('reads a GPT with 4096-byte sectors', async () => {
    // sfdisk rescales scripts to the file's 512-byte sectors, so write this GPT by hand.
    const path = join(dir, 'gpt4k.raw');
    await writeFile(path, '');
    await truncate(path, 64 * MIB);
    await writeGpt(path, 4096, 64 * MIB, [
      { type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', first: 256, last: 256 + 2560 - 1, name: 'root' },
      { type: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', first: 2816, last: 2816 + 4096 - 1, name: '' },
    ]);
    const ours = await readTable(path);
    assert.deepEqual(ours.warnings, []);
    assert.equal(ours.type, 'gpt');
    assert.equal(ours.sectorSize, 4096);
    assert.deepEqual(
      ours.partitions.map((p) => [p.start, p.size, p.typeName, p.name]),
      [
        [256 * 4096, 2560 * 4096, 'Linux filesystem', 'root'],
        [2816 * 4096, 4096 * 4096, 'EFI System', undefined],
      ],
    );
  });

  for (const table of ['gpt', 'mbr'] as const) {
    it(`reads the corpus reference disk (${table}) like sfdisk`, async () => {
      const ref = await buildReferenceDiskDetailed(dir, { table, size: 32 * MIB, dataBytes: 2 * MIB });
      const ours = await readTable(ref.path);
      assert.deepEqual(ours.warnings, []);
      assertMatchesSfdisk(ours, await sfdiskJson(ref.path));
      assert.deepEqual(
        ours.partitions.map((p) => [p.startSector, p.sectors]),
        ref.partitions.map((p) => [p.start, p.size]),
      );
      assert.deepEqual(ours.partitions.map((p) => p.typeName), table === 'gpt' ? ['Linux filesystem', 'Microsoft basic data'] : ['Linux', 'W95 FAT16 (LBA)']);
      // The filesystems are really there: ext4 superblock magic at 1024+56, FAT boot signature.
      const image = await openImage(ref.path, { format: 'raw' });
      try {
        const sb = await readVirtual(image, ours.partitions[0]!.start + 1024, 1024);
        assert.equal(sb.readUInt16LE(56), 0xef53, 'ext4 superblock magic');
        const boot = await readVirtual(image, ours.partitions[1]!.start, 512);
        assert.equal(boot.toString('latin1', 54, 59), 'FAT16', 'FAT16 boot sector');
      } finally {
        await image.close();
      }
    });
  }

  it('never throws on garbage', async () => {
    // Empty disk, random bytes with a boot signature, hostile GPT headers, a looping EBR chain, a tiny file.
    const cases: [string, Buffer | undefined, (t: PartitionTable) => void][] = [];
    const zero = Buffer.alloc(4 * MIB);
    cases.push(['zeros', zero, (t) => assert.equal(t.type, 'none')]);

    const rnd = Buffer.alloc(4 * MIB);
    for (let i = 0, x = 12345; i < rnd.length; i++) rnd[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
    rnd[510] = 0x55;
    rnd[511] = 0xaa;
    rnd[446] = 0x13; // a status byte an MBR cannot have
    cases.push(['random', rnd, (t) => assert.equal(t.type, 'none')]);

    // Protective MBR + GPT header claiming 2^32-1 entries at a huge LBA, with a correct CRC.
    const hostile = Buffer.alloc(4 * MIB);
    hostile.writeUInt8(0xee, 446 + 4);
    hostile.writeUInt32LE(1, 446 + 8);
    hostile.writeUInt32LE(0xffffffff, 446 + 12);
    hostile[510] = 0x55;
    hostile[511] = 0xaa;
    const h = hostile.subarray(512, 1024);
    h.write('EFI PART', 0, 'latin1');
    h.writeUInt32LE(0x00010000, 8);
    h.writeUInt32LE(92, 12);
    h.writeBigUInt64LE(1n, 24);
    h.writeBigUInt64LE(0xffffffffffffn, 32);
    h.writeBigUInt64LE(34n, 40);
    h.writeBigUInt64LE(8000n, 48);
    h.writeBigUInt64LE(0x7fffffffffffn, 72);
    h.writeUInt32LE(0xffffffff, 80);
    h.writeUInt32LE(128, 84);
    h.writeUInt32LE(crc32(h.subarray(0, 92)), 16);
    cases.push(['hostile-gpt', hostile, (t) => {
      assert.equal(t.type, 'none');
      assert.ok(t.warnings.some((w) => /entries/.test(w)), t.warnings.join('; '));
    }]);

    // MBR whose extended partition's EBR links back to itself.
    const loop = Buffer.alloc(4 * MIB);
    loop[446 + 4] = 0x05;
    loop.writeUInt32LE(2048, 446 + 8);
    loop.writeUInt32LE(4096, 446 + 12);
    loop[510] = 0x55;
    loop[511] = 0xaa;
    const ebr = loop.subarray(2048 * 512, 2049 * 512);
    ebr[446 + 4] = 0x83;
    ebr.writeUInt32LE(1, 446 + 8);
    ebr.writeUInt32LE(100, 446 + 12);
    ebr[462 + 4] = 0x05;
    ebr.writeUInt32LE(0, 462 + 8); // next EBR = the same sector
    ebr.writeUInt32LE(200, 462 + 12);
    ebr[510] = 0x55;
    ebr[511] = 0xaa;
    cases.push(['ebr-loop', loop, (t) => {
      assert.equal(t.type, 'mbr');
      assert.equal(t.partitions.length, 2);
      assert.ok(t.warnings.some((w) => /loops/.test(w)), t.warnings.join('; '));
    }]);

    // Partition beyond the end of the disk.
    const beyond = Buffer.alloc(MIB);
    beyond[446 + 4] = 0x83;
    beyond.writeUInt32LE(2048, 446 + 8);
    beyond.writeUInt32LE(1 << 30, 446 + 12);
    beyond[510] = 0x55;
    beyond[511] = 0xaa;
    cases.push(['beyond', beyond, (t) => {
      assert.equal(t.type, 'mbr');
      assert.ok(t.warnings.some((w) => /beyond the end/.test(w)), t.warnings.join('; '));
    }]);

    cases.push(['tiny', Buffer.alloc(100), (t) => assert.equal(t.type, 'none')]);

    for (const [name, content, verify] of cases) {
      const path = join(dir, `garbage-${name}.raw`);
      await writeFile(path, content ?? Buffer.alloc(0));
      verify(await readTable(path));
    }
  });
});
