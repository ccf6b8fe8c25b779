//! A raw image file as a block device, with holes found by
//! `SEEK_DATA`/`SEEK_HOLE` so that they are never read.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::BlockDevice;
use crate::error::{Error, Result};

/// A raw disk image file, opened read-only.
///
/// ```no_run
/// use backup_core::{BlockDevice, RawImage};
/// let disk = RawImage::open("/var/lib/vms/web/root.img")?;
/// let mut first = vec![0u8; 512];
/// disk.read_at(0, &mut first)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RawImage {
    /// Opens an image file read-only.
    ///
    /// # Errors
    /// A missing or unreadable file, or one that is not a regular file or
    /// block device.
    pub fn open(path: impl AsRef<Path>) -> Result<RawImage> {
        let path = path.as_ref();
        // O_NONBLOCK: a FIFO named as a disk must be refused, not waited on
        // for a writer that never comes; it is cleared once the type is known.
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| Error::io("open disk image", path, e))?
        };
        let meta = file.metadata().map_err(|e| Error::io("stat disk image", path, e))?;
        {
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor `file` owns.
            unsafe {
                let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
            }
        }
        let size = if meta.is_file() {
            meta.len()
        } else {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_block_device() {
                return Err(Error::invalid(
                    "disk",
                    format!("{} is neither a regular file nor a block device", path.display()),
                ));
            }
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0)).map_err(|e| Error::io("find the size of", path, e))?
        };
        Ok(RawImage { file, path: path.to_path_buf(), size })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `lseek(fd, offset, whence)`, or None when the file system says there
    /// is no such position (ENXIO: no data or hole past `offset`).
    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: lseek only reads its integer arguments; the descriptor is
        // owned by `self.file` and open for the duration of the call.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl BlockDevice for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.file.read_exact_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} ends before byte {} (was it truncated?)", self.path.display(), offset + buf.len() as u64),
            )),
            other => other,
        }
    }

    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let end = window.end.min(self.size);
        let mut ranges = Vec::new();
        let mut pos = window.start;
        while pos < end {
            let data = match self.seek(pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                // No SEEK_DATA on this file system (or a block device):
                // everything may hold data.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(e) => return Err(e),
            };
            if data >= end {
                break;
            }
            let hole = self.seek(data, libc::SEEK_HOLE)?.unwrap_or(self.size).min(end);
            ranges.push(data..hole);
            pos = hole;
        }
        Ok(Some(ranges))
    }
}
