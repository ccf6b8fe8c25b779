"""Soft delete: deleted points are listed, undeleted and restored bit for
bit; gc keeps their data until their days are over; a vault whose soft
delete is always on refuses to turn it off. An immutable vault on S3 (the
server scripts/test starts, named in VMB_S3) locks what it writes."""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import uuid
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
    assert vault.store_lock() == "unavailable"  # a folder: the host's permissions protect it

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
    assert "VaultSettings(soft_delete_days=30, soft_delete_always_on=True, immutable_days=0)" == repr(
        vault.settings()
    )
    vault.backup("web", [image])
    assert vault.configure(immutable_days=7).immutable_days == 7
    with pytest.raises(vmbackup.ProtectedError, match="immutable for 7 days"):
        vault.delete("web", "latest")
    with pytest.raises(vmbackup.ProtectedError, match="can only grow"):
        vault.configure(immutable_days=6)
    assert len(vault.points("web")) == 1


def test_points_copy_to_an_encrypted_second_site_moving_only_what_it_lacks(
    vault: vmbackup.Vault, tmp_path: Path
) -> None:
    first = tmp_path / "root.img"
    first_bytes = random.Random(5).randbytes(2 * MiB)  # no block twice
    first.write_bytes(first_bytes)
    p1 = vault.backup("web", [first])
    data = bytearray(first_bytes)
    data[:65536] = bytes(65536)  # one block changes (to zeros: stored as none)
    first.write_bytes(bytes(data))
    p2 = vault.backup("web", [first])
    with vmbackup.Vault.init(tmp_path / "there", passphrase="second site") as there:
        seen: list[tuple[int, int]] = []
        latest = vault.copy_to(there, progress=lambda done, total: seen.append((done, total)))
        assert [c.id for c in latest.copied] == [p2.id]
        assert latest.copied[0].bytes_lacked == 2 * MiB - 65536
        assert latest.bytes_added == latest.copied[0].bytes_added > 0
        assert seen and seen[-1] == (2 * MiB, 2 * MiB)
        # The VM's record (what preparing it found) comes along; no point booted.
        assert (latest.vm_records_copied, latest.verdicts_copied) == (["web"], [])
        rest = vault.copy_to(there, vms=["web"], points="all")
        assert rest.vm_records_copied == []  # the target's is as new
        assert [c.id for c in rest.copied] == [p1.id]
        assert rest.copied[0].bytes_lacked == 65536  # the one block p2 changed
        assert rest.already_there == [("web", p2.id)]
        since = vault.copy_to(there, points=datetime.datetime(2000, 1, 1, tzinfo=UTC))
        assert (since.copied, since.bytes_added) == ([], 0)
        assert "CopyReport(" in repr(since)
        out = tmp_path / "copied.img"
        there.restore(there.point("web", p1.id), disk="root.img", to=out)
        assert out.read_bytes() == first_bytes
        assert there.verify().ok
        with pytest.raises(ValueError, match="points"):
            vault.copy_to(there, points="yesterday")  # type: ignore[arg-type]
        with pytest.raises(vmbackup.NotFoundError):
            vault.copy_to(there, vms=["nope"])
        with pytest.raises(TypeError):
            vault.copy_to("there")  # type: ignore[arg-type]


def test_a_policy_names_its_second_site() -> None:
    rules = 'timezone = "UTC"\n[schedule]\nfrequency = "daily"\ntimes = ["02:00"]\n[retention]\nkeep_last = 2\n'
    assert vmbackup.Policy.from_toml(rules).copy_to is None
    policy = vmbackup.Policy.from_toml(rules + '[copy]\nto = "s3://offsite/vault"\n')
    assert policy.copy_to == "s3://offsite/vault"
    assert any("copy: each new point to s3://offsite/vault" in line for line in policy.summary())
    with pytest.raises(ValueError, match="copy.key_file"):
        vmbackup.Policy.from_toml(rules + '[copy]\nto = "/x"\nkey_file = "relative.key"\n')


S3 = os.environ.get("VMB_S3", "")
# In CI (VMB_REQUIRE_ALL set) a missing server fails the test instead of skipping it.
REQUIRE_ALL = bool(os.environ.get("VMB_REQUIRE_ALL"))

# The tests' independent S3 client (boto3, with the vault's own credentials).
S3_VERSIONS = Path(__file__).resolve().parents[2] / "scripts" / "s3-versions.py"


@pytest.mark.skipif(not S3 and not REQUIRE_ALL, reason="VMB_S3 is not set (scripts/test starts an S3 server)")
def test_an_immutable_vault_on_s3_locks_what_it_writes(make_image: MakeImage, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:12]
    with vmbackup.Vault.init(f"s3://vmbackup/py-nolock-{suffix}", cache=tmp_path / "a", endpoint=S3) as v:
        assert v.store_lock() == "disabled"
        with pytest.raises(ValueError, match="no Object Lock"):
            v.configure(immutable_days=3)
        assert v.settings().immutable_days == 0

    # The bucket vmbackup-locked has Object Lock (scripts/s3server.sh).
    prefix = f"py-{suffix}"
    url = f"s3://vmbackup-locked/{prefix}"
    root = make_image("root.img", 2 * MiB, seed=7)
    with vmbackup.Vault.init(url, cache=tmp_path / "b", endpoint=S3) as v:
        assert v.store_lock() == "enabled"
        assert v.configure(immutable_days=3).immutable_days == 3
        point = v.backup("web", [root])

    python = os.environ["VMB_S3_PYTHON"]
    # Try to delete every locked version for good.
    answer = subprocess.run(
        [python, str(S3_VERSIONS), S3, "vmbackup-locked", prefix, "--delete"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(answer)
    locked = [r for r in rows if r["mode"] == "COMPLIANCE"]
    assert {r["key"].split("/")[0] for r in locked} >= {"config", "packs", "index", "points"}
    assert all(r["deleted"] == "AccessDenied" for r in locked), rows
    # Only what was written before the vault became immutable was not locked.
    assert {r["key"] for r in rows if r["mode"] is None} <= {"config"}, rows

    with vmbackup.Vault.open(url, cache=tmp_path / "c", endpoint=S3) as v:
        out = tmp_path / "restored.img"
        v.restore(v.points("web")[0], disk=0, to=out)
        assert out.read_bytes() == root.read_bytes()
        assert v.points("web")[0].id == point.id
