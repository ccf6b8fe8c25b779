#!/usr/bin/env python3
"""Turns run.sh's results.tsv and meta.txt into Markdown tables.

    report.py RESULTS.tsv META.txt

results.tsv: tool, op, rep, wall seconds, peak RSS KiB, repository bytes
after the op (or '-'), CPU seconds (user + system). Medians over the
repetitions are quoted.
"""

import statistics
import sys
from collections import defaultdict

OPS = ["full", "incremental", "restore"]


def main(results, meta_path):
    meta = {}
    with open(meta_path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    rows = defaultdict(list)
    cpu = defaultdict(list)
    stored = defaultdict(dict)
    seen = []
    with open(results) as f:
        for line in f:
            tool, op, rep, secs, rss, repo, *rest = line.rstrip("\n").split("\t")
            if tool not in seen:
                seen.append(tool)
            rows[(tool, op)].append((float(secs), int(rss)))
            if rest:
                cpu[(tool, op)].append(float(rest[0]))
            if repo != "-":
                stored[(tool, rep)][op] = int(repo)

    image = int(meta["image_bytes"])

    def med_secs(tool, op):
        return statistics.median(s for s, _ in rows[(tool, op)])

    def med_rss(tool, op):
        return statistics.median(r for _, r in rows[(tool, op)])

    def med_stored(tool, what):
        vals = []
        for (t, _rep), d in stored.items():
            if t != tool or "full" not in d:
                continue
            if what == "full":
                vals.append(d["full"])
            elif "incremental" in d:
                vals.append(d["incremental"] - d["full"])
        return statistics.median(vals) if vals else None

    def mb(n):
        return "%.0f" % (n / 1e6)

    def mib(kib):
        return "%.0f" % (kib / 1024)

    tools = [t for t in seen if (t, "full") in rows]
    print("Image: %.1f GiB ext4 (%.2f GiB allocated before churn, %.2f GiB after); "
          "%d of its 64 KiB blocks differ after churn (%.0f MB)." % (
              image / 2**30, int(meta["alloc_v1"]) / 2**30, int(meta["alloc_v2"]) / 2**30,
              int(meta["changed_blocks"]), int(meta["changed_blocks"]) * 65536 / 1e6))
    print()
    print("Churn: " + meta.get("churn", "").removeprefix("churn: "))
    print()
    print("Medians of %s repetitions; throughput is the image's size (%.2f GB) over wall "
          "time; peak RSS from /usr/bin/time; stored = `du -sb` of the repository." % (
              meta["reps"], image / 1e9))
    print()
    def med_cpu(tool, op):
        return "%.1f" % statistics.median(cpu[(tool, op)]) if cpu[(tool, op)] else "-"

    print("| tool | full s | full MB/s | stored after full MB | incremental s "
          "| incremental stored MB | restore s | restore MB/s "
          "| peak RSS full / incr / restore MiB | CPU s full / incr / restore |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in tools:
        sf, si, sr = (med_secs(t, op) for op in OPS)
        full_st = med_stored(t, "full")
        inc_st = med_stored(t, "incremental")
        print("| %s | %.2f | %.0f | %s | %.2f | %s | %.2f | %.0f | %s / %s / %s |" % (
            t, sf, image / sf / 1e6, mb(full_st) if full_st is not None else "-",
            si, "%.1f" % (inc_st / 1e6) if inc_st is not None else "-", sr, image / sr / 1e6,
            mib(med_rss(t, "full")), mib(med_rss(t, "incremental")),
            mib(med_rss(t, "restore")))
            + " %s / %s / %s |" % tuple(med_cpu(t, op) for op in OPS))
    print()
    if "borg" not in tools:
        return

    def peak(tool):
        return max(med_rss(tool, op) for op in OPS)

    cache = meta.get("restore_cache", "warm")

    def checks(v):
        return [
            ("full backup throughput, %s / borg" % v, med_secs("borg", "full") / med_secs(v, "full"), ">= 3", lambda r: r >= 3),
            ("incremental speed-up, borg time / %s time" % v, med_secs("borg", "incremental") / med_secs(v, "incremental"), ">= 5", lambda r: r >= 5),
            ("restore speed-up (%s cache), borg time / %s time" % (cache, v), med_secs("borg", "restore") / med_secs(v, "restore"), ">= 3", lambda r: r >= 3),
            ("stored after the full backup, %s / borg" % v, med_stored(v, "full") / med_stored("borg", "full"), "<= 1", lambda r: r <= 1),
            ("incremental stored bytes, %s / borg" % v, med_stored(v, "incremental") / med_stored("borg", "incremental"), "<= 1", lambda r: r <= 1),
            ("peak memory (largest of the three), %s / borg" % v, peak(v) / peak("borg"), "<= 0.5", lambda r: r <= 0.5),
        ]

    for v in (t for t in tools if t.startswith("vmbackup")):
        print("| target | ratio | wanted | met |")
        print("|---|---:|---:|---|")
        for name, r, want, ok in checks(v):
            print("| %s | %.3f | %s | %s |" % (name, r, want, "yes" if ok(r) else "**no**"))
        print()
    floors = [t for t in tools if (t, "read-and-write") in rows]
    if floors:
        print("Restore (%s cache) against its floors: reading the vault's packs alone (`cat`, cold), "
              "writing as many bytes as the restore wrote alone (`dd`, O_DIRECT, then fsync), "
              "and both at once." % cache)
        print()
        print("| tool | restore s | read packs s | write s | both at once s | restore / both at once |")
        print("|---|---:|---:|---:|---:|---:|")
        for t in floors:
            r, p, w, b = (med_secs(t, op) for op in ("restore", "read-packs", "write-image", "read-and-write"))
            print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % (t, r, p, w, b, r / b))
        print()
    print("Versions: vmbackup %s; %s; %s. Repositories and restored images in %s. "
          "Load average (1, 5, 15 min) at start and end: %s." % (
              meta["vmbackup"], meta["borg"], meta["restic"], meta.get("store", "the work folder"),
              meta.get("load", "?")))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
