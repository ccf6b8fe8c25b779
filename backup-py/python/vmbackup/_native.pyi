"""The native half of the ``vmbackup`` package; import ``vmbackup`` instead."""

import datetime
import os
import pathlib
from typing import Callable, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar, Union, final, overload

from ._device import BlockDevice

__all__ = [
    "__version__",
    "Vault",
    "RecoveryPoint",
    "DiskInfo",
    "BackupStats",
    "RestoreStats",
    "VerifyReport",
    "Problem",
    "PruneReport",
    "GcReport",
    "KeySlot",
    "LibvirtProvider",
    "BootVerdict",
    "Policy",
    "RepairReport",
    "KeptSnapshot",
    "ReleaseReport",
]

__version__: str

#: A disk given to :meth:`Vault.backup`: a raw image file or a Python device.
_Disk = Union[str, "os.PathLike[str]", BlockDevice]
# A list of one kind of disk (`list[Path]`, `list[MyDevice]`): lists are
# invariant, so `List[_Disk]` alone would refuse them.
_OneKindOfDisk = TypeVar("_OneKindOfDisk", bound=_Disk)
#: A progress callback: ``progress(done_bytes, total_bytes)``.
_Progress = Callable[[int, int], object]
_StrPath = Union[str, "os.PathLike[str]"]
#: A consistency level; the runtime also takes "fs" and "file-system".
_Consistency = Literal["crash", "filesystem", "application"]

