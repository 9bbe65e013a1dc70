// Opening a VMDK: a monolithic sparse file ('KDMV' header, embedded descriptor, stream footer when
// gdOffset = GD_AT_END), a bare vmfsSparse ('COWD') file, or a text descriptor whose extent files
// are opened only through the context (confined to the descriptor's directory). Parent disks are
// opened through ctx.openBacking (refused unless allowed) and their CID is checked.
import { corrupt, FerryError, unsupportedFeature } from '../../errors.js';
import { readExact, readUpTo, type ByteSource } from '../../io/byte-source.js';
import type { OpenContext } from '../types.js';
import { MAX_DESCRIPTOR_SIZE, hasParent, parseDescriptor, type Descriptor, type ExtentLine } from './descriptor.js';
import { COWD_MAGIC, KDMV_MAGIC, SECTOR, isCompressed, parseCowdHeader, parseKdmvHeader } from './header.js';
import type { ExtentRec, SparseExtentRec, VmdkState } from './model.js';
import { SparseExtent } from './sparse.js';
import { readStreamFooter } from './stream.js';

/** Opens the sparse extent held in `file` (header at 0; footer for GD_AT_END streams). */
async function openSparseFile(file: ByteSource, start: number, line: ExtentLine | undefined): Promise<SparseExtentRec> {
  const head = await readExact(file, 0, SECTOR, 'sparse extent header');
  const magic = head.readUInt32LE(0);
  if (magic === COWD_MAGIC) {
    const h = parseCowdHeader(head, file.name);
    const sparse = await SparseExtent.open(file, h);
    return { kind: 'sparse', start, size: sparse.sizeBytes, sparse, primary: h, usesFooter: false, ...(line ? { line } : {}) };
  }
  if (magic !== KDMV_MAGIC) {
    throw corrupt(`${file.name}: this sparse extent file has no VMDK sparse header (magic 'KDMV' or 'COWD')`, { field: 'magic', offset: 0 });
  }
  const primary = parseKdmvHeader(head, file.name);
  let header = primary;
  const usesFooter = primary.gdOffset === -1;
  if (usesFooter) header = await readStreamFooter(file);
  if (header.capacity === 0 && header.descriptorOffset > 0) {
    throw corrupt(`${file.name}: this extent file holds another descriptor instead of data (capacity 0); nested descriptors are not allowed`, {
      field: 'capacity',
    });
  }
  const sparse = await SparseExtent.open(file, header);
  return { kind: 'sparse', start, size: sparse.sizeBytes, sparse, primary, usesFooter, ...(line ? { line } : {}) };
}

/** Reads the descriptor embedded in a sparse file (bounded), or undefined when there is none. */
async function readEmbeddedDescriptor(file: ByteSource, offsetSectors: number, sizeSectors: number): Promise<Descriptor | undefined> {
  if (offsetSectors === 0 || sizeSectors === 0) return undefined;
  const offset = offsetSectors * SECTOR;
  const size = Math.min(sizeSectors * SECTOR, MAX_DESCRIPTOR_SIZE);
  if (offset >= file.size) {
    throw corrupt(`${file.name}: the embedded descriptor (descriptorOffset) lies at host offset ${offset}, beyond the end of the ${file.size}-byte file`, {
      field: 'descriptorOffset',
      offset,
    });
  }
  const buf = await readUpTo(file, offset, size);
  return parseDescriptor(buf, `${file.name}: embedded descriptor at host offset ${offset}`);
}

/** Opens the extent files listed by a descriptor. */
async function openExtents(desc: Descriptor, ctx: OpenContext, where: string, files: Map<string, ByteSource>): Promise<ExtentRec[]> {
  const out: ExtentRec[] = [];
  let start = 0;
  const open = async (name: string): Promise<ByteSource> => {
    const hit = files.get(name);
    if (hit) return hit;
    const f = await ctx.openReferencedFile(name, 'its extent file');
    files.set(name, f);
    return f;
  };
  for (const line of desc.extents) {
    const size = line.sectors * SECTOR;
    const lineWhere = `${where}: descriptor line ${line.line} (${line.type} "${line.file ?? ''}")`;
    if (line.access === 'NOACCESS') {
      throw unsupportedFeature(`${lineWhere}: the extent is marked NOACCESS`, 'The disk is incomplete by design; open it with VMware tools to consolidate it first.', {
        field: 'extent access',
        line: line.line,
      });
    }
    let rec: ExtentRec;
    switch (line.type) {
      case 'ZERO':
        rec = { kind: 'zero', start, size, line };
        break;
      case 'FLAT':
      case 'VMFS': {
        const file = await open(line.file!);
        rec = { kind: 'flat', start, size, file, fileOffset: line.offset * SECTOR, line };
        break;
      }
      case 'SPARSE':
      case 'VMFSSPARSE': {
        const file = await open(line.file!);
        rec = await openSparseFile(file, start, line);
        break;
      }
      case 'VMFSRDM':
      case 'VMFSRAW':
        throw unsupportedFeature(
          `${lineWhere}: the extent is a raw device mapping (${line.type}); its data lives on a LUN, not in a file`,
          'Copy the mapped LUN to a file on the ESXi host (vmkfstools -i DISK.vmdk -d thin COPY.vmdk), then import the copy.',
          { field: 'extent type', line: line.line },
        );
      case 'SESPARSE':
        throw unsupportedFeature(
          `${lineWhere}: seSparse (ESXi space-efficient sparse) extents are not supported`,
          'Consolidate the snapshot or clone the disk to a thin/thick disk on the ESXi host (vmkfstools -i DISK.vmdk -d thin COPY.vmdk), then import the copy.',
          { field: 'extent type', line: line.line },
        );
    }
    out.push(rec);
    start += rec.size;
    if (!Number.isSafeInteger(start)) throw corrupt(`${where}: the extents add up to an impossible disk size`, { field: 'extents' });
  }
  if (out.length === 0) throw corrupt(`${where}: the VMDK descriptor lists no extents`, { field: 'extents' });
  return out;
}

