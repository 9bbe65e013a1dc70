// CRC-64/XZ (ECMA-182 polynomial, reflected, initial value and final XOR all ones): the checksum
// Tencent COS returns for objects and parts in `x-cos-hash-crc64ecma` (as a decimal string).
// crc64() runs over a buffer (table-driven on two 32-bit halves: no BigInt in the loop);
// crc64Combine() gives the CRC of A‖B from the CRCs of A and B and B's length (zlib's method:
// the effect of B's length of zeros as a GF(2) matrix, squared up), so parts hashed in parallel
// give the object's CRC.
const POLY_LO = 0xd7870f42; // 0xC96C5795D7870F42, reflected polynomial
const POLY_HI = 0xc96c5795;

const TABLE_LO = new Uint32Array(256);
const TABLE_HI = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let lo = i;
  let hi = 0;
  for (let k = 0; k < 8; k++) {
    const carry = lo & 1;
    lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
    hi = hi >>> 1;
    if (carry) {
      lo = (lo ^ POLY_LO) >>> 0;
      hi = (hi ^ POLY_HI) >>> 0;
    }
  }
  TABLE_LO[i] = lo;
  TABLE_HI[i] = hi;
}

/** CRC-64/XZ of `buf`, continuing from `crc` (the CRC of what came before; 0n to start). */
export function crc64(buf: Uint8Array, crc = 0n): bigint {
  const start = ~crc & 0xffffffffffffffffn;
  let lo = Number(start & 0xffffffffn) >>> 0;
  let hi = Number(start >> 32n) >>> 0;
  for (let i = 0; i < buf.length; i++) {
    const idx = (lo ^ buf[i]!) & 0xff;
    lo = (((lo >>> 8) | (hi << 24)) ^ TABLE_LO[idx]!) >>> 0;
    hi = ((hi >>> 8) ^ TABLE_HI[idx]!) >>> 0;
  }
  return ~((BigInt(hi) << 32n) | BigInt(lo)) & 0xffffffffffffffffn;
}

const MASK = 0xffffffffffffffffn;

function gf2Times(mat: bigint[], vec: bigint): bigint {
  let sum = 0n;
  for (let i = 0; vec !== 0n; i++, vec >>= 1n) if (vec & 1n) sum ^= mat[i]!;
  return sum;
}

function gf2Square(mat: bigint[]): bigint[] {
  return mat.map((row) => gf2Times(mat, row));
}

/** CRC of A‖B from crcA = crc64(A), crcB = crc64(B) and the length of B. */
export function crc64Combine(crcA: bigint, crcB: bigint, lengthB: number): bigint {
  if (lengthB <= 0) return crcA;
  // Operator for one zero bit, then squared to two, four… zero bits; applied per set bit of the length in bytes.
  let odd: bigint[] = [0xc96c5795d7870f42n];
  for (let i = 1, row = 1n; i < 64; i++, row <<= 1n) odd.push(row);
  let even = gf2Square(odd); // 2 zero bits
  odd = gf2Square(even); // 4 zero bits
  let a = crcA;
  let len = BigInt(lengthB);
  do {
    even = gf2Square(odd); // first pass: 8 bits = one zero byte
    if (len & 1n) a = gf2Times(even, a);
    len >>= 1n;
    if (len === 0n) break;
    odd = gf2Square(even);
    if (len & 1n) a = gf2Times(odd, a);
    len >>= 1n;
  } while (len !== 0n);
  return (a ^ crcB) & MASK;
}
