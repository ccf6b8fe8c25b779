"""Backups and restores of image files and Python devices."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

import pytest

import vmbackup
from conftest import MiB, MakeImage, MemoryDisk


def test_version_is_the_packages() -> None:
    assert isinstance(vmbackup.__version__, str)
    assert vmbackup.__version__.count(".") == 2


def test_full_and_incremental_round_trip(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    root = make_image("root.img", 8 * MiB, seed=1)
    data = make_image("data.img", 3 * MiB + 12345, seed=2)

    first = vault.backup("web", [root, str(data)])
    assert first.vm == "web"
    assert first.parent is None
    assert first.consistency == "crash"
    assert [d.name for d in first.disks] == ["root.img", "data.img"]
    assert [d.size for d in first.disks] == [8 * MiB, 3 * MiB + 12345]
    assert all(d.block_size == 65536 for d in first.disks)
    assert first.stats.bytes_read > 0
    assert first.stats.bytes_stored > 0
    assert first.stats.seconds >= 0
    assert first.stats.bytes_scanned == 11 * MiB + 12345
    assert isinstance(first.time, datetime.datetime)
    assert first.time.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - first.time).total_seconds()) < 60

    # One block of one disk changes.
    with open(root, "r+b") as f:
        f.seek(5 * MiB + 7)
        f.write(b"changed")
    second = vault.backup("web", [root, data])
    assert second.parent == first.id
    assert second.stats.bytes_new == 65536
    assert second.stats.bytes_stored < first.stats.bytes_stored / 10
    assert second.disks[1].stats.bytes_new == 0

    assert vault.points("web") == [first, second]
    assert first != second and first != first.id and len({first, second, vault.point("web")}) == 2
    assert repr(first).startswith("RecoveryPoint(vm='web', id=")
    assert vault.points() == [first, second]
    with pytest.raises(vmbackup.NotFoundError, match="points of vm nobody not found"):
        vault.points("nobody")
    assert vault.point("web") == second
    assert vault.point("web", first.id[:20]) == first
    assert vault.vms() == ["web"]

    # Restore by index and by name, both points.
    out = tmp_path / "out"
    out.mkdir()
    vault.restore(second, disk=0, to=out / "root-2.img")
    assert (out / "root-2.img").read_bytes() == root.read_bytes()
    stats = vault.restore(first, disk="data.img", to=str(out / "data-1.img"))
    assert stats.disk == "data.img"
    assert stats.size == 3 * MiB + 12345
    assert (out / "data-1.img").read_bytes() == data.read_bytes()
    vault.restore(first, disk=-2, to=out / "root-1.img")
    assert (out / "root-1.img").read_bytes() != root.read_bytes()

    vm_dir = tmp_path / "vm"
    restored = vault.restore_vm(second, vm_dir)
    assert sorted(s.disk for s in restored) == ["data.img", "root.img"]
    assert (vm_dir / "root.img").read_bytes() == root.read_bytes()
    assert (vm_dir / "data.img").read_bytes() == data.read_bytes()

    report = vault.verify()
    assert report.ok
    assert report.problems == []
    assert report.points == 2
    report.check()
    assert vault.verify(second).ok


def test_block_device_subclass_as_a_disk(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image("root.img", 2 * MiB)
    payload = os.urandom(MiB) + bytes(MiB) + b"tail" * 1000
    disk = MemoryDisk(payload, name="memory")
    point = vault.backup("mixed", [image, disk], block_size=16384)
    assert [d.name for d in point.disks] == ["root.img", "memory"]
    assert point.disks[1].snapshot_method == "python"
    assert point.disks[1].block_size == 16384
    assert disk.reads > 0

    vault.restore(point, disk="memory", to=tmp_path / "memory.img")
    assert (tmp_path / "memory.img").read_bytes() == payload

    # Incremental from Python: a changed block is the only new one.
    changed = bytearray(payload)
    changed[100] ^= 1
    again = vault.backup("mixed", [image, MemoryDisk(bytes(changed), name="memory")])
    assert again.disks[1].stats.bytes_new == 16384
    vault.restore(again, disk=1, to=tmp_path / "memory2.img")
    assert (tmp_path / "memory2.img").read_bytes() == bytes(changed)


def test_unnamed_devices_and_disks_by_name(vault: vmbackup.Vault, tmp_path: Path) -> None:
    a, b = MemoryDisk(b"a" * 70000), MemoryDisk(b"b" * 5000)
    p = vault.backup("anon", [a, b])
    assert [d.name for d in p.disks] == ["disk0", "disk1"]
    q = vault.backup("named", {"sda": a, "sdb": b})
    assert [d.name for d in q.disks] == ["sda", "sdb"]
    vault.restore(q, disk="sdb", to=tmp_path / "sdb")
    assert (tmp_path / "sdb").read_bytes() == b"b" * 5000


def test_read_at_may_return_bytearray_or_memoryview(vault: vmbackup.Vault, tmp_path: Path) -> None:
    class Views(MemoryDisk):
        def read_at(self, offset: int, length: int) -> bytes:
            chunk = self.data[offset : offset + length]
            return memoryview(chunk) if offset % 2 else bytearray(chunk)  # type: ignore[return-value]

    data = os.urandom(300_000)
    p = vault.backup("views", [Views(data, "d")], block_size=16384)
    vault.restore(p, disk=0, to=tmp_path / "d")
    assert (tmp_path / "d").read_bytes() == data


def test_vault_open_and_context_manager(tmp_path: Path, make_image: MakeImage) -> None:
    image = make_image("root.img", MiB)
    with vmbackup.Vault.init(tmp_path / "v") as v:
        point = v.backup("web", [image])
        vault_id = v.id
        assert v.path == tmp_path / "v"
    assert v.closed
    with pytest.raises(ValueError, match="closed"):
        v.points()
    reopened = vmbackup.Vault.open(str(tmp_path / "v"))
    assert reopened.id == vault_id
    assert reopened.points() == [point]
    assert "Vault(" in repr(reopened)
    reopened.close()
    reopened.close()


def cached_pack_bytes(vault: Path) -> int:
    """Bytes of the vault's packs in the page cache (`fincore`)."""
    packs = [str(p) for p in (vault / "packs").rglob("*.pack")]
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *packs],
        check=True, capture_output=True, text=True,
    ).stdout
    return sum(int(line) for line in out.split())


