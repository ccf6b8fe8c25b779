"""vmbackup.LibvirtProvider against the real libvirtd that scripts/test
starts (VMB_LIBVIRT_URI): a domain defined and shut off, so no guest has to
boot here (the Rust tests boot one and cover the running case). Its disk is
read in place, the point is crash-consistent and stores the domain's XML,
and errors name the domain or the setting at fault."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import vmbackup

URI = os.environ.get("VMB_LIBVIRT_URI", "")
REQUIRE_ALL = bool(os.environ.get("VMB_REQUIRE_ALL"))

# In CI (VMB_REQUIRE_ALL set) a missing libvirtd fails the test instead of skipping it.
pytestmark = pytest.mark.skipif(
    not URI and not REQUIRE_ALL, reason="VMB_LIBVIRT_URI is not set (scripts/test starts libvirtd and sets it)"
)

MiB = 1 << 20


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def domain(tmp_path: Path) -> Iterator[str]:
    """A defined, shut-off domain with a 32 MiB qcow2 disk (4 MiB written)
    and a CD-ROM; undefined afterwards."""
    assert URI, "VMB_LIBVIRT_URI is not set (scripts/test starts libvirtd and sets it)"
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "32M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4M", str(disk)], check=True, capture_output=True
    )
    name = f"vmb-py-{os.getpid()}"
    xml = tmp_path / "domain.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>"
        "<target dev='vda' bus='virtio'/></disk>"
        "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>"
        "</devices></domain>"
    )
    virsh("define", str(xml))
    try:
        yield name
    finally:
        virsh("undefine", name, "--checkpoints-metadata")


def test_a_shut_off_domain_is_backed_up_in_place_with_its_xml(
    vault: vmbackup.Vault, domain: str, tmp_path: Path
) -> None:
    provider = vmbackup.LibvirtProvider(domain, uri=URI, work_dir=tmp_path / "work")
    assert provider.domain == domain and provider.uri == URI
    disks, skipped = provider.disks()
    assert disks == ["vda"]
    assert skipped == [("sda", "it is a cdrom")]

    point = vault.backup("web", provider, consistency="application")
    assert point.consistency == "crash"
    assert point.wanted_consistency == "application"
    assert [d.name for d in point.disks] == ["vda"]
    assert point.stats.bytes_read >= 4 * MiB
    assert point.configuration_kind == "libvirt-domain-xml"
    assert point.configuration is not None and f"<name>{domain}</name>" in point.configuration
    assert any("is shut off" in w for w in point.warnings)

    out = tmp_path / "vda.raw"
    vault.restore(point, disk="vda", to=out)
    data = out.read_bytes()
    assert len(data) == 32 * MiB
    assert data[: 4 * MiB] == b"\x5a" * (4 * MiB)
    assert data[4 * MiB :].count(0) == 28 * MiB

    again = vault.backup("web", provider)
    assert again.parent == point.id


def test_libvirt_is_loaded_only_when_a_domain_is_asked_for(domain: str, tmp_path: Path) -> None:
    """In a fresh interpreter: importing vmbackup and backing up an image
    file map no libvirt; backing up a domain does."""
    script = f"""
import sys, vmbackup
def mapped():
    return "/libvirt.so" in open("/proc/self/maps").read()
image = {str(tmp_path / "disk.img")!r}
open(image, "wb").write(b"x" * (1 << 20))
vault = vmbackup.Vault.init({str(tmp_path / "vault")!r})
vault.backup("plain", {{"disk": image}})
print(mapped())
vault.backup("web", vmbackup.LibvirtProvider({domain!r}, uri={URI!r}, work_dir={str(tmp_path / "work")!r}))
print(mapped())
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["False", "True"]


def test_a_host_that_had_no_libvirt_at_its_start_finds_it_once_installed(domain: str, tmp_path: Path) -> None:
    """A long-running host: libvirt cannot be loaded at first (a
    libvirt.so.0 that is not a library comes first on its library path),
    the backup says so; once the real library is there, the next backup in
    the same process loads it."""
    cache = subprocess.run(["ldconfig", "-p"], check=True, capture_output=True, text=True).stdout
    real = next(line.split(" => ")[1] for line in cache.splitlines() if line.strip().startswith("libvirt.so.0 "))
    libs = tmp_path / "lib"
    libs.mkdir()
    (libs / "libvirt.so.0").write_text("not a library")
    script = f"""
import os, vmbackup
vault = vmbackup.Vault.init({str(tmp_path / "vault")!r})
provider = vmbackup.LibvirtProvider({domain!r}, uri={URI!r}, work_dir={str(tmp_path / "work")!r})
try:
    vault.backup("web", provider)
    print("loaded")
except vmbackup.VmBackupError as e:
    print("cannot load libvirt" in str(e) and {domain!r} in str(e))
os.unlink({str(libs / "libvirt.so.0")!r})
os.symlink({real!r}, {str(libs / "libvirt.so.0")!r})
print(vault.backup("web", provider).disks[0].name)
"""
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env).stdout
    assert out.split() == ["True", "vda"]


