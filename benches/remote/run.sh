#!/usr/bin/env bash
# Remote vault benchmark: a full and an incremental backup of the same image
# into a local vault and into a vault on Azurite (the Azure Storage
# emulator, on loopback), side by side, REPS times; prints the medians and
# the ratios remote/local as a Markdown table.
#
#   benches/remote/run.sh [WORKDIR]      (default /var/tmp/vmbackup-remote-bench)
#
# Environment: IMAGE_MIB (default 1024): the image, half random data, a
# quarter text-like, a quarter zeros; CHURN_PERCENT (default 3) of its
# 64 KiB blocks rewritten for the incremental; REPS (default 3);
# VMBACKUP (a binary to use instead of building one in release mode).
# Azurite is installed and started by scripts/azurite.sh on a free port,
# with its data in WORKDIR, and stopped at exit. Each repetition uses a
# fresh vault (a new prefix) and a fresh cache; the page cache stays warm.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="$(realpath -m "${1:-/var/tmp/vmbackup-remote-bench}")"
IMAGE_MIB="${IMAGE_MIB:-1024}"
CHURN_PERCENT="${CHURN_PERCENT:-3}"
REPS="${REPS:-3}"
say() { printf '== %s\n' "$*" >&2; }

if [[ -z "${VMBACKUP:-}" ]]; then
  say "building vmbackup (release)"
  (cd "$REPO" && cargo build --release -q -p backup-cli)
  VMBACKUP="${CARGO_TARGET_DIR:-$REPO/target}/release/vmbackup"
fi
mkdir -p "$W"
rm -rf "$W/azurite" "$W/runs"
eval "$("$REPO/scripts/azurite.sh" start - "$W/azurite")"
trap '"$REPO/scripts/azurite.sh" stop "$VMB_AZURITE_PID"; rm -rf "$W/azurite" "$W/runs"' EXIT
say "azurite on $VMB_AZURITE"

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

secs() { # command... -> wall seconds on stdout
  local t0=$EPOCHREALTIME
  "$@" >/dev/null
  python3 -c "print(f'{$EPOCHREALTIME - $t0:.3f}')"
}
results="$W/results.tsv"
: >"$results"
for rep in $(seq "$REPS"); do
  rm -rf "$W/runs" && mkdir -p "$W/runs"
  ln -f "$W/v1.img" "$W/runs/disk.img"
  local_vault="$W/runs/vault"
  "$VMBACKUP" init "$local_vault" >/dev/null
  url="az://vmbackup/bench-$rep-$RANDOM$RANDOM"
  remote=(--cache "$W/runs/cache" --endpoint "$VMB_AZURITE")
  "$VMBACKUP" init "$url" "${remote[@]}" >/dev/null
  f_local=$(secs "$VMBACKUP" backup --vault "$local_vault" --vm bench --disk "$W/runs/disk.img")
  f_remote=$(secs "$VMBACKUP" backup --vault "$url" "${remote[@]}" --vm bench --disk "$W/runs/disk.img")
  ln -f "$W/v2.img" "$W/runs/disk.img"
  i_local=$(secs "$VMBACKUP" backup --vault "$local_vault" --vm bench --disk "$W/runs/disk.img")
  i_remote=$(secs "$VMBACKUP" backup --vault "$url" "${remote[@]}" --vm bench --disk "$W/runs/disk.img")
  printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$f_local" "$f_remote" "$i_local" "$i_remote" | tee -a "$results" >&2
done
python3 - "$results" "$IMAGE_MIB" <<'PY'
import statistics, sys
rows = [list(map(float, l.split("\t")[1:])) for l in open(sys.argv[1]) if l.strip()]
mib = int(sys.argv[2])
med = [statistics.median(c) for c in zip(*rows)]
print(f"| backup ({mib} MiB image) | local vault | Azurite vault | remote / local |")
print("|---|---|---|---|")
for name, l, r in (("full", med[0], med[1]), ("incremental", med[2], med[3])):
    print(f"| {name} | {l:.2f} s ({mib / l:.0f} MiB/s) | {r:.2f} s ({mib / r:.0f} MiB/s) | {r / l:.2f} |")
print(f"\nmedians of {len(rows)} runs")
PY
