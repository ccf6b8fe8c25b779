#!/usr/bin/env bash
# How soon a lost VM answers again: `vmbackup instant-restore` (the guest
# runs at once on overlays over vmbackup's export while block pull moves
# the data) beside `vmbackup restore --to-libvirt --start` (every disk
# restored first, then the boot), on the 4 GiB guest of the libvirt
# benchmark with real files. For each: seconds until the guest agent
# answers `guest-ping`, and until the command is done (for the instant
# recovery: the data moved and the export stopped). Rounds alternate the
# order; the page cache is dropped before each run (a recovery comes long
# after its backup). Prints one line per run, then medians, and writes
# results.jsonl into WORK.
#
# usage: sudo benches/recovery/run.sh WORK    (needs root, libvirt from
#        scripts/setup.sh, about 12 GB free; 10 to 20 minutes on two cores)
# env:   VMBACKUP=path of a release vmbackup (default: built here)
#        SIZE_MIB=guest disk size (4096)   ROUNDS=3
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:?usage: benches/recovery/run.sh WORK}"
size="${SIZE_MIB:-4096}"
rounds="${ROUNDS:-3}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
chmod 0755 "$work"
cd "$root"
scripts/setup.sh
if [ -z "${VMBACKUP:-}" ]; then
  cargo build --release -q -p backup-cli
  VMBACKUP="${CARGO_TARGET_DIR:-target}/release/vmbackup"
fi
VMBACKUP="$(realpath "$VMBACKUP")"
eval "$(scripts/libvirtd.sh start)"
uri="$VMB_LIBVIRT_URI"
src="vmb-rbench-$$"
inst="vmb-rbench-instant-$$"
full="vmb-rbench-full-$$"
cleanup() {
  for d in "$src" "$inst" "$full"; do
    virsh -q -c "$uri" destroy "$d" >/dev/null 2>&1 || true
    virsh -q -c "$uri" undefine "$d" --checkpoints-metadata >/dev/null 2>&1 || true
  done
  scripts/libvirtd.sh stop "${VMB_LIBVIRTD_PIDS:-}"
}
trap cleanup EXIT

echo "== the guest: ${size} MiB disk with real files (/usr/lib/x86_64-linux-gnu, /usr/share, /usr/lib/gcc)"
rm -rf "$work/guest" "$work/vault" "$work/pool"
mkdir -p "$work/guest" "$work/pool"
chmod 0755 "$work/guest" "$work/pool"
GUEST_DATA="/usr/lib/x86_64-linux-gnu /usr/share /usr/lib/gcc" scripts/test-guest.sh "$work/guest" "$size" >/dev/null
cat >"$work/$src.xml" <<XML
<domain type='qemu'><name>$src</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<features><acpi/></features><os><type arch='x86_64' machine='pc'>hvm</type>
<kernel>$work/guest/vmlinuz</kernel><initrd>$work/guest/initrd.img</initrd>
<cmdline>root=/dev/vda rw init=/sbin/init console=ttyS0 quiet</cmdline></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$work/guest/guest.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<serial type='file'><source path='$work/$src.console'/><target port='0'/></serial></devices></domain>
XML
virsh -q -c "$uri" define "$work/$src.xml" >/dev/null
virsh -q -c "$uri" start "$src" >/dev/null

pings() { virsh -q -c "$uri" qemu-agent-command "$1" '{"execute":"guest-ping"}' >/dev/null 2>&1; }
# Seconds since $t0 until the agent of domain $1 answers.
until_agent() {
  for _ in $(seq 6000); do
    if pings "$1"; then
      python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0"
      return 0
    fi
    sleep 0.1
  done
  echo "the agent of $1 never answered" >&2
  exit 1
}
now() { python3 -c 'import time; print(time.time())'; }
since() { python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$1"; }
remove() {
  virsh -q -c "$uri" destroy "$1" >/dev/null 2>&1 || true
  virsh -q -c "$uri" undefine "$1" >/dev/null 2>&1 || true
  rm -f "$work/pool/$1"-*
}
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }

t0=$(now)
until_agent "$src" >/dev/null
"$VMBACKUP" init "$work/vault" >/dev/null
"$VMBACKUP" backup --vault "$work/vault" --libvirt "$src" --connect "$uri" --consistency fs --json >"$work/backup.json"
data=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_read"])' "$work/backup.json")
echo "backed up: $data bytes read of ${size} MiB"
# The VM is gone.
virsh -q -c "$uri" destroy "$src" >/dev/null

: >"$work/results.jsonl"
instant_run() {
  cold
  t0=$(now)
  "$VMBACKUP" instant-restore --vault "$work/vault" --vm "$src" --to-libvirt "$inst" --pool "$work/pool" \
    --connect "$uri" >"$work/instant.out" 2>"$work/instant.err" &
  local pid=$!
  local agent
  agent=$(until_agent "$inst")
  wait "$pid"
  local done_s
  done_s=$(since "$t0")
  echo "instant-restore: agent answers after $agent s; data moved, export stopped after $done_s s"
  echo "{\"round\": $1, \"tool\": \"instant-restore\", \"agent_seconds\": $agent, \"done_seconds\": $done_s}" >>"$work/results.jsonl"
  remove "$inst"
}
full_run() {
  cold
  t0=$(now)
  "$VMBACKUP" restore --vault "$work/vault" --vm "$src" --to-libvirt "$full" --pool "$work/pool" --start \
    --connect "$uri" >"$work/full.out" 2>"$work/full.err"
  local restored
  restored=$(since "$t0")
  local agent
  agent=$(until_agent "$full")
  echo "restore --to-libvirt --start: restored after $restored s; agent answers after $agent s"
  echo "{\"round\": $1, \"tool\": \"restore-then-boot\", \"agent_seconds\": $agent, \"done_seconds\": $restored}" >>"$work/results.jsonl"
  remove "$full"
}
for r in $(seq "$rounds"); do
  echo "== round $r"
  if [ $((r % 2)) -eq 1 ]; then instant_run "$r"; full_run "$r"; else full_run "$r"; instant_run "$r"; fi
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda tool, key: statistics.median(r[key] for r in rows if r["tool"] == tool)
ia, fa = med("instant-restore", "agent_seconds"), med("restore-then-boot", "agent_seconds")
print(f"median seconds to a guest agent that answers: instant-restore {ia:.1f}, restore then boot {fa:.1f} "
      f"({fa / ia:.2f}x as long)")
print(f"median seconds until done: instant-restore (data moved) {med('instant-restore', 'done_seconds'):.1f}, "
      f"restore (before the boot) {med('restore-then-boot', 'done_seconds'):.1f}")
PY
