#!/usr/bin/env bash
# Installs what Ferry and its tests need on a Debian machine (run as root): the Debian packages
# (qemu-utils is the oracle for image content, fdisk/e2fsprogs/dosfstools build test disks, Swift
# and memcached are the S3 server of the storage tests), the
# npm dependencies, and the compiled build.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v tar >/dev/null || need+=(tar)
command -v genisoimage >/dev/null || need+=(genisoimage)
# The boot test (test/boot.test.ts, scripts/boot-disk.sh): qemu boots the disk; GRUB's grub-mkimage
# and cpio build it (the kernel, busybox and GRUB's modules are downloaded, not installed).
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v grub-mkimage >/dev/null || need+=(grub-common)
command -v cpio >/dev/null || need+=(cpio)
# The online-migration test: network namespaces, veth pairs, tc shaping (iproute2), fsfreeze.
command -v tc >/dev/null || need+=(iproute2)
command -v fsfreeze >/dev/null || need+=(util-linux)
# The https:// source test (test/http-source.test.ts): a real web server, started by the test.
command -v nginx >/dev/null || need+=(nginx-light)
command -v openssl >/dev/null || need+=(openssl)
# The fleet test (test/fleet.test.ts): real OpenSSH servers in network namespaces.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# The web console test (test/server.test.ts): headless Chromium driven by playwright-core.
command -v chromium >/dev/null || need+=(chromium)
# PostgreSQL mode of the control plane (test/postgres-mode.test.ts): a throwaway PostgreSQL server.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# The real S3 server of the tests (OpenStack Swift with s3api; see scripts/s3-server.sh).
for p in swift swift-proxy swift-object swift-container swift-account python3-swift memcached; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install ${need[*]} (run with sudo)" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: building"
npm run -s build
# The single-file agent (dist/agent/ferry-agent) that `ferry fleet` copies to source servers.
node scripts/build-agent.mjs >/dev/null
