// Builds the single-file agent, dist/agent/ferry-agent: the CLI bundled into one CommonJS script
// (esbuild), its native addons (zstd, fs-ext, better-sqlite3, Ferry's own) embedded as assets and
// loaded from a private temporary copy at first use, all injected into a copy of this Node binary
// (Node's single executable applications + postject). Runs on Linux x86-64 without Node.js.
//
//   npm run build:agent        (after `npm run build`)
import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'agent');
const entry = join(root, 'dist', 'src', 'agent', 'entry.js');
if (!existsSync(entry)) {
  console.error('build-agent: dist/src/agent/entry.js is missing; run `npm run build` first');
  process.exit(1);
}
mkdirSync(out, { recursive: true });

/** The addons, by the name the bundle asks for them, and where the build finds them. */
const addons = {
  'zstd.node': join(root, 'node_modules/zstd-napi/build/Release/binding.node'),
  'fs_ext.node': join(root, 'node_modules/fs-ext/build/Release/fs_ext.node'),
  'better_sqlite3.node': join(root, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node'),
  'ferry_native.node': join(root, 'native/build/Release/ferry_native.node'),
};
for (const [name, path] of Object.entries(addons)) if (!existsSync(path)) delete addons[name];

// Loads an embedded addon: written to a private directory, opened, and removed again at once.
const banner = `
var __ferry_meta_url = require('url').pathToFileURL(__filename).href;
var __ferryAddons = {};
function __ferryAddon(name) {
  if (__ferryAddons[name]) return __ferryAddons[name].exports;
  const sea = require('node:sea');
  if (!sea.isSea()) throw new Error('the ' + name + ' addon is only embedded in the built agent executable');
  let bytes;
  try { bytes = Buffer.from(sea.getRawAsset(name)); } catch { throw new Error('the agent was built without ' + name + ' (this command needs the full Ferry install)'); }
  const fs = require('fs'), os = require('os'), path = require('path');
  // A private directory wherever one can be made (a minimal system may have no /tmp).
  let dir;
  for (const base of [os.tmpdir(), path.dirname(process.execPath), '/dev/shm', '/var/tmp', process.cwd()]) {
    try { dir = fs.mkdtempSync(path.join(base, 'ferry-agent-')); break; } catch { /* try the next */ }
  }
  if (!dir) { process.stderr.write('ferry-agent: no writable directory for its native modules (tried TMPDIR, the directory of the agent, /dev/shm, /var/tmp, the current directory); set TMPDIR' + String.fromCharCode(10)); process.exit(1); }
  const file = path.join(dir, name);
  try {
    fs.writeFileSync(file, bytes, { mode: 0o500 });
    const m = { exports: {} };
    process.dlopen(m, file);
    __ferryAddons[name] = m;
    return m.exports;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}`;

/** Every path to a native addon resolves to the embedded copy. */
const nativePlugin = {
  name: 'ferry-embedded-addons',
  setup(b) {
    // createRequire(...)(id) in Ferry's sources: the native addons, and the modules loaded on first use.
    b.onResolve({ filter: /^node:module$/ }, () => ({ path: 'node:module', namespace: 'ferry-module' }));
    b.onLoad({ filter: /.*/, namespace: 'ferry-module' }, () => ({
      loader: 'js',
      contents: `const real = require('module');
const embedded = { 'zstd-napi/binding.js': 'zstd.node', 'ferry-native': 'ferry_native.node' };
const bundled = { 'fs-ext': () => require('fs-ext'), 'better-sqlite3': () => require('better-sqlite3'), 'cli-progress': () => require('cli-progress') };
module.exports = { ...real, createRequire(url) { const r = real.createRequire(url); return (id) => embedded[id] ? __ferryAddon(embedded[id]) : bundled[id] ? bundled[id]() : r(id); } };`,
      resolveDir: root,
    }));
    // fs-ext's require('./build/Release/fs_ext.node').
    b.onResolve({ filter: /\.node$/ }, (args) => ({ path: args.path.split('/').pop(), namespace: 'ferry-addon' }));
    b.onLoad({ filter: /.*/, namespace: 'ferry-addon' }, (args) => ({ loader: 'js', contents: `module.exports = __ferryAddon(${JSON.stringify(args.path)});` }));
    // better-sqlite3's require('bindings')('better_sqlite3.node').
    b.onResolve({ filter: /^bindings$/ }, () => ({ path: 'bindings', namespace: 'ferry-bindings' }));
    b.onLoad({ filter: /.*/, namespace: 'ferry-bindings' }, () => ({ loader: 'js', contents: 'module.exports = (name) => __ferryAddon(name);' }));
  },
};

const script = join(out, 'ferry-agent.cjs');
await build({
  entryPoints: [entry],
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  outfile: script,
  define: { 'import.meta.url': '__ferry_meta_url', 'process.env.FERRY_AGENT_VERSION': JSON.stringify(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version) },
  banner: { js: banner },
  plugins: [nativePlugin],
  logLevel: 'error',
});

const blob = join(out, 'ferry-agent.blob');
const seaConfig = join(out, 'sea-config.json');
writeFileSync(seaConfig, JSON.stringify({ main: script, output: blob, disableExperimentalSEAWarning: true, useCodeCache: false, assets: addons }, null, 2));
execFileSync(process.execPath, ['--experimental-sea-config', seaConfig], { stdio: ['ignore', 'pipe', 'pipe'] });
const exe = join(out, 'ferry-agent');
rmSync(exe, { force: true });
copyFileSync(process.execPath, exe);
chmodSync(exe, 0o755);
try {
  // (postject warns about the ELF notes of Node's binary; only its failure matters)
  execFileSync(join(root, 'node_modules/.bin/postject'), [exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { stdio: ['ignore', 'pipe', 'pipe'] });
} catch (err) {
  console.error(`build-agent: postject failed: ${err.stderr?.toString() ?? err.message}`);
  process.exit(1);
}
rmSync(blob);
// A compressed copy for `ferry fleet` to send (a third of the size; the source unpacks it with gzip).
writeFileSync(`${exe}.gz`, gzipSync(readFileSync(exe), { level: 6 }));
console.log(`built ${exe} (${Object.keys(addons).length} addons embedded) and ${exe}.gz`);
