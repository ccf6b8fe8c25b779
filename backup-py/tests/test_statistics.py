"""One backup's statistics read through Rust (the manifest the engine
wrote), C (libvmbackup through ctypes), Python and the command line's
--json: every statistic has one name and one meaning, so all four agree
field by field, for the point and for each disk."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

import vmbackup
from conftest import MiB, MakeImage, MemoryDisk

CLI = os.environ.get("VMB_CLI", "")
LIB = os.environ.get("VMB_LIBVMBACKUP", "")
REQUIRE_ALL = bool(os.environ.get("VMB_REQUIRE_ALL"))

# In CI (VMB_REQUIRE_ALL set) a missing command or library fails the test.
pytestmark = pytest.mark.skipif(
    not (CLI and LIB) and not REQUIRE_ALL,
    reason="VMB_CLI and VMB_LIBVMBACKUP are not set (scripts/test-python.sh builds and sets them)",
)

COUNTS = [
    "bytes_scanned",
    "bytes_read",
    "bytes_zero",
    "bytes_unchanged",
    "bytes_new",
    "bytes_deduplicated",
    "bytes_stored",
    "bytes_dirty",
    "audited_blocks",
]
FIELDS = COUNTS + ["change_detection", "seconds"]


class CStats(ctypes.Structure):
    """`vmb_backup_stats` as include/vmbackup.h declares it."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("bytes_scanned", ctypes.c_uint64),
        ("bytes_read", ctypes.c_uint64),
        ("bytes_zero", ctypes.c_uint64),
        ("bytes_unchanged", ctypes.c_uint64),
        ("bytes_new", ctypes.c_uint64),
        ("bytes_deduplicated", ctypes.c_uint64),
        ("bytes_stored", ctypes.c_uint64),
        ("bytes_added", ctypes.c_uint64),
        ("seconds", ctypes.c_double),
        ("bytes_dirty", ctypes.c_uint64),
        ("audited_blocks", ctypes.c_uint64),
        ("change_detection", ctypes.c_char_p),
    ]


def c_stats(vault: Path, vm: str, point_id: str) -> Dict[str, Any]:
    lib = ctypes.CDLL(LIB)
    lib.vmb_last_error.restype = ctypes.c_char_p
    handle, point = ctypes.c_void_p(), ctypes.c_void_p()

    def ok(status: int) -> None:
        assert status == 0, lib.vmb_last_error().decode()

    ok(lib.vmb_vault_open(str(vault).encode(), ctypes.byref(handle)))
    try:
        ok(lib.vmb_vault_find_point(handle, vm.encode(), point_id.encode(), ctypes.byref(point)))
        try:
            total = CStats()
            ok(lib.vmb_point_stats(point, ctypes.byref(total)))
            count = ctypes.c_size_t()
            ok(lib.vmb_point_disk_count(point, ctypes.byref(count)))
            disks = []
            for i in range(count.value):
                d = CStats()
                ok(lib.vmb_point_disk_stats(point, ctypes.c_size_t(i), ctypes.byref(d)))
                disks.append(as_dict(d))
            return {"point": as_dict(total), "disks": disks}
        finally:
            lib.vmb_point_free(point)
    finally:
        lib.vmb_vault_free(handle)


def as_dict(s: CStats) -> Dict[str, Any]:
    assert s.struct_size == ctypes.sizeof(CStats), "the library fills the whole struct"
    out: Dict[str, Any] = {f[0]: getattr(s, f[0]) for f in CStats._fields_ if f[0] != "struct_size"}
    out["change_detection"] = s.change_detection.decode()
    return out


def py_dict(s: vmbackup.BackupStats) -> Dict[str, Any]:
    return {f: getattr(s, f) for f in FIELDS + ["bytes_added"]}


def test_one_backup_has_the_same_statistics_in_rust_c_python_and_json(
    vault: vmbackup.Vault, make_image: MakeImage
) -> None:
    root = make_image("root.img", 4 * MiB, seed=21)
    data = MemoryDisk(b"\x07" * MiB + bytes(MiB), "data")
    vault.backup("web", [root, data])
    with open(root, "r+b") as f:
        f.seek(MiB)
        f.write(b"changed")
    point = vault.backup("web", {"root.img": root, "data": data})
    assert point.stats.bytes_new == 65536 and point.stats.bytes_unchanged > 0

    # Rust: the manifest the engine serialized (a plain vault: JSON, then its MAC).
    manifest_file = Path(vault.path) / "points" / "web" / point.id
    rust = json.loads(manifest_file.read_text().splitlines()[0])
    rust_point = dict(rust["stats"])
    rust_disks = [d["stats"] for d in rust["disks"]]

    cli = json.loads(
        subprocess.run(
            [CLI, "list", "--vault", vault.path, "--vm", "web", "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    (json_point,) = [p for p in cli["points"] if p["point"] == point.id]

    c = c_stats(Path(vault.path), "web", point.id)
    python_point = py_dict(point.stats)

    for field in FIELDS:
        values = {
            "rust": rust_point[field],
            "c": c["point"][field],
            "python": python_point[field],
            "json": json_point[field],
        }
        assert len({json.dumps(v) for v in values.values()}) == 1, (field, values)
    added = {
        "rust": rust_point["bytes_added"],
        "c": c["point"]["bytes_added"],
        "python": python_point["bytes_added"],
        "json": json_point["bytes_added"],
    }
    assert len(set(added.values())) == 1 and added["python"] > python_point["bytes_stored"], added
    # The point's change detection is its disks', each once.
    assert python_point["change_detection"] == "compare"

    assert len(point.disks) == len(rust_disks) == len(c["disks"]) == len(json_point["disks"]) == 2
    for i, disk in enumerate(point.disks):
        py = py_dict(disk.stats)
        for field in FIELDS:
            values = {
                "rust": rust_disks[i][field],
                "c": c["disks"][i][field],
                "python": py[field],
                "json": json_point["disks"][i][field],
            }
            assert len({json.dumps(v) for v in values.values()}) == 1, (disk.name, field, values)
        # bytes_added is a point's: None in Python, 0 in C, absent elsewhere.
        assert py["bytes_added"] is None and c["disks"][i]["bytes_added"] == 0
        assert "bytes_added" not in json_point["disks"][i] and "bytes_added" not in rust_disks[i]
    # The totals are the disks' sums.
    for field in COUNTS:
        assert python_point[field] == sum(getattr(d.stats, field) for d in point.disks), field
    assert python_point["seconds"] == max(d.stats.seconds for d in point.disks)
