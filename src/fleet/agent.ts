// Where the single-file agent is: FERRY_AGENT, else dist/agent/ferry-agent in this checkout (built
// by `npm run build:agent`).
import { existsSync, statSync } from 'node:fs';
import { FerryError } from '../errors.js';
import { packagePath } from '../paths.js';

export function agentPath(): string {
  return process.env.FERRY_AGENT ?? packagePath('dist', 'agent', 'ferry-agent');
}

/**
 * The agent's path and size; AGENT_NOT_BUILT when it is missing. `gzipped`: its gzip copy (built
 * beside it), when that is at least as new as the agent.
 */
export function requireAgent(path = agentPath()): { path: string; size: number; gzipped?: string } {
  if (!existsSync(path)) {
    throw new FerryError('AGENT_NOT_BUILT', `the agent executable ${path} does not exist`, { remedy: 'Build it in the checkout: npm run build:agent (or set FERRY_AGENT to its path).' });
  }
  const st = statSync(path);
  const gz = `${path}.gz`;
  const fresh = existsSync(gz) && statSync(gz).mtimeMs >= st.mtimeMs;
  return { path, size: st.size, ...(fresh ? { gzipped: gz } : {}) };
}
