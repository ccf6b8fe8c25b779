"""Bad arguments, damaged vaults, locks: the right exception each time."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any, Dict

import pytest

import vmbackup
from conftest import MiB, MakeImage, MemoryDisk, flip_byte


def test_exception_hierarchy() -> None:
    for cls in (
        vmbackup.CorruptionError,
        vmbackup.VaultLockedError,
        vmbackup.NotFoundError,
        vmbackup.VmBackupIOError,
        vmbackup.CancelledError,
    ):
        assert issubclass(cls, vmbackup.VmBackupError)
    assert issubclass(vmbackup.VmBackupIOError, OSError)
    assert issubclass(vmbackup.NotFoundError, LookupError)
    assert vmbackup.VaultLockedError.retryable


def test_init_and_open_errors(tmp_path: Path) -> None:
    with pytest.raises(vmbackup.NotFoundError):
        vmbackup.Vault.open(tmp_path / "nothing")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    # Builtin-style handling works: an existing folder or vault is a
    # FileExistsError, and still a VmBackupIOError.
    with pytest.raises(FileExistsError) as fe:
        vmbackup.Vault.init(tmp_path / "busy")
    assert isinstance(fe.value, vmbackup.AlreadyExistsError) and isinstance(fe.value, vmbackup.VmBackupIOError)
    assert fe.value.errno == errno.EEXIST
    vmbackup.Vault.init(tmp_path / "made").close()
    with pytest.raises(vmbackup.AlreadyExistsError):
        vmbackup.Vault.init(tmp_path / "made")
    with pytest.raises(TypeError):
        vmbackup.Vault.init(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        vmbackup.Vault.init(tmp_path / "v", lock_timeout=-1)
    with pytest.raises(TypeError):
        vmbackup.Vault.open(tmp_path, lock_timeout="1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"consistency": "sloppy"}, ValueError),
        ({"consistency": 1}, TypeError),
        ({"block_size": 1000}, ValueError),
        ({"block_size": 8192}, ValueError),
        ({"block_size": 8 << 20}, ValueError),
        ({"block_size": -65536}, ValueError),
        ({"block_size": 1 << 70}, ValueError),
        ({"block_size": 65536.0}, TypeError),
        ({"block_size": True}, TypeError),
        ({"block_size": "65536"}, TypeError),
        ({"progress": 3}, TypeError),
        ({"progress": "print"}, TypeError),
        ({"compression": "lz4"}, TypeError),
    ],
)
def test_bad_backup_options(
    vault: vmbackup.Vault, make_image: MakeImage, kwargs: Dict[str, Any], error: type
) -> None:
    image = make_image("root.img", MiB)
    with pytest.raises(error):
        vault.backup("web", [image], **kwargs)
    assert vault.points() == []


@pytest.mark.parametrize(
    "vm, error",
    [("", ValueError), ("../etc", ValueError), (".hidden", ValueError), ("a/b", ValueError), (7, TypeError), (None, TypeError)],
)
def test_bad_vm_names(vault: vmbackup.Vault, make_image: MakeImage, vm: Any, error: type) -> None:
    with pytest.raises(error):
        vault.backup(vm, [make_image("root.img", MiB)])


def test_bad_disks(vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("root.img", MiB)
    bad: Any
    for bad in (str(image), image, MemoryDisk(b"x"), 5, None, [3], [b"/bytes/path"], [object()], {1: image}):
        with pytest.raises(TypeError):
            vault.backup("web", bad)
    with pytest.raises(ValueError, match="no disks"):
        vault.backup("web", [])
    with pytest.raises(ValueError, match="two disks"):
        vault.backup("web", [image, image])
    with pytest.raises(ValueError):
        vault.backup("web", [""])
    with pytest.raises(vmbackup.VmBackupIOError) as e:
        vault.backup("web", [tmp_path / "missing.img"])
    assert e.value.errno == 2
    assert isinstance(e.value, OSError)
    assert vault.points() == []


def test_bad_block_devices(vault: vmbackup.Vault) -> None:
    class NoSize(MemoryDisk):
        def size(self) -> int:
            return -1

    class WrongSize(MemoryDisk):
        def size(self) -> int:
            return "big"  # type: ignore[return-value]

    class Short(MemoryDisk):
        def read_at(self, offset: int, length: int) -> bytes:
            return b"x"

    class NotBytes(MemoryDisk):
        def read_at(self, offset: int, length: int) -> bytes:
            return 0  # type: ignore[return-value]

    class Broken(MemoryDisk):
        def read_at(self, offset: int, length: int) -> bytes:
            raise RuntimeError("the disk fell off")

    with pytest.raises(ValueError):
        vault.backup("py", [NoSize(b"x" * 100)])
    with pytest.raises(TypeError):
        vault.backup("py", [WrongSize(b"x" * 100)])
    bad_name = MemoryDisk(b"x" * 100)
    bad_name.name = 3  # type: ignore[assignment]
    with pytest.raises(TypeError):
        vault.backup("py", [bad_name])
    with pytest.raises(vmbackup.VmBackupIOError, match="returned 1 bytes"):
        vault.backup("py", [Short(b"x" * 100)])
    with pytest.raises(vmbackup.VmBackupIOError) as e:
        vault.backup("py", [NotBytes(b"x" * 100)])
    assert isinstance(e.value.__cause__, TypeError)
    with pytest.raises(vmbackup.VmBackupIOError, match="fell off") as e:
        vault.backup("py", [Broken(b"x" * 100, name="d")])
    assert isinstance(e.value.__cause__, RuntimeError)
    assert e.value.vm == "py" and e.value.disk == "d" and e.value.offset == 0
    with pytest.raises(TypeError):
        vmbackup.BlockDevice()  # type: ignore[abstract]
    assert vault.points() == []


def test_bad_restore_and_verify_arguments(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    point = vault.backup("web", [make_image("root.img", MiB)])
    bad: Any
    with pytest.raises(vmbackup.NotFoundError):
        vault.restore(point, disk=1, to=tmp_path / "x")
    with pytest.raises(LookupError):
        vault.restore(point, disk=-2, to=tmp_path / "x")
    with pytest.raises(vmbackup.NotFoundError):
        vault.restore(point, disk="data.img", to=tmp_path / "x")
    for bad in (1.0, None, True, b"root.img"):
        with pytest.raises(TypeError):
            vault.restore(point, disk=bad, to=tmp_path / "x")
    for bad in ("root", 3, None):
        with pytest.raises(TypeError):
            vault.restore(bad, disk=0, to=tmp_path / "x")
    with pytest.raises(TypeError):
        vault.restore(point, 0, tmp_path / "x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        vault.restore(point, disk=0, to=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault.restore(point, disk=0)  # type: ignore[call-arg]
    with pytest.raises(vmbackup.VmBackupIOError):
        vault.restore(point, disk=0, to=tmp_path / "no" / "such" / "dir" / "x")
    with pytest.raises(TypeError):
        vault.restore_vm(point, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vault.verify("latest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        vault.verify(point, vm="other")
    with pytest.raises(TypeError):
        vault.points(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        vault.points("../x")
    with pytest.raises(vmbackup.NotFoundError):
        vault.point("web", "nope")
    with pytest.raises(vmbackup.NotFoundError):
        vault.point("nobody")
    # A typo in a VM's name is an error, not an empty list or a clean bill.
    with pytest.raises(vmbackup.NotFoundError, match="points of vm nobody not found"):
        vault.verify(vm="nobody")


def test_verify_finds_a_flipped_byte_in_a_pack(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image("root.img", 4 * MiB)
    point = vault.backup("web", [image])
    packs = sorted((Path(vault.path) / "packs").glob("*.pack"))
    assert packs
    flip_byte(packs[0], packs[0].stat().st_size // 2)

    report = vault.verify()
    assert not report.ok
    ranged = [p for p in report.problems if p.range is not None]
    assert ranged, report.problems
    p = ranged[0]
    assert p.vm == "web" and p.disk == "root.img" and p.point == point.id
    assert p.range is not None and p.start is not None and p.end is not None
    assert 0 <= p.start < p.end <= 4 * MiB
    assert (p.end - p.start) % 65536 == 0
    assert p.what
    assert "bytes" in str(p)
    with pytest.raises(vmbackup.CorruptionError) as e:
        report.check()
    assert e.value.range == (p.start, p.end)
    assert not vault.verify(point).ok

    # The damaged range cannot be restored: an error, never bad data.
    with pytest.raises(vmbackup.CorruptionError) as e:
        vault.restore(point, disk=0, to=tmp_path / "out.img")
    assert e.value.disk == "root.img" and e.value.vm == "web"
    assert e.value.range is not None
    assert e.value.range[0] <= p.start < e.value.range[1]
    assert not (tmp_path / "out.img").exists()


def test_locked_vault(tmp_path: Path, make_image: MakeImage) -> None:
    image = make_image("root.img", MiB)
    with vmbackup.Vault.init(tmp_path / "v", lock_timeout=0.2) as vault:
        fd = os.open(tmp_path / "v" / "lock", os.O_RDWR)
        try:
            # What prune or gc in another process would hold.
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(vmbackup.VaultLockedError) as e:
                vault.backup("web", [image])
            assert e.value.retryable
            assert e.value.path == str(tmp_path / "v")
        finally:
            os.close(fd)
        assert vault.backup("web", [image]).vm == "web"
