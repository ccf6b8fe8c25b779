#!/usr/bin/env bash
# Remote vault benchmark: a full and an incremental backup of the same image
# into a local vault and into a vault on an object store on loopback, side
# by side, REPS times; prints the medians and the ratios remote/local as a
# Markdown table, then the CPU seconds the full backups cost vmbackup and
# the store (on a two-core machine they share the cores, so the wall time
# of a remote backup is bound by both).
#
#   benches/remote/run.sh [WORKDIR]      (default /var/tmp/vmbackup-remote-bench)
#
# Environment: STORE: azurite (default; Azure Blob's emulator, Node.js,
# installed and started by scripts/azurite.sh) or s3s (s3s-fs, an S3 server
# in Rust over a folder, installed with cargo into $VMB_S3S_HOME, default
# /var/tmp/vmbackup-s3s); IMAGE_MIB (default 1024): the image, half random
# data, a quarter text-like, a quarter zeros; CHURN_PERCENT (default 3) of
# its 64 KiB blocks rewritten for the incremental; REPS (default 3);
# VMBACKUP (a binary to use instead of building one in release mode). The
# store runs on a free port with its data in WORKDIR and is stopped at exit.
# Each repetition uses a fresh vault (a new prefix) and a fresh cache; the
# page cache stays warm.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="$(realpath -m "${1:-/var/tmp/vmbackup-remote-bench}")"
IMAGE_MIB="${IMAGE_MIB:-1024}"
CHURN_PERCENT="${CHURN_PERCENT:-3}"
REPS="${REPS:-3}"
STORE="${STORE:-azurite}"
say() { printf '== %s\n' "$*" >&2; }

if [[ -z "${VMBACKUP:-}" ]]; then
  say "building vmbackup (release)"
  (cd "$REPO" && cargo build --release -q -p backup-cli)
  VMBACKUP="${CARGO_TARGET_DIR:-$REPO/target}/release/vmbackup"
fi
mkdir -p "$W"
rm -rf "$W/store" "$W/runs"
case "$STORE" in
  azurite)
    eval "$("$REPO/scripts/azurite.sh" start - "$W/store")"
    trap '"$REPO/scripts/azurite.sh" stop "$VMB_AZURITE_PID"; rm -rf "$W/store" "$W/runs"' EXIT
    store_pid=$VMB_AZURITE_PID endpoint=$VMB_AZURITE scheme=az store_name="Azurite"
    ;;
  s3s)
    # 0.14.1: the last release that builds with this machine's rustc 1.95.
    s3s_home="${VMB_S3S_HOME:-/var/tmp/vmbackup-s3s}"
    if [[ ! -x "$s3s_home/bin/s3s-fs" ]]; then
      say "installing s3s-fs 0.14.1 from crates.io into $s3s_home"
      cargo install -q --locked s3s-fs@0.14.1 --features binary --root "$s3s_home"
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
    mkdir -p "$W/store/vmbackup"
    export AWS_ACCESS_KEY_ID=vmbackup-bench AWS_SECRET_ACCESS_KEY=vmbackup-bench-secret AWS_REGION=us-east-1
    "$s3s_home/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
      --secret-key "$AWS_SECRET_ACCESS_KEY" "$W/store" >"$W/s3s.log" 2>&1 &
    store_pid=$! endpoint="http://127.0.0.1:$port" scheme=s3 store_name="s3s-fs"
    trap 'kill "$store_pid"; rm -rf "$W/store" "$W/runs"' EXIT
    for _ in $(seq 100); do curl -s -o /dev/null "$endpoint" && break; sleep 0.1; done
    ;;
  *) echo "STORE is azurite or s3s, not $STORE" >&2; exit 2 ;;
esac
say "$store_name on $endpoint"

