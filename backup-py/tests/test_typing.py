"""The stubs as `mypy --strict` reads them: the idioms a user writes pass,
and the mistakes the types can catch are caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

import vmbackup

GOOD = '''
from pathlib import Path
from typing import Union
import vmbackup

def count_points(path: str) -> int:
    # `with` returns from inside: the vault does not swallow exceptions,
    # so mypy sees no missing return.
    with vmbackup.Vault.open(path) as v:
        return len(v.points())

class Memory(vmbackup.BlockDevice):
    def __init__(self, data: bytes) -> None:
        self.data = data
    def size(self) -> int:
        return len(self.data)
    def read_at(self, offset: int, length: int) -> memoryview:
        return memoryview(self.data)[offset:offset + length]

def back_up(v: vmbackup.Vault) -> str:
    p = v.backup("vm", ["a.img", Memory(b"x" * 512)], consistency="filesystem")
    level: str = p.consistency
    v.backup("vm", ("a.img",), min_consistency="crash")
    paths: list[Path] = [Path("a.img")]
    v.backup("vm", paths)  # a list of one kind of disk
    v.backup("vm", {"boot": "a.img", "data": Memory(b"")})
    return level
'''

BAD = '''
import vmbackup

def typo(v: vmbackup.Vault) -> None:
    v.backup("vm", ["a.img"], consistency="filesytem")

def level_typo(p: vmbackup.RecoveryPoint) -> bool:
    return p.consistency == "file-system-consistent"

def one_path(v: vmbackup.Vault) -> None:
    v.backup("vm", "a.img")
'''


def run_mypy(tmp_path: Path, code: str) -> tuple[str, int]:
    src = tmp_path / "user.py"
    src.write_text(code)
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(src)]
    )
    return out + err, status


def test_the_idioms_a_user_writes_pass_mypy_strict(tmp_path: Path) -> None:
    out, status = run_mypy(tmp_path, GOOD)
    assert status == 0, out


def test_consistency_typos_are_type_errors(tmp_path: Path) -> None:
    out, status = run_mypy(tmp_path, BAD)
    assert status == 1, out
    lines = out.splitlines()
    # `backup` is overloaded (see the stub), so mypy names no argument,
    # but the call is refused.
    assert any("user.py:5:" in line and 'No overload variant of "backup"' in line for line in lines), out
    # --strict has --strict-equality: a level that can never be equal.
    assert any("user.py:8:" in line and "Non-overlapping equality" in line for line in lines), out
    # A bare str is a Sequence of str, so `disks` takes lists and tuples.
    assert any("user.py:11:" in line and 'No overload variant of "backup"' in line for line in lines), out


def test_a_bare_path_for_disks_is_a_type_error_at_run_time(vault: vmbackup.Vault) -> None:
    # mypy refuses it (above); the call refuses it too, for untyped code.
    with pytest.raises(TypeError, match="not a single disk"):
        vault.backup("vm", "a.img")  # type: ignore[call-overload]