@final
class Vault:
    """A vault of recovery points in a local folder; a context manager."""

    @staticmethod
    def init(
        path: _StrPath,
        *,
        lock_timeout: float = 60.0,
        passphrase: Optional[str] = None,
        key_file: Optional[_StrPath] = None,
        cache: Optional[_StrPath] = None,
        endpoint: Optional[str] = None,
        direct_io: bool = False,
    ) -> "Vault":
        """Creates a new vault in a folder that does not exist or is empty, or
        on object storage at a URL (``az://CONTAINER/PREFIX``,
        ``s3://BUCKET/PREFIX``; ``cache`` is then the local cache folder,
        ``endpoint`` the store's endpoint, e.g. an emulator's); encrypted with
        ``passphrase`` or ``key_file``; ``direct_io`` writes packs, and reads
        them for restores, around the page cache (``O_DIRECT``)."""
    @staticmethod
    def open(
        path: _StrPath,
        *,
        lock_timeout: float = 60.0,
        passphrase: Optional[str] = None,
        key_file: Optional[_StrPath] = None,
        cache: Optional[_StrPath] = None,
        endpoint: Optional[str] = None,
        direct_io: bool = False,
    ) -> "Vault":
        """Opens an existing vault (a folder or a URL, as ``init`` takes);
        ``NotFoundError`` when ``path`` holds none,
        ``KeyRequiredError``/``WrongKeyError`` for an encrypted vault without
        its key."""
    @property
    def location(self) -> str:
        """Where the vault is: its URL, or its folder, as a string."""
    @property
    def path(self) -> pathlib.Path:
        """The vault's folder (a :class:`pathlib.Path`)."""
    @property
    def id(self) -> str:
        """The vault's random id, made at init."""
    @property
    def encrypted(self) -> bool:
        """Whether the vault is encrypted."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
    def close(self) -> None:
        """Closes the vault: later calls raise ``ValueError``."""
    def __enter__(self) -> "Vault": ...
    def __exit__(self, *_exc: object) -> Literal[False]: ...
    # Lists, tuples and mappings, not any Sequence: a bare str is a
    # Sequence of str, and the runtime refuses it as "a single disk".
    @overload
    def backup(
        self,
        vm: str,
        disks: Union[List[_Disk], Tuple[_Disk, ...], Mapping[str, _Disk], "LibvirtProvider"],
        *,
        consistency: _Consistency = "crash",
        min_consistency: _Consistency = "crash",
        block_size: int = 65536,
        instant_restore_days: int = 0,
        progress: Optional[_Progress] = None,
    ) -> "RecoveryPoint":
        """Backs up a VM and returns its new recovery point; with
        ``instant_restore_days``, keeps its snapshot (a reflink clone) that long."""
    @overload
    def backup(
        self,
        vm: str,
        disks: List[_OneKindOfDisk],
        *,
        consistency: _Consistency = "crash",
        min_consistency: _Consistency = "crash",
        block_size: int = 65536,
        instant_restore_days: int = 0,
        progress: Optional[_Progress] = None,
    ) -> "RecoveryPoint": ...
    def points(self, vm: Optional[str] = None) -> List["RecoveryPoint"]:
        """The recovery points of one VM (or of all VMs), oldest first."""
    def point(self, vm: str, id: str = "latest") -> "RecoveryPoint":
        """A point of a VM by id, by a unique prefix of its id, or "latest"."""
    def vms(self) -> List[str]:
        """The names of the VMs that have points, sorted."""
    def restore(
        self,
        point: "RecoveryPoint",
        *,
        disk: Union[int, str],
        to: _StrPath,
        allow_damaged: bool = False,
        progress: Optional[_Progress] = None,
    ) -> "RestoreStats":
        """Restores one disk of a point (by index or name) to a file or device;
        with ``allow_damaged``, damaged blocks are written as zeros and listed."""
    def tiers(self, point: "RecoveryPoint") -> List[str]:
        """Where a point can be restored from now: ``"snapshot"``, then ``"vault"``."""
    def kept_snapshots(self, vm: Optional[str] = None) -> List["KeptSnapshot"]:
        """The snapshots kept for instant restore, oldest first."""
    def restore_from_snapshot(
        self,
        point: "RecoveryPoint",
        *,
        disk: Union[int, str],
        to: _StrPath,
        progress: Optional[_Progress] = None,
    ) -> Optional["RestoreStats"]:
        """Restores one disk from the snapshot kept after its job; None when
        the point has no usable snapshot tier."""
    def release_expired(
        self, *, vm: Optional[str] = None, now: Optional[datetime.datetime] = None
    ) -> "ReleaseReport":
        """Releases kept snapshots whose days are over at ``now``, whose job
        committed nothing, or whose point was pruned."""
    def restore_vm(
        self,
        point: "RecoveryPoint",
        to_dir: _StrPath,
        *,
        progress: Optional[_Progress] = None,
    ) -> List["RestoreStats"]:
        """Restores every disk of a point into a folder, one file per disk."""
    def restore_to_domain(
        self,
        point: "RecoveryPoint",
        name: str,
        *,
        uri: str = ...,
        pool: _StrPath = ...,
        format: str = ...,
        replace: bool = False,
        start: bool = False,
        progress: Optional[_Progress] = None,
    ) -> List["RestoreStats"]:
        """Restores every disk into ``pool`` and defines a new libvirt domain
        ``name`` from the point's saved XML (new UUID, MACs and disks)."""
    def instant_restore(
        self,
        point: "RecoveryPoint",
        name: str,
        *,
        uri: str = ...,
        pool: _StrPath = ...,
        replace: bool = False,
        bandwidth: int = 0,
        progress: Optional[_Progress] = None,
    ) -> float:
        """Runs the point as domain ``name`` at once on overlays over this
        process's export, moves the data in, and returns the seconds until
        the domain ran once it stands on local disks only."""
    def boot_verify(
        self,
        point: "RecoveryPoint",
        *,
        uri: str = ...,
        timeout: float = 300.0,
        script: Union[bytes, str, None] = None,
        progress: Optional[_Progress] = None,
    ) -> "BootVerdict":
        """Boots the point in a throwaway domain with no network, judges it
        by its guest agent (and ``script``), and records the verdict."""
    def boot_verdict(self, point: "RecoveryPoint") -> Optional["BootVerdict"]:
        """The last boot verdict recorded for a point, or None."""
    def verify(
        self,
        point: Optional["RecoveryPoint"] = None,
        *,
        vm: Optional[str] = None,
        progress: Optional[_Progress] = None,
    ) -> "VerifyReport":
        """Verifies a point, a VM's points, or the whole vault."""
    def prune(
        self, policy: Union["Policy", str], *, vm: Optional[str] = None, dry_run: bool = False
    ) -> "PruneReport":
        """Removes the points a policy's retention rules (a Policy or TOML text) do not keep."""
    def gc(
        self, *, grace: float = 3600.0, repack_threshold: float = 0.5, dry_run: bool = False
    ) -> "GcReport":
        """Removes what no point references, sparing objects younger than ``grace`` seconds."""
    def repair(self, *, dry_run: bool = False) -> "RepairReport":
        """Rebuilds the chunk index files from the packs and reports what is lost."""
    def key_slots(self) -> List["KeySlot"]:
        """The key slots of an encrypted vault (empty without encryption)."""
    def add_key(
        self, *, passphrase: Optional[str] = None, key_file: Optional[_StrPath] = None
    ) -> "KeySlot":
        """Adds a key slot: ``passphrase`` or ``key_file`` opens the vault too
        from now on; only the config is rewritten."""
    def remove_key(self, slot_id: str) -> "KeySlot":
        """Removes a key slot by id; refuses the vault's last one."""

