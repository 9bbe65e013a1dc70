// Acceptance of the writers: every source subformat of the corpus × every output kind. The output
// must hold the source's virtual content (SHA-256 of Ferry's read of the output = SHA-256 of the
// source, tail beyond the source size zero), `qemu-img compare` must agree, and `qemu-img check`
// must pass for qcow2 and VMDK outputs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage } from '../src/image/open.js';
import type { DiskImage } from '../src/image/types.js';
import type { WriteSpec } from '../src/image/writer.js';
import { checksumVirtual } from '../src/pipeline/checksum.js';
import { convertImage } from '../src/pipeline/convert.js';
import { measureImage } from '../src/pipeline/measure.js';
import { streamVirtual } from '../src/pipeline/virtual-stream.js';
import { buildReferenceDisk } from './corpus/reference-disk.js';
import { buildSubformats, type CorpusEntry } from './corpus/subformats.js';
import { run } from './corpus/run.js';

interface OutputKind {
  name: string;
  spec: WriteSpec;
  ext: string;
  qemuFormat: string;
  qemuCheck: boolean;
  /** Only for these sources (slow kinds: one or two sources show them). */
  sources?: string[];
}

export const OUTPUT_KINDS: OutputKind[] = [
  { name: 'raw', spec: { format: 'raw' }, ext: 'raw', qemuFormat: 'raw', qemuCheck: false },
  { name: 'qcow2-v3', spec: { format: 'qcow2' }, ext: 'qcow2', qemuFormat: 'qcow2', qemuCheck: true },
  { name: 'qcow2-v2', spec: { format: 'qcow2', subformat: 'v2' }, ext: 'qcow2', qemuFormat: 'qcow2', qemuCheck: true },
  { name: 'qcow2-zlib', spec: { format: 'qcow2', compress: 'zlib' }, ext: 'qcow2', qemuFormat: 'qcow2', qemuCheck: true },
  { name: 'qcow2-zstd', spec: { format: 'qcow2', compress: 'zstd' }, ext: 'qcow2', qemuFormat: 'qcow2', qemuCheck: true },
  { name: 'qcow2-zlib-512', spec: { format: 'qcow2', compress: 'zlib', clusterSize: 512 }, ext: 'qcow2', qemuFormat: 'qcow2', qemuCheck: true, sources: ['qcow2-zstd', 'vmdk-streamOptimized'] },
  { name: 'qcow2-2M', spec: { format: 'qcow2', clusterSize: 2 * 1024 * 1024 }, ext: 'qcow2', qemuFormat: 'qcow2', qemuCheck: true },
  { name: 'vpc-dynamic', spec: { format: 'vpc' }, ext: 'vhd', qemuFormat: 'vpc', qemuCheck: false },
  { name: 'vpc-fixed', spec: { format: 'vpc', subformat: 'fixed' }, ext: 'vhd', qemuFormat: 'vpc', qemuCheck: false },
  { name: 'vpc-fixed-exact-1M', spec: { format: 'vpc', subformat: 'fixed', exactSize: true, alignSize: 1024 * 1024 }, ext: 'vhd', qemuFormat: 'vpc', qemuCheck: false },
  { name: 'vmdk-stream', spec: { format: 'vmdk' }, ext: 'vmdk', qemuFormat: 'vmdk', qemuCheck: true },
  { name: 'vmdk-sparse', spec: { format: 'vmdk', subformat: 'monolithicSparse' }, ext: 'vmdk', qemuFormat: 'vmdk', qemuCheck: true },
];

/** SHA-256 of [0, length) and whether everything after it reads as zeros. */
async function shaOf(image: DiskImage, length: number): Promise<{ sha: string; tailZero: boolean }> {
  const { sha256 } = await checksumVirtual(image, { length });
  let tailZero = true;
  if (image.virtualSize > length) {
    for await (const c of streamVirtual(image, { offset: length })) if (c.data && c.data.some((b) => b !== 0)) tailZero = false;
  }
  return { sha: sha256, tailZero };
}

