"""Soft delete: deleted points are listed, undeleted and restored bit for
bit; gc keeps their data until their days are over; a vault whose soft
delete is always on refuses to turn it off."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

import vmbackup
from conftest import MiB, MakeImage

UTC = datetime.timezone.utc


def test_a_deleted_point_comes_back_whole_and_goes_for_good_after_its_days(
    vault: vmbackup.Vault, make_image: MakeImage, tmp_path: Path
) -> None:
    first = make_image("root.img", 2 * MiB, seed=1)
    first_bytes = first.read_bytes()
    p1 = vault.backup("web", [first])
    second = make_image("root.img", 2 * MiB, seed=2)
    p2 = vault.backup("web", [second])
    settings = vault.settings()
    assert (settings.soft_delete_days, settings.soft_delete_always_on) == (14, False)

    gone = vault.delete("web", p1.id)
    assert gone.point.id == p1.id
    assert gone.recoverable_until is not None
    days = (gone.recoverable_until - datetime.datetime.now(UTC)).total_seconds() / 86400
    assert 13.9 < days <= 14.0
    assert [p.id for p in vault.points("web")] == [p2.id]
    [deleted] = vault.deleted_points()
    assert deleted.point.id == p1.id
    assert deleted.purge_after - deleted.deleted == datetime.timedelta(days=14)
    assert vault.deleted_points("web")[0].point.id == p1.id
    assert "DeletedPoint(" in repr(deleted)

    held = vault.gc(grace=0, repack_threshold=0.0)
    assert (held.deleted_points_kept, held.chunks_removed, held.segments_removed) == (1, 0, 0)

    back = vault.undelete("web", p1.id[:18])
    assert back.id == p1.id
    out = tmp_path / "restored.img"
    vault.restore(back, disk="root.img", to=out)
    assert out.read_bytes() == first_bytes
    with pytest.raises(vmbackup.NotFoundError):
        vault.undelete("web", p1.id)

    vault.delete("web", p1.id)
    later = datetime.datetime.now(UTC) + datetime.timedelta(days=15)
    purged = vault.gc(grace=0, now=later)
    assert purged.deleted_points_purged == 1
    assert purged.bytes_removed >= MiB  # 2 MiB of random data only p1 held
    assert vault.deleted_points() == []
    with pytest.raises(vmbackup.NotFoundError):
        vault.undelete("web", p1.id)
    assert vault.verify().ok
    with pytest.raises(ValueError, match="time-zone aware"):
        vault.gc(now=datetime.datetime.now())


def test_soft_delete_off_and_always_on(vault: vmbackup.Vault, make_image: MakeImage) -> None:
    image = make_image("root.img", MiB, seed=3)
    vault.backup("web", [image])
    off = vault.configure(soft_delete_days=0)
    assert off.soft_delete_days == 0
    gone = vault.delete("web", "latest")
    assert gone.recoverable_until is None
    assert vault.deleted_points() == []

    on = vault.configure(soft_delete_days=7, soft_delete_always_on=True)
    assert on == vault.settings()
    assert (on.soft_delete_days, on.soft_delete_always_on) == (7, True)
    for days in (0, 6):
        with pytest.raises(vmbackup.ProtectedError, match="always on") as refused:
            vault.configure(soft_delete_days=days)
        assert isinstance(refused.value, PermissionError)
    assert vault.configure(soft_delete_days=30).soft_delete_days == 30
    with pytest.raises(ValueError, match="soft_delete_days"):
        vault.configure(soft_delete_days=-1)
    with pytest.raises(TypeError):
        vault.configure(soft_delete_days="7")  # type: ignore[arg-type]
    assert "VaultSettings(soft_delete_days=30, soft_delete_always_on=True)" == repr(vault.settings())