@final
class LibvirtProvider:
    """A libvirt domain to back up with ``Vault.backup(vm, provider)``: its disks
    from the domain's XML, a checkpoint and pull-mode backup job per point,
    quiesced through the guest agent; a shut-off domain is read in place."""

    def __new__(
        cls,
        domain: str,
        *,
        uri: Optional[str] = None,
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
        guest_scripts: Optional[_StrPath] = None,
        min_consistency: Optional[_Consistency] = None,
        work_dir: Optional[_StrPath] = None,
    ) -> "LibvirtProvider": ...
    @property
    def domain(self) -> str:
        """The domain's name."""
    @property
    def uri(self) -> str:
        """The libvirt connection URI."""
    def disks(self) -> Tuple[List[str], List[Tuple[str, str]]]:
        """The disks the next backup takes, and the skipped ones as (target, why)."""

@final
class RecoveryPoint:
    """A recovery point: a VM's disks at one instant."""

    @property
    def id(self) -> str:
        """The point's id."""
    @property
    def vm(self) -> str:
        """The VM's name."""
    @property
    def configuration(self) -> Optional[str]:
        """The VM's configuration stored with the point (a libvirt domain's XML), or None."""
    @property
    def configuration_kind(self) -> Optional[str]:
        """What ``configuration`` is ("libvirt-domain-xml"), or None."""
    @property
    def time(self) -> datetime.datetime:
        """When the snapshot was taken, time-zone aware, in UTC."""
    @property
    def consistency(self) -> _Consistency:
        """The consistency achieved: "crash", "filesystem" or "application"."""
    @property
    def wanted_consistency(self) -> _Consistency:
        """The consistency asked for."""
    @property
    def parent(self) -> Optional[str]:
        """The id of the previous point it was compared against, if any."""
    @property
    def disks(self) -> List["DiskInfo"]:
        """The disks, in the VM's order."""
    @property
    def stats(self) -> "BackupStats":
        """What the backup did, all disks added up."""
    @property
    def warnings(self) -> List[str]:
        """What a user should know about how the point was made."""
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class DiskInfo:
    """One disk of a recovery point."""

    @property
    def name(self) -> str:
        """The disk's name within its VM."""
    @property
    def size(self) -> int:
        """Its size in bytes."""
    @property
    def block_size(self) -> int:
        """The block size of its chain, in bytes."""
    @property
    def snapshot_method(self) -> str:
        """How its snapshot was taken: "reflink", "in-place" or "python"."""
    @property
    def stats(self) -> "BackupStats":
        """What the backup did for this disk."""

