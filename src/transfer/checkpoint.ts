// The local checkpoint of an upload, what makes it resumable after a network loss, kill -9 or
// reboot: which upload (the id the server gave, and a token Ferry put in the object's metadata),
// from which source (path, size, modification time, inode) with which settings (output format,
// compression, part size, Ferry's version), and the MD5 of every part the server acknowledged.
//
// Stored under $FERRY_STATE_DIR (default $XDG_STATE_HOME/ferry or ~/.local/state/ferry) in
// uploads/: NAME.json (written once, atomically) and NAME.parts (one line appended per part, so a
// kill loses at most the parts in flight). NAME is the SHA-256 of the destination URL.
import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface SourceIdentity {
  path: string;
  size: number;
  mtimeMs: number;
  ino: number;
}

export interface UploadCheckpoint {
  version: 1;
  dest: string;
  uploadId: string;
  /** Random token stored in the object's metadata: proves a completed object is this upload's. */
  token: string;
  partSize: number;
  headBytes: number;
  source: SourceIdentity;
  /** Everything that decides the bytes of the object (format, compression, tool version…). */
  settings: Record<string, unknown>;
  created: string;
}

export function stateDir(): string {
  return process.env.FERRY_STATE_DIR ?? join(process.env.XDG_STATE_HOME ?? join(homedir(), '.local', 'state'), 'ferry');
}

function paths(dest: string): { json: string; parts: string } {
  const name = createHash('sha256').update(dest).digest('hex').slice(0, 32);
  const dir = join(stateDir(), 'uploads');
  return { json: join(dir, `${name}.json`), parts: join(dir, `${name}.parts`) };
}

export function loadCheckpoint(dest: string): { checkpoint: UploadCheckpoint; parts: Map<number, { md5: string; size: number }> } | undefined {
  const p = paths(dest);
  let checkpoint: UploadCheckpoint;
  try {
    checkpoint = JSON.parse(readFileSync(p.json, 'utf8')) as UploadCheckpoint;
  } catch {
    return undefined;
  }
  if (checkpoint.version !== 1 || checkpoint.dest !== dest) return undefined;
  const parts = new Map<number, { md5: string; size: number }>();
  let text = '';
  try {
    text = readFileSync(p.parts, 'utf8');
  } catch {
    // no part recorded yet
  }
  for (const line of text.split('\n')) {
    const m = /^(\d+) ([0-9a-f]{32}) (\d+)$/.exec(line); // a torn last line (kill mid-append) is skipped
    if (m) parts.set(Number(m[1]), { md5: m[2]!, size: Number(m[3]) });
  }
  return { checkpoint, parts };
}

export function saveCheckpoint(c: UploadCheckpoint): void {
  const p = paths(c.dest);
  mkdirSync(join(stateDir(), 'uploads'), { recursive: true });
  const tmp = `${p.json}.tmp`;
  writeFileSync(tmp, JSON.stringify(c, null, 1));
  rmSync(p.parts, { force: true });
  renameSync(tmp, p.json);
}

export function recordPart(dest: string, partNumber: number, md5: string, size: number): void {
  appendFileSync(paths(dest).parts, `${partNumber} ${md5} ${size}\n`);
}

export function removeCheckpoint(dest: string): void {
  const p = paths(dest);
  rmSync(p.json, { force: true });
  rmSync(p.parts, { force: true });
}

/** True when two settings records are the same (JSON-equal). */
export function sameSettings(a: Record<string, unknown>, b: Record<string, unknown>): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
