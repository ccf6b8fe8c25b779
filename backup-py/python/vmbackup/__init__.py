"""vmbackup: back up virtual machine disks into a deduplicating vault.

A :class:`Vault` holds recovery points. :meth:`Vault.backup` takes a VM's
disks (raw image files, or :class:`BlockDevice` objects written in Python),
moves only the blocks that changed since the VM's previous point, in
parallel and with the GIL released, and returns the committed
:class:`RecoveryPoint`. Points are listed, restored and verified::

    import vmbackup

    with vmbackup.Vault.init("/backups/vault") as vault:
        point = vault.backup("web", ["/vms/web/root.img"])
        vault.restore(point, disk="root.img", to="/tmp/root.img")
        assert vault.verify().ok

Errors of the engine are :class:`VmBackupError` subclasses; bad arguments
raise :class:`ValueError` or :class:`TypeError`.
"""

from ._device import BlockDevice
from ._disk import DiskFile
from ._errors import (
    AlreadyExistsError,
    CancelledError,
    CorruptionError,
    GuestError,
    ProtectedError,
    KeyRequiredError,
    NotFoundError,
    TamperedError,
    VaultKeyError,
    VaultLockedError,
    VmBackupError,
    VmBackupIOError,
    WrongKeyError,
)
from ._native import (
    BackupStats,
    BootVerdict,
    CopiedPoint,
    CopyReport,
    DeletedPoint,
    Deletion,
    DiskInfo,
    FileEntry,
    FoundFile,
    GcReport,
    GuestDisk,
    GuestFs,
    KeptSnapshot,
    KeySlot,
    LibvirtProvider,
    Mount,
    Policy,
    Problem,
    PruneReport,
    RecoveryPoint,
    ReleaseReport,
    RepairReport,
    RestoreStats,
    Vault,
    VaultSettings,
    VerifyReport,
    Volume,
    __version__,
)

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
    "VaultSettings",
    "Deletion",
    "DeletedPoint",
    "CopiedPoint",
    "CopyReport",
    "BlockDevice",
    "DiskFile",
    "Mount",
    "GuestDisk",
    "GuestFs",
    "Volume",
    "FileEntry",
    "FoundFile",
    "VmBackupError",
    "CorruptionError",
    "VaultLockedError",
    "NotFoundError",
    "VmBackupIOError",
    "AlreadyExistsError",
    "CancelledError",
    "TamperedError",
    "VaultKeyError",
    "KeyRequiredError",
    "WrongKeyError",
    "GuestError",
    "ProtectedError",
]