@final
class BackupStats:
    """What a backup did, for one disk (``DiskInfo.stats``) or a whole point
    (``RecoveryPoint.stats``: the disks' figures added up). Each statistic
    has the name and meaning it has in Rust (``backup_core::DiskStats``), C
    (``vmb_backup_stats``) and the command line's ``--json``."""

    @property
    def bytes_scanned(self) -> int:
        """Bytes of the disks covered (their sizes)."""
    @property
    def bytes_read(self) -> int:
        """Bytes read from the disks (unchanged and unallocated areas are not
        read)."""
    @property
    def bytes_zero(self) -> int:
        """Bytes in all-zero blocks and holes, never stored."""
    @property
    def bytes_unchanged(self) -> int:
        """Bytes in blocks equal to the previous point's."""
    @property
    def bytes_new(self) -> int:
        """Bytes in blocks whose content was not in the previous point."""
    @property
    def bytes_deduplicated(self) -> int:
        """Of the new bytes, those the vault already held (deduplicated)."""
    @property
    def bytes_stored(self) -> int:
        """Bytes of chunk frames (compressed) and index segments written."""
    @property
    def bytes_added(self) -> Optional[int]:
        """Everything the point added to the vault: ``bytes_stored`` plus pack
        trailers, chunk index files and the manifest. A point's only: None
        for a disk."""
    @property
    def seconds(self) -> float:
        """Wall-clock seconds (for a point: of the slowest disk)."""
    @property
    def change_detection(self) -> str:
        """How changes were found: "none" (first backup), "compare", "cbt", or
        "cbt distrusted: why"; for a point, its disks' values each once,
        joined by ", "."""
    @property
    def bytes_dirty(self) -> int:
        """Bytes change tracking reported as changed (0 without it)."""
    @property
    def audited_blocks(self) -> int:
        """Blocks change tracking called clean that were re-read to audit it."""

@final
class RestoreStats:
    """What the restore of one disk did."""

    @property
    def disk(self) -> str:
        """The disk's name."""
    @property
    def size(self) -> int:
        """Its size in bytes."""
    @property
    def bytes_written(self) -> int:
        """Bytes written to the target."""
    @property
    def bytes_zero(self) -> int:
        """Bytes left as zeros."""
    @property
    def seconds(self) -> float:
        """Wall-clock seconds."""
    @property
    def damaged(self) -> List[Tuple[int, int, str]]:
        """With ``allow_damaged=True``: the byte ranges that could not be
        read and were written as zeros, as ``(start, end, why)``."""

@final
class Problem:
    """One thing verify found wrong."""

    @property
    def vm(self) -> Optional[str]:
        """The VM it hurts, when known."""
    @property
    def point(self) -> Optional[str]:
        """The point it hurts, when known."""
    @property
    def disk(self) -> Optional[str]:
        """The disk it hurts, when known."""
    @property
    def range(self) -> Optional[Tuple[int, int]]:
        """The disk's damaged bytes as ``(start, end)``, or ``None``."""
    @property
    def start(self) -> Optional[int]:
        """The first damaged byte, or ``None``."""
    @property
    def end(self) -> Optional[int]:
        """One past the last damaged byte, or ``None``."""
    @property
    def what(self) -> str:
        """What is wrong, naming the damaged object."""
    @property
    def tampered(self) -> bool:
        """Whether a sealed object failed authentication (encrypted vaults)."""

@final
class VerifyReport:
    """What verify found."""

    @property
    def ok(self) -> bool:
        """Whether nothing was found wrong."""
    @property
    def problems(self) -> List[Problem]:
        """Everything found wrong; empty when all is well."""
    @property
    def points(self) -> int:
        """Points checked."""
    @property
    def chunks(self) -> int:
        """Distinct chunks checked."""
    @property
    def packs(self) -> int:
        """Packs read whole."""
    @property
    def bytes(self) -> int:
        """Bytes of disk covered by the checked points."""
    def check(self) -> None:
        """Raises ``CorruptionError`` for the first problem, if any."""

@final
class PruneReport:
    """What :meth:`Vault.prune` did (or, in a dry run, would do)."""

    @property
    def dry_run(self) -> bool:
        """Whether nothing was removed."""
    @property
    def removed(self) -> List[Tuple[str, str]]:
        """The points removed (or that would be), as ``(vm, point id)``."""
    @property
    def kept(self) -> int:
        """How many points the rules keep."""
    @property
    def spared(self) -> List[str]:
        """Points the rules condemned that were kept after all, and why."""
    @property
    def job_logs_removed(self) -> List[str]:
        """Job logs removed (or that would be), as ``vm/job id``."""

@final
class KeySlot:
    """A key slot of an encrypted vault: one passphrase or key file that
    opens it."""

    @property
    def id(self) -> str:
        """The slot's id (8 hex digits), as :meth:`Vault.remove_key` takes it."""
    @property
    def kind(self) -> str:
        """``"passphrase"`` or ``"key_file"``."""
    @property
    def created(self) -> str:
        """When it was added, as RFC 3339 text in UTC."""