describe('round trips: every corpus subformat × every output kind', () => {
  let dir = '';
  let entries: CorpusEntry[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-convert-'));
    const ref = await buildReferenceDisk(dir, { table: 'mbr', size: 64 * 1024 * 1024 });
    const only = process.env.FERRY_CORPUS_ONLY ? process.env.FERRY_CORPUS_ONLY.split(',') : undefined;
    entries = await buildSubformats(ref, join(dir, 'img'), { big: process.env.FERRY_CORPUS_BIG === '1', ...(only ? { only } : {}) });
  });

  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('each source converts to each output kind exactly', async (t) => {
    if (!process.env.FERRY_CORPUS_ONLY) assert.ok(entries.length >= 20, `corpus has only ${entries.length} entries`);
    const failures: string[] = [];
    const seconds = new Map<string, number>();
    let done = 0;
    for (const entry of entries) {
      const src = await openImage(entry.path, entry.options);
      try {
        const want = await shaOf(src, src.virtualSize);
        for (const kind of OUTPUT_KINDS) {
          if (kind.sources && !kind.sources.includes(entry.name)) continue;
          const out = join(dir, `out-${entry.name}-${kind.name}.${kind.ext}`);
          const label = `${entry.name} -> ${kind.name}`;
          const t0 = Date.now();
          try {
            const r = await convertImage(src, out, kind.spec, { workers: 2 });
            assert.ok(r.output.virtualSize >= src.virtualSize, `${label}: output smaller than source`);
            const img = await openImage(out);
            try {
              const got = await shaOf(img, src.virtualSize);
              assert.equal(got.sha, want.sha, `${label}: SHA-256 of the output differs from the source`);
              assert.ok(got.tailZero, `${label}: the output's extra tail is not zero`);
            } finally {
              await img.close();
            }
            // qemu-img compares with the source, or, where it cannot read the source, with its expected disk.
            const [refFormat, refPath] = entry.qemuWrong ? ['raw', entry.expectedRaw!] : [entry.qemuFormat, entry.qemuPath];
            const cmp = await run('qemu-img', ['compare', '-f', refFormat, '-F', kind.qemuFormat, refPath, out], { okCodes: [0, 1, 2] });
            assert.equal(cmp.code, 0, `${label}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
            if (kind.qemuCheck) {
              const chk = await run('qemu-img', ['check', '-f', kind.qemuFormat, out], { okCodes: [0, 1, 2, 3] });
              assert.equal(chk.code, 0, `${label}: qemu-img check: ${chk.stdout}${chk.stderr}`);
            }
            done++;
          } catch (err) {
            failures.push(`${label}: ${(err as Error).message.split('\n')[0]}`);
          } finally {
            await rm(out, { force: true });
            seconds.set(kind.name, (seconds.get(kind.name) ?? 0) + (Date.now() - t0) / 1000);
          }
        }
      } finally {
        await src.close();
      }
    }
    t.diagnostic(`seconds per output kind: ${[...seconds].map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
    t.diagnostic(`${done} conversions verified (${entries.length} sources × ${OUTPUT_KINDS.length} output kinds; cluster_size=512 for ${OUTPUT_KINDS.flatMap((k) => k.sources ?? []).join(', ')} only)`);
    assert.deepEqual(failures, []);
  });
});

describe('convert engine options', () => {
  it('compresses on the calling thread when there are no workers, with the same content', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-convert-w0-'));
    try {
      const raw = join(dir, 'src.raw');
      const buf = Buffer.alloc(8 << 20);
      buf.write('compressible text '.repeat(50000), 1 << 20);
      randomFillSync(buf.subarray(5 << 20, 6 << 20));
      await writeFile(raw, buf);
      const src = await openImage(raw);
      try {
        for (const workers of [0, 2]) {
          const out = join(dir, `w${workers}.qcow2`);
          const r = await convertImage(src, out, { format: 'qcow2', compress: 'zlib' }, { workers });
          assert.ok(r.units.compressed > 0, `workers=${workers}: nothing was compressed`);
          assert.ok(r.units.raw > 0, `workers=${workers}: the pseudo-random MiB should stay raw`);
          const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, out], { okCodes: [0, 1, 2] });
          assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
        }
      } finally {
        await src.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('measure predicts the output size: exactly by default, closely with --sample', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-measure-'));
    try {
      const raw = join(dir, 'src.raw');
      const buf = Buffer.alloc(96 << 20);
      for (let mib = 0; mib < 64; mib += 2) {
        buf.write(`text block ${mib} `.repeat(40000), mib << 20);
        randomFillSync(buf.subarray((mib + 1) << 20, ((mib + 1) << 20) + (512 << 10)));
      }
      await writeFile(raw, buf);
      const src = await openImage(raw);
      try {
        for (const spec of [{ format: 'qcow2', compress: 'zstd' }, { format: 'vmdk' }, { format: 'vpc' }, { format: 'qcow2' }] as WriteSpec[]) {
          const out = join(dir, `m.${spec.format}`);
          const r = await convertImage(src, out, spec, { workers: 2 });
          const exact = await measureImage(src, spec, { workers: 2 });
          assert.equal(exact.estimated, false);
          assert.equal(exact.fileSize, r.output.fileSize, `${JSON.stringify(spec)}: measured file size differs from the written one`);
          const sampled = await measureImage(src, spec, { workers: 2, sample: true, sampleBytes: 16 << 20 });
          assert.equal(sampled.estimated, true);
          const error = Math.abs(sampled.fileSize - r.output.fileSize) / r.output.fileSize;
          assert.ok(error < 0.1, `${JSON.stringify(spec)}: sampled estimate ${sampled.fileSize} is ${(error * 100).toFixed(1)} % off ${r.output.fileSize}`);
          await rm(out);
        }
      } finally {
        await src.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
