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
if ! have_cmd cargo; then
  echo "setup: cargo (Rust 1.89 or later) is required and not on PATH" >&2
  exit 1
fi
