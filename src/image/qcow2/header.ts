// qcow2 header: parsing and validation of the fixed header (v2: 72 bytes, v3: header_length ≥ 104),
// the feature bit policy (unknown incompatible bits refused, external data files refused), and the
// header extensions (backing format, feature names, bitmaps, external data file name).
import { FerryError, corrupt, truncated, unsupportedFeature } from '../../errors.js';
import { readExact, type ByteSource } from '../../io/byte-source.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

/** qemu implementation caps. */
export const MAX_CLUSTER_BITS = 21; // 2 MiB
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;

/** Incompatible feature bits. */
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

const EXT_END = 0x00000000;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_NAMES = 0x6803f857;
const EXT_BITMAPS = 0x23852875;
const EXT_CRYPTO = 0x0537be77;
const EXT_DATA_FILE = 0x44415441;

const INCOMPAT_NAMES = ['dirty', 'corrupt', 'external data file', 'compression type', 'extended L2 entries'];

export interface BitmapsExtension {
  count: number;
  directorySize: number;
  directoryOffset: number;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  clusterSize: number;
  virtualSize: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  refcountBits: number;
  headerLength: number;
  /** 0 = zlib (raw deflate), 1 = zstd. */
  compressionType: number;
  extendedL2: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  l2EntrySize: number;
  /** Entries per L2 table. */
  l2Entries: number;
  /** Subcluster size (cluster size / 32 with extended L2, else the cluster size). */
  subclusterSize: number;
  backingFile?: string;
  backingFormat?: string;
  /** "type:bit" → feature name, from the feature name table. */
  featureNames: Map<string, string>;
  bitmaps?: BitmapsExtension;
  /** Header extension types present (for info). */
  extensionTypes: number[];
  /** Non-fatal oddities found while parsing (shown by info, reported by check). */
  warnings: string[];
}

/** Reads a big-endian u64 as a number; values beyond 2^53 become Infinity (caller rejects them). */
export function u64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64BE(at);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : Infinity;
}

function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}

function featureName(names: Map<string, string>, type: number, bit: number): string | undefined {
  return names.get(`${type}:${bit}`);
}

