// A disk on a receiver (`ferry receive`) as an import target: `ferry import SOURCE --target
// ferry://HOST:PORT/NAME --fingerprint FP --token T`. A Sink that gathers the raw writer's output
// (written in increasing order, zero ranges included since it behaves as a block device) into
// 1 MiB chunks and sends each, packed and digested, over the receiver's TLS protocol; commit()
// has the receiver flush its disk and re-read every chunk, comparing digests.
import { FerryError } from '../errors.js';
import type { Sink } from '../io/sink.js';
import { connectReceiver, type ReceiverConn } from './sender.js';
import { packChunk } from './pack.js';
import { mergeRanges, type Range } from './ranges.js';
import { CHUNK_SIZE, decodeAck, encodeDataHeader, json, protocolError, sendFrame } from './wire.js';

export interface RemoteTarget {
  address: string;
  name: string;
}

/** Parses ferry://HOST:PORT/NAME, or undefined when `target` is not one. */
export function parseRemoteTarget(target: string): RemoteTarget | undefined {
  const m = /^ferry:\/\/((?:\[[^\]]+\]|[^/:]+):\d{1,5})\/([A-Za-z0-9._-]{1,64})$/.exec(target);
  if (!m) {
    if (target.startsWith('ferry://')) throw new FerryError('USAGE', `'${target}' is not ferry://HOST:PORT/NAME`, { remedy: 'For example --target ferry://10.0.0.2:7878/root (NAME is a --disk name of the receiver).' });
    return undefined;
  }
  return { address: m[1]!, name: m[2]! };
}

export class RemoteSink implements Sink {
  readonly isBlockDevice = true;
  private chunkIndex = -1;
  private readonly chunk = Buffer.alloc(CHUNK_SIZE);
  private ranges: Range[] = [];
  private readonly sent: [number, string][] = [];
  private closed = false;

  private constructor(
    readonly path: string,
    readonly deviceSize: number,
    private readonly conn: ReceiverConn,
    private readonly size: number,
  ) {}

  /** Connects, authenticates and opens the disk (TARGET_TOO_SMALL, TOKEN_REJECTED… before any byte). */
  static async open(target: RemoteTarget, size: number, auth: { token: string; fingerprint: string }): Promise<RemoteSink> {
    const conn = await connectReceiver({ target: target.address, token: auth.token, fingerprint: auth.fingerprint }, 'data', [{ name: target.name, size }]);
    const disk = conn.welcome.disks[0];
    if (!disk) throw protocolError('the welcome names no disk');
    return new RemoteSink(`ferry://${target.address}/${target.name}`, disk.size, conn, size);
  }

  private async flushChunk(): Promise<void> {
    if (this.chunkIndex < 0 || this.ranges.length === 0) return;
    const offset = this.chunkIndex * CHUNK_SIZE;
    const length = Math.min(CHUNK_SIZE, this.size - offset);
    const ranges = mergeRanges(this.ranges);
    const view = this.chunk.subarray(0, length);
    const packed = packChunk(view, ranges, 1);
    const header = encodeDataHeader({ disk: 0, offset, length, codec: packed.codec, digest: packed.digest, ranges });
    await sendFrame(this.conn.socket, 'D', Buffer.concat([header, packed.payload]));
    const f = await this.conn.expect('A');
    const ack = decodeAck(f.payload);
    if (ack.offset !== offset) throw protocolError('an acknowledgement for another chunk');
    this.sent.push([offset, packed.digest.toString('hex')]);
    this.chunk.fill(0);
    this.ranges = [];
  }

  async write(buf: Buffer, position: number): Promise<void> {
    if (position + buf.length > this.size) throw protocolError(`a write past the end of the disk (${position}+${buf.length})`);
    let at = 0;
    while (at < buf.length) {
      const pos = position + at;
      const index = Math.floor(pos / CHUNK_SIZE);
      if (index !== this.chunkIndex) {
        if (index < this.chunkIndex) throw new FerryError('INTERNAL', 'a remote target is written in increasing order only', { remedy: 'This is a bug in Ferry; please report it.' });
        await this.flushChunk();
        this.chunkIndex = index;
      }
      const inChunk = pos - index * CHUNK_SIZE;
      const n = Math.min(buf.length - at, CHUNK_SIZE - inChunk);
      buf.copy(this.chunk, inChunk, at, at + n);
      this.ranges.push({ offset: inChunk, length: n });
      at += n;
    }
  }

  async writev(bufs: Buffer[], position: number): Promise<void> {
    for (const b of bufs) {
      await this.write(b, position);
      position += b.length;
    }
  }

  async truncate(): Promise<void> {}
  async reserve(): Promise<void> {}

  async flush(): Promise<void> {
    await this.flushChunk();
    await sendFrame(this.conn.socket, 'S', {});
    await this.conn.expect('s');
  }

  async commit(): Promise<void> {
    await this.flush();
    await sendFrame(this.conn.socket, 'V', { disk: 0, chunks: this.sent });
    const r = json<{ checked: number; mismatchCount: number; mismatches: { offset: number; reason: string }[] }>(await this.conn.expect('R'));
    this.close();
    if (r.mismatchCount > 0) {
      throw new FerryError('CHECKSUM_MISMATCH', `${this.path}: ${r.mismatchCount} chunk(s) read back from the receiver's disk differ from what was sent (first at byte ${r.mismatches[0]?.offset}: ${r.mismatches[0]?.reason})`, {
        remedy: 'Import again; if it repeats, check the target machine\'s disk.',
      });
    }
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.conn.socket.end();
  }

  async abort(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.conn.socket.destroy();
  }
}
