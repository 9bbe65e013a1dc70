// The record of a fleet run, one JSON file per inventory in $FERRY_STATE_DIR/fleet/: each host's
// state (pending, running, succeeded, failed), phase, progress, rate, ETA, error and report. Written
// atomically (temporary file + rename) so `ferry fleet status` can read it while a run goes on, and
// a re-run knows which hosts are done.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { stateDir } from '../transfer/checkpoint.js';

export type HostState = 'pending' | 'running' | 'succeeded' | 'failed';
export type HostPhase = 'waiting' | 'connecting' | 'copying agent' | 'preflight' | 'migrating' | 'verifying' | 'cleaning up' | 'done';

export interface HostRecord {
  name: string;
  state: HostState;
  phase: HostPhase;
  /** Attempts so far (runs that started this host). */
  attempts: number;
  startedAt?: string;
  finishedAt?: string;
  bytesToMove?: number;
  bytesSent?: number;
  percent?: number;
  rate?: number;
  etaSeconds?: number;
  error?: { code: string; message: string; remedy?: string };
  /** The agent's last warning (e.g. it cannot report to the control plane). */
  warning?: string;
  report?: unknown;
}

export interface FleetRecord {
  inventory: string;
  updatedAt: string;
  hosts: Record<string, HostRecord>;
}

export function fleetStateFile(inventoryPath: string): string {
  const tag = createHash('sha256').update(inventoryPath).digest('hex').slice(0, 12);
  return join(stateDir(), 'fleet', `${basename(inventoryPath).replace(/[^A-Za-z0-9._-]/g, '_')}-${tag}.json`);
}

export function readFleetRecord(inventoryPath: string): FleetRecord | undefined {
  try {
    return JSON.parse(readFileSync(fleetStateFile(inventoryPath), 'utf8')) as FleetRecord;
  } catch {
    return undefined;
  }
}

export function writeFleetRecord(rec: FleetRecord): void {
  const file = fleetStateFile(rec.inventory);
  mkdirSync(join(file, '..'), { recursive: true, mode: 0o700 });
  rec.updatedAt = new Date().toISOString();
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(rec, null, 2), { mode: 0o600 });
  renameSync(tmp, file);
}
