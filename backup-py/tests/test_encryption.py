"""Encrypted vaults from Python: made and opened with a passphrase or a key
file, the right exception for a missing or wrong key, and tampering found
by verify and raised as ``TamperedError``."""

from __future__ import annotations

from pathlib import Path

import pytest

import vmbackup
from conftest import MiB, MakeImage

CANARY = b"<<python-plaintext-canary>>"


def test_a_passphrase_vault_round_trips_and_keeps_no_plaintext(tmp_path: Path, make_image: MakeImage) -> None:
    image = make_image("root.img", size=2 * MiB, seed=3)
    data = bytearray(image.read_bytes())
    data[100 : 100 + len(CANARY)] = CANARY
    image.write_bytes(bytes(data))
    with vmbackup.Vault.init(tmp_path / "vault", passphrase="pass phrase") as v:
        assert v.encrypted
        v.backup("web", [image])
    with pytest.raises(vmbackup.KeyRequiredError) as required:
        vmbackup.Vault.open(tmp_path / "vault")
    assert required.value.path == str(tmp_path / "vault")
    with pytest.raises(vmbackup.WrongKeyError, match="wrong passphrase"):
        vmbackup.Vault.open(tmp_path / "vault", passphrase="pass phrase!")
    assert issubclass(vmbackup.WrongKeyError, vmbackup.VaultKeyError)
    with pytest.raises(ValueError):
        vmbackup.Vault.open(tmp_path / "vault", passphrase="x", key_file=tmp_path / "k")
    with vmbackup.Vault.open(tmp_path / "vault", passphrase="pass phrase") as v:
        point = v.point("web")
        v.restore(point, disk="root.img", to=tmp_path / "out.img")
        assert (tmp_path / "out.img").read_bytes() == bytes(data)
        assert v.verify().ok
    stored = [p for p in (tmp_path / "vault").rglob("*") if p.is_file()]
    assert stored and not any(CANARY in p.read_bytes() for p in stored)


def test_a_key_file_vault_and_a_tampered_manifest(tmp_path: Path, make_image: MakeImage) -> None:
    image = make_image("root.img", size=MiB, seed=4)
    key = tmp_path / "vault.key"
    key.write_bytes(bytes(range(64)))
    with vmbackup.Vault.init(tmp_path / "vault", key_file=key) as v:
        point = v.backup("web", [image])
    manifest = tmp_path / "vault" / "points" / "web" / point.id
    raw = bytearray(manifest.read_bytes())
    raw[len(raw) // 2] ^= 1
    manifest.write_bytes(bytes(raw))
    with vmbackup.Vault.open(tmp_path / "vault", key_file=key) as v:
        with pytest.raises(vmbackup.TamperedError) as caught:
            v.point("web", point.id)
        assert isinstance(caught.value, vmbackup.CorruptionError)
        assert caught.value.object is not None and point.id in caught.value.object
        report = v.verify()
        assert not report.ok
        assert any(p.tampered for p in report.problems)


def test_key_slots_added_and_removed(tmp_path: Path, make_image: MakeImage) -> None:
    """A key file added beside the passphrase opens the vault; removing the
    passphrase's slot shuts it out; the last slot stays."""
    key = tmp_path / "second.key"
    key.write_bytes(bytes(range(64, 128)))
    with vmbackup.Vault.init(tmp_path / "vault", passphrase="first one") as v:
        point = v.backup("web", [make_image("root.img", size=MiB, seed=5)])
        [first] = v.key_slots()
        assert first.kind == "passphrase" and len(first.id) == 8 and "T" in first.created
        second = v.add_key(key_file=key)
        assert second.kind == "key_file" and "KeySlot(" in repr(second)
        assert [s.id for s in v.key_slots()] == [first.id, second.id]
        with pytest.raises(ValueError):
            v.add_key()
        with pytest.raises(vmbackup.NotFoundError):
            v.remove_key("00000000")
    with vmbackup.Vault.open(tmp_path / "vault", key_file=key) as v:
        assert v.point("web") == point
        assert v.remove_key(first.id).id == first.id
        with pytest.raises(ValueError, match="last key slot"):
            v.remove_key(second.id)
    with pytest.raises(vmbackup.WrongKeyError):
        vmbackup.Vault.open(tmp_path / "vault", passphrase="first one")
    with vmbackup.Vault.init(tmp_path / "plain") as plain:
        assert plain.key_slots() == []
        with pytest.raises(ValueError):
            plain.add_key(passphrase="too late")
