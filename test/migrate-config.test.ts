// The migration config file: what `ferry init` writes is valid once the receiver's address and
// fingerprint are filled in, and a broken file is reported with every problem's line and column.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../src/errors.js';
import { loadMigrateConfig } from '../src/online/config.js';
import { configText } from '../src/online/init.js';

const FP = '0B:20:C3:13:37:86:D1:03:A4:A1:7C:C2:75:B5:CB:A5:29:99:A5:B1:68:CA:8C:AE:2E:1F:07:9B:D7:88:C9:2F';

test('the config `ferry init` writes loads, with the token from the environment', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-config-'));
  try {
    const file = join(dir, 'ferry.yaml');
    const disks = [{ device: '/dev/vda', size: 20 * 1024 ** 3, partitions: [{ device: '/dev/vda1', size: 20 * 1024 ** 3, mount: '/', fstype: 'ext4' }] }, { device: '/dev/vdb', size: 1024 ** 3, partitions: [], mount: '/srv', fstype: 'xfs' }];
    writeFileSync(file, configText(disks, { address: '10.1.2.3:7878', fingerprint: FP }));
    assert.match(readFileSync(file, 'utf8'), /#\s+\/dev\/vda1: 20\.0 GiB, ext4 on \//);
    process.env.FERRY_TOKEN = 'from-the-environment';
    const cfg = loadMigrateConfig(file);
    assert.equal(cfg.target.address, '10.1.2.3:7878');
    assert.deepEqual(cfg.disks, [{ source: '/dev/vda', name: 'root' }, { source: '/dev/vdb', name: 'disk1' }]);
    assert.deepEqual(cfg.final_round?.freeze, ['/srv']);
    assert.equal(cfg.token, 'from-the-environment');
    assert.equal(cfg.rounds, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    delete process.env.FERRY_TOKEN;
  }
});

test('every problem of a broken config is named with its line and column', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-config-'));
  try {
    const file = join(dir, 'bad.yaml');
    writeFileSync(file, ['target:', '  address: nowhere', `  fingerprint: "${FP}"`, '  tokn: abc', 'disks:', '  - source: dev/vda', '    name: root', 'rounds: 0', 'colour: blue', ''].join('\n'));
    let err: FerryError | undefined;
    try {
      loadMigrateConfig(file);
    } catch (e) {
      err = e as FerryError;
    }
    assert.equal(err?.code, 'CONFIG_INVALID');
    const problems = (err!.details as { problems: string[] }).problems;
    const at = (re: RegExp) => problems.find((p) => re.test(p));
    assert.match(at(/target\.address/)!, /bad\.yaml:2:12:/);
    assert.match(at(/tokn/)!, /bad\.yaml:4:3:/);
    assert.match(at(/disks\[0\]\.source/)!, /bad\.yaml:6:13:/);
    assert.match(at(/rounds/)!, /bad\.yaml:8:9:/);
    assert.match(at(/colour/)!, /bad\.yaml:9:1:/);
    writeFileSync(file, 'target: [\n');
    assert.throws(() => loadMigrateConfig(file), (e: FerryError) => e.code === 'CONFIG_INVALID' && /bad\.yaml:\d+:\d+:/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a report section: the control plane\'s URL, its token from the environment; a bad URL is named', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-config-'));
  try {
    const file = join(dir, 'ferry.yaml');
    const base = ['target:', '  address: 10.1.2.3:7878', `  fingerprint: "${FP}"`, '  token: receiver-token', 'disks:', '  - {source: /dev/vda, name: root}'];
    writeFileSync(file, [...base, 'report: {url: "http://10.0.0.9:8787", id: "web1:root"}', ''].join('\n'));
    process.env.FERRY_REPORT_TOKEN = 'report-token-from-env';
    const cfg = loadMigrateConfig(file);
    assert.equal(cfg.report?.url, 'http://10.0.0.9:8787');
    assert.equal(cfg.report?.id, 'web1:root');
    assert.equal(cfg.reportToken, 'report-token-from-env');
    writeFileSync(file, [...base, 'report: {url: "10.0.0.9:8787"}', ''].join('\n'));
    assert.throws(() => loadMigrateConfig(file), (e: FerryError) => e.code === 'CONFIG_INVALID' && /ferry\.yaml:7:\d+:.*url/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    delete process.env.FERRY_REPORT_TOKEN;
  }
});