say "images: $IMAGE_MIB MiB, $CHURN_PERCENT% of blocks churned"
python3 - "$W" "$IMAGE_MIB" "$CHURN_PERCENT" <<'PY'
import os, random, sys
w, mib, churn = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(1)
block = 64 << 10
words = [b"backup", b"vault", b"chunk", b"segment", b"manifest", b"point", b"disk", b"the", b"of", b"and"]
with open(os.path.join(w, "v1.img"), "wb") as f:
    for i in range(mib * 16):
        kind = i % 4
        if kind < 2:
            f.write(rng.randbytes(block))
        elif kind == 2:
            text = b" ".join(rng.choice(words) for _ in range(block // 4))
            f.write(text[:block].ljust(block, b"\n"))
        else:
            f.write(bytes(block))
with open(os.path.join(w, "v1.img"), "rb") as src, open(os.path.join(w, "v2.img"), "wb") as dst:
    dst.write(src.read())
with open(os.path.join(w, "v2.img"), "r+b") as f:
    n = mib * 16
    for i in rng.sample(range(n), int(n * churn / 100)):
        f.seek(i * block)
        f.write(rng.randbytes(block))
PY
cat "$W/v1.img" "$W/v2.img" >/dev/null

secs() { # command... -> "wall cpu" seconds on stdout (cpu: user + system)
  python3 -c '
import resource, subprocess, sys, time
t = time.monotonic()
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{time.monotonic() - t:.3f} {r.ru_utime + r.ru_stime:.3f}")' "$@"
}
store_cpu() { # the store's CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$store_pid/stat"
}
results="$W/results.tsv"
: >"$results"
for rep in $(seq "$REPS"); do
  rm -rf "$W/runs" && mkdir -p "$W/runs"
  ln -f "$W/v1.img" "$W/runs/disk.img"
  local_vault="$W/runs/vault"
  "$VMBACKUP" init "$local_vault" >/dev/null
  url="$scheme://vmbackup/bench-$rep-$RANDOM$RANDOM"
  remote=(--cache "$W/runs/cache" --endpoint "$endpoint")
  "$VMBACKUP" init "$url" "${remote[@]}" >/dev/null
  read -r f_local f_local_cpu < <(secs "$VMBACKUP" backup --vault "$local_vault" --vm bench --disk "$W/runs/disk.img")
  s0=$(store_cpu)
  read -r f_remote f_remote_cpu < <(secs "$VMBACKUP" backup --vault "$url" "${remote[@]}" --vm bench --disk "$W/runs/disk.img")
  f_store_cpu=$(python3 -c "print(round($(store_cpu) - $s0, 2))")
  ln -f "$W/v2.img" "$W/runs/disk.img"
  read -r i_local _ < <(secs "$VMBACKUP" backup --vault "$local_vault" --vm bench --disk "$W/runs/disk.img")
  read -r i_remote _ < <(secs "$VMBACKUP" backup --vault "$url" "${remote[@]}" --vm bench --disk "$W/runs/disk.img")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$f_local" "$f_remote" "$i_local" "$i_remote" \
    "$f_local_cpu" "$f_remote_cpu" "$f_store_cpu" | tee -a "$results" >&2
done
python3 - "$results" "$IMAGE_MIB" "$store_name" <<'PY'
import statistics, sys
rows = [list(map(float, l.split("\t")[1:])) for l in open(sys.argv[1]) if l.strip()]
mib, store = int(sys.argv[2]), sys.argv[3]
med = [statistics.median(c) for c in zip(*rows)]
print(f"| backup ({mib} MiB image) | local vault | {store} vault | remote / local |")
print("|---|---|---|---|")
for name, l, r in (("full", med[0], med[1]), ("incremental", med[2], med[3])):
    print(f"| {name} | {l:.2f} s ({mib / l:.0f} MiB/s) | {r:.2f} s ({mib / r:.0f} MiB/s) | {r / l:.2f} |")
print(f"\nmedians of {len(rows)} runs; CPU of the full backups (user + system): vmbackup {med[4]:.2f} s local,")
print(f"{med[5]:.2f} s remote ({med[5] / med[4]:.2f}x); the store {med[6]:.2f} s")
PY
