#!/usr/bin/env bash
# A guest disk for the guest-file tests (Rust, C and Python share it), made
# with the real tools: a GPT with an EFI system partition (FAT), an ext4
# root, an XFS data partition and an LVM physical volume whose volume group
# holds an ext4 logical volume in two segments (and a second, empty one).
#
#   guest-disk.sh create DIR   DIR/disk.img, and DIR/expect-1/VOLUME: a copy
#                              (cp -a) of each file system's tree
#   guest-disk.sh change DIR   changes every file system (one file deleted:
#                              /logs/old.log on p3), DIR/expect-2/VOLUME
#
# VOLUME is p1, p2, p3 and vgdata_root. Needs root, sfdisk, mkfs.ext4,
# mkfs.xfs, mkfs.vfat, mtools and lvm2. The host's kernel has no device
# mapper here: the logical volumes are made without activation (LVM writes
# only its metadata), and the ext4 inside one is made as an image and copied
# into its two segments, where LVM's own report says they lie.
set -euo pipefail
export TZ=UTC LVM_SUPPRESS_FD_WARNINGS=1
stage=${1:?usage: guest-disk.sh create|change DIR}
dir=${2:?usage: guest-disk.sh create|change DIR}
disk=$dir/disk.img
mib=$((1 << 20))
# Partitions, in MiB from the disk's start: p1 1+40, p2 41+64, p3 105+310, p4 415+80.
p1=1 p2=41 p3=105 p4=415
lv_start=$((p4 + 1)) extent=4 # LVM's first extent is 1 MiB into its PV; extents of 4 MiB

# Every mount point of this run is made inside $mounts. On any exit, also
# half way (a full disk in CI once stopped mkfs and left a loop device
# attached), what this run mounted is unmounted and what it attached is
# detached.
mounts=$(mktemp -d)
cleanup() {
  local m dev
  for m in $(findmnt -rn -o TARGET | grep "^$mounts/" | sort -r); do umount "$m" || umount -l "$m" || true; done
  for dev in $(losetup -n -O NAME -j "$disk" 2>/dev/null; losetup -n -O NAME -j "$dir/lv.img" 2>/dev/null); do
    losetup -d "$dev" || true
  done
  rm -rf --one-file-system "$mounts"
}
trap cleanup EXIT

attach() { losetup -f --show --offset $(($1 * mib)) --sizelimit $(($2 * mib)) "$disk"; }
with_fs() { # with_fs OFFSET_MIB SIZE_MIB FUNCTION: runs FUNCTION MOUNTPOINT on the mounted fs
  local dev m
  dev=$(attach "$1" "$2")
  m=$(mktemp -d -p "$mounts")
  mount "$dev" "$m"
  "$3" "$m"
  umount "$m"
  losetup -d "$dev"
  rmdir "$m"
}
snapshot() { # snapshot N: DIR/expect-N/VOLUME copies of every tree
  local n=$1 m dev
  rm -rf "$dir/expect-$n"
  mkdir -p "$dir/expect-$n"
  copy() { cp -a "$1/." "$dir/expect-$n/$vol/"; }
  for spec in "p2 $p2 64" "p3 $p3 310"; do
    set -- $spec
    vol=$1
    mkdir "$dir/expect-$n/$vol"
    with_fs "$2" "$3" copy
  done
  vol=vgdata_root
  mkdir "$dir/expect-$n/$vol"
  m=$(mktemp -d -p "$mounts")
  mount -o loop,ro "$dir/lv.img" "$m"
  copy "$m"
  umount "$m"
  rmdir "$m"
  cp -a "$dir/efi" "$dir/expect-$n/p1"
}
lv_copy_in() { # the LV's image into its segments: extents 0-5 and 8-11
  dd if="$dir/lv.img" of="$disk" bs=1M count=24 seek=$lv_start conv=notrunc status=none
  dd if="$dir/lv.img" of="$disk" bs=1M skip=24 count=16 seek=$((lv_start + 8 * extent)) conv=notrunc status=none
}
efi_copy_in() { # the EFI folder's tree into the FAT, times kept
  local dev
  dev=$(attach $p1 40)
  mkfs.vfat -n EFI "$dev" >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -s -m -i "$dev" "$dir/efi/EFI" ::/
  losetup -d "$dev"
}