def test_errors_name_the_domain_and_the_setting(vault: vmbackup.Vault, domain: str) -> None:
    with pytest.raises(vmbackup.VmBackupError, match="vmb-no-such-domain"):
        vault.backup("x", vmbackup.LibvirtProvider("vmb-no-such-domain", uri=URI))
    with pytest.raises(vmbackup.VmBackupError, match="vdz"):
        vault.backup("x", vmbackup.LibvirtProvider(domain, uri=URI, include=["vdz"]))
    with pytest.raises(vmbackup.VmBackupError, match="shut off"):
        vault.backup("x", vmbackup.LibvirtProvider(domain, uri=URI, min_consistency="filesystem"))
    with pytest.raises(ValueError):
        vmbackup.LibvirtProvider(domain, min_consistency="perfect")  # type: ignore[arg-type]
    assert repr(vmbackup.LibvirtProvider("web")) == "LibvirtProvider('web', uri='qemu:///system')"


def test_a_point_becomes_a_new_domain_instantly_or_by_restore_and_a_boot_is_judged(
    vault: vmbackup.Vault, domain: str, tmp_path: Path
) -> None:
    """The domain has no OS: it restores and recovers like any other, and
    its boot fails the verification because no agent ever answers."""
    point = vault.backup("web", vmbackup.LibvirtProvider(domain, uri=URI, work_dir=tmp_path / "work"))
    # QEMU runs as another user: it must reach the restored disks.
    pool = Path(tempfile.mkdtemp(prefix="vmb-py-pool-", dir="/var/tmp"))
    pool.chmod(0o755)
    restored, instant = f"{domain}-restored", f"{domain}-instant"
    try:
        stats = vault.restore_to_domain(point, restored, uri=URI, pool=pool, format="raw")
        assert [s.disk for s in stats] == ["vda"]
        assert (pool / f"{restored}-vda.raw").read_bytes()[: 4 * MiB] == b"\x5a" * (4 * MiB)
        assert virsh("domstate", restored).strip() == "shut off"
        with pytest.raises(vmbackup.VmBackupError, match="exists"):
            vault.restore_to_domain(point, restored, uri=URI, pool=pool)
        with pytest.raises(vmbackup.VmBackupError, match="never touches"):
            vault.restore_to_domain(point, domain, uri=URI, pool=pool, replace=True)
        with pytest.raises(ValueError, match="image format"):
            vault.restore_to_domain(point, restored, uri=URI, pool=pool, format="vmdk", replace=True)

        seconds = vault.instant_restore(point, instant, uri=URI, pool=pool)
        assert seconds >= 0.0
        assert virsh("domstate", instant).strip() == "running"
        info = subprocess.run(
            ["qemu-img", "info", "-U", str(pool / f"{instant}-vda.qcow2")], check=True, capture_output=True, text=True
        ).stdout
        assert "backing file" not in info
    finally:
        for name in (restored, instant):
            subprocess.run(["virsh", "-q", "-c", URI, "destroy", name], capture_output=True)
            subprocess.run(["virsh", "-q", "-c", URI, "undefine", name], capture_output=True)
        shutil.rmtree(pool)

    assert vault.boot_verdict(point) is None
    verdict = vault.boot_verify(point, uri=URI, timeout=3, script="#!/bin/sh\ntrue\n")
    assert not verdict and not verdict.passed
    assert verdict.reason is not None and "did not answer within 3 s" in verdict.reason
    assert verdict.screenshot.startswith(b"\x89PNG")
    assert verdict.script_exit is None
    again = vault.boot_verdict(point)
    assert again is not None and again.reason == verdict.reason and again.point_id == point.id
    assert "passed=False" in repr(again)
    listed = virsh("list", "--all", "--name")
    assert not any(n.startswith("vmbackup-verify-") for n in listed.split())
