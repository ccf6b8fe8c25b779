#!/usr/bin/env python3
"""A soak under load: a benchmark script, not a test.

For --minutes (default 10), VMS (default 8) backups run at once into one
vault, each VM's worker changing its image between backups, beside a
verify loop, a prune loop, a gc loop and a restore loop; random SIGKILLs
hit backups (--kill-backups, default 0.2 of them, at a random moment of
a backup's usual length) and gc runs (--kill-gc, 0.2, within 2 s).
Every point that appears is recorded with the SHA-256 of the image it was
taken from. During the run each restore must equal its point's image. At
the end, after a last gc: verify must be clean and every surviving point
must restore bit for bit. The figures (jobs, kills, bytes moved, data
lost) are printed as a Markdown table row for RELIABILITY.md, and the
script exits non-zero if anything was lost or any step failed.

    python3 benches/reliability/soak.py --store local
    python3 benches/reliability/soak.py --store azurite   # starts its own Azurite

--binary defaults to target/release/vmbackup (built when missing).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 64 << 10
POLICY = 'timezone = "UTC"\n[schedule]\nfrequency = "daily"\ntimes = ["02:00"]\n[retention]\nkeep_last = 4\n'


class Soak:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.bin = args.binary
        self.vault = None
        self.extra = ["--lock-timeout", "600"]
        self.lock = threading.Lock()
        self.expected = {}  # (vm, point) -> sha256 of the image
        self.figures = {
            "backups started": 0, "backups committed": 0, "backups killed": 0,
            "killed but committed": 0, "gc runs": 0, "gc killed": 0, "prune runs": 0,
            "verify runs": 0, "restores checked": 0, "restores of pruned points": 0,
            "bytes read": 0, "bytes added": 0, "data lost": 0,
        }
        self.failures = []
        self.stop = threading.Event()
        self.rng = random.Random(args.seed)

    # -- plumbing -------------------------------------------------------
    def cmd(self, *a):
        return [self.bin, *a, "--vault", self.vault, *self.extra]

    def run(self, *a, timeout=900):
        return subprocess.run(self.cmd(*a), capture_output=True, text=True, timeout=timeout)

    def fail(self, what, proc=None):
        msg = what if proc is None else f"{what}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        with self.lock:
            self.failures.append(msg)
        print("FAIL", msg, file=sys.stderr, flush=True)

    def count(self, key, n=1):
        with self.lock:
            self.figures[key] += n

    def points(self, vm=None):
        """Every point of the vault (or of one VM) as (vm, id)."""
        p = self.run("list", "--json", *(["--vm", vm] if vm else []))
        if p.returncode != 0:
            if vm and "not found" in p.stderr:
                return []
            self.fail("list", p)
            return []
        return [(x["vm"], x["point"]) for x in json.loads(p.stdout)["points"]]

    def rand(self):
        with self.lock:
            return self.rng.random()

    # -- the workers ----------------------------------------------------
    def backup_worker(self, vm):
        img = os.path.join(self.work, f"{vm}.img")
        size = self.args.size_mib << 20
        r = random.Random(int(vm[2:]) * 7919 + self.args.seed)
        with open(img, "wb") as f:
            for _ in range(size // BLOCK):
                f.write(os.urandom(BLOCK) if r.random() < 0.6 else bytes(BLOCK))
        durations = []
        while not self.stop.is_set():
            # Change a few blocks, then back up; the image is still until
            # this worker's backup has ended.
            with open(img, "r+b") as f:
                for _ in range(r.randint(1, 24)):
                    f.seek(r.randrange(size // BLOCK) * BLOCK)
                    f.write(os.urandom(BLOCK) if r.random() < 0.8 else bytes(BLOCK))
            with open(img, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            before = set(self.points(vm))
            self.count("backups started")
            child = subprocess.Popen(self.cmd("backup", "--vm", vm, "--disk", img, "--json"),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            killed = False
            began = time.monotonic()
            if r.random() < self.args.kill_backups:
                # At a random moment of a backup's usual length (the median
                # of this VM's last ones), so that most kills land mid-run.
                usual = sorted(durations)[len(durations) // 2] if durations else 1.0
                try:
                    child.wait(timeout=r.uniform(0, usual))
                except subprocess.TimeoutExpired:
                    child.send_signal(signal.SIGKILL)
                    killed = True
            out, err = child.communicate()
            if not killed:
                durations = (durations + [time.monotonic() - began])[-20:]
            new = set(self.points(vm)) - before
            if len(new) > 1:
                self.fail(f"backup of {vm} made {len(new)} points")
            for p in new:
                with self.lock:
                    self.expected[p] = digest
            if killed:
                self.count("backups killed")
                if new:
                    self.count("killed but committed")
            elif child.returncode != 0:
                self.fail(f"backup of {vm}: exit {child.returncode}: {err.strip()[-2000:]}")
            else:
                self.count("backups committed")
                stats = json.loads(out)
                self.count("bytes read", stats["bytes_read"])
                self.count("bytes added", stats["bytes_added"])
                if not new:
                    self.fail(f"backup of {vm} succeeded and left no point")

    def loop(self, every, body):
        while not self.stop.wait(every * (0.5 + self.rand())):
            body()

    def verify_once(self):
        p = self.run("verify")
        self.count("verify runs")
        if p.returncode != 0:
            self.fail("verify", p)

    def prune_once(self):
        p = self.run("prune", "--policy", os.path.join(self.work, "policy.toml"))
        self.count("prune runs")
        if p.returncode != 0:
            self.fail("prune", p)

    def gc_once(self):
        child = subprocess.Popen(self.cmd("gc", "--grace", "0"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        self.count("gc runs")
        if self.rand() < self.args.kill_gc:
            try:
                child.wait(timeout=self.rand() * 2)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                child.communicate()
                self.count("gc killed")
                return
        _, err = child.communicate()
        if child.returncode != 0:
            self.fail(f"gc: exit {child.returncode}: {err.strip()[-2000:]}")

    def restore_check(self, vm, point, out):
        """Restores one point; True when it equals its image."""
        p = self.run("restore", "--vm", vm, "--point", point, "--disk", f"{vm}.img", "--to", out)
        if p.returncode != 0:
            if (vm, point) not in self.points(vm):
                self.count("restores of pruned points")
                return True
            self.fail(f"restore {vm} {point}", p)
            return False
        with open(out, "rb") as f:
            same = hashlib.sha256(f.read()).hexdigest() == self.expected[(vm, point)]
        os.remove(out)
        self.count("restores checked")
        if not same:
            self.count("data lost")
            self.fail(f"point {point} of {vm} does not restore bit for bit")
        return same

    def restore_once(self):
        # A point that exists now (prune may still remove it meanwhile).
        now = self.points()
        with self.lock:
            known = [p for p in now if p in self.expected]
        if known:
            vm, point = known[int(self.rand() * len(known))]
            self.restore_check(vm, point, os.path.join(self.work, "restore-loop.img"))

    # -- the run --------------------------------------------------------
    def main(self):
        with open(os.path.join(self.work, "policy.toml"), "w") as f:
            f.write(POLICY)
        p = subprocess.run([self.bin, "init", self.vault, *self.extra], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"init: {p.stderr}")
        started = time.monotonic()
        vms = [f"vm{i}" for i in range(self.args.vms)]
        threads = [threading.Thread(target=self.backup_worker, args=(vm,)) for vm in vms]
        threads += [
            threading.Thread(target=self.loop, args=(20, self.verify_once)),
            threading.Thread(target=self.loop, args=(15, self.prune_once)),
            threading.Thread(target=self.loop, args=(10, self.gc_once)),
            threading.Thread(target=self.loop, args=(2, self.restore_once)),
        ]
        for t in threads:
            t.start()
        deadline = started + self.args.minutes * 60
        while time.monotonic() < deadline and not self.failures:
            time.sleep(1)
        self.stop.set()
        for t in threads:
            t.join()
        loaded = time.monotonic() - started
        # The end: a last gc (what killed runs left), verify, every point.
        p = self.run("gc", "--grace", "0")
        if p.returncode != 0:
            self.fail("last gc", p)
        p = self.run("verify")
        if p.returncode != 0:
            self.fail("last verify", p)
        left = self.points()
        for vm, point in left:
            if (vm, point) not in self.expected:
                self.fail(f"point {point} of {vm} appeared from nowhere")
                continue
            self.restore_check(vm, point, os.path.join(self.work, "final.img"))
        f = self.figures
        print(f"\n{self.args.store} vault, {self.args.vms} VMs of {self.args.size_mib} MiB, {loaded / 60:.1f} min under load:")
        for k, v in f.items():
            print(f"  {k}: {v:,}")
        print(f"  points left: {len(left)}, all restored bit for bit at the end: {not self.failures}")
        print(f"\n| soak, {self.args.store} ({loaded / 60:.1f} min, {self.args.vms} backups at once) "
              f"| {f['backups started']} backups, {f['verify runs']} verifies, {f['prune runs']} prunes, "
              f"{f['gc runs']} gcs, {f['restores checked']} restores "
              f"| {f['backups killed']} backups and {f['gc killed']} gcs SIGKILLed; "
              f"{f['bytes read'] / 2**30:.1f} GiB read, {f['bytes added'] / 2**30:.2f} GiB added; "
              f"{len(left)} points left, each restored bit for bit; final verify clean "
              f"| {f['data lost']} |")
        if self.failures:
            print(f"\n{len(self.failures)} failures; the first: {self.failures[0]}", file=sys.stderr)
            return 1
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", choices=["local", "azurite"], default="local")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--kill-backups", type=float, default=0.2)
    ap.add_argument("--kill-gc", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "vmbackup"))
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "-p", "backup-cli"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="vmbackup-soak-")
    soak = Soak(args, work)
    azurite_pid = None
    try:
        if args.store == "local":
            soak.vault = os.path.join(work, "vault")
        else:
            out = subprocess.run([os.path.join(ROOT, "scripts", "azurite.sh"), "start", "-",
                                  os.path.join(work, "azurite")], capture_output=True, text=True, check=True).stdout
            env = dict(w.split("=", 1) for w in out.split() if "=" in w)
            azurite_pid = env["VMB_AZURITE_PID"]
            soak.vault = f"az://vmbackup/soak-{os.getpid()}"
            soak.extra += ["--endpoint", env["VMB_AZURITE"], "--cache", os.path.join(work, "cache")]
        return soak.main()
    finally:
        if azurite_pid:
            subprocess.run([os.path.join(ROOT, "scripts", "azurite.sh"), "stop", azurite_pid])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