@final
class GcReport:
    """What :meth:`Vault.gc` did (or, in a dry run, would do)."""

    @property
    def dry_run(self) -> bool:
        """Whether nothing was removed."""
    @property
    def points(self) -> int:
        """Points whose objects were kept."""
    @property
    def packs_removed(self) -> int:
        """Packs removed whole."""
    @property
    def packs_repacked(self) -> int:
        """Packs rewritten without their dead chunks."""
    @property
    def segments_removed(self) -> int:
        """Unreferenced index segments removed."""
    @property
    def chunks_removed(self) -> int:
        """Chunk copies no longer stored."""
    @property
    def bytes_removed(self) -> int:
        """Bytes freed: dead chunk frames and segments."""
    @property
    def bytes_copied(self) -> int:
        """Live chunk bytes copied into new packs by repacking."""
    @property
    def protected(self) -> int:
        """Objects spared because they are newer than the grace period."""
    @property
    def packs_marked(self) -> int:
        """On object storage: packs this run marked for a later gc to remove."""
    @property
    def segments_marked(self) -> int:
        """On object storage: segments this run marked."""

@final
class Policy:
    """A backup policy (schedule and retention), parsed and checked."""

    @staticmethod
    def from_toml(text: str) -> "Policy":
        """Parses a policy from TOML text; ``ValueError`` names a bad field."""
    @staticmethod
    def load(path: _StrPath) -> "Policy":
        """Reads and parses a policy file."""
    def summary(self) -> List[str]:
        """The policy in a few lines of English."""

@final
class RepairReport:
    """What :meth:`Vault.repair` did."""

    @property
    def dry_run(self) -> bool:
        """Whether nothing was rewritten."""
    @property
    def nothing_lost(self) -> bool:
        """Whether no point lost data and no manifest is unreadable."""
    @property
    def packs(self) -> int:
        """Packs examined."""
    @property
    def rebuilt(self) -> List[Tuple[str, str]]:
        """The packs whose index file was rebuilt, with why."""
    @property
    def dropped(self) -> int:
        """Damaged chunks left out of the rebuilt index files."""
    @property
    def unreadable_packs(self) -> List[str]:
        """Packs that cannot be read at all, with why."""
    @property
    def lost(self) -> List["Problem"]:
        """The byte ranges of points' disks that cannot be restored."""
    @property
    def other(self) -> List["Problem"]:
        """Other damage verify found."""

@final
class KeptSnapshot:
    """A snapshot kept after its job for instant restore."""

    @property
    def vm(self) -> str:
        """The VM."""
    @property
    def point(self) -> str:
        """The id of the point it belongs to."""
    @property
    def job(self) -> str:
        """The id of the job that took it."""
    @property
    def provider(self) -> str:
        """The snapshot provider's name and version."""
    @property
    def taken(self) -> datetime.datetime:
        """When it was taken (UTC)."""
    @property
    def expires(self) -> datetime.datetime:
        """When it is released (UTC)."""
    @property
    def disks(self) -> List[Tuple[str, pathlib.Path]]:
        """Each disk's clone, as ``(disk name, path)``."""

@final
class ReleaseReport:
    """What :meth:`Vault.release_expired` did."""

    @property
    def released(self) -> List[Tuple[KeptSnapshot, str]]:
        """The snapshots released, each with why."""
    @property
    def kept(self) -> List[KeptSnapshot]:
        """The snapshots still kept."""
    @property
    def problems(self) -> List[str]:
        """Snapshots that could not be released, and damaged records."""

@final
class BootVerdict:
    """What booting a point in a throwaway domain showed."""

    @property
    def vm(self) -> str: ...
    @property
    def point_id(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def reason(self) -> Optional[str]: ...
    @property
    def checked_at(self) -> int: ...
    @property
    def agent_seconds(self) -> Optional[float]: ...
    @property
    def script_exit(self) -> Optional[int]: ...
    @property
    def script_output(self) -> Optional[str]: ...
    @property
    def console(self) -> str: ...
    @property
    def screenshot(self) -> bytes: ...
    @property
    def notes(self) -> List[str]: ...
    def __bool__(self) -> bool: ...
