// The reference disk of the test corpus: a sparse raw file with a real partition table (GPT or MBR,
// written by sfdisk), partition 1 an ext4 filesystem populated without mounting (mke2fs -d at an
// offset) with text, program binaries, a run of zeros, deterministic random bytes and (for larger
// data budgets) copies of /usr/lib files, and partition 2 a FAT filesystem (mkfs.vfat, filled with
// mcopy when mtools is installed). Sizes and the amount of real data are parameters: the tests use
// 64 MiB, the benchmark several GiB. Everything is built at test time; nothing is committed.
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, lstat, mkdir, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import { haveTool, run, toolPath } from './run.js';

export type TableType = 'gpt' | 'mbr';

export interface ReferenceDiskOptions {
  /** Virtual size of the disk in bytes (multiple of 1 MiB; at least 16 MiB). Default 64 MiB. */
  size?: number;
  /** Bytes of real file content to put into the filesystems. Default 30 % of `size`. */
  dataBytes?: number;
  table: TableType;
  /** File name inside `dir` (default `reference-<table>.raw`). */
  name?: string;
}

export interface ReferencePartition {
  /** First sector (512-byte). */
  start: number;
  /** Length in sectors. */
  size: number;
  fs: 'ext4' | 'vfat';
}

export interface ReferenceDisk {
  path: string;
  size: number;
  table: TableType;
  partitions: ReferencePartition[];
}

const SECTOR = 512;
const MIB = 1024 * 1024;
const ALIGN = 2048; // sectors (1 MiB)

// Fixed identifiers so the same parameters give the same disk (apart from file times mke2fs copies).
const DISK_GUID = '6F1C2D3E-4B5A-4978-8E9D-0A1B2C3D4E5F';
const EXT4_UUID = '3f1d2c4b-5a69-4788-9a0b-1c2d3e4f5061';
const EXT4_HASH_SEED = '0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9';
const GPT_LINUX_FS = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
const GPT_MS_BASIC = 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7';

