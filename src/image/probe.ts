// Recognising what a file is, by content only: formats Ferry cannot import (VHDX, VDI, QED, qcow v1,
// Parallels, LUKS, ISO, DMG, compressed archives) are named with a remedy; supported formats are
// scored by their drivers (see open.ts).
import type { ProbeInput } from './types.js';

export interface ForeignFormat {
  /** Stable identifier, e.g. "vhdx". */
  id: string;
  /** Human name, e.g. "VHDX (Hyper-V)". */
  name: string;
  remedy: string;
}

const at = (buf: Buffer, offset: number, text: string): boolean =>
  buf.length >= offset + text.length && buf.toString('latin1', offset, offset + text.length) === text;

const convertHint = (qemuFormat: string) =>
  `convert it to a supported format first, e.g. \`qemu-img convert -f ${qemuFormat} -O qcow2 INPUT OUTPUT.qcow2\` ` +
  '(or -O raw / vpc / vmdk), then use the converted file';

/** Returns the foreign (unsupported) format of the file, or undefined. */
export function detectForeign({ head, tail, size }: ProbeInput): ForeignFormat | undefined {
  if (at(head, 0, 'vhdxfile')) {
    return {
      id: 'vhdx',
      name: 'VHDX (Hyper-V), not VHD',
      remedy: `this is VHDX, not VHD (a renamed .vhdx is a common mistake): ${convertHint('vhdx')}; on Windows, Hyper-V's Convert-VHD -VHDType Fixed also works`,
    };
  }
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) {
    return { id: 'vdi', name: 'VDI (VirtualBox)', remedy: `${convertHint('vdi')}; or \`VBoxManage clonemedium disk INPUT OUTPUT.vmdk --format VMDK\`` };
  }
  if (at(head, 0, 'QED\0')) return { id: 'qed', name: 'QED', remedy: convertHint('qed') };
  if (at(head, 0, 'QFI\xfb') && head.length >= 8 && head.readUInt32BE(4) === 1) {
    return { id: 'qcow', name: 'qcow version 1 (obsolete)', remedy: convertHint('qcow') };
  }
  if (at(head, 0, 'WithoutFreeSpace') || at(head, 0, 'WithouFreSpacExt')) {
    return { id: 'parallels', name: 'Parallels disk image', remedy: convertHint('parallels') };
  }
  if (at(head, 0, 'LUKS\xba\xbe')) {
    return {
      id: 'luks',
      name: 'LUKS-encrypted volume',
      remedy:
        'Ferry does not decrypt LUKS. Open it (`cryptsetup open`) and migrate the decrypted device, or, to move the ' +
        'encrypted bytes as they are, pass `--format raw`',
    };
  }
  if (at(head, 0x8001, 'CD001') || at(head, 0x8801, 'CD001') || at(head, 0x9001, 'CD001')) {
    return {
      id: 'iso',
      name: 'ISO 9660 CD/DVD image',
      remedy:
        'an installation/CD image is not a disk to migrate. Install the system from it onto a disk first, or, if it ' +
        'really is a hybrid disk image you want copied byte for byte, pass `--format raw`',
    };
  }
  if (tail.length >= 512 && at(tail, tail.length - 512, 'koly')) {
    return { id: 'dmg', name: 'Apple DMG', remedy: convertHint('dmg') + ' (qemu-img reads DMG only with its dmg module); or `hdiutil convert -format UDTO`' };
  }
  if (head.length >= 3 && head[0] === 0x1f && head[1] === 0x8b) {
    return { id: 'gzip', name: 'gzip-compressed file', remedy: 'decompress it first (`gunzip -k FILE`), then use the image inside' };
  }
  if (at(head, 0, '\xfd7zXZ\0')) return { id: 'xz', name: 'xz-compressed file', remedy: 'decompress it first (`unxz -k FILE`), then use the image inside' };
  if (at(head, 0, 'BZh')) return { id: 'bzip2', name: 'bzip2-compressed file', remedy: 'decompress it first (`bunzip2 -k FILE`), then use the image inside' };
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) {
    return { id: 'zstd', name: 'zstd-compressed file', remedy: 'decompress it first (`zstd -d FILE`), then use the image inside' };
  }
  if (at(head, 0, 'PK\x03\x04')) return { id: 'zip', name: 'zip archive', remedy: 'extract it first (`unzip FILE`), then use the image inside' };
  if (at(head, 0, "7z\xbc\xaf'\x1c")) return { id: '7z', name: '7-Zip archive', remedy: 'extract it first (`7z x FILE`), then use the image inside' };
  if (at(head, 257, 'ustar')) {
    return {
      id: 'tar',
      name: 'tar archive (not an OVA: its first member is not an .ovf descriptor)',
      remedy: 'list it with `tar -tvf FILE` and extract the disk image (`tar -xf FILE NAME`), then use that file',
    };
  }
  void size;
  return undefined;
}
