"""Prune by a policy's retention rules, then gc."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

import vmbackup
from conftest import MiB, MakeImage

POLICY = """
timezone = "UTC"
[schedule]
frequency = "daily"
times = ["02:00"]
[retention]
keep_last = 2
"""


def test_prune_then_gc_keeps_what_the_rules_keep(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    for seed in range(4):
        image = make_image("root.img", 2 * MiB, seed=10 + seed)
        vault.backup("web", [image])
    points = vault.points("web")
    assert len(points) == 4

    dry = vault.prune(POLICY, dry_run=True)
    assert dry.dry_run
    assert dry.removed == [("web", p.id) for p in points[:2]]
    assert dry.kept == 2
    assert len(vault.points("web")) == 4

    # A prune needs only the retention rules: no [schedule] table.
    retention_only = 'timezone = "UTC"\n[retention]\nkeep_last = 2\n'
    assert vault.prune(retention_only, dry_run=True).removed == dry.removed
    report = vault.prune(POLICY, vm="web")
    assert not report.dry_run
    assert [id for _, id in report.removed] == [p.id for p in points[:2]]
    assert report.job_logs_removed == []  # they outlive their points by 90 days
    assert [p.id for p in vault.points("web")] == [p.id for p in points[2:]]

    # Pruned points are soft-deleted for 14 days: gc keeps their data
    # until then, and reclaims it after (a rehearsal, fifteen days on).
    held = vault.gc(grace=0)
    assert (held.deleted_points_kept, held.bytes_removed) == (2, 0)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=15)
    gc = vault.gc(grace=0, now=later)
    assert gc.deleted_points_purged == 2
    assert gc.points == 2
    assert gc.bytes_removed >= 2 * MiB  # two points of 1 MiB of random data each
    assert "GcReport(" in repr(gc)
    assert vault.verify().ok
    out = tmp_path / "restored.img"
    vault.restore(points[3], disk="root.img", to=out)
    assert out.read_bytes() == image.read_bytes()


def test_a_bad_policy_is_a_value_error_naming_the_field(vault: vmbackup.Vault) -> None:
    with pytest.raises(ValueError, match="retention.keep_last"):
        vault.prune(POLICY.replace("keep_last = 2", "keep_last = 0"))
    # A schedule, when given, is checked with the rules it constrains.
    weekly = POLICY.replace('frequency = "daily"', 'frequency = "weekly"\ndays = ["mon"]').replace(
        "keep_last = 2", "keep_last = 2\ndaily = { days = 7 }"
    )
    with pytest.raises(ValueError, match="retention.daily"):
        vault.prune(weekly)
    with pytest.raises(TypeError):
        vault.prune(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        vault.gc(grace=-1)


def test_a_policy_object_prunes_as_its_text_does(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    for seed in range(3):
        vault.backup("web", [make_image("root.img", 2 * MiB, seed=30 + seed)])
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = vmbackup.Policy.load(path)
    assert policy.summary() == vmbackup.Policy.from_toml(POLICY).summary()
    assert any("retention" in line for line in policy.summary())
    report = vault.prune(policy)
    assert len(report.removed) == 1 and report.kept == 2
    with pytest.raises(ValueError, match="keep_last"):
        vmbackup.Policy.from_toml(POLICY.replace("keep_last = 2", "keep_last = 0"))
    with pytest.raises(vmbackup.VmBackupIOError):
        vmbackup.Policy.load(tmp_path / "missing.toml")


def test_gc_rewrites_packs_past_the_repack_threshold(
    vault: vmbackup.Vault, make_image: MakeImage
) -> None:
    first = make_image("root.img", 4 * MiB, seed=40)
    vault.backup("web", [first])
    data = bytearray(first.read_bytes())
    for block in range(0, len(data) // 65536, 2):  # every other block of the random MiBs
        data[block * 65536] ^= 0xFF
    first.write_bytes(bytes(data))
    vault.backup("web", [first])
    vault.prune(POLICY.replace("keep_last = 2", "keep_last = 1"))
    # The pruned point's days as soft-deleted, over (a rehearsal).
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=15)
    none = vault.gc(grace=0, repack_threshold=1.0, dry_run=True, now=later)
    assert none.packs_repacked == 0 and none.packs_marked == 0
    report = vault.gc(grace=0, repack_threshold=0.2, now=later)
    assert report.packs_repacked > 0 and report.bytes_copied > 0
    assert vault.verify().ok


def test_repair_and_an_allow_damaged_restore_read_past_a_damaged_chunk(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image("root.img", 4 * MiB, seed=50)
    point = vault.backup("web", [image])
    pack = sorted((vault.path / "packs").iterdir())[0]
    raw = bytearray(pack.read_bytes())
    raw[16 + 56 + 100] ^= 0x40  # in the first frame's payload
    pack.write_bytes(bytes(raw))

    out = tmp_path / "out.img"
    with pytest.raises(vmbackup.CorruptionError):
        vault.restore(point, disk="root.img", to=out)

    report = vault.repair()
    assert not report.nothing_lost
    assert report.dropped == 1
    assert [p for p, _ in report.rebuilt] == [pack.stem]
    assert report.lost and report.lost[0].point == point.id
    assert "RepairReport(" in repr(report)

    stats = vault.restore(point, disk="root.img", to=out, allow_damaged=True)
    assert len(stats.damaged) == 1
    start, end, why = stats.damaged[0]
    assert end - start == 65536 and why
    got, want = out.read_bytes(), image.read_bytes()
    assert got[:start] == want[:start] and got[end:] == want[end:]
    assert got[start:end] == bytes(end - start)
