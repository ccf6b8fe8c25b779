"""Disks written in Python."""

from __future__ import annotations

import abc
from typing import List, Optional, Tuple, Union

__all__ = ["BlockDevice"]


class BlockDevice(abc.ABC):
    """A disk whose bytes come from Python: subclass it and pass an
    instance to :meth:`vmbackup.Vault.backup` among the disks.

    ``size()`` is called once, at the start of a backup. ``read_at`` is
    called from the engine's worker threads, several at once (each call
    holds the GIL), so it must not depend on a shared file position: use
    :func:`os.pread` rather than ``seek`` and ``read``. An exception it
    raises fails the backup with a :class:`vmbackup.VmBackupIOError` whose
    ``__cause__`` is that exception; nothing is committed.

    Override :meth:`allocated` to tell which parts of the disk may hold
    data: the rest reads as zeros and is never read.

    Set ``name`` (a class or instance attribute) to name the disk in the
    vault; without it the disk is called ``disk<N>`` after its position.
    Keep the name stable so the next backup is incremental.
    """

    name: Optional[str] = None

    @abc.abstractmethod
    def size(self) -> int:
        """The size of the disk in bytes."""

    @abc.abstractmethod
    def read_at(self, offset: int, length: int) -> Union[bytes, bytearray, memoryview]:
        """Return exactly ``length`` bytes of the disk starting at byte
        ``offset`` (``bytes``, ``bytearray`` or ``memoryview``)."""

    def allocated(self, start: int, end: int) -> Optional[List[Tuple[int, int]]]:
        """The ranges ``(start, end)`` (end exclusive) within bytes
        ``start`` to ``end`` that may hold data, sorted and not overlapping;
        everything else reads as zeros and is not read. ``None`` (the
        default) when not known: then every block is read."""
        return None