def test_page_cache_use_is_as_asked(tmp_path: Path, make_image: MakeImage) -> None:
    """Packs are written around the page cache unless `buffered_io`, and
    read around it for restores with `direct_io`; every way restores the
    same bytes from the others' packs."""
    image = make_image("root.img", 5 * MiB + 4096, seed=3)
    want_first = image.read_bytes()
    with vmbackup.Vault.init(tmp_path / "v") as v:
        first = v.backup("web", [image])
    assert cached_pack_bytes(tmp_path / "v") == 0
    with vmbackup.Vault.open(tmp_path / "v", direct_io=True) as v:
        v.restore(first, disk="root.img", to=tmp_path / "out.img")
    assert cached_pack_bytes(tmp_path / "v") == 0
    assert (tmp_path / "out.img").read_bytes() == want_first
    changed = make_image("root.img", 5 * MiB + 4096, seed=4)
    with vmbackup.Vault.open(tmp_path / "v", buffered_io=True) as v:
        second = v.backup("web", [changed])
        assert cached_pack_bytes(tmp_path / "v") > 0
        v.restore(first, disk=0, to=tmp_path / "first.img")
        v.restore(second, disk=0, to=tmp_path / "second.img")
        assert v.verify().ok
    assert (tmp_path / "first.img").read_bytes() == want_first
    assert (tmp_path / "second.img").read_bytes() == changed.read_bytes()


def test_point_of_another_vault_is_not_found(
    tmp_path: Path, vault: vmbackup.Vault, make_image: MakeImage
) -> None:
    image = make_image("root.img", MiB)
    with vmbackup.Vault.init(tmp_path / "other") as other:
        foreign = other.backup("web", [image])
    with pytest.raises(vmbackup.NotFoundError):
        vault.restore(foreign, disk=0, to=tmp_path / "x")


class SparseDisk(vmbackup.BlockDevice):
    """A 64 MiB disk with data in two places; reading a hole is an error."""

    name = "sparse"
    data_ranges = [(MiB, MiB + 100), (40 * MiB, 41 * MiB)]

    def __init__(self) -> None:
        self.read_bytes = 0

    def size(self) -> int:
        return 64 * MiB

    def allocated(self, start: int, end: int) -> list[tuple[int, int]] | None:
        return [(s, e) for s, e in self.data_ranges if s < end and e > start]

    def read_at(self, offset: int, length: int) -> bytes:
        if not any(s < offset + length and e > offset for s, e in self.data_ranges):
            raise AssertionError(f"read a hole at {offset}")
        self.read_bytes += length
        return bytes(
            0x5A if any(s <= i < e for s, e in self.data_ranges) else 0
            for i in range(offset, offset + length)
        )


def test_block_device_allocated_skips_holes(vault: vmbackup.Vault, tmp_path: Path) -> None:
    disk = SparseDisk()
    point = vault.backup("sparse", [disk])
    assert disk.read_bytes == 65536 + MiB
    assert point.stats.bytes_read == 65536 + MiB
    vault.restore(point, disk=0, to=tmp_path / "sparse.img")
    restored = (tmp_path / "sparse.img").read_bytes()
    assert len(restored) == 64 * MiB
    assert restored[MiB : MiB + 100] == b"\x5a" * 100
    assert restored[MiB + 100 : 40 * MiB].count(0) == 39 * MiB - 100

    class Unsorted(SparseDisk):
        data_ranges = [(40 * MiB, 41 * MiB), (MiB, MiB + 100)]

        def allocated(self, start: int, end: int) -> list[tuple[int, int]] | None:
            return list(self.data_ranges)

    with pytest.raises(vmbackup.VmBackupIOError) as e:
        vault.backup("sparse", [Unsorted()])
    assert isinstance(e.value.__cause__, ValueError)
    assert vault.points() == [point]


def test_asking_more_consistency_than_image_files_give_warns_or_fails(
    vault: vmbackup.Vault, make_image: MakeImage
) -> None:
    image = make_image("root.img", 2 * MiB)
    # Image files are read as they are: asking for more is a warning on the
    # point, as the command line prints it, not a silent downgrade.
    p = vault.backup("web", [image, MemoryDisk(b"d" * MiB, "data")], consistency="application")
    assert (p.wanted_consistency, p.consistency) == ("application", "crash")
    assert any("asked for application consistency, got crash" in w for w in p.warnings), p.warnings
    # Under a minimum it cannot meet, the backup fails and commits nothing.
    with pytest.raises(vmbackup.VmBackupError, match="at least filesystem consistency is required"):
        vault.backup("web", [image], consistency="application", min_consistency="filesystem")
    assert vault.points("web") == [p]
    with pytest.raises(ValueError):
        vault.backup("web", [image], min_consistency="perfect")  # type: ignore[call-overload]
