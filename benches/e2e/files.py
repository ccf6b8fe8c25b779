#!/usr/bin/env python3
"""Helpers of run.sh: fill a mounted file system with generated files, and
churn it the way a running machine does.

    files.py fill  MOUNT LOG_MIB RANDOM_MIB
    files.py churn MOUNT PERCENT

Everything is seeded, so two runs make the same image.
"""

import os
import random
import shutil
import sys

SERVICES = ["sshd", "nginx", "postgres", "kernel", "systemd", "cron", "dockerd",
            "kubelet", "app-worker", "backup-agent"]
LEVELS = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
MESSAGES = [
    "accepted publickey for {user} from 10.{a}.{b}.{c} port {port} ssh2",
    "GET /api/v1/orders/{id} HTTP/1.1 200 {size} {ms}ms",
    "POST /api/v1/login HTTP/1.1 401 {size} {ms}ms",
    "checkpoint complete: wrote {n} buffers ({pct}%); write={ms}.{c} s",
    "connection reset by peer while reading response header from upstream {a}.{b}",
    "pod {user}-{id} status changed to Running after {ms} ms",
    "session {id} opened for user {user} by (uid=0)",
    "disk /dev/vd{d} latency {ms} ms above threshold",
    "job {id} finished: {n} items processed, {size} bytes, {ms} ms",
    "retrying request {id} (attempt {n}/5): timeout after {ms} ms",
]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


def log_lines(rng, t):
    """Yields log lines forever, with a slowly advancing clock."""
    while True:
        t += rng.random() * 0.05
        secs = int(t)
        msg = rng.choice(MESSAGES).format(
            user=rng.choice(USERS), a=rng.randrange(256), b=rng.randrange(256),
            c=rng.randrange(256), port=rng.randrange(1024, 65536),
            id=rng.randrange(10**9), size=rng.randrange(10**6), ms=rng.randrange(5000),
            n=rng.randrange(10**5), pct=rng.randrange(100), d="abcd"[rng.randrange(4)])
        yield "2026-%02d-%02dT%02d:%02d:%02d.%06dZ host%02d %s[%d]: %s %s\n" % (
            1 + secs // 2_592_000 % 12, 1 + secs // 86400 % 28, secs // 3600 % 24,
            secs // 60 % 60, secs % 60, int((t - secs) * 1e6), rng.randrange(16),
            rng.choice(SERVICES), rng.randrange(1, 32768), rng.choice(LEVELS), msg)


def write_log(path, rng, nbytes, mode="w", t=1.7e9):
    lines = log_lines(rng, t)
    written = 0
    with open(path, mode) as f:
        buf = []
        size = 0
        while written + size < nbytes:
            line = next(lines)
            buf.append(line)
            size += len(line)
            if size > 1 << 20:
                f.write("".join(buf))
                written += size
                buf, size = [], 0
        f.write("".join(buf))
        written += size
    return written


def write_random(path, rng, nbytes):
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(left, 4 << 20)
            f.write(rng.randbytes(n))
            left -= n
    return nbytes


def fill(mount, log_mib, random_mib):
    rng = random.Random(1)
    logs = os.path.join(mount, "var", "log", "app")
    os.makedirs(logs, exist_ok=True)
    per = 16 << 20
    total = log_mib << 20
    i = 0
    while total > 0:
        n = min(per, total)
        write_log(os.path.join(logs, "app-%03d.log" % i), rng, n, t=1.7e9 + i * 86400)
        total -= n
        i += 1
    blobs = os.path.join(mount, "srv", "blobs")
    os.makedirs(blobs, exist_ok=True)
    total = random_mib << 20
    i = 0
    while total > 0:
        n = min(per, total)
        write_random(os.path.join(blobs, "blob-%03d.bin" % i), rng, n)
        total -= n
        i += 1


def all_files(root):
    out = []
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append((p, os.path.getsize(p)))
    out.sort()
    return out


def churn(mount, percent):
    rng = random.Random(2)
    files = all_files(mount)
    data = sum(s for _, s in files)
    budget = data * percent / 100
    done = {"rewritten": 0, "appended": 0, "deleted": 0, "added": 0}

    # 1. Rewrite files the way package updates and editors do: new
    #    content to a temporary file, renamed over the old one.
    share = 0.45 * budget
    candidates = [f for f in files if 4096 <= f[1] <= 8 << 20 and "/var/log/app/" not in f[0]]
    rng.shuffle(candidates)
    for path, size in candidates:
        if done["rewritten"] >= share:
            break
        with open(path, "rb") as f:
            body = bytearray(f.read())
        for _ in range(1 + len(body) // 65536):
            at = rng.randrange(len(body))
            body[at] = (body[at] + 1) % 256
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(body)
        shutil.copystat(path, tmp)
        os.replace(tmp, path)
        done["rewritten"] += size
    # Two random blobs are rewritten in place (a database's data file).
    blobs = sorted(p for p, _ in files if "/srv/blobs/" in p)
    for path in blobs[:2]:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            for _ in range(size // (1 << 20)):
                f.seek(rng.randrange(size - 65536))
                f.write(rng.randbytes(65536))
        done["rewritten"] += (size // (1 << 20)) * 65536

    # 2. Append to the logs.
    logs = sorted(p for p, _ in files if "/var/log/app/" in p)
    share = 0.2 * budget
    for i, path in enumerate(logs):
        n = int(share / len(logs)) if logs else 0
        done["appended"] += write_log(path, rng, n, mode="a", t=1.8e9 + i)

    # 3. Delete a folder.
    for cand in ["usr/share/doc", "usr/share/locale", "usr/include/linux"]:
        victim = os.path.join(mount, cand)
        if os.path.isdir(victim):
            done["deleted"] = sum(s for _, s in all_files(victim))
            shutil.rmtree(victim)
            break

    # 4. A new folder of files: logs of a new service and a few binaries.
    new = os.path.join(mount, "srv", "new-service")
    os.makedirs(new, exist_ok=True)
    share = 0.35 * budget
    i = 0
    while done["added"] < share:
        p = os.path.join(new, "part-%03d" % i)
        if i % 3 == 2:
            done["added"] += write_random(p + ".bin", rng, 2 << 20)
        else:
            done["added"] += write_log(p + ".log", rng, 4 << 20, t=1.9e9 + i)
        i += 1

    changed = done["rewritten"] + done["appended"] + done["added"]
    print("churn: data %d MiB; rewritten %d MiB, appended %d MiB, added %d MiB "
          "(%.1f%% of the data), deleted a folder of %d MiB" % (
              data >> 20, done["rewritten"] >> 20, done["appended"] >> 20,
              done["added"] >> 20, 100.0 * changed / data, done["deleted"] >> 20))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "fill":
        fill(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "churn":
        churn(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
