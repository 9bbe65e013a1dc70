#!/usr/bin/env bash
# Builds a small bootable Linux disk (raw, MBR, BIOS/GRUB) from Debian packages, for the boot test
# (test/boot.test.ts): the migrated disk must still boot and its files must be intact.
#
#   bash scripts/boot-disk.sh OUT.raw [WORKDIR]
#
# Nothing is installed and nothing is mounted: the packages are fetched with `apt-get download`
# into a cache (FERRY_CACHE, default /var/cache/ferry-boot as root, else ~/.cache/ferry-boot;
# reused across runs) and unpacked with `dpkg -x`; the ext4 root is filled with `mke2fs -d`; GRUB
# (grub-mkimage of grub-common, modules of grub-pc-bin) is written with `dd`.
#
#   kernel      linux-image-amd64 -> the versioned linux-image-6.x package it depends on
#   initramfs   busybox-static + the kernel's own modules for IDE/SATA/virtio disks and ext4;
#               /init finds the root partition by UUID (root=UUID=… on the kernel command line),
#               mounts it read-only and switch_roots into it
#   root        ext4 (fixed UUID, FERRY_BOOT_UUID or generated) holding busybox, a copy of the
#               kernel and initramfs, GRUB's modules, some random data and etc/ferry/SHA256SUMS of
#               every file; its /sbin/init prints on the serial console
#                 FERRY-BOOT-OK root=UUID=<uuid> dev=<device>   once the root is mounted
#                 FERRY-CHECKSUMS-OK files=<n>                 when every checksum matches
#                 FERRY-CHECKSUMS-FAILED …                     otherwise
#               and powers off.
#
# WORKDIR (default: a temporary directory, removed at the end) keeps the staging trees: root/ is
# the content of the ext4 partition (the test uses it to find a file's bytes on the disk).
# The last line on stdout is FERRY_BOOT_UUID=<uuid>.
set -euo pipefail

die() { echo "boot-disk: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: bash scripts/boot-disk.sh OUT.raw [WORKDIR]"
OUT=$1
if [ "$(id -u)" -eq 0 ]; then CACHE=${FERRY_CACHE:-/var/cache/ferry-boot}; else CACHE=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry-boot}; fi
DISK_MIB=${FERRY_BOOT_DISK_MIB:-128}
UUID=${FERRY_BOOT_UUID:-$(cat /proc/sys/kernel/random/uuid)}
for tool in apt-get dpkg dpkg-deb sfdisk mke2fs cpio gzip dd; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs the tools)"
done

if [ $# -eq 2 ]; then
  WORK=$2
  mkdir -p "$WORK"
  rm -rf "${WORK:?}/initramfs" "${WORK:?}/root" "$WORK/root.ext4" "$WORK/core.img" "$WORK/disk.raw.tmp"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-boot-disk.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$CACHE/unpacked"

# fetch PKG: path of the .deb of PKG's candidate version in the cache, downloading it when absent.
# Offline with a cached copy, the newest cached one is used.
fetch() {
  local pkg=$1 ver deb
  ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if { [ -z "$ver" ] || [ "$ver" = "(none)" ]; } && [ "$(id -u)" -eq 0 ]; then
    # No package lists yet (a fresh container): fetch them.
    echo "boot-disk: apt-get update" >&2
    apt-get update -qq >&2 || true
    ver=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  fi
  if [ -n "$ver" ] && [ "$ver" != "(none)" ]; then
    deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -print -quit)
    if [ -z "$deb" ]; then
      echo "boot-disk: downloading $pkg $ver" >&2
      if (cd "$CACHE" && apt-get download -q "$pkg=$ver" >/dev/null 2>"$WORK/apt.err"); then
        deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_${ver//:/%3a}_*.deb" -print -quit)
      else
        echo "boot-disk: apt-get download $pkg failed: $(tail -n1 "$WORK/apt.err")" >&2
      fi
    fi
  fi
  [ -n "${deb:-}" ] || deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n1)
  [ -n "$deb" ] || die "cannot get the Debian package $pkg (apt-get update? network?)"
  echo "$deb"
}

# unpack DEB: a directory with the package's files (dpkg -x, kept in the cache).
unpack() {
  local dir
  dir="$CACHE/unpacked/$(basename "$1" .deb)"
  if [ ! -e "$dir/.done" ]; then
    rm -rf "$dir"
    dpkg -x "$1" "$dir"
    touch "$dir/.done"
  fi
  echo "$dir"
}

