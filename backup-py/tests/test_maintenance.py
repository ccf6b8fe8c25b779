"""Prune by a policy's retention rules, then gc."""

from __future__ import annotations

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

    report = vault.prune(POLICY, vm="web")
    assert not report.dry_run
    assert [id for _, id in report.removed] == [p.id for p in points[:2]]
    assert report.job_logs_removed == []  # they outlive their points by 90 days
    assert [p.id for p in vault.points("web")] == [p.id for p in points[2:]]

    gc = vault.gc(grace=0)
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
    with pytest.raises(TypeError):
        vault.prune(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        vault.gc(grace=-1)
