"""Instant-restore tiers from Python on a real reflink file system: an XFS
image, loop-mounted (root), holds the VM's disk image. A backup with
`instant_restore_days` keeps the image's reflink clone after its job; the
point is then in the snapshot and vault tiers, restores from the clone
while the VM writes on, and once released has the vault tier only."""

from __future__ import annotations

import datetime
import os
import random
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import vmbackup

REQUIRE_ALL = bool(os.environ.get("VMB_REQUIRE_ALL"))
MiB = 1 << 20

# In CI (VMB_REQUIRE_ALL set) not being root fails the test instead of skipping it.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not REQUIRE_ALL, reason="not root: a loop-mounted XFS needs it"
)


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A 300 MiB XFS with reflinks, loop-mounted; unmounted afterwards."""
    assert os.geteuid() == 0, "not root: a loop-mounted XFS needs it"
    image = tmp_path / "xfs.img"
    with open(image, "wb") as f:
        f.truncate(300 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], check=True)
    mount = tmp_path / "xfs"
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-d", str(mount)], check=True)


def clones(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "vmbackup-snap" in p.name)


def test_a_kept_snapshot_is_a_tier_restored_from_and_released_after_its_days(xfs: Path) -> None:
    disk = xfs / "root.img"
    first = random.Random(1).randbytes(8 * MiB)
    disk.write_bytes(first)
    with vmbackup.Vault.init(xfs / "vault") as vault:
        point = vault.backup("web", [disk], instant_restore_days=2)
        assert vault.tiers(point) == ["snapshot", "vault"]
        [kept] = vault.kept_snapshots()
        assert (kept.vm, kept.point) == ("web", point.id)
        assert kept.expires - kept.taken == datetime.timedelta(days=2)
        [(name, clone)] = kept.disks
        assert name == "root.img" and clone.parent == xfs
        assert clones(xfs) == [clone.name]

        # The VM writes on; the snapshot tier still holds the point.
        disk.write_bytes(random.Random(2).randbytes(8 * MiB))
        stats = vault.restore_from_snapshot(point, disk=0, to=xfs / "from-snapshot.img")
        assert stats is not None and stats.size == 8 * MiB
        assert (xfs / "from-snapshot.img").read_bytes() == first

        # Not expired yet: kept. At its expiry: released, clone and record.
        report = vault.release_expired(now=point.time)
        assert report.released == [] and [k.point for k in report.kept] == [point.id]
        # `expires` is to the microsecond, the record to the nanosecond.
        later = kept.expires + datetime.timedelta(seconds=1)
        report = vault.release_expired(vm="web", now=later)
        assert [(k.point, why) for k, why in report.released] == [(point.id, "expired")]
        assert report.problems == []
        assert clones(xfs) == []
        assert vault.tiers(point) == ["vault"]
        assert vault.kept_snapshots("web") == []
        assert vault.restore_from_snapshot(point, disk="root.img", to=xfs / "again.img") is None
        assert not (xfs / "again.img").exists()
        vault.restore(point, disk=0, to=xfs / "from-vault.img")
        assert (xfs / "from-vault.img").read_bytes() == first


def test_bad_arguments_are_refused_before_anything_is_kept(vault: vmbackup.Vault, tmp_path: Path) -> None:
    disk = tmp_path / "root.img"
    disk.write_bytes(bytes(MiB))
    with pytest.raises(ValueError, match="instant restore days"):
        vault.backup("web", [disk], instant_restore_days=31)
    assert vault.points() == []
    with pytest.raises(ValueError, match="time-zone aware"):
        vault.release_expired(now=datetime.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="datetime"):
        vault.release_expired(now=5)  # type: ignore[arg-type]
    # On ext4 or tmpfs (no reflinks) nothing can be kept: the vault tier only.
    point = vault.backup("web", [disk], instant_restore_days=1)
    assert vault.tiers(point) == ["vault"]
    assert vault.kept_snapshots() == []