# The kernel: the metapackage names the versioned package (linux-image-6.1.0-NN-amd64).
meta=$(fetch linux-image-amd64)
kpkgs=$(dpkg-deb -f "$meta" Depends | tr ',|' '\n\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p')
kpkg=${kpkgs%%$'\n'*}
[ -n "$kpkg" ] || die "linux-image-amd64 depends on no versioned linux-image package"
KDIR=$(unpack "$(fetch "$kpkg")")
BBDIR=$(unpack "$(fetch busybox-static)")
GRUBDIR=$(unpack "$(fetch grub-pc-bin)")/usr/lib/grub/i386-pc
vmlinuz=$(find "$KDIR/boot" -name 'vmlinuz-*' -print -quit)
[ -f "$vmlinuz" ] || die "no vmlinuz in $kpkg"
kver=${vmlinuz##*/vmlinuz-}
MODDIR=$KDIR/lib/modules/$kver
BUSYBOX=$BBDIR/bin/busybox
[ -x "$BUSYBOX" ] || die "no busybox in busybox-static"
[ -f "$GRUBDIR/boot.img" ] || die "no i386-pc boot.img in grub-pc-bin"
if command -v grub-mkimage >/dev/null; then
  MKIMAGE=grub-mkimage
else
  MKIMAGE=$(unpack "$(fetch grub-common)")/usr/bin/grub-mkimage
  "$MKIMAGE" --version >/dev/null 2>&1 || die "the unpacked grub-mkimage does not run here: apt-get install grub-common"
fi
echo "boot-disk: kernel $kver, busybox $(dpkg-deb -f "$(fetch busybox-static)" Version), disk ${DISK_MIB} MiB, root UUID $UUID" >&2

# Kernel modules with their dependencies, dependencies first (read from each module's modinfo
# section: no kmod needed). crc32c is ext4's checksum, loaded through the crypto API (no depends=).
declare -A seen=()
order=()
modfile() {
  local name=$1 f
  for f in "$name" "${name//_/-}" "${name//-/_}"; do
    f=$(find "$MODDIR/kernel" \( -name "$f.ko" -o -name "$f.ko.xz" -o -name "$f.ko.zst" \) -print -quit)
    [ -n "$f" ] && { echo "$f"; return; }
  done
}
addmod() {
  local name=$1 f dep
  [ -n "${seen[$name]:-}" ] && return
  seen[$name]=1
  f=$(modfile "$name")
  if [ -z "$f" ]; then
    grep -q "/${name//_/[_-]}.ko" "$MODDIR/modules.builtin" 2>/dev/null && return
    die "kernel module $name not found in $kpkg"
  fi
  local text
  case "$f" in
    *.xz) text=$(xz -dc "$f" | grep -a -o 'depends=[A-Za-z0-9_,-]*' || true) ;;
    *.zst) text=$(zstd -dc "$f" | grep -a -o 'depends=[A-Za-z0-9_,-]*' || true) ;;
    *) text=$(grep -a -o 'depends=[A-Za-z0-9_,-]*' "$f" || true) ;;
  esac
  for dep in $(echo "${text#depends=}" | tr ',' ' '); do addmod "$dep"; done
  order+=("$f")
}
for m in crc32c_generic crc32c-intel ext4 ata_piix ata_generic ahci sd_mod virtio_pci virtio_blk; do addmod "$m"; done

# The initramfs: busybox, the modules (decompressed: busybox insmod), /init.
I=$WORK/initramfs
mkdir -p "$I"/{bin,dev,proc,sys,newroot,modules}
cp "$BUSYBOX" "$I/bin/busybox"
: >"$I/modules/order"
for f in "${order[@]}"; do
  b=$(basename "$f")
  case "$b" in
    *.xz) xz -dc "$f" >"$I/modules/${b%.xz}"; b=${b%.xz} ;;
    *.zst) zstd -qdc "$f" >"$I/modules/${b%.zst}"; b=${b%.zst} ;;
    *) cp "$f" "$I/modules/$b" ;;
  esac
  echo "$b" >>"$I/modules/order"
