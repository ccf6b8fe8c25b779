#!/usr/bin/env bash
# vmbackup beside virtnbdbackup (Debian's package) on running libvirt
# guests: full, five incrementals with a real churn made inside the guest
# between them, restore of the newest point, and the first full of a second
# guest cloned from the same image (dedup across VMs). virtnbdbackup refuses
# a domain with checkpoints it did not make, so each tool gets its own twin
# domain, booted from copies of one image and churned by the same commands
# at the same time; the backups of one round run one after the other (the
# order alternates between rounds). Prints one line per measurement and
# writes results.jsonl into WORK.
#
# usage: sudo benches/libvirt/run.sh WORK      (needs root, libvirt from
#        scripts/setup.sh, about 25 GB free; 15 to 30 minutes on two cores)
# env:   VMBACKUP=path of a release vmbackup (default: built here)
#        SIZE_MIB=guest disk size (4096)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:?usage: benches/libvirt/run.sh WORK}"
size="${SIZE_MIB:-4096}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
chmod 0755 "$work"
cd "$root"
scripts/setup.sh
command -v virtnbdbackup >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq virtnbdbackup >/dev/null
if [ -z "${VMBACKUP:-}" ]; then
  cargo build --release -q -p backup-cli
  VMBACKUP="${CARGO_TARGET_DIR:-target}/release/vmbackup"
fi
VMBACKUP="$(realpath "$VMBACKUP")"
eval "$(scripts/libvirtd.sh start)"
uri="$VMB_LIBVIRT_URI"
a="vmb-bench-a-$$"     # vmbackup's guest
a2="vnb-bench-a-$$"    # virtnbdbackup's twin
b="vmb-bench-b-$$"     # vmbackup's clone
b2="vnb-bench-b-$$"    # virtnbdbackup's clone
cleanup() {
  for d in "$a" "$a2" "$b" "$b2"; do
    virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1 || true
    virsh -q -c "$uri" undefine "$d" --checkpoints-metadata >/dev/null 2>&1 || true
  done
  scripts/libvirtd.sh stop "${VMB_LIBVIRTD_PIDS:-}"
}
trap cleanup EXIT

echo "== the guest: ${size} MiB disk with real files (/usr/lib/x86_64-linux-gnu, /usr/share, /usr/lib/gcc)"
rm -rf "$work/guest" "$work/vault" "$work/vnb-a" "$work/vnb-b" "$work/restore"
mkdir -p "$work/guest"
chmod 0755 "$work/guest"
GUEST_DATA="/usr/lib/x86_64-linux-gnu /usr/share /usr/lib/gcc" scripts/test-guest.sh "$work/guest" "$size" >/dev/null
for copy in twin clone clone2; do
  cp --sparse=always "$work/guest/guest.qcow2" "$work/guest/$copy.qcow2"
done

define() { # name image
  cat >"$work/$1.xml" <<XML
<domain type='qemu'><name>$1</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<features><acpi/></features><os><type arch='x86_64' machine='pc'>hvm</type>
<kernel>$work/guest/vmlinuz</kernel><initrd>$work/guest/initrd.img</initrd>
<cmdline>root=/dev/vda rw init=/sbin/init console=ttyS0 quiet</cmdline></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$2'/>
<target dev='vda' bus='virtio'/></disk>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<serial type='file'><source path='$work/$1.console'/><target port='0'/></serial></devices></domain>
XML
  virsh -q -c "$uri" define "$work/$1.xml" >/dev/null
  virsh -q -c "$uri" start "$1" >/dev/null
  for _ in $(seq 300); do
    virsh -q -c "$uri" qemu-agent-command "$1" '{"execute":"guest-ping"}' >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "the agent of $1 never answered" >&2
  exit 1
}

# Runs a shell command inside a guest and waits for it.
guest() { # domain script
  local pid st
  pid=$(virsh -q -c "$uri" qemu-agent-command "$1" \
    "$(python3 -c 'import json,sys; print(json.dumps({"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c",sys.argv[1]],"capture-output":True}}))' "$2")" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["return"]["pid"])')
  while :; do
    st=$(virsh -q -c "$uri" qemu-agent-command "$1" "{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":$pid}}")
    if echo "$st" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["return"]["exited"] else 1)'; then
      return 0
    fi
    sleep 1
  done
}

