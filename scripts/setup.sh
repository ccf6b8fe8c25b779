#!/usr/bin/env bash
# Installs what the demo and the tests need and this machine lacks (node and
# npm bring Azurite, installed by scripts/azurite.sh outside the clone).
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
# command the project needs -> Debian package that brings it
for pair in mke2fs:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs mkfs.ext4:e2fsprogs \
            pkg-config:pkg-config valgrind:valgrind cc:gcc c++:g++ qemu-img:qemu-utils mkfs.xfs:xfsprogs \
            fusermount3:fuse3 fincore:util-linux-extra mkfs.vfat:dosfstools mcopy:mtools pvcreate:lvm2 sfdisk:fdisk \
            node:nodejs npm:npm; do
  have_cmd "${pair%%:*}" || need+=("${pair#*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "setup: installing ${need[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The libvirt tests: libvirtd with QEMU, and what the test guest is made of
# (scripts/test-guest.sh). Debian 12's qemu-system-x86 (7.2) would remove the
# machine's qemu-utils 10 (from bookworm-backports), so QEMU and libvirt come
# from bookworm-backports too (QEMU 10.0, libvirt 11.3).
libvirt_missing=
for f in /usr/sbin/libvirtd /usr/bin/virsh /usr/bin/qemu-system-x86_64; do
  [ -e "$f" ] || libvirt_missing=1
done
guest=()
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || guest+=(busybox-static)
[ -x /usr/sbin/qemu-ga ] || guest+=(qemu-guest-agent)
ls /boot/vmlinuz-* >/dev/null 2>&1 || guest+=(linux-image-amd64)
have_cmd nbdinfo || guest+=(libnbd-bin)
if [ -n "$libvirt_missing" ] || [ ${#guest[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  bpo=/etc/apt/sources.list.d/vmbackup-bookworm-backports.sources
  if [ -n "$libvirt_missing" ] && [ ! -e "$bpo" ]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee "$bpo" >/dev/null
  fi
  echo "setup: installing libvirt, QEMU and the test guest's packages" >&2
  $SUDO apt-get update -qq
  if [ -n "$libvirt_missing" ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      qemu-system-x86 libvirt-daemon-system libvirt-clients >/dev/null
  fi
  if [ ${#guest[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${guest[@]}" >/dev/null
  fi
fi
if ! have_cmd cargo; then
  echo "setup: cargo (Rust 1.89 or later) is required and not on PATH" >&2
  exit 1
fi
