#!/usr/bin/env bash
# Ferry's demo on its embedded defaults: sets Ferry up, builds a sample disk (GPT + ext4 with real
# files), exports it the way hypervisors do (qcow2, VHD, VMDK), then has Ferry inspect and check
# every image and verify that each one holds exactly the original disk (SHA-256 of the content).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
ferry() { node bin/ferry.js "$@"; }

echo "== building a sample 256 MiB disk: GPT, one ext4 partition with real files"
mkdir -p "$work/files"
cp -r /usr/share/doc/bash /usr/share/common-licenses "$work/files/" 2>/dev/null || true
cp /usr/bin/env /usr/bin/tar "$work/files/"
head -c 8M /dev/urandom >"$work/files/random.bin"
head -c 8M /dev/zero >"$work/files/zeros.bin"
truncate -s 256M "$work/disk.raw"
printf 'label: gpt\nstart=2048, size=400000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n' | sfdisk -q "$work/disk.raw"
mke2fs -q -t ext4 -d "$work/files" -E offset=$((2048 * 512)) "$work/disk.raw" 200000k

echo "== exporting it as qcow2 (zlib-compressed), VHD (dynamic) and VMDK (streamOptimized) with qemu-img"
qemu-img convert -c -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
qemu-img convert -O vpc -o subformat=dynamic,force_size=on "$work/disk.raw" "$work/disk.vhd"
qemu-img convert -O vmdk -o subformat=streamOptimized "$work/disk.raw" "$work/disk.vmdk"

echo
echo "== ferry image info disk.qcow2"
ferry image info "$work/disk.qcow2"
echo
want=$(ferry image checksum --json "$work/disk.raw" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).sha256))')
ok=0
for img in disk.qcow2 disk.vhd disk.vmdk; do
  echo "== ferry image check $img"
  ferry image check --deep "$work/$img"
  got=$(ferry image checksum --json "$work/$img" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).sha256))')
  if [ "$got" = "$want" ]; then echo "   content verified: sha256 $got = original disk"; else echo "   MISMATCH: $got != $want"; ok=1; fi
done
echo
echo "== a file that is not a supported image is named, with a remedy:"
printf 'vhdxfile' >"$work/renamed.vhd"; truncate -s 1M "$work/renamed.vhd"
ferry image info "$work/renamed.vhd" || true
echo
if [ $ok -eq 0 ]; then echo "demo: all images verified bit-identical to the original disk"; else echo "demo: verification FAILED"; fi
exit $ok
