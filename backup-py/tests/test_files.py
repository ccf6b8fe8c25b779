"""Files out of a point from Python: a real guest disk (GPT, FAT, ext4, XFS
and LVM, made by testkit/guest-disk.sh) backed up twice; its volumes,
listings, contents and extraction match what the guest held; find names
the point that held a deleted file; two points' logical volumes open side
by side; a mounted vault reads as the disk and refuses writes."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import vmbackup

SCRIPT = Path(__file__).resolve().parents[2] / "testkit" / "guest-disk.sh"
TOOLS = ["sfdisk", "mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "mcopy", "pvcreate", "losetup", "fusermount3"]
MISSING = [t for t in TOOLS if shutil.which(t) is None]
REQUIRE_ALL = bool(os.environ.get("VMB_REQUIRE_ALL"))

# In CI (VMB_REQUIRE_ALL set) a missing tool, or not being root, fails the tests.
pytestmark = pytest.mark.skipif(
    (os.geteuid() != 0 or bool(MISSING)) and not REQUIRE_ALL,
    reason=f"needs root and {', '.join(MISSING) or 'nothing else'} (scripts/setup.sh installs the tools)",
)

Points = Tuple[vmbackup.Vault, vmbackup.RecoveryPoint, vmbackup.RecoveryPoint, Path]


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Points]:
    assert os.geteuid() == 0, "the guest-file tests need root"
    assert not MISSING, f"missing {MISSING}"
    d = tmp_path_factory.mktemp("guest")
    subprocess.run([str(SCRIPT), "create", str(d)], check=True)
    with vmbackup.Vault.init(d / "vault") as vault:
        first = vault.backup("g", [d / "disk.img"])
        subprocess.run([str(SCRIPT), "change", str(d)], check=True)
        second = vault.backup("g", [d / "disk.img"])
        yield vault, first, second, d


def test_volumes_listings_and_contents_match_the_guest(points: Points) -> None:
    vault, first, _, d = points
    with vault.guest_disk(first, "disk.img") as disk:
        assert disk.table == "gpt"
        got = [(v.name, v.type, v.label, v.has_files) for v in disk.volumes]
        assert got == [
            ("p1", "vfat", "EFI", True),
            ("p2", "ext4", "root", True),
            ("p3", "xfs", "data", True),
            ("p4", "LVM2_member", None, False),
            ("vgdata/home", "unknown", None, False),
            ("vgdata/root", "ext4", "lvroot", True),
        ]
        with disk.open_fs("p2") as fs:
            names = [e.path for e in fs.list("/etc")]
            assert names == ["/etc/fstab", "/etc/fstab.link", "/etc/ssh"]
            want = os.lstat(d / "expect-1/p2/etc/fstab")
            e = fs.stat("/etc/fstab")
            assert (e.kind, e.size, e.mode, e.uid, e.gid, e.mtime_ns) == (
                "file", want.st_size, want.st_mode & 0o7777, want.st_uid, want.st_gid, want.st_mtime_ns
            )
            assert e.mtime.timestamp() == pytest.approx(want.st_mtime, abs=1e-6)
            link = fs.stat("/etc/fstab.link")
            assert link.kind == "symlink" and link.target == "/etc/fstab"
            # The guest's absolute link resolves in the guest, not on this host.
            assert fs.read("/etc/fstab.link") == (d / "expect-1/p2/etc/fstab").read_bytes()
            assert fs.read("/home/alice/photo.jpg") == (d / "expect-1/p2/home/alice/photo.jpg").read_bytes()
            walked = {e.path for e in fs.walk()}
            assert {"/", "/home/alice/ssh", "/srv", "/lost+found"} <= walked
            with pytest.raises(vmbackup.NotFoundError, match="/nope"):
                fs.stat("/nope")
        with disk.open_fs("p1") as efi:
            assert efi.read("/EFI/BOOT/BOOTX64.EFI") == (d / "expect-1/p1/EFI/BOOT/BOOTX64.EFI").read_bytes()
        with pytest.raises(vmbackup.GuestError, match="LVM2_member"):
            disk.open_fs("p4")
        with pytest.raises(vmbackup.NotFoundError, match="p9"):
            disk.open_fs("p9")


def test_extract_keeps_modes_owners_and_times(points: Points, tmp_path: Path) -> None:
    vault, _, second, d = points
    with vault.guest_disk(second, 0) as disk, disk.open_fs("p3") as fs:
        report = fs.extract("/logs", tmp_path)
        assert report["files"] == 1 and report["dirs"] == 2
        for rel in ["logs", "logs/2026", "logs/2026/app.log"]:
            got, want = os.lstat(tmp_path / rel), os.lstat(d / "expect-2/p3" / rel)
            assert (got.st_mode, got.st_uid, got.st_gid, got.st_mtime_ns) == (
                want.st_mode, want.st_uid, want.st_gid, want.st_mtime_ns
            ), rel
        assert (tmp_path / "logs/2026/app.log").read_bytes() == (d / "expect-2/p3/logs/2026/app.log").read_bytes()
        with pytest.raises(vmbackup.AlreadyExistsError):
            fs.extract("/logs", tmp_path)


def test_find_and_two_points_side_by_side(points: Points) -> None:
    vault, first, second, _ = points
    found = vault.find_files("g", "old.log")
    assert [(f.point, f.volume, f.entry.path) for f in found] == [(first.id, "p3", "/logs/old.log")]
    added = vault.find_files("g", "/etc/*.conf")
    assert [(f.point, f.entry.path) for f in added] == [(second.id, "/etc/new.conf")]
    with vault.guest_disk(first, "disk.img") as a, vault.guest_disk(second, "disk.img") as b:
        # The same file systems and volume group in both (the EFI partition was remade).
        assert [v.uuid for v in a.volumes[1:]] == [v.uuid for v in b.volumes[1:]]
        with a.open_fs("vgdata/root") as la, b.open_fs("vgdata/root") as lb:
            assert (la.read("/var/version"), lb.read("/var/version")) == (b"lv one\n", b"lv two\n")


def test_a_mounted_vault_reads_as_the_disk_and_refuses_writes(points: Points, tmp_path: Path) -> None:
    vault, _, second, d = points
    at = tmp_path / "mnt"
    at.mkdir()
    with vault.mount(at, vm="g", point=second.id) as m:
        assert m.mounted and m.mountpoint == str(at)
        image = at / "g" / second.id / "disk.img"
        want = (d / "disk.img").read_bytes()
        rng = random.Random(7)
        with open(image, "rb") as f:
            for _ in range(30):
                offset = rng.randrange(len(want) - 70_000)
                f.seek(offset)
                assert f.read(70_000) == want[offset : offset + 70_000], offset
        with pytest.raises(OSError) as e:
            open(image, "r+b")
        assert e.value.errno == errno.EROFS
        assert m.errors() == []
    assert not m.mounted
    assert list(at.iterdir()) == []