/** Writes `n` deterministic pseudo-random bytes (AES-128-CTR over zeros, key from `seed`) to `path`. */
export async function writeRandomFile(path: string, n: number, seed: string): Promise<void> {
  const key = createHash('sha256').update(`ferry-corpus-key:${seed}`).digest().subarray(0, 16);
  const iv = createHash('sha256').update(`ferry-corpus-iv:${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, iv);
  const out = createWriteStream(path);
  const zeros = Buffer.alloc(4 * MIB);
  for (let left = n; left > 0; ) {
    const k = Math.min(left, zeros.length);
    if (!out.write(cipher.update(k === zeros.length ? zeros : zeros.subarray(0, k)))) await once(out, 'drain');
    left -= k;
  }
  out.end();
  await once(out, 'finish');
}

/** Deterministic text of about `n` bytes. */
function textContent(n: number, tag: string): string {
  const words = ['ferry', 'disk', 'image', 'sector', 'cluster', 'grain', 'extent', 'backing', 'snapshot', 'journal', 'inode', 'block'];
  const lines: string[] = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const line = `${tag} line ${i}: ${words[i % words.length]} ${words[(i * 7) % words.length]} ${words[(i * 5 + 3) % words.length]} ${i * 2654435761 % 1000003}\n`;
    lines.push(line);
    len += line.length;
  }
  return lines.join('');
}

/** Copies regular files from `root` (sorted walk, bounded) into `dest` until `budget` bytes. Returns bytes copied. */
async function copyTree(root: string, dest: string, budget: number, maxFile: number): Promise<number> {
  let copied = 0;
  let count = 0;
  const stack: string[] = [root];
  let visited = 0;
  while (stack.length > 0 && copied < budget && visited < 200_000) {
    const dir = stack.pop()!;
    visited++;
    let names: string[];
    try {
      names = (await readdir(dir)).sort().reverse();
    } catch {
      continue;
    }
    for (const n of names) {
      if (copied >= budget) break;
      const p = join(dir, n);
      let st;
      try {
        st = await lstat(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) stack.push(p);
      else if (st.isFile() && st.size > 0 && st.size <= maxFile && copied + st.size <= budget) {
        try {
          await copyFile(p, join(dest, `${String(count).padStart(5, '0')}-${n}`));
          copied += st.size;
          count++;
        } catch {
          // unreadable: skip
        }
      }
    }
  }
  return copied;
}

/** Fills `src` with the corpus content (about `dataBytes` bytes). Returns the bytes written. */
async function populate(src: string, dataBytes: number): Promise<number> {
  let used = 0;
  await mkdir(join(src, 'text'), { recursive: true });
  await mkdir(join(src, 'bin'), { recursive: true });
  await mkdir(join(src, 'data'), { recursive: true });
  const textEach = Math.max(1024, Math.min(64 * 1024, Math.floor(dataBytes / 64)));
  for (let i = 0; i < 4; i++) {
    const t = textContent(textEach, `file${i}`);
    await writeFile(join(src, 'text', `notes-${i}.txt`), t);
    used += Buffer.byteLength(t);
  }
  await writeFile(join(src, 'README'), 'Ferry test corpus reference disk. Generated at test time.\n');
  for (const prog of ['ls', 'cat', 'cp', 'tar', 'sed', 'grep', 'gzip', 'bash']) {
    try {
      const st = await lstat(join('/usr/bin', prog));
      if (!st.isFile() || used + st.size > dataBytes * 0.3) continue;
      await copyFile(join('/usr/bin', prog), join(src, 'bin', prog));
      used += st.size;
    } catch {
      // program not present: skip
    }
  }
  const zeros = Math.min(4 * MIB, Math.floor(dataBytes * 0.05));
  await writeFile(join(src, 'data', 'zeros.bin'), Buffer.alloc(zeros));
  used += zeros;
  const remaining = Math.max(0, dataBytes - used);
  // Half of the rest: real files (libraries: compressible, varied); the other half: random data.
  const lib = await mkdir(join(src, 'lib'), { recursive: true }).then(() => copyTree('/usr/lib', join(src, 'lib'), Math.floor(remaining / 2), 16 * MIB));
  used += lib;
  let left = Math.max(0, dataBytes - used);
  for (let i = 0; left > 0; i++) {
    const n = Math.min(left, 64 * MIB);
    await writeRandomFile(join(src, 'data', `random-${String(i).padStart(3, '0')}.bin`), n, `random-${i}`);
    left -= n;
    used += n;
  }
  return used;
}

/**
 * Builds the reference disk into `dir` and returns its path (see {@link buildReferenceDiskDetailed}
 * for the layout).
 */
export async function buildReferenceDisk(dir: string, opts: ReferenceDiskOptions): Promise<string> {
  return (await buildReferenceDiskDetailed(dir, opts)).path;
}

export async function buildReferenceDiskDetailed(dir: string, opts: ReferenceDiskOptions): Promise<ReferenceDisk> {
  const size = opts.size ?? 64 * MIB;
  if (size % MIB !== 0 || size < 16 * MIB) throw new Error(`reference disk size must be a multiple of 1 MiB and at least 16 MiB (got ${size})`);
  const dataBytes = opts.dataBytes ?? Math.floor(size * 0.3);
  const path = join(dir, opts.name ?? `reference-${opts.table}.raw`);
  const sfdisk = await toolPath('sfdisk');
  const mke2fs = await toolPath('mke2fs');

  const total = size / SECTOR;
  const lastUsable = opts.table === 'gpt' ? total - 34 : total - 1;
  const p1Start = ALIGN;
  const p1Size = Math.floor((total * 0.7) / ALIGN) * ALIGN;
  const p2Start = p1Start + p1Size;
  const p2Size = Math.floor((lastUsable + 1 - p2Start) / ALIGN) * ALIGN;
  if (p2Size <= 0) throw new Error('reference disk too small for two partitions');
  const fatBits = p2Size * SECTOR >= 512 * MIB ? 32 : 16;

  await rm(path, { force: true });
  await writeFile(path, '');
  await truncate(path, size);

  const script =
    opts.table === 'gpt'
      ? [
          'label: gpt',
          `label-id: ${DISK_GUID}`,
          `start=${p1Start}, size=${p1Size}, type=${GPT_LINUX_FS}, uuid=11111111-2222-4333-8444-555555555501, name="ferry-root"`,
          `start=${p2Start}, size=${p2Size}, type=${GPT_MS_BASIC}, uuid=11111111-2222-4333-8444-555555555502, name="ferry-data"`,
        ]
      : [
          'label: dos',
          'label-id: 0x5eed1234',
          `start=${p1Start}, size=${p1Size}, type=83, bootable`,
          `start=${p2Start}, size=${p2Size}, type=${fatBits === 32 ? 'c' : 'e'}`,
        ];
  await run(sfdisk, ['-q', '--no-reread', '--no-tell-kernel', path], { input: script.join('\n') + '\n' });

  // Partition 1: ext4 populated from a staging directory, written at the partition's offset.
  const stage = join(dir, `.stage-${opts.table}-${process.pid}`);
  await rm(stage, { recursive: true, force: true });
  await mkdir(stage, { recursive: true });
  try {
    await populate(stage, dataBytes);
    await run(
      mke2fs,
      [
        '-q', '-F', '-t', 'ext4', '-L', 'ferry-root', '-U', EXT4_UUID,
        '-E', `offset=${p1Start * SECTOR},hash_seed=${EXT4_HASH_SEED},root_owner=0:0`,
        '-d', stage, path, `${(p1Size * SECTOR) / 1024}k`,
      ],
      { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' } },
    );

    // Partition 2: FAT, with a few files when mtools is available.
    if (await haveTool('mkfs.vfat')) {
      const mkfs = await toolPath('mkfs.vfat');
      // Small FAT16 volumes need 512-byte clusters to reach FAT16's minimum cluster count.
      const cluster = fatBits === 16 && p2Size * SECTOR < 32 * MIB ? ['-s', '1'] : [];
      await run(mkfs, ['--invariant', '-i', '5eed5eed', '-n', 'FERRYDATA', '-F', String(fatBits), ...cluster, `--offset=${p2Start}`, path, String((p2Size * SECTOR) / 1024)]);
      if (await haveTool('mcopy')) {
        const mcopy = await toolPath('mcopy');
        const blob = join(stage, 'fat-blob.bin');
        await writeRandomFile(blob, Math.min(4 * MIB, Math.floor((p2Size * SECTOR) / 4)), 'fat-blob');
        await run(mcopy, ['-i', `${path}@@${p2Start * SECTOR}`, '-m', join(stage, 'text', 'notes-0.txt'), join(stage, 'README'), blob, '::/'], {
          env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
        });
      }
    } else {
      // No dosfstools: partition 2 holds raw random data instead.
      const blob = join(stage, 'p2.bin');
      await writeRandomFile(blob, Math.min(4 * MIB, p2Size * SECTOR), 'p2-raw');
      await run('dd', [`if=${blob}`, `of=${path}`, 'bs=1M', `seek=${p2Start * SECTOR}`, 'oflag=seek_bytes', 'conv=notrunc,sparse', 'status=none']);
    }
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
  return {
    path,
    size,
    table: opts.table,
    partitions: [
      { start: p1Start, size: p1Size, fs: 'ext4' },
      { start: p2Start, size: p2Size, fs: 'vfat' },
    ],
  };
}
