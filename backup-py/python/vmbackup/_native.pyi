"""The native half of the ``vmbackup`` package; import ``vmbackup`` instead."""

import datetime
import os
import pathlib
from typing import Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar, Union, final, overload

from ._device import BlockDevice
from ._disk import DiskFile

__all__ = [
    "__version__",
    "Vault",
    "RecoveryPoint",
    "DiskReader",
    "Mount",
    "GuestDisk",
    "GuestFs",
    "Volume",
    "FileEntry",
    "FoundFile",
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
    "VaultSettings",
    "Deletion",
    "DeletedPoint",
    "CopiedPoint",
    "CopyReport",
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
    """A vault of recovery points, in a local folder or on object storage.

    Open one with `Vault.init(path)` (a new vault) or `Vault.open(path)`.
    A vault is a context manager: leaving the `with` block closes it. It may
    be shared by several Python threads, and several backups may run into it
    at once (from threads or processes). Every operation releases the GIL
    while the engine works.
    """

    @staticmethod
    def init(
        path: _StrPath,
        *,
        lock_timeout: float = 60.0,
        passphrase: Optional[str] = None,
        key_file: Optional[_StrPath] = None,
        cache: Optional[_StrPath] = None,
        endpoint: Optional[str] = None,
        buffered_io: bool = False,
        direct_io: bool = False,
    ) -> "Vault":
        """Creates a new vault in a folder that does not exist or is empty, or
        on object storage at a URL (`az://CONTAINER/PREFIX`,
        `s3://BUCKET/PREFIX`; `cache` is then the local cache folder,
        `endpoint` the store's endpoint, e.g. an emulator's).

        `lock_timeout` is how many seconds an operation waits for a lock
        held by another process before it raises `VaultLockedError`. With
        `passphrase` or `key_file` the vault is encrypted: every chunk,
        index segment and manifest is sealed before it is written.
        Packs are written around the page cache (`O_DIRECT`) unless
        `buffered_io`; restores read them through it unless `direct_io`.
        """
    @staticmethod
    def open(
        path: _StrPath,
        *,
        lock_timeout: float = 60.0,
        passphrase: Optional[str] = None,
        key_file: Optional[_StrPath] = None,
        cache: Optional[_StrPath] = None,
        endpoint: Optional[str] = None,
        buffered_io: bool = False,
        direct_io: bool = False,
    ) -> "Vault":
        """Opens an existing vault (a folder or a URL, as `init` takes);
        `NotFoundError` when `path` holds none. An encrypted vault needs its
        `passphrase` or `key_file` (`KeyRequiredError` without,
        `WrongKeyError` with a wrong one). `buffered_io` and `direct_io` as
        `init` takes them.
        """
    @property
    def location(self) -> str:
        """Where the vault is: its URL, or its folder, as a string."""
    @property
    def path(self) -> pathlib.Path:
        """The vault's folder."""
    @property
    def id(self) -> str:
        """The vault's random id, made at init."""
    @property
    def encrypted(self) -> bool:
        """Whether the vault is encrypted."""
    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
    def close(self) -> None:
        """Closes the vault: later calls raise `ValueError`. Operations still
        running in other threads finish first. Closing twice is allowed.
        """
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
        """Backs up a VM and returns its new recovery point.

        `disks` is a list whose items are paths of raw image files (`str` or
        `os.PathLike`, named after their file names) or `vmbackup.BlockDevice`
        objects; or a dict of them by disk name; or a
        `vmbackup.LibvirtProvider`, whose domain's disks are backed up. Only
        blocks that changed since the VM's previous point are stored.

        `consistency` is the level asked for ("crash", "filesystem" or
        "application"); image files and Python disks give "crash", and the
        point records what was achieved, with a warning (`point.warnings`)
        when it is less than was asked for. `min_consistency` is the weakest
        level accepted: a backup that would fall below it fails with
        `VmBackupError` and commits nothing. `block_size` is a power of two from
        16384 to 4194304, used for a disk's first point (a disk keeps its
        chain's block size).

        `instant_restore_days` (0 to 30) keeps the snapshot after the job
        for that many days, where it outlives the job (reflink clones of
        image files): the point can then be restored from it
        (`restore_from_snapshot`) until `release_expired` releases it.

        `progress(done_bytes, total_bytes)` is called from the calling
        thread, at most ten times a second and once with `done == total`
        before the point is committed. An exception it raises cancels the
        backup, which commits nothing, and is re-raised as it is; so is
        `KeyboardInterrupt` (Ctrl-C) while a backup runs.
        """
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
        """The recovery points of one VM (or of all VMs), oldest first.

        Raises `NotFoundError` when `vm` names a VM the vault holds no point
        of (see `vms()`).
        """
    def point(self, vm: str, id: str = "latest") -> "RecoveryPoint":
        """A point of a VM by id, by a unique prefix of its id, or "latest".
        `NotFoundError` when none (or several) match.
        """
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
        """Restores one disk of a point to the file `to` (created sparse, or
        replaced; written under a temporary name and renamed when complete)
        or to a block device. `disk` is the disk's index in `point.disks`
        (negative from the end) or its name.

        `progress` works as for `backup()`; an exception it raises stops
        the restore and is re-raised. With `allow_damaged=True` a damaged
        or missing chunk does not stop the restore: its block is written as
        zeros and listed in the stats' `damaged`.
        """
    def tiers(self, point: "RecoveryPoint") -> List[str]:
        """Where a point can be restored from now: `"snapshot"` while the
        snapshot kept after its job is there and unchanged, then `"vault"`.
        A damaged snapshot record raises (`CorruptError`, `TamperedError`).
        """
    def kept_snapshots(self, vm: Optional[str] = None) -> List["KeptSnapshot"]:
        """The snapshots kept for instant restore, of one VM or of all, oldest
        first; a damaged record raises.
        """
    def restore_from_snapshot(
        self,
        point: "RecoveryPoint",
        *,
        disk: Union[int, str],
        to: _StrPath,
        progress: Optional[_Progress] = None,
    ) -> Optional["RestoreStats"]:
        """Restores one disk of a point from the snapshot kept after its job
        (a reflink copy of the clone where the file system allows, else a
        sparse copy), checked against the clone's size and time when kept.
        Returns None, and writes nothing, when the point has no usable
        snapshot tier: `restore()` from the vault then. `disk` is an index
        or a name, as for `restore()`.
        """
    def release_expired(
        self, *, vm: Optional[str] = None, now: Optional[datetime.datetime] = None
    ) -> "ReleaseReport":
        """Releases the snapshots kept for instant restore whose days are over
        at `now` (a time-zone aware `datetime`; default the current time),
        whose job ended without committing their point, or whose point was
        pruned: removes each clone (only a file marked as this vault's clone
        of that point and disk), then its record. `vm=` releases one VM's.
        A snapshot that cannot be released is listed in the report's
        `problems` and tried again next time.
        """
    def open_disk(self, point: "RecoveryPoint", disk: Union[int, str]) -> DiskFile:
        """One disk of a point as a read-only binary file object
        (`io.RawIOBase`: `read`, `readinto`, `seek`, `tell`), read from the
        vault on demand without restoring the disk, so that any library
        that reads disk images reads the point. `disk` is an index in
        `point.disks` (negative from the end) or a name. The vault's shared
        lock is held until the file is closed; use it in a `with` block.
        """
    def mount(
        self, mountpoint: Union[str, "os.PathLike[str]"], vm: Optional[str] = None, point: Optional[str] = None
    ) -> "Mount":
        """Mounts the vault's points read-only (FUSE) at `mountpoint` as
        `VM/POINT/DISK.img`: all of them, a VM's (`vm`), or one point
        (`vm` and `point`: an id, a prefix or "latest"). Reads come from the
        vault as they are made, checked. Returns a `Mount`; use it in a
        `with` block. Needs `/dev/fuse` and `fusermount3`.
        """
    def guest_disk(self, point: "RecoveryPoint", disk: Union[int, str]) -> "GuestDisk":
        """Opens disk `disk` (an index in `point.disks` or a name) of `point`
        for its guest files: a `GuestDisk` with its volumes (partitions,
        LVM volumes, or the whole disk), whose `open_fs` reads a volume's
        files. Holds the vault's shared lock until closed.
        """
    def find_files(self, vm: str, pattern: str) -> List["FoundFile"]:
        """Every file, folder or link in every point of `vm` (oldest first)
        whose path matches `pattern` (`*` and `?`; a pattern with a `/`
        matches whole paths, one without names): a list of `FoundFile`.
        ext4 and XFS need root.
        """
    def restore_vm(
        self,
        point: "RecoveryPoint",
        to_dir: _StrPath,
        *,
        progress: Optional[_Progress] = None,
    ) -> List["RestoreStats"]:
        """Restores every disk of a point into the folder `to_dir` (created if
        needed), each as a file named after the disk, in parallel.
        """
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
        """Restores every disk of a point (in parallel) into `pool` as
        `NAME-DISK.FORMAT` and defines a new libvirt domain `name` from the
        point's saved domain XML, with a new UUID, new MAC addresses and the
        restored disks; `start=True` starts it. A domain of that name is
        refused unless `replace=True`, and the point's own domain always.
        """
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
        """Starts a point as the new libvirt domain `name` within seconds, on
        qcow2 overlays in `pool` over this process's NBD export of the
        point, moves the data into them (at most `bandwidth` bytes per
        second per disk; 0: no limit) and returns, when the domain stands on
        local disks only, the seconds until it ran. KeyboardInterrupt
        discards the recovery; any other failure leaves the domain paused
        and the same call resumes it.
        """
    def boot_verify(
        self,
        point: "RecoveryPoint",
        *,
        uri: str = ...,
        timeout: float = 300.0,
        script: Union[bytes, str, None] = None,
        progress: Optional[_Progress] = None,
    ) -> "BootVerdict":
        """Boots a point in a throwaway libvirt domain with no network, on
        discarded overlays; waits up to `timeout` seconds for its guest
        agent, then runs `script` (bytes or str: a script copied into the
        guest; exit status 0 passes). The verdict is recorded beside the
        point and returned (a failed boot is a verdict, not an exception).
        """
    def boot_verdict(self, point: "RecoveryPoint") -> Optional["BootVerdict"]:
        """The last boot verdict recorded for a point, or None if it was never
        booted.
        """
    def verify(
        self,
        point: Optional["RecoveryPoint"] = None,
        *,
        vm: Optional[str] = None,
        progress: Optional[_Progress] = None,
    ) -> "VerifyReport":
        """Verifies one point, one VM's points (`vm=`), or the whole vault
        (every pack read frame by frame, then every point). Damage is
        reported in the returned report, with the disk's byte ranges it
        hurts, not raised; call `report.check()` to raise it.
        """
    def prune(
        self, policy: Union["Policy", str], *, vm: Optional[str] = None, dry_run: bool = False
    ) -> "PruneReport":
        """Prunes by the retention rules of a policy, a `Policy` or TOML text
        (the format `vmbackup policy check` reads; text needs only
        `timezone` and `[retention]`, and a `[schedule]` in it is checked):
        removes the points the rules
        do not keep (a VM's newest point is always kept) and the logs of
        finished jobs whose point is gone, once older than the policy's
        `job_logs` days. `vm=` prunes one VM's points; `dry_run=True`
        removes nothing and reports what it would. `gc()` then reclaims the
        space. A bad policy raises `ValueError` naming the field.
        """
    def gc(
        self,
        *,
        grace: float = 3600.0,
        repack_threshold: float = 0.5,
        dry_run: bool = False,
        now: Optional[datetime.datetime] = None,
    ) -> "GcReport":
        """Removes what no point references (dead packs, or packs whose dead
        share of bytes reaches `repack_threshold` rewritten without their
        dead chunks; unreferenced segments; what killed backups left).
        Objects younger than `grace` seconds are spared: a backup in flight
        may be about to name them. On object storage a run marks, and a
        later run removes (see the README).

        Soft-deleted points whose days are not over keep their data; those
        whose days are over at `now` (a time-zone aware `datetime`; default
        the current time, a later one rehearses) are removed for good first.
        """
    def copy_to(
        self,
        target: "Vault",
        *,
        vms: Optional[List[str]] = None,
        points: Union[Literal["latest", "all"], datetime.datetime, None] = None,
        progress: Optional[_Progress] = None,
    ) -> "CopyReport":
        """Copies points of this vault into `target` (another open `Vault`: a
        second site, local or on object storage, encrypted or not): of the
        VMs in `vms` (every VM when None), the points `points` selects
        ("latest", "all", or a time-zone aware `datetime`: the points taken
        since), oldest first. Only the chunks `target` lacks move, sealed
        with its key; a point it already holds is skipped, so a rerun
        finishes a copy that was stopped. `progress` works as for
        `backup()`, once per point.
        """
    def settings(self) -> "VaultSettings":
        """The vault's settings as its store holds them now."""
    def store_lock(self) -> Literal["unavailable", "disabled", "enabled"]:
        """Whether the vault's store can lock the objects the vault writes, so
        that not even the vault's own credentials can delete them:
        "unavailable" (a folder; Azure Blob, whose container immutability
        policy is its owner's to set), "disabled" (an S3 bucket without
        Object Lock) or "enabled" (an S3 bucket with it: while the vault is
        immutable, each object written is locked for its immutable days).
        """
    def configure(
        self,
        *,
        soft_delete_days: Optional[int] = None,
        soft_delete_always_on: bool = False,
        immutable_days: Optional[int] = None,
    ) -> "VaultSettings":
        """Changes the vault's settings and returns them as they now are:
        `soft_delete_days` (0 turns soft delete off) and, with
        `soft_delete_always_on=True`, soft delete always on for good. A
        vault whose soft delete is always on raises `ProtectedError` for 0
        days or fewer days than it has (nothing changed).

        `immutable_days=N` makes points younger than N days immutable:
        `delete()` raises `ProtectedError` for them, prune spares them, gc
        neither removes nor rewrites what was written in that time. The
        days can only grow. On S3 each object written from then on is also
        locked for that long (Object Lock, compliance mode); a bucket
        without Object Lock raises `ValueError` (nothing changed).
        """
    def delete(self, vm: str, id: str) -> "Deletion":
        """Deletes point `id` of `vm` (an id, a unique prefix of one, or
        "latest"). While the vault's soft delete is on (14 days unless
        `configure()` says otherwise) it stays recoverable by `undelete()`
        and gc keeps its data; the `Deletion` says until when.
        """
    def deleted_points(self, vm: Optional[str] = None) -> List["DeletedPoint"]:
        """The soft-deleted points of one VM (or of all VMs), by VM then id."""
    def undelete(self, vm: str, id: str) -> "RecoveryPoint":
        """Brings back soft-deleted point `id` of `vm` (an id or a unique
        prefix of one): the same point, restorable bit for bit.
        `NotFoundError` when no deleted point matches.
        """
    def repair(self, *, dry_run: bool = False) -> "RepairReport":
        """Rebuilds the chunk index files from the packs (leaving damaged
        chunks out, so that backups store them again), then verifies the
        vault and reports what is lost. Other open handles of the vault keep
        the index they loaded: open them again.
        """
    def key_slots(self) -> List["KeySlot"]:
        """The key slots of an encrypted vault (empty for a vault without
        encryption): what opens it, never the keys themselves.
        """
    def add_key(
        self, *, passphrase: Optional[str] = None, key_file: Optional[_StrPath] = None
    ) -> "KeySlot":
        """Adds a key slot: `passphrase` or `key_file` opens the vault too from
        now on. Only the vault's config is rewritten; no data is
        re-encrypted. `ValueError` for a vault without encryption.
        """
    def remove_key(self, slot_id: str) -> "KeySlot":
        """Removes a key slot by its id; refuses the last one, which would lock
        everyone out for good. `NotFoundError` for an unknown id.
        """

@final
class LibvirtProvider:
    """A libvirt domain to back up: its disks come from the domain's XML, each
    snapshot is a libvirt checkpoint and pull-mode backup job (incremental
    from the VM's previous point), quiesced through the guest agent (in-guest
    pre/post scripts, then a freeze) as far as the backup's consistency asks
    and the guest allows; a shut-off domain's disks are read in place. The
    point stores the domain's XML (`RecoveryPoint.configuration`).

    `include`/`exclude` select disks by target name (`"vda"`);
    `guest_scripts` is a `VMSnapshotScriptPluginConfig.json` on this host
    whose scripts are installed into the guest when the VM is prepared;
    `min_consistency` makes a weaker fallback fail the backup.
    """

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
        """The disks the next backup takes (target names), and the ones it
        skips as `(target, why)`: asks libvirt now.
        """

@final
class Mount:
    """A vault mounted read-only (FUSE) as `VM/POINT/DISK.img`, made by
    `Vault.mount`. Unmounted by `unmount()`, at the end of a `with` block,
    or when garbage-collected.
    """
    @property
    def mountpoint(self) -> str:
        """Where it is mounted."""
    @property
    def mounted(self) -> bool:
        """Whether it is still mounted (False after `unmount()`, or once
        someone else unmounted it).
        """
    def errors(self) -> List[str]:
        """The reads that failed since the last call (damaged or unreachable
        data), each naming the disk and bytes; they failed with `EIO`.
        """
    def unmount(self) -> None:
        """Unmounts it and releases the vault's lock; again is a no-op. Raises
        `VmBackupIOError` when a file in it is still open (it then goes when
        the object is garbage-collected).
        """
    def __enter__(self) -> "Mount": ...
    def __exit__(self, *args: object) -> bool: ...

@final
class Volume:
    """A volume of a guest disk: a partition, an LVM logical volume, or the
    whole disk.
    """
    @property
    def name(self) -> str:
        """How paths name it: "p1", "vg/lv", or "disk"."""
    @property
    def type(self) -> str:
        """What it holds: "ext4", "xfs", "vfat", "LVM2_member", "swap",
        "unknown".
        """
    @property
    def kind(self) -> str:
        """"partition", "logicalvolume" or "disk"."""
    @property
    def size(self) -> int:
        """Its size in bytes."""
    @property
    def label(self) -> Optional[str]:
        """Its label (or GPT partition name), or None."""
    @property
    def uuid(self) -> Optional[str]:
        """Its file system's UUID, or None."""
    @property
    def has_files(self) -> bool:
        """Whether its files can be read (`GuestDisk.open_fs`)."""

@final
class FileEntry:
    """A file, folder or link in a guest's file system, as `lstat` sees it."""
    @property
    def path(self) -> str:
        """Its absolute path in the guest ("/etc/fstab")."""
    @property
    def kind(self) -> str:
        """"file", "dir", "symlink" or "other"."""
    @property
    def size(self) -> int:
        """Its size in bytes."""
    @property
    def mode(self) -> int:
        """Its permission bits, with set-uid, set-gid and sticky (0o7777)."""
    @property
    def uid(self) -> int:
        """Its owner."""
    @property
    def gid(self) -> int:
        """Its group."""
    @property
    def mtime_ns(self) -> int:
        """Its modification time in nanoseconds since 1970 (UTC), exact."""
    @property
    def mtime(self) -> datetime.datetime:
        """Its modification time, as a time-zone aware `datetime` in UTC
        (microseconds: `mtime_ns` is exact).
        """
    @property
    def target(self) -> Optional[str]:
        """Where a link points, or None."""

@final
class GuestDisk:
    """One disk of a point, its volumes found (partitions and LVM volumes are
    read by vmbackup, never by the host's LVM). Made by `Vault.guest_disk`;
    holds the vault's shared lock until closed.
    """
    @property
    def volumes(self) -> List[Volume]:
        """The volumes: partitions in table order, each volume group's logical
        volumes after its PV; or the whole disk.
        """
    @property
    def table(self) -> Optional[str]:
        """"gpt", "mbr", or None for a disk without a partition table."""
    def open_fs(self, volume: str) -> "GuestFs":
        """Opens the file system of volume `volume` ("p1", "vg/lv", "disk"),
        read-only. FAT needs no privileges; ext4 and XFS are mounted by the
        kernel (read-only, journal not replayed) and need root.
        """
    def close(self) -> None:
        """Releases the disk and its hold on the vault (file systems opened
        from it stay usable until closed).
        """
    def __enter__(self) -> "GuestDisk": ...
    def __exit__(self, *args: object) -> bool: ...

@final
class GuestFs:
    """A guest file system opened read-only (`GuestDisk.open_fs`). Paths are
    absolute guest paths; links are followed inside the guest only. Close
    it (or use `with`) to unmount what was mounted for it.
    """
    @property
    def place(self) -> str:
        """Where it is: volume, type, disk, point and VM."""
    def stat(self, path: str) -> FileEntry:
        """The entry at `path`, not following a link at its end. Raises
        `NotFoundError` when there is none.
        """
    def list(self, path: str) -> List[FileEntry]:
        """The entries of folder `path` sorted by name (or the entry of `path`
        alone when it is not a folder).
        """
    def walk(self, path: str = "/") -> List[FileEntry]:
        """`path` and everything under it, parents first, never following a
        link.
        """
    def read(self, path: str) -> bytes:
        """The whole content of file `path`."""
    def extract(self, path: str, to: Union[str, "os.PathLike[str]"]) -> Dict[str, int]:
        """Copies `path` (a file, a link, or a folder and all under it; "/" the
        whole file system) into folder `to`, keeping modes, times and (as
        root) owners. Nothing is overwritten and no name lands outside
        `to`. Returns counts: files, dirs, links, skipped, bytes.
        """
    def close(self) -> None:
        """Unmounts what was mounted for it; later calls raise `ValueError`."""
    def __enter__(self) -> "GuestFs": ...
    def __exit__(self, *args: object) -> bool: ...

@final
class FoundFile:
    """A file `Vault.find_files` found, and where."""
    @property
    def point(self) -> str:
        """The point's id."""
    @property
    def disk(self) -> str:
        """The disk."""
    @property
    def volume(self) -> str:
        """The volume ("p1", "vg/lv", "disk")."""
    @property
    def entry(self) -> FileEntry:
        """The file."""

@final
class DiskReader:
    """Reads one disk of a point at any offset; every block is checked as it
    is read. Holds the vault's shared lock until closed. Made by
    `Vault.open_disk`, which wraps it in a standard binary file object.
    """
    @property
    def size(self) -> int:
        """The disk's size in bytes."""
    @property
    def name(self) -> str:
        """The disk's name in its point."""
    @property
    def point(self) -> str:
        """The id of the point it reads."""
    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
    def read_at(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`: fewer only at the end of the disk
        (none at or past it). Damaged data raises `CorruptionError` naming
        the disk's byte range.
        """
    def close(self) -> None:
        """Releases the reader and its hold on the vault; later reads raise
        `ValueError`. Closing twice does nothing.
        """

@final
class RecoveryPoint:
    """A recovery point: a VM's disks at one instant, as committed to a vault.

    Points compare equal when they name the same point of the same VM.
    """

    @property
    def id(self) -> str:
        """The point's id: the snapshot's time and a random suffix."""
    @property
    def vm(self) -> str:
        """The VM's name."""
    @property
    def configuration(self) -> Optional[str]:
        """The VM's configuration stored with the point (a libvirt domain's
        XML), or None.
        """
    @property
    def configuration_kind(self) -> Optional[str]:
        """What `configuration` is (`"libvirt-domain-xml"`), or None."""
    @property
    def time(self) -> datetime.datetime:
        """When the snapshot was taken, as a time-zone aware `datetime` in UTC."""
    @property
    def consistency(self) -> _Consistency:
        """The consistency achieved: "crash", "filesystem" or "application"."""
    @property
    def wanted_consistency(self) -> _Consistency:
        """The consistency asked for."""
    @property
    def parent(self) -> Optional[str]:
        """The id of the VM's previous point this one was compared against, or
        None for a VM's first point.
        """
    @property
    def disks(self) -> List["DiskInfo"]:
        """The disks, in the VM's order."""
    @property
    def stats(self) -> "BackupStats":
        """What the backup did, all disks added up, and `bytes_added`: all it
        added to the vault.
        """
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
    """What a backup did, for one disk (`DiskInfo.stats`) or a whole point
    (`RecoveryPoint.stats`: the disks' figures added up). Each statistic has
    the name and meaning it has in Rust (`backup_core::DiskStats`), C
    (`vmb_backup_stats`) and the command line's `--json`.
    """

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
        """Everything the point added to the vault: `bytes_stored` plus pack
        trailers, chunk index files and the manifest. A point's only: None
        for a disk.
        """
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
        """Bytes left as zeros (holes in a sparse file)."""
    @property
    def seconds(self) -> float:
        """Wall-clock seconds."""
    @property
    def damaged(self) -> List[Tuple[int, int, str]]:
        """With `allow_damaged=True`: the byte ranges that could not be read
        and were written as zeros, as `(start, end, why)`; else empty.
        """

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
        """The disk's bytes that cannot be restored as `(start, end)`, end
        exclusive; None when the damage is not tied to a disk (a damaged
        pack frame no point uses).
        """
    @property
    def start(self) -> Optional[int]:
        """The first damaged byte, or None."""
    @property
    def end(self) -> Optional[int]:
        """One past the last damaged byte, or None."""
    @property
    def what(self) -> str:
        """What is wrong, naming the damaged object."""
    @property
    def tampered(self) -> bool:
        """Whether a sealed object of an encrypted vault failed authentication
        (changed on purpose, swapped or forged).
        """

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
        """Packs read whole (whole-vault verify only)."""
    @property
    def bytes(self) -> int:
        """Bytes of disk covered by the checked points."""
    def check(self) -> None:
        """Raises `CorruptionError` for the first problem (preferring one with
        a byte range); does nothing when all is well.
        """

@final
class PruneReport:
    """What a prune did (or, in a dry run, would do)."""

    @property
    def dry_run(self) -> bool:
        """Whether it was a dry run (nothing removed)."""
    @property
    def removed(self) -> List[Tuple[str, str]]:
        """The points removed (or that would be), as `(vm, point id)`."""
    @property
    def kept(self) -> int:
        """How many points the rules keep."""
    @property
    def spared(self) -> List[str]:
        """Points the rules condemned that were kept after all, and why."""
    @property
    def job_logs_removed(self) -> List[str]:
        """Job logs removed (or that would be), as `vm/job id`."""

@final
class KeySlot:
    """A key slot of an encrypted vault: one passphrase or key file that
    opens it."""

    @property
    def id(self) -> str:
        """The slot's id (8 hex digits), as `Vault.remove_key` takes it."""
    @property
    def kind(self) -> str:
        """`"passphrase"` or `"key_file"`."""
    @property
    def created(self) -> str:
        """When it was added, as RFC 3339 text in UTC."""

@final
class GcReport:
    """What a garbage collection did (or, in a dry run, would do)."""

    @property
    def dry_run(self) -> bool:
        """Whether it was a dry run (nothing removed)."""
    @property
    def points(self) -> int:
        """Points whose objects were kept."""
    @property
    def packs_removed(self) -> int:
        """Packs removed whole (no live chunk)."""
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
        """On a vault on object storage: packs this run marked for removal by
        a later gc (rewritten ones included).
        """
    @property
    def segments_marked(self) -> int:
        """On a vault on object storage: segments this run marked."""
    @property
    def deleted_points_kept(self) -> int:
        """Soft-deleted points whose days are not over: their data was kept."""
    @property
    def deleted_points_purged(self) -> int:
        """Soft-deleted points whose days were over, removed for good."""

@final
class Policy:
    """A backup policy (schedule and retention), parsed and checked: what
    `Vault.prune` applies. `Policy.from_toml(text)` or `Policy.load(path)`;
    a bad policy raises `ValueError` naming the field.
    """

    @staticmethod
    def from_toml(text: str) -> "Policy":
        """Parses a policy from TOML text (the format `vmbackup policy check`
        reads).
        """
    @staticmethod
    def load(path: _StrPath) -> "Policy":
        """Reads and parses a policy file (`OSError` when it cannot be read,
        `ValueError` naming the file and field when it is not a policy).
        """
    @property
    def copy_to(self) -> Optional[str]:
        """The second site the policy's `[copy]` section names (a folder or a
        URL), where each new point is copied after its backup
        (`Vault.copy_to`); None when it has none.
        """
    def summary(self) -> List[str]:
        """The policy in a few lines of English, as `vmbackup policy check`
        says it.
        """

@final
class RepairReport:
    """What a repair did: chunk index files rebuilt from their packs, then a
    verify of what is lost.
    """

    @property
    def dry_run(self) -> bool:
        """Whether it was a dry run (nothing rewritten)."""
    @property
    def nothing_lost(self) -> bool:
        """Whether no point lost data and no manifest is unreadable."""
    @property
    def packs(self) -> int:
        """Packs examined."""
    @property
    def rebuilt(self) -> List[Tuple[str, str]]:
        """The packs whose index file was (or would be) rebuilt, with why."""
    @property
    def dropped(self) -> int:
        """Damaged chunks left out of the rebuilt index files (so that backups
        store them again).
        """
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
    """A snapshot kept after its job for instant restore (`Vault.backup(...,
    instant_restore_days=N)` on a file system with reflinks): the point it
    belongs to, until when it is kept, and each disk's clone.
    """

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
        """When it was taken, as a time-zone aware `datetime` in UTC."""
    @property
    def expires(self) -> datetime.datetime:
        """When it is released, as a time-zone aware `datetime` in UTC."""
    @property
    def disks(self) -> List[Tuple[str, pathlib.Path]]:
        """Each disk's clone, as `(disk name, path)`."""

@final
class ReleaseReport:
    """What `Vault.release_expired` did."""

    @property
    def released(self) -> List[Tuple[KeptSnapshot, str]]:
        """The snapshots released, each with why: `"expired"`, `"job ended
        without its point"` or `"point pruned"`.
        """
    @property
    def kept(self) -> List[KeptSnapshot]:
        """The snapshots still kept."""
    @property
    def problems(self) -> List[str]:
        """Snapshots that could not be released (tried again next time) and
        damaged records, as sentences naming them.
        """

@final
class BootVerdict:
    """What booting a point in a throwaway domain showed (`Vault.boot_verify`,
    `Vault.boot_verdict`).
    """

    @property
    def vm(self) -> str:
        """The point's VM."""
    @property
    def point_id(self) -> str:
        """The point's id."""
    @property
    def passed(self) -> bool:
        """Whether the guest's agent answered and the in-guest test passed."""
    @property
    def reason(self) -> Optional[str]:
        """Why it failed (None when it passed)."""
    @property
    def checked_at(self) -> int:
        """When it was booted (Unix seconds)."""
    @property
    def agent_seconds(self) -> Optional[float]:
        """Seconds from the start until the agent answered (None if never)."""
    @property
    def script_exit(self) -> Optional[int]:
        """The in-guest test's exit status (None without a test)."""
    @property
    def script_output(self) -> Optional[str]:
        """The in-guest test's output."""
    @property
    def console(self) -> str:
        """The end of the guest's serial console."""
    @property
    def screenshot(self) -> bytes:
        """A PNG of the screen (empty when none could be taken)."""
    @property
    def notes(self) -> List[str]:
        """What was done to judge it beyond the boot."""
    def __bool__(self) -> bool: ...

@final
class VaultSettings:
    """A vault's settings, as `vmbackup config` shows them."""

    @property
    def soft_delete_days(self) -> int:
        """Days a point removed by prune or delete stays recoverable (0: soft
        delete is off, removed points are gone at once).
        """
    @property
    def soft_delete_always_on(self) -> bool:
        """Soft delete can never be turned off, nor its days shortened."""
    @property
    def immutable_days(self) -> int:
        """Points younger than this many days are immutable (0: off)."""

@final
class Deletion:
    """What `Vault.delete` did: the point as it was, and until when
    `Vault.undelete` can bring it back (None: soft delete is off, and the
    point is gone for good).
    """

    @property
    def point(self) -> RecoveryPoint:
        """The point deleted."""
    @property
    def recoverable_until(self) -> Optional[datetime.datetime]:
        """Until when it can be undeleted (a UTC `datetime`), or None."""

@final
class DeletedPoint:
    """A soft-deleted point: the point as it was, when it was deleted, and
    when gc may remove it for good.
    """

    @property
    def point(self) -> RecoveryPoint:
        """The point as it was (its `id` is what `Vault.undelete` takes)."""
    @property
    def deleted(self) -> datetime.datetime:
        """When it was deleted (a UTC `datetime`, by the store's clock)."""
    @property
    def purge_after(self) -> datetime.datetime:
        """When gc may remove it for good (a UTC `datetime`)."""

@final
class CopiedPoint:
    """One point a copy committed: its VM and id (the same in both vaults),
    the bytes of the source's disks read, the bytes of blocks the target
    lacked (before compression), and the bytes written to the target.
    """

    @property
    def vm(self) -> str:
        """The VM."""
    @property
    def id(self) -> str:
        """The point's id."""
    @property
    def bytes_read(self) -> int:
        """Bytes of the source's disks read."""
    @property
    def bytes_lacked(self) -> int:
        """Bytes of blocks the target lacked, before compression."""
    @property
    def bytes_added(self) -> int:
        """Bytes written to the target: what moved, and the manifest."""

@final
class CopyReport:
    """What `Vault.copy_to` did."""

    @property
    def copied(self) -> List[CopiedPoint]:
        """The points copied, oldest first within each VM."""
    @property
    def already_there(self) -> List[Tuple[str, str]]:
        """The points the target already held, as `(vm, id)`."""
    @property
    def verdicts_copied(self) -> List[Tuple[str, str]]:
        """The boot verdicts brought along (the target lacked them or held
        older ones), as `(vm, id)`."""
    @property
    def vm_records_copied(self) -> List[str]:
        """The VMs whose record (what preparing the VM found and changed) was
        brought along."""
    @property
    def bytes_added(self) -> int:
        """Bytes written to the target in all."""