root_1() {
  mkdir -p "$1/etc/ssh" "$1/home/alice" "$1/srv"
  printf 'UUID=1 / ext4 defaults 0 1\n' > "$1/etc/fstab"
  printf 'PermitRootLogin no\n' > "$1/etc/ssh/sshd_config"
  chmod 600 "$1/etc/ssh/sshd_config"
  head -c 200000 /dev/urandom > "$1/home/alice/photo.jpg"
  chown -R 1000:1000 "$1/home/alice"
  chmod 4755 "$1/home/alice/photo.jpg"
  chmod 1777 "$1/srv"
  ln -s /etc/fstab "$1/etc/fstab.link"
  ln -s ../../etc/ssh "$1/home/alice/ssh"
  touch -h -d '2020-01-02 03:04:05.123456789' "$1/etc/fstab.link"
  touch -d '2021-06-07 08:09:10.5' "$1/etc/fstab"
  touch -d '2019-01-01 00:00:00' "$1/etc/ssh"
}
root_2() {
  printf 'UUID=1 / ext4 defaults 0 1\nUUID=2 /data xfs defaults 0 2\n' > "$1/etc/fstab"
  printf 'new\n' > "$1/etc/new.conf"
  chown 42:43 "$1/etc/new.conf"
}
data_1() {
  mkdir -p "$1/logs/2026"
  seq 1 20000 > "$1/logs/old.log"
  printf 'a\n' > "$1/logs/2026/app.log"
  chmod 2750 "$1/logs/2026"
  chown 7:8 "$1/logs/2026"
  touch -d '2022-02-22 22:22:22.222222222' "$1/logs/old.log"
}
data_2() {
  rm "$1/logs/old.log"
  printf 'a\nb\n' >> "$1/logs/2026/app.log"
}
lv_1() {
  mkdir -p "$1/var/lib/db"
  head -c 3000000 /dev/urandom > "$1/var/lib/db/table"
  printf 'lv one\n' > "$1/var/version"
}
lv_2() {
  dd if=/dev/urandom of="$1/var/lib/db/table" bs=4096 count=10 seek=100 conv=notrunc status=none
  printf 'lv two\n' > "$1/var/version"
}

case $stage in
create)
  mkdir -p "$dir"
  rm -f "$disk" "$dir/lv.img"
  truncate -s 500M "$disk"
  printf 'label: gpt\nsize=40MiB, type=U, name="EFI system partition"\nsize=64MiB, type=L, name="root"\nsize=310MiB, type=L\nsize=80MiB, type=V\n' \
    | sfdisk -q "$disk"
  dev=$(attach $p2 64); mkfs.ext4 -q -L root "$dev"; losetup -d "$dev"
  dev=$(attach $p3 310); mkfs.xfs -q -L data "$dev"; losetup -d "$dev"
  with_fs $p2 64 root_1
  with_fs $p3 310 data_1
  # LVM: metadata only (see above); its own report checks the layout.
  dev=$(attach $p4 80)
  lvm() { command "$@" --devices "$dev" --config 'backup { backup = 0 archive = 0 }' >/dev/null 2>&1; }
  lvm pvcreate -q "$dev"
  lvm vgcreate -q -s ${extent}M vgdata "$dev"
  lvm lvcreate -q -an -Zn --driverloaded n -L 24M -n root vgdata
  lvm lvcreate -q -an -Zn --driverloaded n -L 8M -n home vgdata
  lvm lvextend -q --driverloaded n -L +16M vgdata/root
  ranges=$(lvs --noheadings -o seg_pe_ranges --devices "$dev" vgdata/root 2>/dev/null | tr -d ' ' | tr '\n' ' ')
  pe_start=$(pvs --noheadings --units b --nosuffix -o pe_start --devices "$dev" 2>/dev/null | tr -d ' ')
  losetup -d "$dev"
  if [ "$ranges" != "$dev:0-5 $dev:8-11 " ] || [ "$pe_start" != "$mib" ]; then
    echo "guest-disk.sh: LVM laid vgdata/root out as '$ranges' from byte $pe_start, not as expected" >&2
    exit 1
  fi
  truncate -s 40M "$dir/lv.img"
  mkfs.ext4 -q -L lvroot "$dir/lv.img"
  m=$(mktemp -d -p "$mounts"); mount -o loop "$dir/lv.img" "$m"; lv_1 "$m"; umount "$m"; rmdir "$m"
  lv_copy_in
  rm -rf "$dir/efi"
  mkdir -p "$dir/efi/EFI/BOOT" "$dir/efi/EFI/debian"
  head -c 100000 /dev/urandom > "$dir/efi/EFI/BOOT/BOOTX64.EFI"
  printf 'search --fs-uuid 1\n' > "$dir/efi/EFI/debian/grub.cfg"
  touch -d '2023-03-03 03:03:04' "$dir/efi/EFI/BOOT/BOOTX64.EFI" "$dir/efi/EFI/debian/grub.cfg"
  efi_copy_in
  snapshot 1
  ;;
change)
  with_fs $p2 64 root_2
  with_fs $p3 310 data_2
  m=$(mktemp -d -p "$mounts"); mount -o loop "$dir/lv.img" "$m"; lv_2 "$m"; umount "$m"; rmdir "$m"
  lv_copy_in
  printf 'search --fs-uuid 2\n' > "$dir/efi/EFI/debian/grub.cfg"
  touch -d '2024-04-04 04:04:04' "$dir/efi/EFI/debian/grub.cfg"
  efi_copy_in
  snapshot 2
  ;;
*)
  echo "usage: guest-disk.sh create|change DIR" >&2
  exit 2
  ;;
esac
