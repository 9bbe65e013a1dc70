// The subformat corpus: every image variant Ferry must read, made with qemu-img / qemu-io from the
// reference raw disk (see reference-disk.ts): raw, qcow2 (v2/v3, cluster sizes, refcount widths,
// zlib/zstd compression, extended L2, lazy refcounts left dirty, preallocation, internal
// snapshot, zero clusters, backing chains), vpc (fixed/dynamic, force_size), vmdk (monolithicSparse,
// streamOptimized, monolithicFlat, twoGbMaxExtent{Sparse,Flat} — also on a >2 GiB disk so several
// extents exist — zeroed grains, an ESX vmfs descriptor), a differencing VHD and an OVA. Each entry says how to open it and what to compare with.
import { mkdir, open, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { ImageFormat, OpenOptions } from '../../src/image/types.js';
import { writeRandomFile } from './reference-disk.js';
import { buildDiff } from './vhd-diff.js';
import { run } from './run.js';

export interface CorpusEntry {
  /** Short unique name, e.g. "qcow2-v3". */
  name: string;
  /** The image to open with Ferry. */
  path: string;
  /** Format Ferry should detect. */
  format: ImageFormat;
  /** Human label of the variant, e.g. "v2", "fixed", "streamOptimized". */
  subformat: string;
  /** Options for openImage (allowBacking for chains). */
  options: OpenOptions;
  /** The file qemu-img should read for comparison (differs from `path` for an OVA: the vmdk inside). */
  qemuPath: string;
  /** qemu-img's format name for `qemuPath`. */
  qemuFormat: string;
  /** When set, the virtual content must equal this raw file's content (zero-padded to the virtual size). */
  expectedRaw?: string;
  /** qemu-img check supports this format (qcow2, vmdk). */
  qemuCheck: boolean;
  /** Extra facts for diagnostics, e.g. "left dirty by an aborted writer". */
  note?: string;
  /**
   * Set when qemu-img cannot be the oracle (it reads a differencing VHD as if it had no parent):
   * the content is checked against `expectedRaw` only, and the map is not compared with qemu's.
   */
  qemuWrong?: string;
}

export interface SubformatOptions {
  /** Also build the sparse >2 GiB disk and its multi-extent VMDKs (default true). */
  big?: boolean;
  /** Build only the entries whose name is listed (default: all). */
  only?: string[];
  /** Concurrent qemu-img processes (default 3). */
  concurrency?: number;
}

const MIB = 1024 * 1024;

async function qemuImg(args: string[]): Promise<void> {
  await run('qemu-img', args);
}

/** Runs qemu-io commands against an image (each -c is one command). okCodes covers the deliberate abort. */
async function qemuIo(image: string, format: string, commands: string[], okCodes = [0]): Promise<void> {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  args.push(image);
  await run('qemu-io', args, { okCodes });
}

function convert(src: string, dst: string, fmt: string, opts: string[] = [], extra: string[] = []): Promise<void> {
  const args = ['convert', '-f', 'raw', '-O', fmt, ...extra];
  if (opts.length) args.push('-o', opts.join(','));
  args.push(src, dst);
  return qemuImg(args);
}

const MINIMAL_OVF = (disk: string, size: number, capacity: number) => `<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-0" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References>
    <File ovf:href="${disk}" ovf:id="file1" ovf:size="${size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="${capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="ferry-test">
    <Info>A virtual machine</Info>
    <Name>ferry-test</Name>
  </VirtualSystem>
</Envelope>
`;

type Builder = { name: string; build: () => Promise<CorpusEntry> };

/**
 * Builds the corpus from `refRaw` (a raw disk, e.g. from buildReferenceDisk) into `dir`.
 * Entries come back in a stable order.
 */
export async function buildSubformats(refRaw: string, dir: string, options: SubformatOptions = {}): Promise<CorpusEntry[]> {
  await mkdir(dir, { recursive: true });
  const p = (name: string) => join(dir, name);
  const entry = (e: Omit<CorpusEntry, 'qemuPath' | 'options' | 'qemuCheck' | 'qemuFormat'> & Partial<CorpusEntry>): CorpusEntry => ({
    options: {},
    qemuPath: e.path,
    qemuCheck: e.format === 'qcow2' || e.format === 'vmdk',
    ...e,
    qemuFormat: e.qemuFormat ?? e.format,
  });
  const simple = (name: string, fmt: ImageFormat, subformat: string, opts: string[], extra: string[] = [], ext: string = fmt): Builder => ({
    name,
    build: async () => {
      const path = p(`${name}.${ext}`);
      await convert(refRaw, path, fmt, opts, extra);
      return entry({ name, path, format: fmt, subformat, expectedRaw: refRaw });
    },
  });

  const builders: Builder[] = [
    {
      name: 'raw',
      build: async () => {
        const path = p('raw.raw');
        await run('cp', ['--sparse=always', refRaw, path]);
        return entry({ name: 'raw', path, format: 'raw', subformat: 'raw (sparse)', expectedRaw: refRaw });
      },
    },
    simple('qcow2-v3', 'qcow2', 'v3', ['compat=1.1']),
    simple('qcow2-v2', 'qcow2', 'v2 (compat=0.10)', ['compat=0.10']),
    simple('qcow2-cluster512', 'qcow2', 'v3 cluster_size=512', ['cluster_size=512']),
    simple('qcow2-cluster2M', 'qcow2', 'v3 cluster_size=2M', ['cluster_size=2M']),
    simple('qcow2-refcount1', 'qcow2', 'v3 refcount_bits=1', ['refcount_bits=1']),
    simple('qcow2-refcount64', 'qcow2', 'v3 refcount_bits=64', ['refcount_bits=64']),
    simple('qcow2-zlib', 'qcow2', 'v3 compressed zlib', [], ['-c']),
    simple('qcow2-zstd', 'qcow2', 'v3 compressed zstd', ['compression_type=zstd'], ['-c']),
    simple('qcow2-extl2', 'qcow2', 'v3 extended_l2=on', ['extended_l2=on']),
    simple('qcow2-prealloc-metadata', 'qcow2', 'v3 preallocation=metadata', ['preallocation=metadata']),
    {
      name: 'qcow2-lazy-dirty',
      build: async () => {
        const path = p('qcow2-lazy-dirty.qcow2');
        await convert(refRaw, path, 'qcow2', ['lazy_refcounts=on']);
        // A writer that dies before flushing refcounts leaves the dirty bit set (134 = SIGABRT).
        await qemuIo(path, 'qcow2', ['write -P 0x5a 60M 128k', 'abort'], [134, -1, 0]);
        return entry({ name: 'qcow2-lazy-dirty', path, format: 'qcow2', subformat: 'v3 lazy_refcounts, dirty', note: 'left dirty by an aborted qemu-io' });
      },
    },
    {
      name: 'qcow2-snapshot',
      build: async () => {
        const path = p('qcow2-snapshot.qcow2');
        await convert(refRaw, path, 'qcow2');
        await qemuImg(['snapshot', '-c', 'snap1', path]);
        await qemuIo(path, 'qcow2', ['write -P 0xa5 0 64k', 'write -P 0x3c 5M 200k', 'write -z 40M 1M']);
        return entry({ name: 'qcow2-snapshot', path, format: 'qcow2', subformat: 'v3 internal snapshot + writes' });
      },
    },
    {
      name: 'qcow2-zero-clusters',
      build: async () => {
        const path = p('qcow2-zero-clusters.qcow2');
        await convert(refRaw, path, 'qcow2');
        await qemuIo(path, 'qcow2', ['write -z 1M 2M', 'write -z -u 4M 1M', 'write -z 4096 4096', 'write -P 0x77 63M 64k']);
        return entry({ name: 'qcow2-zero-clusters', path, format: 'qcow2', subformat: 'v3 zero clusters (write -z)' });
      },
    },
    {
      name: 'qcow2-backing-chain',
      build: async () => {
        const base = p('chain-base.qcow2');
        const mid = p('chain-mid.qcow2');
        const top = p('chain-top.qcow2');
        await convert(refRaw, base, 'qcow2');
        await qemuImg(['create', '-q', '-f', 'qcow2', '-b', basename(base), '-F', 'qcow2', mid]);
        await qemuIo(mid, 'qcow2', ['write -P 0x11 1M 256k', 'write -z 2M 1M', 'write -P 0x12 30M 100k']);
        await qemuImg(['create', '-q', '-f', 'qcow2', '-b', basename(mid), '-F', 'qcow2', top]);
        await qemuIo(top, 'qcow2', ['write -P 0x21 1M 64k', 'write -z 30M 64k', 'write -P 0x22 50M 1M']);
        return entry({ name: 'qcow2-backing-chain', path: top, format: 'qcow2', subformat: 'v3 overlay > overlay > base', options: { allowBacking: true } });
      },
    },
    {
      name: 'qcow2-raw-backing',
      build: async () => {
        const base = p('rawbase.raw');
        const top = p('rawbase-top.qcow2');
        await run('cp', ['--sparse=always', refRaw, base]);
        await qemuImg(['create', '-q', '-f', 'qcow2', '-b', basename(base), '-F', 'raw', top]);
        await qemuIo(top, 'qcow2', ['write -P 0x33 8M 512k', 'write -z 20M 128k']);
        return entry({ name: 'qcow2-raw-backing', path: top, format: 'qcow2', subformat: 'v3 overlay over raw', options: { allowBacking: true } });
      },
    },
    simple('vpc-fixed', 'vpc', 'fixed', ['subformat=fixed'], [], 'vhd'),
    simple('vpc-dynamic', 'vpc', 'dynamic', ['subformat=dynamic'], [], 'vhd'),
    simple('vpc-fixed-force-size', 'vpc', 'fixed force_size', ['subformat=fixed', 'force_size=on'], [], 'vhd'),
    simple('vpc-dynamic-force-size', 'vpc', 'dynamic force_size', ['subformat=dynamic', 'force_size=on'], [], 'vhd'),
    {
      name: 'vpc-differencing',
      build: async () => {
        // qemu-img cannot create differencing VHDs: the child is built by hand over a qemu-made parent.
        const parent = p('diff-parent.vhd');
        await convert(refRaw, parent, 'vpc', ['subformat=dynamic']);
        const blocks = new Map([
          [0, { sectors: [0, 1, 2, 3, 64, 65], fill: 0xd1 }],
          [5, { sectors: Array.from({ length: 256 }, (_, i) => i * 3), fill: 0xd2 }],
          [20, { sectors: [4095], fill: 0xd3 }],
        ]);
        const path = p('diff-child.vhd');
        await writeFile(path, buildDiff({ parent, parentName: 'diff-parent.vhd', locators: [{ code: 'W2ru', data: Buffer.from('.\\diff-parent.vhd', 'utf16le') }], blocks }));
        // The expected disk, composed independently: the parent's content with the child's sectors.
        const expected = p('diff-expected.raw');
        await run('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', parent, expected]);
        const fh = await open(expected, 'r+');
        try {
          for (const [block, b] of blocks) {
            for (const sector of b.sectors) await fh.write(Buffer.alloc(512, b.fill), 0, 512, block * 2 * MIB + sector * 512);
          }
        } finally {
          await fh.close();
        }
        return entry({
          name: 'vpc-differencing',
          path,
          format: 'vpc',
          subformat: 'differencing over dynamic',
          options: { allowBacking: true },
          expectedRaw: expected,
          qemuWrong: 'qemu-img reads a differencing VHD without its parent',
        });
      },
    },
    {
      name: 'vmdk-vmfs',
      build: async () => {
        // An ESX "vmfs" descriptor: one VMFS extent, a flat file next to it.
        const flat = p('vmfs-flat.vmdk');
        await run('cp', ['--sparse=always', refRaw, flat]);
        const sectors = (await stat(refRaw)).size / 512;
        const path = p('vmfs.vmdk');
        await writeFile(
          path,
          `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\nRW ${sectors} VMFS "vmfs-flat.vmdk"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\nddb.virtualHWVersion = "14"\n`,
        );
        return entry({ name: 'vmdk-vmfs', path, format: 'vmdk', subformat: 'vmfs (ESX descriptor + flat extent)', expectedRaw: refRaw });
      },
    },
    simple('vmdk-monolithicSparse', 'vmdk', 'monolithicSparse', ['subformat=monolithicSparse']),
    simple('vmdk-streamOptimized', 'vmdk', 'streamOptimized', ['subformat=streamOptimized']),
    simple('vmdk-monolithicFlat', 'vmdk', 'monolithicFlat', ['subformat=monolithicFlat']),
    simple('vmdk-twoGbMaxExtentSparse', 'vmdk', 'twoGbMaxExtentSparse', ['subformat=twoGbMaxExtentSparse']),
    simple('vmdk-twoGbMaxExtentFlat', 'vmdk', 'twoGbMaxExtentFlat', ['subformat=twoGbMaxExtentFlat']),
    {
      name: 'vmdk-zeroed-grain',
      build: async () => {
        const path = p('vmdk-zeroed-grain.vmdk');
        await convert(refRaw, path, 'vmdk', ['subformat=monolithicSparse', 'zeroed_grain=on']);
        await qemuIo(path, 'vmdk', ['write -z 1M 1M', 'write -z 40M 256k']);
        return entry({ name: 'vmdk-zeroed-grain', path, format: 'vmdk', subformat: 'monolithicSparse zeroed_grain=on + write -z' });
      },
    },
    {
      name: 'ova',
      build: async () => {
        const odir = p('ova-src');
        await mkdir(odir, { recursive: true });
        const disk = join(odir, 'ferry-disk1.vmdk');
        await convert(refRaw, disk, 'vmdk', ['subformat=streamOptimized']);
        const { stdout } = await run('qemu-img', ['info', '--output=json', disk]);
        const info = JSON.parse(stdout) as { 'virtual-size': number };
        const { size } = await stat(disk);
        await writeFile(join(odir, 'ferry-test.ovf'), MINIMAL_OVF('ferry-disk1.vmdk', size, info['virtual-size']));
        const path = p('ferry-test.ova');
        await run('tar', ['--format=ustar', '-cf', path, '-C', odir, 'ferry-test.ovf', 'ferry-disk1.vmdk']);
        return entry({ name: 'ova', path, format: 'vmdk', subformat: 'OVA (ustar: ovf + streamOptimized vmdk)', qemuPath: disk, qemuFormat: 'vmdk', expectedRaw: refRaw });
      },
    },
  ];

  if (options.big ?? true) {
    // A sparse disk just over 2 GiB so twoGbMaxExtent* images get several extents, with data near the end.
    const bigRaw = p('big-ref.raw');
    let bigReady: Promise<void> | undefined;
    const makeBig = () =>
      (bigReady ??= (async () => {
        const bigSize = 2048 * MIB + 100 * MIB;
        await run('cp', ['--sparse=always', refRaw, bigRaw]);
        await truncate(bigRaw, bigSize);
        const blob = p('big-tail.bin');
        await writeRandomFile(blob, 3 * MIB, 'big-tail');
        // Data straddling the 2 GiB extent boundary and near the very end.
        for (const at of [2048 * MIB - MIB, bigSize - 5 * MIB]) {
          await run('dd', [`if=${blob}`, `of=${bigRaw}`, 'bs=1M', `seek=${at}`, 'oflag=seek_bytes', 'conv=notrunc', 'status=none']);
        }
        await rm(blob, { force: true });
      })());
    for (const sub of ['twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'] as const) {
      const name = `vmdk-${sub}-2.1G`;
      builders.push({
        name,
        build: async () => {
          await makeBig();
          const path = p(`${name}.vmdk`);
          await convert(bigRaw, path, 'vmdk', [`subformat=${sub}`]);
          return entry({ name, path, format: 'vmdk', subformat: `${sub}, 2.1 GiB (several extents)`, expectedRaw: bigRaw });
        },
      });
    }
  }

  const selected = options.only ? builders.filter((b) => options.only!.includes(b.name)) : builders;
  const results: (CorpusEntry | undefined)[] = new Array(selected.length);
  const errors: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < selected.length) {
      const i = next++;
      try {
        results[i] = await selected[i]!.build();
      } catch (err) {
        errors.push(`${selected[i]!.name}: ${(err as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 3) }, worker));
  if (errors.length) throw new Error(`building the corpus failed:\n${errors.join('\n')}`);
  return results.filter((e): e is CorpusEntry => e !== undefined);
}
