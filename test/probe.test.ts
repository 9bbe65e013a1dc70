// Detection by content: every unsupported format users bring is named, with its own error code and
// a remedy, whatever the file is called; `--format raw` is the explicit escape hatch.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../src/errors.js';
import { openImage } from '../src/image/open.js';

let dir = '';
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-probe-'));
  // Every file gets a misleading name: detection must not look at it.
  for (const f of ['vdi', 'vhdx', 'qed', 'parallels', 'qcow']) sh('qemu-img', ['create', '-q', '-f', f, join(dir, `${f}.vhd`), '64M']);
  // qemu-img times its PBKDF by the process's CPU clock, and on a loaded VM that measurement
  // sometimes fails ("Unable to get accurate CPU usage"): that message alone is retried.
  for (let attempt = 1; ; attempt++) {
    try {
      sh('qemu-img', ['create', '-q', '-f', 'luks', '--object', 'secret,id=s0,data=pw', '-o', 'key-secret=s0,iter-time=50', join(dir, 'luks.vhd'), '16M']);
      break;
    } catch (err) {
      if (attempt >= 5 || !/accurate CPU usage/.test(String((err as { stderr?: Buffer }).stderr ?? ''))) throw err;
    }
  }
  sh('genisoimage', ['-quiet', '-o', join(dir, 'iso.vhd'), '/etc/hostname']);
  const dmg = join(dir, 'dmg.vhd');
  writeFileSync(dmg, Buffer.alloc(1 << 20));
  const fd = openSync(dmg, 'r+');
  writeSync(fd, Buffer.from('koly'), 0, 4, (1 << 20) - 512);
  closeSync(fd);
  writeFileSync(join(dir, 'raw.img'), Buffer.alloc(1 << 20, 7));
  sh('gzip', ['-k', join(dir, 'raw.img')]);
  writeFileSync(join(dir, 'unknown.vmdk'), Buffer.from('this is a text file, not a disk\n'.repeat(31)));
  writeFileSync(join(dir, 'empty.qcow2'), Buffer.alloc(0));
  sh('tar', ['--format=ustar', '-cf', join(dir, 'plain.ova'), '-C', dir, 'raw.img']);
});

after(() => rmSync(dir, { recursive: true, force: true }));

async function openError(name: string, options = {}): Promise<FerryError> {
  try {
    const img = await openImage(join(dir, name), options);
    await img.close();
  } catch (err) {
    assert.ok(err instanceof FerryError, `expected a FerryError, got ${String(err)}`);
    return err;
  }
  assert.fail(`${name} opened, but it should have been refused`);
}

const cases: [file: string, code: string, detected: string, says: RegExp][] = [
  ['vhdx.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'vhdx', /VHDX.*not VHD/],
  ['vdi.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'vdi', /VDI/],
  ['qed.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'qed', /QED/],
  ['parallels.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'parallels', /Parallels/],
  ['qcow.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'qcow', /qcow version 1/],
  ['luks.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'luks', /LUKS/],
  ['iso.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'iso', /ISO 9660/],
  ['dmg.vhd', 'IMAGE_UNSUPPORTED_FORMAT', 'dmg', /DMG/],
  ['raw.img.gz', 'IMAGE_UNSUPPORTED_FORMAT', 'gzip', /gzip/],
  ['plain.ova', 'IMAGE_UNSUPPORTED_FORMAT', 'tar', /tar archive/],
  ['unknown.vmdk', 'IMAGE_UNKNOWN_FORMAT', 'unknown', /unknown data/],
  ['empty.qcow2', 'IMAGE_UNKNOWN_FORMAT', 'empty', /empty/],
];

for (const [file, code, detected, says] of cases) {
  test(`${file} is recognised as ${detected}`, async () => {
    const err = await openError(file);
    assert.equal(err.code, code);
    assert.equal(err.details?.detectedFormat, detected);
    assert.match(err.message, says);
    assert.ok(err.remedy.length > 20, 'a remedy is given');
    assert.equal(err.exitCode, 4);
  });
}

test('the VHDX remedy says how to convert it', async () => {
  const err = await openError('vhdx.vhd');
  assert.match(err.remedy, /qemu-img convert -f vhdx/);
});

test('--format raw opens what detection refused (the user said so)', async () => {
  const img = await openImage(join(dir, 'iso.vhd'), { format: 'raw' });
  assert.equal(img.format, 'raw');
  await img.close();
});

test('a forced format that does not match the content is refused', async () => {
  const err = await openError('vdi.vhd', { format: 'qcow2' });
  assert.equal(err.code, 'IMAGE_FORMAT_MISMATCH');
  assert.equal(err.details?.detectedFormat, 'vdi');
});

test('a missing file is FILE_NOT_FOUND (exit 5)', async () => {
  const err = await openError('no-such-file.qcow2');
  assert.equal(err.code, 'FILE_NOT_FOUND');
  assert.equal(err.exitCode, 5);
});

test('a directory is not an image', async () => {
  try {
    await openImage(dir);
    assert.fail('opened a directory');
  } catch (err) {
    assert.ok(err instanceof FerryError);
    assert.equal(err.code, 'IO_ERROR');
  }
});
