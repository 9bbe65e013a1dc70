#!/usr/bin/env bash
# Ferry's demo on its embedded defaults: sets Ferry up, builds a sample disk (GPT + ext4 with real
# files), exports it the way hypervisors do (qcow2, VHD, VMDK with qemu-img), has Ferry inspect and
# check every image, converts the disk with Ferry into the formats clouds import (compressed qcow2,
# Azure-style fixed VHD, streamOptimized VMDK), uploads one to the embedded object store (a local
# directory) converting on the fly, reads it back, imports it onto a target disk (a file) — the
# offline migration — and verifies that every image holds exactly the
# original disk (SHA-256 of the content, the upload's manifest, and qemu-img as an independent
# reader).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
ferry() { node bin/ferry.js "$@"; }
sha() { ferry image checksum --json "$1" 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).sha256))'; }
fail=0
verify() { # verify IMAGE LABEL: same content as the original disk
  local got; got=$(sha "$1")
  if [ "$got" = "$want" ]; then echo "   verified: $2 holds the original disk (sha256 ${got:0:16}…)"; else echo "   MISMATCH: $2: $got != $want"; fail=1; fi
}

echo "== building a sample 256 MiB disk: GPT, one ext4 partition with real files"
mkdir -p "$work/files"
cp -r /usr/share/doc/bash /usr/share/common-licenses "$work/files/" 2>/dev/null || true
cp /usr/bin/env /usr/bin/tar "$work/files/"
head -c 8M /dev/urandom >"$work/files/random.bin"
head -c 8M /dev/zero >"$work/files/zeros.bin"
truncate -s 256M "$work/disk.raw"
printf 'label: gpt\nstart=2048, size=400000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n' | sfdisk -q "$work/disk.raw"
mke2fs -q -t ext4 -d "$work/files" -E offset=$((2048 * 512)) "$work/disk.raw" 200000k
want=$(sha "$work/disk.raw")

echo "== exporting it as qcow2 (zlib-compressed), VHD (dynamic) and VMDK (streamOptimized) with qemu-img"
qemu-img convert -c -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
qemu-img convert -O vpc -o subformat=dynamic,force_size=on "$work/disk.raw" "$work/disk.vhd"
qemu-img convert -O vmdk -o subformat=streamOptimized "$work/disk.raw" "$work/disk.vmdk"

echo
echo "== ferry image info disk.qcow2"
ferry image info "$work/disk.qcow2"
echo
for img in disk.qcow2 disk.vhd disk.vmdk; do
  echo "== ferry image check --deep $img"
  ferry image check --deep "$work/$img"
  verify "$work/$img" "$img"
done

echo
echo "== converting with Ferry (all cores): qcow2 + zstd, Azure-style fixed VHD, streamOptimized VMDK"
ferry image convert -O qcow2 --compress zstd "$work/disk.vmdk" "$work/out.qcow2"
ferry image convert -O vpc --subformat fixed --align-size 1M "$work/disk.qcow2" "$work/out.vhd"
ferry image convert -O vmdk "$work/disk.vhd" "$work/out.vmdk"
for img in out.qcow2:qcow2 out.vhd:vpc out.vmdk:vmdk; do
  fmt=${img#*:}; img=${img%%:*}
  verify "$work/$img" "$img"
  # -F: qemu-img detects a fixed VHD only by name (it has no header); Ferry finds its footer.
  if qemu-img compare -q -f raw -F "$fmt" "$work/disk.raw" "$work/$img"; then echo "   qemu-img compare: identical"; else echo "   qemu-img compare: DIFFERENT"; fail=1; fi
  case $img in
    *.qcow2|*.vmdk) if qemu-img check -q -f "$fmt" "$work/$img"; then echo "   qemu-img check: no errors"; else echo "   qemu-img check: FAILED"; fail=1; fi ;;
  esac
done
for f in disk.raw out.qcow2 out.vhd out.vmdk; do printf '   %-10s %11d bytes on disk\n' "$f" "$(( $(stat -c %b "$work/$f") * 512 ))"; done

echo
echo "== uploading to the embedded object store (a local directory, file://): converted to zstd qcow2 on the fly"
export FERRY_STATE_DIR="$work/state"
store="file://$work/store"
ferry upload "$work/disk.vmdk" "$store/disk.qcow2" --compress zstd
echo "== ferry image info on the object (reads only its metadata)"
ferry image info "$store/disk.qcow2" | sed -n '1,3p;$p'
echo "== ferry verify: the object against its manifest (size, ETag, content digest)"
ferry verify "$store/disk.qcow2"
echo "== ferry download, then the downloaded image against the original disk"
ferry download "$store/disk.qcow2" "$work/downloaded.qcow2"
verify "$work/downloaded.qcow2" "downloaded.qcow2"
echo "== ferry import: the object onto a target disk (a raw file here; a block device works the same)"
ferry import "$store/disk.qcow2" --target "$work/target-disk.raw"
verify "$work/target-disk.raw" "target-disk.raw"
if cmp -s "$work/disk.raw" "$work/target-disk.raw"; then echo "   cmp: the target disk is byte-identical to the original disk"; else echo "   cmp: DIFFERENT"; fail=1; fi

echo
echo "== a file that is not a supported image is named, with a remedy:"
printf 'vhdxfile' >"$work/renamed.vhd"; truncate -s 1M "$work/renamed.vhd"
ferry image info "$work/renamed.vhd" || true
echo
if [ $fail -eq 0 ]; then echo "demo: all images verified bit-identical to the original disk"; else echo "demo: verification FAILED"; fi
exit $fail