now() { date +%s.%N; }
results="$work/results.jsonl"
: >"$results"
record() { # tool step seconds read stored
  printf '{"tool":"%s","step":"%s","seconds":%s,"read":%s,"stored":%s}\n' "$@" >>"$results"
  printf '%-14s %-8s %8.2f s  read %12s  stored %12s\n' "$@"
}
du_b() { du -sb "$1" | cut -f1; }

"$VMBACKUP" init "$work/vault" >/dev/null
vmb() { # domain step
  local t0 t1 out
  t0=$(now)
  out=$("$VMBACKUP" backup --vault "$work/vault" --libvirt "$1" --connect "$uri" --consistency fs --json 2>/dev/null)
  t1=$(now)
  record vmbackup "$2" "$(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }")" \
    "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_read"])')" \
    "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_added"])')"
}
vnb() { # domain level outdir step
  local t0 t1 before log
  before=$(du_b "$3" 2>/dev/null || echo 0)
  log="$work/vnb-$4.log"
  t0=$(now)
  virtnbdbackup -U "$uri" -d "$1" -l "$2" -o "$3" --compress >"$log" 2>&1
  t1=$(now)
  # What it read: the data extents it logged for the disk.
  local read
  read=$(python3 - "$log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.findall(r"[Bb]ackup size.*?:\s*(\d+)", text) or re.findall(r"(\d+) bytes? of data", text)
print(m[-1] if m else "null")
PY
)
  record virtnbdbackup "$4" "$(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }")" "$read" "$(( $(du_b "$3") - before ))"
}

echo "== guest A and its twin: boot, then full backups"
define "$a" "$work/guest/guest.qcow2"
define "$a2" "$work/guest/twin.qcow2"
vmb "$a" full
vnb "$a2" full "$work/vnb-a" full
for i in 1 2 3 4 5; do
  echo "== churn $i inside both: copy a tree, delete an older copy, rewrite 64 MiB, append to a log"
  churn="cp -a /data/usr/share/doc /data/copy-$i; rm -rf /data/copy-$((i - 2)); dd if=/dev/urandom of=/data/rand-$((i % 2)) bs=1M count=64 2>/dev/null; ls -lR /data/usr/share/locale >> /data/listing.log; sync"
  guest "$a" "$churn" &
  guest "$a2" "$churn"
  wait
  if [ $((i % 2)) -eq 1 ]; then
    vmb "$a" "inc$i"
    vnb "$a2" inc "$work/vnb-a" "inc$i"
  else
    vnb "$a2" inc "$work/vnb-a" "inc$i"
    vmb "$a" "inc$i"
  fi
done

echo "== restore the newest point (after five incrementals)"
mkdir -p "$work/restore"
sync
echo 3 >/proc/sys/vm/drop_caches
t0=$(now)
"$VMBACKUP" restore --vault "$work/vault" --vm "$a" --point latest --disk vda --to "$work/restore/vmbackup-vda.img" >/dev/null
t1=$(now)
record vmbackup restore "$(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }")" null "$(du_b "$work/restore/vmbackup-vda.img")"
sync
echo 3 >/proc/sys/vm/drop_caches
t0=$(now)
virtnbdrestore -i "$work/vnb-a" -o "$work/restore/vnb" >"$work/vnb-restore.log" 2>&1
t1=$(now)
record virtnbdbackup restore "$(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }")" null "$(du_b "$work/restore/vnb")"
virsh -q -c "$uri" destroy "$a" >/dev/null
virsh -q -c "$uri" destroy "$a2" >/dev/null

echo "== clones of the same image: each tool's first full backup of a second guest"
define "$b" "$work/guest/clone.qcow2"
define "$b2" "$work/guest/clone2.qcow2"
vmb "$b" clone-full
vnb "$b2" full "$work/vnb-b" clone-full
echo "results: $results"
