// Ferry's version, read once from package.json (for --version, manifests and upload checkpoints).
import { readFileSync } from 'node:fs';
import { packagePath } from './paths.js';

let cached: string | undefined;

export function toolVersion(): string {
  if (cached) return cached;
  // The single-file agent has no package.json beside it: the build writes the version in.
  if (process.env.FERRY_AGENT_VERSION) return (cached = process.env.FERRY_AGENT_VERSION);
  try {
    const pkg = JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version?: string };
    cached = pkg.version ?? '0.0.0';
  } catch {
    cached = '0.0.0';
  }
  return cached;
}
