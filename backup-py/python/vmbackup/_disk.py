"""A disk of a recovery point as a read-only binary file object."""

import io
from typing import Any

from ._native import DiskReader


class DiskFile(io.RawIOBase):
    """One disk of a point, read from the vault on demand, as returned by
    :meth:`Vault.open_disk`.

    A standard read-only, seekable binary file (:class:`io.RawIOBase`):
    ``read``, ``readinto``, ``seek`` and ``tell`` work, and
    :class:`io.BufferedReader` can wrap it, so any Python library that reads
    disk images reads a point without restoring it. Every block is checked as
    it is read: damaged data raises :class:`CorruptionError`. The vault's
    shared lock is held until the file is closed (``with`` closes it).
    """

    def __init__(self, reader: DiskReader) -> None:
        super().__init__()
        self._reader = reader
        self._position = 0

    @property
    def name(self) -> str:
        """The disk's name in its point."""
        return self._reader.name

    @property
    def point(self) -> str:
        """The id of the point it reads."""
        return self._reader.point

    @property
    def size(self) -> int:
        """The disk's size in bytes."""
        return self._reader.size

    def readable(self) -> bool:
        """True: a point's disk is read-only, and readable."""
        return True

    def seekable(self) -> bool:
        """True: any offset is read from the vault on demand."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Reads into `buffer` from the current position; returns how many
        bytes were read (fewer only at the end of the disk, 0 past it)."""
        self._check_open()
        view = memoryview(buffer).cast("B")
        data = self._reader.read_at(self._position, len(view))
        view[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves to `offset` from the start, the current position or the end
        (`whence` 0, 1 or 2); returns the new position. Past the end is
        allowed: reads there return nothing."""
        self._check_open()
        if whence == io.SEEK_SET:
            base = 0
        elif whence == io.SEEK_CUR:
            base = self._position
        elif whence == io.SEEK_END:
            base = self._reader.size
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        position = base + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def tell(self) -> int:
        """The current position."""
        self._check_open()
        return self._position

    def close(self) -> None:
        """Closes the file and releases the vault's shared lock."""
        if not self.closed:
            self._reader.close()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"size={self.size}"
        return f"<vmbackup.DiskFile {self.name!r} of point {self.point!r} {state}>"
