#!/usr/bin/env bash
# Builds the test guest of the libvirt tests and demo: a real Linux VM made
# from Debian packages on this host (see DESIGN.md, "Facts measured"):
#   OUT/vmlinuz, OUT/initrd.img   the distribution kernel and its initrd
#   OUT/guest.qcow2               an ext4 root file system of busybox-static,
#                                 the real qemu-ga with the libraries ldd
#                                 lists, virtio_console.ko, and an init that
#                                 loads it and starts the agent on its port
# The agent runs with /etc/qemu/fsfreeze-hook, which logs every freeze and
# thaw to /var/log/fsfreeze-hook.log inside the guest (and waits the seconds
# in /etc/qemu/freeze-delay before a freeze, when that file exists);
# /sbin/shutdown (the agent's guest-shutdown) powers off cleanly.
# Usage: scripts/test-guest.sh OUT [SIZE_MIB]   (needs the packages that
# scripts/setup.sh installs for the libvirt tests)
# GUEST_DATA="DIR ..." copies those host folders into the guest's /data
# (real files for benchmarks).
set -euo pipefail
out=${1:?usage: scripts/test-guest.sh OUT [SIZE_MIB]}
size=${2:-128}
mkdir -p "$out"
kver=$(ls /lib/modules | sort -V | tail -n 1)
[ -f "/boot/vmlinuz-$kver" ] || { echo "test-guest: no kernel /boot/vmlinuz-$kver (linux-image-amd64)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc/qemu,proc,sys,dev,tmp,run,var/run,var/log,lib/modules,root,data}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
cp /usr/sbin/qemu-ga "$root/sbin/qemu-ga"
for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp "/lib/modules/$kver/kernel/drivers/char/virtio_console.ko" "$root/lib/modules/"
for d in ${GUEST_DATA:-}; do
  mkdir -p "$root/data$d"
  cp -a "$d/." "$root/data$d/"
done
# What qemu-ga's guest-get-osinfo reports.
printf 'NAME="vmbackup test guest"\nID=busybox\nPRETTY_NAME="vmbackup test guest (busybox, Debian kernel %s)"\nVERSION_ID=1\n' "$kver" > "$root/etc/os-release"
cat > "$root/etc/qemu/fsfreeze-hook" <<'HOOK'
#!/bin/sh
# Called by qemu-ga with "freeze" before and "thaw" after a freeze. A test
# can make a freeze slow: /etc/qemu/freeze-delay holds seconds to wait.
echo "$(date +%s) $1" >> /var/log/fsfreeze-hook.log
sync
if [ "$1" = freeze ] && [ -r /etc/qemu/freeze-delay ]; then sleep "$(cat /etc/qemu/freeze-delay)"; fi
exit 0
HOOK
chmod 0755 "$root/etc/qemu/fsfreeze-hook"
# qemu-ga's guest-shutdown runs "shutdown -P +0 ...": power off cleanly, so
# that QEMU exits and stores the disk's persistent bitmaps.
# Every other process goes first: a file still open for writing (a test's
# writer loop in the guest) makes the read-only remount fail with EBUSY,
# and the power-off then left a journal to replay, about one shutdown in
# eight under that test. If the remount fails all the same, sysrq's
# emergency remount forces it.
cat > "$root/sbin/shutdown" <<'SHUTDOWN'
#!/bin/sh
echo 1 > /proc/sys/kernel/sysrq
kill -TERM -1 2>/dev/null
sleep 1
kill -KILL -1 2>/dev/null
sync
if ! mount -o remount,ro /; then
  echo "shutdown: / stayed writable, forcing the remount" > /dev/console
  echo s > /proc/sysrq-trigger
  echo u > /proc/sysrq-trigger
  sleep 1
fi
echo o > /proc/sysrq-trigger
SHUTDOWN
chmod 0755 "$root/sbin/shutdown"
cat > "$root/sbin/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -o remount,rw /
# /var/run on a tmpfs, as distributions have it: qemu-ga's state (a freeze
# in progress) must not outlive a reboot, or a guest booted from a point
# taken during a freeze starts with an agent that believes it is frozen.
mount -t tmpfs -o mode=0755 tmpfs /var/run
insmod /lib/modules/virtio_console.ko
port=
for i in 1 2 3 4 5 6 7 8 9 10; do
  for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] && [ "$(cat "$p/name")" = org.qemu.guest_agent.0 ] && port=/dev/$(basename "$p")
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  sleep 1
done
echo "init: guest agent on ${port:-nothing}"
/sbin/qemu-ga -m virtio-serial -p "$port" -d -F/etc/qemu/fsfreeze-hook -t /var/run
while true; do sleep 3600; done
INIT
chmod 0755 "$root/sbin/init"
rm -f "$out/root.img"
mke2fs -q -t ext4 -d "$root" -L guestroot "$out/root.img" "${size}M"
qemu-img convert -f raw -O qcow2 "$out/root.img" "$out/guest.qcow2"
rm -f "$out/root.img"
cp "/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "/boot/initrd.img-$kver" "$out/initrd.img"
chmod 0644 "$out/vmlinuz" "$out/initrd.img" "$out/guest.qcow2"
echo "test-guest: $out/guest.qcow2 (kernel $kver)"
