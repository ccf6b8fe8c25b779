"""The exceptions of vmbackup.

Every error the engine reports is a :class:`VmBackupError`. Arguments a
caller got wrong raise the builtin :class:`ValueError` or :class:`TypeError`
instead, as elsewhere in Python.
"""

from __future__ import annotations

from typing import Optional, Tuple

__all__ = [
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


class VmBackupError(Exception):
    """Base class of every error raised by the vmbackup engine.

    ``retryable`` is true when trying the same call again may succeed (a
    vault locked by another process, an interrupted read).
    """

    retryable: bool = False


class CorruptionError(VmBackupError):
    """Stored data is damaged: a checksum or hash mismatch, a truncated or
    unparsable object. Never returned as data.

    Where the damage is tied to a disk, ``vm``, ``point`` and ``disk`` name
    it and ``start``/``end`` give the disk's bytes that cannot be restored
    (``end`` exclusive); they are ``None`` where not known. ``object`` names
    the damaged vault object where known.
    """

    vm: Optional[str] = None
    point: Optional[str] = None
    disk: Optional[str] = None
    start: Optional[int] = None
    end: Optional[int] = None
    object: Optional[str] = None

    @property
    def range(self) -> Optional[Tuple[int, int]]:
        """The damaged bytes as ``(start, end)``, or ``None`` when not known."""
        if self.start is None or self.end is None:
            return None
        return (self.start, self.end)


class VaultLockedError(VmBackupError):
    """Another process held the vault's lock for longer than the lock
    timeout. Retryable. ``path`` is the vault's folder."""

    path: Optional[str] = None
    retryable: bool = True


class NotFoundError(VmBackupError, LookupError):
    """Something named does not exist: a point, a disk, a VM's points, or a
    vault at the given path. Also a :class:`LookupError`."""


class VmBackupIOError(VmBackupError, OSError):
    """A file system or device operation failed (a missing disk image, a
    full disk, a read error of a :class:`~vmbackup.BlockDevice`).

    Also an :class:`OSError`: ``errno`` and ``filename`` are set where
    known. When a Python ``BlockDevice`` raised, its exception is the
    ``__cause__``. ``vm``, ``disk`` and ``offset`` say where a disk read or
    restore write failed.
    """

    vm: Optional[str] = None
    disk: Optional[str] = None
    offset: Optional[int] = None


class AlreadyExistsError(VmBackupIOError, FileExistsError):
    """What was to be created exists already: a vault where ``init`` was
    asked for one, a file a restore must not overwrite. Also a
    :class:`FileExistsError` (``errno`` is ``EEXIST``)."""


class CancelledError(VmBackupError):
    """A job was cancelled and committed nothing.

    A job cancelled by an exception from its ``progress`` callback or by
    Ctrl-C raises that exception (``KeyboardInterrupt``) itself instead.
    """


class TamperedError(CorruptionError):
    """A sealed object of an encrypted vault fails authentication: it was
    changed, swapped, moved from another vault, or forged. ``object``
    names it and where (file, byte offset)."""


class VaultKeyError(VmBackupError):
    """An encrypted vault cannot be opened with the key given. ``path`` is
    the vault's folder."""

    path: Optional[str] = None


class KeyRequiredError(VaultKeyError):
    """The vault is encrypted and neither ``passphrase`` nor ``key_file``
    was given."""


class WrongKeyError(VaultKeyError):
    """The passphrase or key file opens none of the vault's key slots."""


class GuestError(VmBackupError):
    """A guest's partition table, volume group or file system inside a
    point cannot be read as asked: an unknown or unsupported layout, a
    volume without files, or ext4/XFS without root (the kernel mounts
    them). The vault itself may be sound."""


class ProtectedError(VmBackupError, PermissionError):
    """The vault's protection settings refuse the change (turning off soft
    delete that is always on, shortening its days); nothing was changed.
    Also a :class:`PermissionError`."""