/** Parses and validates the header of `src` (the caller checked the magic). */
export async function readHeader(src: ByteSource): Promise<Qcow2Header> {
  const name = src.name;
  if (src.size < 72) throw truncated(`${name}: qcow2 header`, 72, src.size);
  const fixed = await readExact(src, 0, 72, 'qcow2 header');
  if (fixed.readUInt32BE(0) !== QCOW2_MAGIC) throw corrupt(`${name}: not a qcow2 image (bad magic)`, { field: 'magic' });
  const version = fixed.readUInt32BE(4);
  if (version !== 2 && version !== 3) {
    throw unsupportedFeature(
      `${name}: qcow2 version ${version} is not supported (only versions 2 and 3 exist)`,
      'Convert the image with a qemu-img that understands it: `qemu-img convert -O qcow2 IN OUT.qcow2`.',
      { field: 'version', version },
    );
  }
  const bad = (field: string, msg: string, extra?: Record<string, unknown>) =>
    corrupt(`${name}: qcow2 header field ${field} ${msg}`, { field, ...extra });

  const clusterBits = fixed.readUInt32BE(20);
  if (clusterBits < 9) throw bad('cluster_bits', `is ${clusterBits}: clusters must be at least 512 bytes`, { value: clusterBits });
  if (clusterBits > MAX_CLUSTER_BITS) {
    if (clusterBits < 64) {
      throw unsupportedFeature(
        `${name}: cluster size 2^${clusterBits} bytes is larger than 2 MiB, which qemu and Ferry do not support`,
        'Convert it with a tool that reads it, choosing a cluster size ≤ 2 MiB.',
        { field: 'cluster_bits', value: clusterBits },
      );
    }
    throw bad('cluster_bits', `is ${clusterBits}, which is impossible`, { value: clusterBits });
  }
  const clusterSize = 2 ** clusterBits;

  const backingFileOffset = u64(fixed, 8);
  const backingFileSize = fixed.readUInt32BE(16);
  const virtualSize = u64(fixed, 24);
  const cryptMethod = fixed.readUInt32BE(32);
  const l1Size = fixed.readUInt32BE(36);
  const l1TableOffset = u64(fixed, 40);
  const refcountTableOffset = u64(fixed, 48);
  const refcountTableClusters = fixed.readUInt32BE(56);
  const nbSnapshots = fixed.readUInt32BE(60);
  const snapshotsOffset = u64(fixed, 64);

  let incompatible = 0n;
  let compatible = 0n;
  let autoclear = 0n;
  let refcountOrder = 4;
  let headerLength = 72;
  let compressionType = 0;
  if (version === 3) {
    if (src.size < 104) throw truncated(`${name}: qcow2 v3 header`, 104, src.size);
    const v3 = await readExact(src, 72, 32, 'qcow2 v3 header fields');
    incompatible = v3.readBigUInt64BE(0);
    compatible = v3.readBigUInt64BE(8);
    autoclear = v3.readBigUInt64BE(16);
    refcountOrder = v3.readUInt32BE(24);
    headerLength = v3.readUInt32BE(28);
    if (headerLength < 104) throw bad('header_length', `is ${headerLength}, but a v3 header has at least 104 bytes`, { value: headerLength });
    if (headerLength > clusterSize) throw bad('header_length', `is ${headerLength}, larger than the ${clusterSize}-byte cluster`, { value: headerLength });
    if (headerLength > src.size) throw truncated(`${name}: qcow2 header (header_length ${headerLength})`, headerLength, src.size);
    if (headerLength > 104) compressionType = (await readExact(src, 104, 1, 'compression_type'))[0]!;
  }
  const warnings: string[] = [];

  // Header extensions come first: the feature name table names unknown bits in our errors.
  const extEnd = backingFileOffset > 0 && backingFileOffset < clusterSize ? backingFileOffset : clusterSize;
  const ext = await readExtensions(src, headerLength, Math.min(extEnd, src.size));
  const featureNames = ext.featureNames;

  const unknown = incompatible & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const bits: string[] = [];
    for (let b = 0; b < 64; b++) {
      if (unknown & (1n << BigInt(b))) {
        const n = featureName(featureNames, 0, b);
        bits.push(n ? `bit ${b} ("${n}")` : `bit ${b}`);
      }
    }
    throw unsupportedFeature(
      `${name}: the image uses incompatible feature ${bits.join(', ')} (incompatible_features = ${hex(incompatible)}), which Ferry does not understand`,
      'A newer qemu wrote this image. Convert it with that qemu-img to a plain image: `qemu-img convert -O qcow2 -o compat=1.1 IN OUT.qcow2`.',
      { field: 'incompatible_features', value: hex(incompatible), unknownBits: bits },
    );
  }
  if (incompatible & INCOMPAT_DATA_FILE || ext.dataFile !== undefined) {
    const ref = ext.dataFile;
    const msg = ref !== undefined
      ? `${name}: the image keeps its data in the external data file '${ref}'; Ferry never reads files an image refers to this way`
      : `${name}: the image keeps its data in an external data file (incompatible feature bit 2) whose name is not recorded in the image`;
    throw new FerryError(ref !== undefined ? 'IMAGE_PATH_REFUSED' : 'IMAGE_UNSUPPORTED_FEATURE', msg, {
      remedy:
        'Produce a self-contained image with qemu: `qemu-img convert -O qcow2 IN OUT.qcow2` (run it where the data file lives), then use OUT.qcow2.',
      details: { field: 'incompatible_features', bit: 2, ...(ref !== undefined ? { reference: ref } : {}) },
    });
  }
  if (cryptMethod !== 0) {
    const kind = cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : `method ${cryptMethod}`;
    throw unsupportedFeature(
      `${name}: the image is encrypted (${kind}); Ferry does not decrypt qcow2 images`,
      'Decrypt it with qemu-img, e.g. `qemu-img convert --object secret,id=sec0,file=KEYFILE --image-opts driver=qcow2,file.filename=IN,encrypt.key-secret=sec0 -O qcow2 OUT.qcow2`.',
      { field: 'crypt_method', value: cryptMethod },
    );
  }
  if (refcountOrder > 6) throw bad('refcount_order', `is ${refcountOrder}; the maximum is 6 (64-bit refcounts)`, { value: refcountOrder });
  if (compressionType > 1) {
    throw unsupportedFeature(
      `${name}: compression_type ${compressionType} is unknown (0 = zlib, 1 = zstd)`,
      'Convert the image with the qemu that wrote it: `qemu-img convert -O qcow2 IN OUT.qcow2`.',
      { field: 'compression_type', value: compressionType },
    );
  }
  if (compressionType !== 0 && !(incompatible & INCOMPAT_COMPRESSION)) {
    throw bad('compression_type', `is ${compressionType} but incompatible feature bit 3 (compression type) is not set`, { value: compressionType });
  }
  if (compressionType === 0 && incompatible & INCOMPAT_COMPRESSION) {
    throw bad('incompatible_features', 'has bit 3 (compression type) set, but compression_type is zlib', { value: hex(incompatible) });
  }
  const extendedL2 = (incompatible & INCOMPAT_EXTL2) !== 0n;
  if (extendedL2 && clusterBits < 14) {
    throw bad('cluster_bits', `is ${clusterBits}: extended L2 entries need clusters of at least 16 KiB`, { value: clusterBits });
  }

  if (!Number.isSafeInteger(virtualSize)) throw bad('size', 'is absurd (beyond 2^53 bytes)');
  const l2EntrySize = extendedL2 ? 16 : 8;
  const l2Entries = clusterSize / l2EntrySize;
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw bad('l1_size', `is ${l1Size} entries (${l1Size * 8} bytes), beyond the 32 MiB limit for L1 tables`, { value: l1Size });
  }
  const needL1 = Math.ceil(virtualSize / (clusterSize * l2Entries));
  if (needL1 > l1Size) {
    throw bad('l1_size', `is ${l1Size}, but the virtual size ${virtualSize} needs ${needL1} L1 entries`, { value: l1Size, needed: needL1 });
  }
  const alignedTable = (field: string, offset: number, bytes: number) => {
    if (bytes === 0) return;
    if (!Number.isSafeInteger(offset) || offset % clusterSize !== 0) {
      throw bad(field, `= ${Number.isFinite(offset) ? hex(offset) : 'beyond 2^53'} is not aligned to the ${clusterSize}-byte cluster size`, {
        value: offset,
      });
    }
    if (offset === 0) throw bad(field, 'is 0: the table would overlap the header', { value: offset });
  };
  alignedTable('l1_table_offset', l1TableOffset, l1Size * 8);
  if (refcountTableClusters === 0) throw bad('refcount_table_clusters', 'is 0: every qcow2 image has a refcount table');
  if (refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES) {
    throw bad('refcount_table_clusters', `is ${refcountTableClusters} (${refcountTableClusters * clusterSize} bytes), beyond the 8 MiB limit`, {
      value: refcountTableClusters,
    });
  }
  alignedTable('refcount_table_offset', refcountTableOffset, refcountTableClusters * clusterSize);
  if (nbSnapshots > MAX_SNAPSHOTS) throw bad('nb_snapshots', `is ${nbSnapshots}, beyond the limit of ${MAX_SNAPSHOTS}`, { value: nbSnapshots });
  alignedTable('snapshots_offset', snapshotsOffset, nbSnapshots);

  let backingFile: string | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileSize > 1023) throw bad('backing_file_size', `is ${backingFileSize}; names are at most 1023 bytes`, { value: backingFileSize });
    if (backingFileOffset + backingFileSize > clusterSize) {
      throw bad('backing_file_offset', `(${backingFileOffset}, ${backingFileSize} bytes) does not lie in the first cluster`, {
        value: backingFileOffset,
      });
    }
    if (backingFileSize > 0) {
      backingFile = (await readExact(src, backingFileOffset, backingFileSize, 'backing file name')).toString('utf8');
    }
  }
  if (ext.backingFormat !== undefined && backingFile === undefined) warnings.push('a backing format extension is present without a backing file');
  if (compatible & ~COMPAT_LAZY_REFCOUNTS) warnings.push(`unknown compatible feature bits ${hex(compatible & ~COMPAT_LAZY_REFCOUNTS)} (ignored)`);
  if (autoclear & ~(AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW)) {
    warnings.push(`unknown autoclear feature bits ${hex(autoclear & ~(AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW))} (ignored)`);
  }
  let bitmaps = ext.bitmaps;
  if (bitmaps && !(autoclear & AUTOCLEAR_BITMAPS)) {
    warnings.push('the bitmaps extension is present but its autoclear bit is clear: the bitmaps are stale');
    bitmaps = undefined;
  }
  if (incompatible & INCOMPAT_CORRUPT) warnings.push('the image is marked corrupt (incompatible feature bit 1): qemu refuses to write to it; run a check');
  if (incompatible & INCOMPAT_DIRTY) {
    warnings.push('the image is dirty (not closed cleanly with lazy refcounts): its refcounts may be inconsistent until repaired');
  }

  const header: Qcow2Header = {
    version,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    clusterSize,
    virtualSize,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatible,
    compatible,
    autoclear,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    headerLength,
    compressionType,
    extendedL2,
    l2EntrySize,
    l2Entries,
    subclusterSize: extendedL2 ? clusterSize / 32 : clusterSize,
    featureNames,
    extensionTypes: ext.types,
    warnings,
  };
  if (backingFile !== undefined) header.backingFile = backingFile;
  if (ext.backingFormat !== undefined) header.backingFormat = ext.backingFormat;
  if (bitmaps) header.bitmaps = bitmaps;
  return header;
}

