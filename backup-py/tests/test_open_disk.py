"""`Vault.open_disk`: a point's disk as a standard read-only binary file,
read from the vault at random offsets and equal to what restore writes."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

import vmbackup
from conftest import MiB, MakeImage


def test_random_reads_match_the_restored_image(vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image("root.img", size=5 * MiB + 777, seed=4)
    first = vault.backup("web", [image])
    data = bytearray(image.read_bytes())
    data[MiB - 100 : MiB + 5000] = random.Random(5).randbytes(5100)
    image.write_bytes(bytes(data))
    second = vault.backup("web", [image])

    rng = random.Random(6)
    for point in (first, second):
        restored = tmp_path / f"{point.id}.img"
        vault.restore(point, disk="root.img", to=restored)
        want = restored.read_bytes()
        with vault.open_disk(point, "root.img") as disk:
            assert isinstance(disk, io.RawIOBase)
            assert disk.readable() and disk.seekable() and not disk.writable()
            assert disk.size == len(want) and disk.name == "root.img" and disk.point == point.id
            for _ in range(200):
                offset = rng.randrange(len(want))
                size = rng.choice([1, 511, 4096, 70_000, 2 * MiB])
                disk.seek(offset)
                assert disk.read(size) == want[offset : offset + size], (offset, size)
            # readinto, the end of the disk, and seeks from the end.
            buffer = bytearray(1000)
            disk.seek(-300, io.SEEK_END)
            assert disk.readinto(buffer) == 300 and bytes(buffer[:300]) == want[-300:]
            assert disk.read(10) == b"" and disk.tell() == len(want)
            disk.seek(0)
            assert disk.read() == want
        assert disk.closed
        with pytest.raises(ValueError):
            disk.read(1)

    # A buffered reader over it, as libraries that parse images use.
    with vault.open_disk(second, -1) as raw, io.BufferedReader(raw, buffer_size=64 * 1024) as buffered:
        buffered.seek(MiB - 100)
        assert buffered.read(5100) == data[MiB - 100 : MiB + 5000]


def test_unknown_disks_and_closed_vaults_raise(vault: vmbackup.Vault, make_image: MakeImage) -> None:
    point = vault.backup("web", [make_image("root.img", size=MiB)])
    with pytest.raises(vmbackup.NotFoundError, match="swap"):
        vault.open_disk(point, "swap")
    with pytest.raises(vmbackup.NotFoundError):
        vault.open_disk(point, 3)
    disk = vault.open_disk(point, 0)
    with pytest.raises(ValueError):
        disk.seek(-1)
    vault.close()
    # The file keeps the vault it was opened on until it is closed.
    assert len(disk.read(100)) == 100
    disk.close()
    disk.close()


def test_damaged_data_raises_naming_the_range(tmp_path: Path, make_image: MakeImage) -> None:
    with vmbackup.Vault.init(tmp_path / "v") as vault:
        point = vault.backup("web", [make_image("root.img", size=3 * MiB)])
        for pack in (tmp_path / "v" / "packs").rglob("*.pack"):
            raw = bytearray(pack.read_bytes())
            middle = len(raw) // 2
            raw[middle : middle + 16] = bytes(b ^ 0x5A for b in raw[middle : middle + 16])
            pack.write_bytes(bytes(raw))
        with vault.open_disk(point, "root.img") as disk:
            with pytest.raises(vmbackup.CorruptionError, match=r"disk root.img of point .*bytes \d+"):
                disk.read()
