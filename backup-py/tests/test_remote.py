"""A vault on object storage: Azurite, which scripts/test starts and names
in VMB_AZURITE (see scripts/azurite.sh)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import vmbackup
from conftest import MiB, MakeImage

ENDPOINT = os.environ.get("VMB_AZURITE", "")


# In CI (VMB_REQUIRE_ALL set) a missing emulator fails the test instead of skipping it.
REQUIRE_ALL = bool(os.environ.get("VMB_REQUIRE_ALL"))


@pytest.mark.skipif(
    not ENDPOINT and not REQUIRE_ALL, reason="VMB_AZURITE is not set (scripts/test starts Azurite and sets it)"
)
def test_remote_vault_round_trip(make_image: MakeImage, tmp_path: Path) -> None:
    url = f"az://vmbackup/py-{uuid.uuid4().hex[:12]}"
    root = make_image("root.img", 4 * MiB, seed=3)
    with vmbackup.Vault.init(url, cache=tmp_path / "host-a", endpoint=ENDPOINT) as v:
        assert v.location == url
        first = v.backup("web", [root])
    with pytest.raises(vmbackup.VmBackupError, match=url):
        vmbackup.Vault.init(url, cache=tmp_path / "host-a", endpoint=ENDPOINT)
    # Another host, with a cache of its own, restores it bit for bit.
    with vmbackup.Vault.open(url, cache=tmp_path / "host-b", endpoint=ENDPOINT) as v:
        [point] = v.points("web")
        assert point.id == first.id
        out = tmp_path / "restored.img"
        v.restore(point, disk=0, to=out)
        assert out.read_bytes() == root.read_bytes()
        assert v.verify().ok


def test_unknown_url_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(vmbackup.VmBackupError):
        vmbackup.Vault.open("gs://bucket/prefix", cache=tmp_path / "cache")