interface Extensions {
  backingFormat?: string;
  dataFile?: string;
  featureNames: Map<string, string>;
  bitmaps?: BitmapsExtension;
  types: number[];
}

async function readExtensions(src: ByteSource, start: number, end: number): Promise<Extensions> {
  const out: Extensions = { featureNames: new Map(), types: [] };
  if (end <= start) return out;
  const area = await readExact(src, start, end - start, 'qcow2 header extensions');
  let pos = 0;
  while (pos + 8 <= area.length) {
    const type = area.readUInt32BE(pos);
    const len = area.readUInt32BE(pos + 4);
    if (type === EXT_END) break;
    const dataAt = pos + 8;
    if (len > area.length - dataAt) {
      throw corrupt(`${src.name}: header extension ${hex(type)} at offset ${start + pos} (${len} bytes) runs past the end of the header area`, {
        field: 'header extension',
        offset: start + pos,
      });
    }
    const data = area.subarray(dataAt, dataAt + len);
    out.types.push(type);
    switch (type) {
      case EXT_BACKING_FORMAT:
        out.backingFormat = data.toString('utf8');
        break;
      case EXT_DATA_FILE:
        out.dataFile = data.toString('utf8');
        break;
      case EXT_FEATURE_NAMES:
        for (let i = 0; i + 48 <= data.length; i += 48) {
          const raw = data.subarray(i + 2, i + 48);
          const nul = raw.indexOf(0);
          out.featureNames.set(`${data[i]}:${data[i + 1]}`, raw.subarray(0, nul < 0 ? raw.length : nul).toString('utf8'));
        }
        break;
      case EXT_BITMAPS:
        if (len >= 24) {
          out.bitmaps = { count: data.readUInt32BE(0), directorySize: u64(data, 8), directoryOffset: u64(data, 16) };
        }
        break;
      case EXT_CRYPTO:
      default:
        break;
    }
    pos = dataAt + Math.ceil(len / 8) * 8;
  }
  return out;
}

/** Names of the known incompatible bits set, for info. */
export function incompatibleNames(incompatible: bigint): string[] {
  const out: string[] = [];
  INCOMPAT_NAMES.forEach((n, b) => {
    if (incompatible & (1n << BigInt(b))) out.push(n);
  });
  return out;
}