done
cat >"$I/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() { echo "FERRY-BOOT-FAILED $*"; poweroff -f; sleep 5; }
uuid=
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=UUID=*) uuid=${arg#root=UUID=} ;; esac
done
[ -n "$uuid" ] || fail "no root=UUID= on the kernel command line"
while read -r m; do insmod "/modules/$m" 2>/dev/null; done </modules/order
echo "ferry-initramfs: waiting for the root partition UUID=$uuid"
dev=
i=0
while [ $i -lt 300 ]; do
  dev=$(findfs "UUID=$uuid" 2>/dev/null) && [ -b "$dev" ] && break
  dev=
  i=$((i + 1))
  sleep 0.1
done
[ -n "$dev" ] || { cat /proc/partitions; fail "no partition with UUID=$uuid"; }
mount -t ext4 -o ro "$dev" /newroot || fail "cannot mount $dev"
echo "ferry-initramfs: root UUID=$uuid is $dev"
umount /proc /sys
mount --move /dev /newroot/dev || fail "cannot move /dev"
exec switch_root /newroot /sbin/init "$uuid" "$dev"
EOF
chmod 755 "$I/init"
(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 >"$WORK/initrd.img")

# The root file system.
R=$WORK/root
mkdir -p "$R"/{bin,sbin,dev,proc,sys,etc/ferry,data,boot/grub}
cp "$BUSYBOX" "$R/bin/busybox"
for applet in sh mount umount cat echo sha256sum poweroff sleep findfs wc grep sed ls sync; do
  ln -s busybox "$R/bin/$applet"
done
cp "$vmlinuz" "$R/boot/vmlinuz"
cp "$WORK/initrd.img" "$R/boot/initrd.img"
cp -r "$GRUBDIR" "$R/boot/grub/i386-pc"
cat >"$R/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
set default=0
menuentry 'Ferry boot test' {
  echo 'ferry-grub: loading the kernel'
  linux /boot/vmlinuz root=UUID=$UUID ro console=ttyS0,115200 panic=-1 loglevel=4
  initrd /boot/initrd.img
}
EOF
cat >"$R/sbin/init" <<'EOF'
#!/bin/busybox sh
# The root file system's init: proves the root is the disk's partition and that its files are
# intact, then powers off.
export PATH=/bin
uuid=$1
dev=$2
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec 0</dev/console 1>/dev/console 2>&1
if [ -z "$uuid" ] || [ ! -b "$dev" ] || ! grep -q "^$dev / ext4 ro" /proc/mounts || [ "$(findfs "UUID=$uuid")" != "$dev" ]; then
  echo "FERRY-BOOT-FAILED root is not UUID=$uuid on $dev"
  cat /proc/mounts
  poweroff -f
fi
echo "FERRY-BOOT-OK root=UUID=$uuid dev=$dev"
n=$(wc -l </etc/ferry/SHA256SUMS)
if [ "$n" -gt 0 ] && (cd / && sha256sum -c -s /etc/ferry/SHA256SUMS); then
  echo "FERRY-CHECKSUMS-OK files=$n"
else
  (cd / && sha256sum -c /etc/ferry/SHA256SUMS 2>&1 | grep -v ': OK$')
  echo "FERRY-CHECKSUMS-FAILED"
fi
sync
poweroff -f
EOF
chmod 755 "$R/sbin/init"
echo "Ferry boot test disk, root UUID $UUID" >"$R/etc/ferry/README"
head -c $((1 * 1024 * 1024)) /dev/urandom >"$R/data/random-1M.bin"
head -c $((6 * 1024 * 1024)) /dev/urandom >"$R/data/random-6M.bin"
head -c 1000 /dev/urandom >"$R/data/small.bin"
awk 'BEGIN { for (i = 0; i < 20000; i++) print "Ferry moves disks, correct to the last byte. " i }' >"$R/data/text.txt"
(cd "$R" && find . -type f ! -path ./etc/ferry/SHA256SUMS -printf '%P\n' | LC_ALL=C sort |
  xargs sha256sum >etc/ferry/SHA256SUMS)

# The disk: MBR, one ext4 partition from 1 MiB to the end; GRUB's boot.img in the MBR (the first
# 440 bytes: the partition table stays) and core.img in the gap from sector 1.
part_sectors=$(((DISK_MIB - 1) * 2048))
# metadata_csum_seed is left out: GRUB 2.06 refuses ext4 with it.
mke2fs -q -F -t ext4 -O ^metadata_csum_seed -U "$UUID" -L ferry-root -E root_owner=0:0 \
  -d "$R" "$WORK/root.ext4" $((part_sectors / 2))k >&2
"$MKIMAGE" -O i386-pc -d "$GRUBDIR" -p '(hd0,msdos1)/boot/grub' -o "$WORK/core.img" \
  biosdisk part_msdos ext2 normal linux boot configfile echo serial terminal search search_fs_uuid
core_sectors=$((($(stat -c %s "$WORK/core.img") + 511) / 512))
[ "$core_sectors" -lt 2047 ] || die "core.img ($core_sectors sectors) does not fit before 1 MiB"
# boot.img loads core.img from the sector at 0x5c (64-bit LE): sector 1.
[ "$(od -An -tx1 -j 92 -N 8 "$GRUBDIR/boot.img" | tr -d ' \n')" = "0100000000000000" ] ||
  die "boot.img does not load core.img from sector 1"
tmp=$OUT.tmp
rm -f "$tmp"
truncate -s "${DISK_MIB}M" "$tmp"
echo "label: dos
label-id: 0x$(echo "$UUID" | tr -d - | cut -c1-8)
start=2048, size=$part_sectors, type=83, bootable" | sfdisk -q "$tmp"
dd if="$GRUBDIR/boot.img" of="$tmp" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$tmp" bs=512 seek=1 conv=notrunc status=none
dd if="$WORK/root.ext4" of="$tmp" bs=1M seek=1 conv=notrunc,sparse status=none
mv "$tmp" "$OUT"
echo "boot-disk: wrote $OUT" >&2
echo "FERRY_BOOT_UUID=$UUID"
