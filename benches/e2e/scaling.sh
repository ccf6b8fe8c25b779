#!/usr/bin/env bash
# How the full backup scales with its worker threads: full backups of one
# image into a fresh local vault with RAYON_NUM_THREADS=1, 2, 4, 8 (the
# engine's worker pool; the pack-writing threads come on top), the counts
# alternated within each repetition, with the image in the page cache.
#
#   benches/e2e/scaling.sh IMAGE [WORKDIR]
#
# Prints, per thread count, the median wall and CPU seconds, throughput
# (image bytes over wall time) and the speed-up over one thread. On a
# machine with fewer cores than threads the extra threads only share the
# cores: what grows then is the cost of sharing (locks, switches), which
# is what a host with many cores would pay more of.
#
# Environment: THREADS (default "1 2 4 8"), REPS (default 3), VMBACKUP (a
# binary to use instead of building one in release mode).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
IMAGE="$(realpath "${1:?usage: scaling.sh IMAGE [WORKDIR]}")"
W="$(realpath -m "${2:-/var/tmp/vmbackup-scaling}")"
THREADS="${THREADS:-1 2 4 8}"
REPS="${REPS:-3}"
[[ -x /usr/bin/time ]] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }
if [[ -z "${VMBACKUP:-}" ]]; then
    (cd "$REPO" && cargo build --release -p backup-cli --quiet)
    VMBACKUP="${CARGO_TARGET_DIR:-$REPO/target}/release/vmbackup"
fi
mkdir -p "$W"
RES="$W/scaling.tsv"
: >"$RES"
cat "$IMAGE" >/dev/null
for rep in $(seq 1 "$REPS"); do
    for t in $THREADS; do
        V="$W/vault"
        rm -rf "$V"
        "$VMBACKUP" init "$V" >/dev/null
        RAYON_NUM_THREADS=$t /usr/bin/time -f '%e %U %S' -o "$W/time.out" \
            "$VMBACKUP" backup --vault "$V" --vm scaling --disk "$IMAGE" >/dev/null 2>"$W/backup.err"
        read -r secs user sys <"$W/time.out"
        printf '%s\t%s\t%s\t%s\n' "$t" "$rep" "$secs" "$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')" >>"$RES"
        printf '   threads %s rep %s: %s s\n' "$t" "$rep" "$secs" >&2
    done
done
rm -rf "$W/vault"
python3 - "$RES" "$(stat -c %s "$IMAGE")" "$(nproc)" <<'EOF'
import statistics, sys
from collections import defaultdict
wall, cpu = defaultdict(list), defaultdict(list)
for line in open(sys.argv[1]):
    t, _rep, s, c = line.split()
    wall[int(t)].append(float(s))
    cpu[int(t)].append(float(c))
size, cores = int(sys.argv[2]), sys.argv[3]
one = statistics.median(wall[min(wall)])
print("Full backup of a %.2f GiB image, %s cores, medians of %d:" % (size / 2**30, cores, len(wall[min(wall)])))
print()
print("| worker threads | wall s | CPU s | MB/s | speed-up over %d |" % min(wall))
print("|---:|---:|---:|---:|---:|")
for t in sorted(wall):
    w = statistics.median(wall[t])
    print("| %d | %.2f | %.2f | %.0f | %.2f |" % (t, w, statistics.median(cpu[t]), size / w / 1e6, one / w))
EOF
