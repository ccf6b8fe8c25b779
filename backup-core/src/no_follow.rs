//! Files at paths someone else may have changed: opened and removed without
//! following a link at the end of the path, and without blocking on a FIFO.
//!
//! vmbackup acts on a few paths outside the vault that it did not just
//! create: snapshot clones named by a kept-snapshot record, temporary files
//! that an earlier restore left in a folder another user may own. Between
//! being named and being used, such a path may have become a link or a
//! special file. [`open_regular`] opens only a regular file, the one at the
//! path itself; [`remove_if_same`] removes a name only while it still names
//! the file held open. (Vault paths have their own, stricter walk:
//! `vault/beneath.rs`.)

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading when it is a regular file: a link at its end
/// fails with `ELOOP`, anything but a regular file with `InvalidInput`,
/// and a FIFO never makes the open wait.
pub(crate) fn open_regular(path: &Path) -> io::Result<File> {
    let file = File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// Whether an error of [`open_regular`] says the path is a link.
pub(crate) fn is_link_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// Removes the name `path` if it still names `file` (same device and
/// inode, looked at without following a link); Ok(false) when it names
/// something else now, which is left alone.
pub(crate) fn remove_if_same(path: &Path, file: &File) -> io::Result<bool> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a path without a folder"));
    };
    let dir = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })?;
    let name = CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let held = file.metadata()?;
    // SAFETY: all-zero is a valid stat; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live folder descriptor, a NUL-terminated name, a live stat.
    if unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_ino != held.ino() || st.st_dev != held.dev() {
        return Ok(false);
    }
    // SAFETY: as above; unlinkat never follows the name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_special_files_are_neither_opened_nor_removed_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, link) = (dir.path().join("file"), dir.path().join("link"));
        std::fs::write(&file, b"x").expect("write");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(is_link_error(&open_regular(&link).expect_err("a link")));
        assert_eq!(open_regular(dir.path()).expect_err("a folder").kind(), io::ErrorKind::InvalidInput);
        let held = open_regular(&file).expect("a regular file");
        // The name now names another file: left alone.
        std::fs::rename(&file, dir.path().join("moved")).expect("rename");
        std::fs::write(&file, b"other").expect("write");
        assert!(!remove_if_same(&file, &held).expect("look"));
        assert_eq!(std::fs::read(&file).expect("read"), b"other");
        let moved = dir.path().join("moved");
        assert!(remove_if_same(&moved, &held).expect("remove"));
        assert!(!moved.exists());
    }
}
