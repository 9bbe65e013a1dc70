// A data connection's compressed stream (online/pack.ts): chunks packed one after another by a
// StreamPacker unpack exactly, in order, through the connection's StreamUnpacker (random chunks
// included); later chunks use earlier ones as context (smaller than compressed alone, and
// undecodable by a fresh unpacker); damaged or mislabelled payloads are refused; a long window
// (as the sender sizes it for a large disk) matches data repeated tens of MiB apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { StreamPacker, StreamUnpacker, packChunk, unpackChunk } from '../src/online/pack.js';
import { CHUNK_SIZE, CODEC_RAW, CODEC_ZSTD_STREAM, streamWindowLog } from '../src/online/wire.js';
import type { Range } from '../src/online/ranges.js';

/** A chunk whose used ranges hold text-like data (repeating across chunks) or random bytes. */
function makeChunk(i: number, random: boolean): { chunk: Buffer; ranges: Range[] } {
  const chunk = Buffer.alloc(CHUNK_SIZE);
  const ranges: Range[] = [
    { offset: 0, length: 300 * 1024 },
    { offset: 512 * 1024, length: 256 * 1024 + 4096 * (i % 5) },
  ];
  for (const r of ranges) {
    if (random) randomBytes(r.length).copy(chunk, r.offset);
    else chunk.write(`line ${i % 3}: the quick brown fox jumps over the lazy dog ${r.offset}\n`.repeat(Math.ceil(r.length / 40)).slice(0, r.length), r.offset, 'latin1');
  }
  return { chunk, ranges };
}

test('stream packing: chunks unpack exactly and in order (random ones cost about their size); context makes later chunks smaller', () => {
  const packer = new StreamPacker(3);
  const unpacker = new StreamUnpacker();
  const out = Buffer.alloc(CHUNK_SIZE);
  for (let i = 0; i < 12; i++) {
    const { chunk, ranges } = makeChunk(i, i % 4 === 3);
    const p = packer.pack(chunk, ranges);
    assert.equal(p.codec, CODEC_ZSTD_STREAM, `chunk ${i}'s codec`);
    if (i % 4 === 3) assert.ok(p.payload.length < p.rawBytes * 1.01, `random chunk ${i}: ${p.payload.length} bytes for ${p.rawBytes}`);
    unpackChunk(out, CHUNK_SIZE, ranges, p.codec, p.payload, p.digest, unpacker);
    assert.ok(out.equals(chunk), `chunk ${i} unpacks to its bytes (unused parts zero)`);
  }
  // Context: a chunk repeating the previous chunk's (random, incompressible) bytes costs almost
  // nothing in the stream, and its full size compressed alone.
  const corpus = randomBytes(200 * 1024);
  const ranges: Range[] = [{ offset: 4096, length: corpus.length }];
  const chunk = Buffer.alloc(CHUNK_SIZE);
  corpus.copy(chunk, 4096);
  const firstTime = packer.pack(chunk, ranges);
  const secondTime = packer.pack(chunk, ranges);
  const alone = packChunk(chunk, ranges, 3).payload.length;
  assert.ok(firstTime.payload.length > corpus.length * 0.99 && alone > corpus.length * 0.99, 'random bytes do not shrink on their own');
  assert.ok(secondTime.payload.length < corpus.length / 50, `repeated in the stream: ${secondTime.payload.length} bytes`);
  for (const p of [firstTime, secondTime]) {
    unpackChunk(out, CHUNK_SIZE, ranges, p.codec, p.payload, p.digest, unpacker);
    assert.ok(out.equals(chunk));
  }
});

test('stream packing: a fresh unpacker cannot decode a later chunk; a damaged payload is refused', () => {
  const packer = new StreamPacker(3);
  const first = makeChunk(0, false);
  const second = makeChunk(1, false);
  const p1 = packer.pack(first.chunk, first.ranges);
  const p2 = packer.pack(second.chunk, second.ranges);
  const out = Buffer.alloc(CHUNK_SIZE);
  // Without the first chunk as context the second does not come out right.
  assert.throws(() => unpackChunk(out, CHUNK_SIZE, second.ranges, p2.codec, p2.payload, p2.digest, new StreamUnpacker()), (e: Error & { code?: string }) => e.code === 'PROTOCOL_ERROR' || e.code === 'CHECKSUM_MISMATCH');
  // A flipped byte: refused (a decoding error or a digest mismatch), never written as good.
  const bad = Buffer.from(p1.payload);
  bad[bad.length >> 1] ^= 0xff;
  assert.throws(() => unpackChunk(out, CHUNK_SIZE, first.ranges, p1.codec, bad, p1.digest, new StreamUnpacker()), (e: Error & { code?: string }) => e.code === 'PROTOCOL_ERROR' || e.code === 'CHECKSUM_MISMATCH');
  // Ranges claiming fewer bytes than the payload holds: refused.
  const short = [{ offset: 0, length: 4096 }];
  assert.throws(() => unpackChunk(out, CHUNK_SIZE, short, p1.codec, p1.payload, p1.digest, new StreamUnpacker()), (e: Error & { code?: string }) => e.code === 'PROTOCOL_ERROR');
  // A stream chunk on a connection without a stream: refused.
  assert.throws(() => unpackChunk(out, CHUNK_SIZE, first.ranges, p1.codec, p1.payload, p1.digest), (e: Error & { code?: string }) => e.code === 'PROTOCOL_ERROR');
});

test('stream packing without compression sends raw', () => {
  const { chunk, ranges } = makeChunk(0, false);
  const p = new StreamPacker(undefined).pack(chunk, ranges);
  assert.equal(p.codec, CODEC_RAW);
  assert.equal(p.payload.length, ranges.reduce((n, r) => n + r.length, 0));
});

test('a long window finds data repeated 40 MiB later (an 8 MiB one does not); the receiver decodes it; the window follows the data to send', () => {
  const block = randomBytes(CHUNK_SIZE);
  const ranges: Range[] = [{ offset: 0, length: CHUNK_SIZE }];
  const sent = (windowLog: number) => {
    const packer = new StreamPacker(3, windowLog);
    const unpacker = new StreamUnpacker();
    const out = Buffer.alloc(CHUNK_SIZE);
    let last = 0;
    // The block, 40 chunks of other random data, then the block again.
    for (let i = 0; i < 42; i++) {
      const chunk = i === 0 || i === 41 ? block : randomBytes(CHUNK_SIZE);
      const p = packer.pack(chunk, ranges);
      unpackChunk(out, CHUNK_SIZE, ranges, p.codec, p.payload, p.digest, unpacker);
      assert.ok(out.equals(chunk), `chunk ${i} decodes (window 2^${windowLog})`);
      last = p.payload.length;
    }
    return last;
  };
  const long = sent(26);
  const short = sent(23);
  assert.ok(long < CHUNK_SIZE / 20, `the repeat costs ${long} bytes with a 64 MiB window`);
  assert.ok(short > CHUNK_SIZE * 0.99, `and ${short} bytes with an 8 MiB one`);
  assert.throws(() => new StreamPacker(3, 27), RangeError, 'no window the receiver would refuse');
  assert.equal(streamWindowLog(400e6, 1), 26);
  assert.equal(streamWindowLog(80 * 2 ** 20, 1), 24);
  assert.equal(streamWindowLog(1e6, 1), 20);
  assert.equal(streamWindowLog(400e6, 4), 24);
});
