// Acceptance test over the generated corpus (test/corpus/): for every subformat, Ferry's virtual
// content must hash like `qemu-img convert -O raw` (and like the reference disk where the content is
// the same), Ferry's extents must agree with `qemu-img map`, and Ferry's check verdict must agree with
// `qemu-img check` (clean for all but the deliberately dirty image).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImage } from '../src/image/open.js';
import { readVirtual, UnitCache } from '../src/image/read.js';
import { extents } from '../src/image/extents.js';
import type { DiskImage } from '../src/image/types.js';
import { buildReferenceDisk } from './corpus/reference-disk.js';
import { buildSubformats, type CorpusEntry } from './corpus/subformats.js';
import { firstDifference, fromExtents, qemuMap } from './corpus/qemu-map.js';
import { run, sha256File } from './corpus/run.js';

const WINDOW = 4 * 1024 * 1024;

/** SHA-256 of the whole virtual disk as Ferry reads it, in bounded windows. */
async function ferrySha(image: DiskImage): Promise<string> {
  const h = createHash('sha256');
  const cache = new UnitCache();
  for (let pos = 0; pos < image.virtualSize; pos += WINDOW) {
    h.update(await readVirtual(image, pos, Math.min(WINDOW, image.virtualSize - pos), cache));
  }
  return h.digest('hex');
}

/** SHA-256 and virtual size of `qemu-img convert -O raw`. */
async function qemuSha(entry: CorpusEntry, scratch: string): Promise<{ sha: string; size: number }> {
  const out = join(scratch, `${entry.name}.qemu.raw`);
  try {
    await run('qemu-img', ['convert', '-f', entry.qemuFormat, '-O', 'raw', entry.qemuPath, out]);
    const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', entry.qemuFormat, entry.qemuPath]);
    const size = (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
    return { sha: await sha256File(out), size };
  } finally {
    await rm(out, { force: true });
  }
}

type Verdict = 'clean' | 'leaks' | 'corrupt';

async function qemuCheckVerdict(entry: CorpusEntry): Promise<{ verdict: Verdict; output: string }> {
  const r = await run('qemu-img', ['check', '-f', entry.qemuFormat, entry.qemuPath], { okCodes: [0, 2, 3] });
  const verdict: Verdict = r.code === 0 ? 'clean' : r.code === 3 ? 'leaks' : 'corrupt';
  return { verdict, output: (r.stdout + r.stderr).trim() };
}

interface Row {
  name: string;
  subformat: string;
  ferry: string;
  qemu: string;
  content: string;
  map: string;
  check: string;
}

describe('corpus: every subformat reads, maps and checks like qemu-img', () => {
  let dir = '';
  let ref = '';
  let entries: CorpusEntry[] = [];
  const expectedShas = new Map<string, string>();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-corpus-'));
    const t0 = Date.now();
    ref = await buildReferenceDisk(dir, { table: 'gpt', size: 64 * 1024 * 1024 });
    const only = process.env.FERRY_CORPUS_ONLY ? process.env.FERRY_CORPUS_ONLY.split(',') : undefined;
    const big = process.env.FERRY_CORPUS_BIG !== '0';
    entries = await buildSubformats(ref, join(dir, 'img'), { big, ...(only ? { only } : {}) });
    process.stderr.write(`# corpus: ${entries.length} images built in ${((Date.now() - t0) / 1000).toFixed(1)} s in ${dir}\n`);
  });

  after(async () => {
    if (dir && process.env.FERRY_KEEP_CORPUS !== '1') await rm(dir, { recursive: true, force: true });
  });

  it('reference disk is a 64 MiB GPT disk with content', async () => {
    const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'raw', ref]);
    const data = (JSON.parse(stdout) as { length: number; data: boolean }[]).filter((e) => e.data).reduce((n, e) => n + e.length, 0);
    assert.ok(data > 8 * 1024 * 1024, `reference disk holds only ${data} bytes of data`);
  });

  it('each entry', async (t) => {
    assert.ok(entries.length > 0, 'the corpus is empty');
    const rows: Row[] = [];
    for (const entry of entries) {
      const row: Row = { name: entry.name, subformat: `${entry.format} ${entry.subformat}`, ferry: '-', qemu: '-', content: '-', map: '-', check: '-' };
      rows.push(row);
      await t.test(entry.name, async (st) => {
        let image: DiskImage;
        try {
          image = await openImage(entry.path, entry.options);
        } catch (err) {
          row.content = row.map = row.check = 'OPEN FAILED';
          throw err;
        }
        try {
          await st.test('format detected', () => {
            assert.equal(image.format, entry.format);
          });
          await st.test('content (a)', async () => {
            row.content = 'FAIL';
            const ours = await ferrySha(image);
            row.ferry = ours.slice(0, 12);
            if (entry.qemuWrong) {
              assert.ok(entry.expectedRaw, 'an entry qemu cannot read needs an independently built expected disk');
              row.qemu = 'n/a';
            } else {
              const theirs = await qemuSha(entry, dir);
              row.qemu = theirs.sha.slice(0, 12);
              assert.equal(image.virtualSize, theirs.size, 'virtual size differs from qemu-img info');
              assert.equal(ours, theirs.sha, 'SHA-256 of the virtual content differs from qemu-img convert -O raw');
            }
            if (entry.expectedRaw) {
              const key = `${entry.expectedRaw}:${image.virtualSize}`;
              let want = expectedShas.get(key);
              if (!want) {
                want = await sha256File(entry.expectedRaw, image.virtualSize);
                expectedShas.set(key, want);
              }
              assert.equal(ours, want, `content differs from the reference disk ${entry.expectedRaw}`);
            }
            row.content = 'ok';
          });
          await st.test('extents vs qemu-img map (b)', async () => {
            if (entry.qemuWrong) {
              // qemu's map is wrong here; the per-sector map is tested against the expected layout in vhd.test.ts.
              row.map = 'n/a';
              return;
            }
            row.map = 'FAIL';
            const ours = await fromExtents(extents(image));
            const theirs = await qemuMap(entry.qemuPath, entry.qemuFormat);
            const diff = firstDifference(ours, theirs);
            assert.equal(diff, undefined, diff);
            row.map = `ok(${ours.length})`;
          });
          await st.test('check vs qemu-img check (c)', async () => {
            row.check = 'FAIL';
            const report = await image.check();
            const problems = report.problems.slice(0, 5).map((p) => `${p.severity}: ${p.message}`).join('; ');
            if (entry.qemuCheck) {
              const q = await qemuCheckVerdict(entry);
              assert.equal(report.verdict, q.verdict, `ferry check says ${report.verdict} (${problems}); qemu-img check says ${q.verdict}: ${q.output.slice(0, 400)}`);
              if (!entry.note) assert.equal(q.verdict, 'clean', `qemu-img check is not clean: ${q.output.slice(0, 400)}`);
            } else {
              assert.equal(report.verdict, 'clean', `ferry check: ${problems}`);
            }
            row.check = `ok(${report.verdict})`;
          });
        } finally {
          await image.close();
        }
      });
    }
    const w = [30, 40, 12, 12, 8, 10, 14];
    const line = (c: string[]) => c.map((s, i) => s.padEnd(w[i]!)).join(' ');
    t.diagnostic(line(['entry', 'subformat', 'ferry sha', 'qemu sha', 'content', 'map', 'check']));
    for (const r of rows) t.diagnostic(line([r.name, r.subformat.slice(0, 40), r.ferry, r.qemu, r.content, r.map, r.check]));
  });
});
