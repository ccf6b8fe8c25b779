"""vmbackup.LibvirtProvider against the real libvirtd that scripts/test
starts (VMB_LIBVIRT_URI): a domain defined and shut off, so no guest has to
boot here (the Rust tests boot one and cover the running case). Its disk is
read in place, the point is crash-consistent and stores the domain's XML,
and errors name the domain or the setting at fault."""

from __future__ import annotations

import os
import subprocess
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


def test_errors_name_the_domain_and_the_setting(vault: vmbackup.Vault, domain: str) -> None:
    with pytest.raises(vmbackup.VmBackupError, match="vmb-no-such-domain"):
        vault.backup("x", vmbackup.LibvirtProvider("vmb-no-such-domain", uri=URI))
    with pytest.raises(vmbackup.VmBackupError, match="vdz"):
        vault.backup("x", vmbackup.LibvirtProvider(domain, uri=URI, include=["vdz"]))
    with pytest.raises(vmbackup.VmBackupError, match="shut off"):
        vault.backup("x", vmbackup.LibvirtProvider(domain, uri=URI, min_consistency="filesystem"))
    with pytest.raises(ValueError):
        vmbackup.LibvirtProvider(domain, min_consistency="perfect")
    assert repr(vmbackup.LibvirtProvider("web")) == "LibvirtProvider('web', uri='qemu:///system')"
