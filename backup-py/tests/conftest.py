"""Fixtures: a fresh vault and disk images in a temporary folder."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable, Iterator

import pytest

import vmbackup

MiB = 1 << 20

MakeImage = Callable[..., Path]


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[vmbackup.Vault]:
    """A new, empty vault, closed after the test."""
    with vmbackup.Vault.init(tmp_path / "vault") as v:
        yield v


@pytest.fixture
def make_image(tmp_path: Path) -> MakeImage:
    """Writes a raw image: `size` bytes, random data in every other MiB
    (the rest zeros), reproducible from `seed`."""

    def make(name: str, size: int = 4 * MiB, seed: int = 1) -> Path:
        rng = random.Random(seed)
        data = bytearray(size)
        for start in range(0, size, 2 * MiB):
            end = min(start + MiB, size)
            data[start:end] = rng.randbytes(end - start)
        path = tmp_path / name
        path.write_bytes(bytes(data))
        return path

    return make


class MemoryDisk(vmbackup.BlockDevice):
    """A disk held in memory, as a Python host would implement one."""

    def __init__(self, data: bytes, name: str | None = None) -> None:
        self.data = data
        self.name = name
        self.reads = 0

    def size(self) -> int:
        return len(self.data)

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.data[offset : offset + length]


def flip_byte(path: Path, offset: int) -> None:
    """Inverts one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