/** Opens the image in `src`. */
export async function openVmdkState(src: ByteSource, ctx: OpenContext): Promise<VmdkState> {
  const files = new Map<string, ByteSource>();
  const state: Partial<VmdkState> & { warnings: string[] } = { src, name: ctx.path, warnings: [] };
  try {
    const head = await readUpTo(src, 0, SECTOR);
    const magic = head.length >= 4 ? head.readUInt32LE(0) : 0;
    let desc: Descriptor | undefined;
    if (magic === KDMV_MAGIC && head.length === SECTOR) {
      const h = parseKdmvHeader(head, src.name);
      if (h.capacity === 0 && h.descriptorOffset > 0 && h.gdOffset !== -1) {
        // A descriptor stored inside a sparse-format file (qemu accepts this layout too).
        desc = await readEmbeddedDescriptor(src, h.descriptorOffset, Math.max(h.descriptorSize, 1));
        if (!desc) throw corrupt(`${src.name}: no descriptor`, { field: 'descriptorOffset' });
        state.descriptorKind = 'embedded';
        state.extents = await openExtents(desc, ctx, src.name, files);
      } else {
        desc = await readEmbeddedDescriptor(src, h.descriptorOffset, h.descriptorSize).catch((err: unknown) => {
          state.warnings.push(`embedded descriptor unreadable: ${(err as Error).message}`);
          return undefined;
        });
        state.descriptorKind = desc ? 'embedded' : 'none';
        const rec = await openSparseFile(src, 0, desc?.extents.length === 1 ? desc.extents[0] : undefined);
        state.extents = [rec];
        if (desc && desc.extents.length === 1 && desc.extents[0]!.sectors !== rec.sparse.header.capacity) {
          state.warnings.push(
            `the embedded descriptor declares ${desc.extents[0]!.sectors} sectors but the sparse header capacity is ${rec.sparse.header.capacity}; the header is used`,
          );
        }
      }
      const compressed = state.extents.some((e) => e.kind === 'sparse' && isCompressed(e.sparse.header));
      state.createType = compressed && state.extents.length === 1 ? 'streamOptimized' : (desc?.createType ?? 'monolithicSparse');
    } else if (magic === COWD_MAGIC && head.length === SECTOR) {
      state.descriptorKind = 'none';
      state.extents = [await openSparseFile(src, 0, undefined)];
      state.createType = 'vmfsSparse';
    } else {
      if (src.size > MAX_DESCRIPTOR_SIZE) {
        throw corrupt(`${src.name}: neither a VMDK sparse header nor a descriptor: a descriptor file must be smaller than ${MAX_DESCRIPTOR_SIZE} bytes, this file has ${src.size}`, {
          field: 'descriptor',
          size: src.size,
        });
      }
      desc = parseDescriptor(await readExact(src, 0, src.size, 'VMDK descriptor'), src.name);
      if (!desc.createType) {
        throw corrupt(`${src.name}: the VMDK descriptor has no createType line`, { field: 'createType' });
      }
      state.descriptorKind = 'file';
      state.createType = desc.createType;
      state.extents = await openExtents(desc, ctx, src.name, files);
    }
    if (desc) state.descriptor = desc;
    state.files = [...files.values()].filter((f) => f !== src);
    state.virtualSize = state.extents.reduce((a, e) => a + e.size, 0);
    if (desc && hasParent(desc)) {
      const parent = await ctx.openBacking(desc.parentFileNameHint!, 'vmdk', 'its parent disk');
      state.parent = parent;
      const info = await parent.info();
      const parentCid = typeof info.details?.['CID'] === 'string' ? (info.details['CID'] as string) : undefined;
      if (desc.parentCid && parentCid && desc.parentCid !== 'ffffffff' && parentCid !== desc.parentCid) {
        throw new FerryError(
          'IMAGE_CORRUPT',
          `${src.name}: parentCID ${desc.parentCid} does not match the CID ${parentCid} of the parent disk ${parent.name}: the parent was modified after this delta disk was created`,
          {
            remedy:
              'The delta disk no longer matches its parent and reading it would give wrong data. Use the parent that belongs to this snapshot, ' +
              'or consolidate the snapshots in VMware first.',
            details: { field: 'parentCID', parentCID: desc.parentCid, parentActualCID: parentCid },
          },
        );
      }
    }
    return state as VmdkState;
  } catch (err) {
    for (const f of files.values()) if (f !== src) await f.close().catch(() => undefined);
    if (state.parent) await state.parent.close().catch(() => undefined);
    throw err;
  }
}
