// One writer per target: a job holds an exclusive flock(2) on a lock file named after the target's
// real path ($FERRY_STATE_DIR/locks/SHA256), for as long as it may write the target. The kernel
// drops the lock when the process ends however it ends (kill -9 included), so a lock never goes
// stale; a second job for the same target is refused at once with TARGET_LOCKED, naming the job
// that holds it.
import { createHash } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, writeSync, ftruncateSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { dirname, join, resolve, basename } from 'node:path';
import { fsExt } from '../lazy-modules.js';
import { FerryError } from '../errors.js';
import { stateDir } from '../transfer/checkpoint.js';

export interface TargetLock {
  readonly path: string;
  /** Names the holder (shown to a job refused the lock). */
  holder(name: string): void;
  release(): void;
}

/** The canonical name of a target (real path of the file or of its directory). */
export async function canonicalTarget(target: string): Promise<string> {
  try {
    return await realpath(target);
  } catch {
    try {
      return join(await realpath(dirname(resolve(target))), basename(target));
    } catch {
      return resolve(target);
    }
  }
}

function lockFile(target: string): string {
  return join(stateDir(), 'locks', createHash('sha256').update(target).digest('hex').slice(0, 32));
}

/** Opens the lock file and takes its lock (flock, dropped when the process ends however it ends), or returns undefined when another process holds it. */
export function tryLock(file: string): number | undefined {
  mkdirSync(dirname(file), { recursive: true });
  const fd = openSync(file, 'a+');
  try {
    fsExt().flockSync(fd, 'exnb');
    return fd;
  } catch (err) {
    closeSync(fd);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return undefined;
    throw err;
  }
}

/** Takes the target's lock for `holder` (a job id), or throws TARGET_LOCKED. */
export function lockTarget(target: string, holder: string): TargetLock {
  const file = lockFile(target);
  const fd = tryLock(file);
  if (fd === undefined) {
    let owner = '';
    try {
      owner = readFileSync(file, 'utf8').trim();
    } catch {
      // unreadable: name no owner
    }
    throw new FerryError('TARGET_LOCKED', `${target}: another Ferry job is writing this target${owner ? ` (${owner})` : ''}`, {
      remedy: 'Wait for that job to finish (`ferry jobs list`), cancel it (`ferry jobs cancel ID`), or choose another target.',
      ...(owner ? { details: { holder: owner } } : {}),
    });
  }
  const name = (who: string) => {
    ftruncateSync(fd, 0);
    writeSync(fd, `${who}, process ${process.pid}\n`, 0);
  };
  name(holder);
  let released = false;
  return {
    path: file,
    holder: (who) => name(`job ${who}`),
    release() {
      if (released) return;
      released = true;
      try {
        fsExt().flockSync(fd, 'un');
      } finally {
        closeSync(fd);
      }
    },
  };
}

/** Whether some process holds the target's lock now. */
export function isTargetLocked(target: string): boolean {
  const fd = tryLock(lockFile(target));
  if (fd === undefined) return true;
  fsExt().flockSync(fd, 'un');
  closeSync(fd);
  return false;
}
