// Where Ferry's own files are (package.json, bin/ferry.js, the built agent): under the package
// root, found by walking up from this module to the package.json named "ferry". The same code then
// works from the compiled modules (dist/src/…) and from the bundled CLI (dist/ferry/); inside the
// single-file agent there is no root (null).
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | null | undefined;

function isFerryPackage(file: string): boolean {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown }).name === 'ferry';
  } catch {
    return false;
  }
}

/** The package root (the checkout or installed package), or null when there is none. */
export function packageRoot(): string | null {
  if (root !== undefined) return root;
  root = null;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 8; depth++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && isFerryPackage(pkg)) {
      root = dir;
      break;
    }
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return root;
}

/** A path under the package root; throws when there is no root (only the agent has none). */
export function packagePath(...parts: string[]): string {
  const r = packageRoot();
  if (r === null) throw new Error(`Ferry's package directory was not found above ${fileURLToPath(import.meta.url)}`);
  return join(r, ...parts);
}
