//! Where a restore writes a disk named by a path: a block device in place,
//! or a new regular file put in place whole.
//!
//! Restores run as root into folders that other users may own, so the
//! path is handled as an untrusted place:
//!
//! | what is at the path            | what a restore does                                         |
//! |--------------------------------|-------------------------------------------------------------|
//! | nothing, or a regular file     | writes `.NAME.restoring-RAND` beside it, then renames it over |
//! | a block device (or a link to one, as LVM's `/dev/VG/LV`) | writes the device in place            |
//! | a link to anything else        | replaces the link itself, never what it points to           |
//! | a folder                       | refuses before any work                                     |
//! | a FIFO, socket or character device (`/dev/null`) | refuses before any work                   |
//!
//! The temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`
//! (a link planted under its name makes the open fail, never a write
//! through it), mode 0600, and is removed if the restore fails, is
//! cancelled, or its process unwinds; it holds an exclusive `flock` while
//! it is written, so that a temporary file left by a killed restore (lock
//! free) is removed by the next restore to the same path.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::hex;

/// What a restore writes into.
#[derive(Debug)]
pub(crate) struct Output {
    /// The path the data goes to now (the temporary file, or the device).
    pub path: PathBuf,
    /// The open file or device.
    pub file: File,
    /// Whether it is a block device, written in place.
    pub device: bool,
    dest: PathBuf,
    committed: bool,
}

fn refuse(dest: &Path, why: &str) -> Error {
    Error::invalid("restore target", format!("{}: {why}", dest.display()))
}

impl Output {
    /// Prepares `dest` for a restore: see the module doc.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a folder or special file; I/O errors.
    pub(crate) fn open(dest: &Path) -> Result<Output> {
        match std::fs::symlink_metadata(dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::temporary(dest),
            Err(e) => Err(Error::io("look at restore target", dest, e)),
            Ok(m) if m.is_dir() => {
                Err(refuse(dest, "it is a folder; name a file in it, or restore the whole VM into it (without a disk)"))
            }
            Ok(m) if m.file_type().is_block_device() => Self::device(dest),
            Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(dest) {
                Ok(t) if t.file_type().is_block_device() => Self::device(dest),
                Ok(t) if t.is_dir() => Err(refuse(dest, "it is a link to a folder")),
                // A link to a file, to nothing, or to a special file: the
                // link is replaced, whatever it points to stays as it is.
                _ => Self::temporary(dest),
            },
            Ok(m) if m.is_file() => Self::temporary(dest),
            Ok(m) => Err(refuse(
                dest,
                if m.file_type().is_char_device() {
                    "it is a character device; a restore writes a regular file or a block device"
                } else {
                    "it is a FIFO or socket; a restore writes a regular file or a block device"
                },
            )),
        }
    }

    fn device(dest: &Path) -> Result<Output> {
        let file = File::options().write(true).open(dest).map_err(|e| Error::io("open restore target", dest, e))?;
        let m = file.metadata().map_err(|e| Error::io("stat restore target", dest, e))?;
        if !m.file_type().is_block_device() {
            return Err(refuse(dest, "it changed from a block device while it was opened"));
        }
        Ok(Output { path: dest.to_path_buf(), file, device: true, dest: dest.to_path_buf(), committed: true })
    }

    fn temporary(dest: &Path) -> Result<Output> {
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("disk").to_string();
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        remove_stale(dir, &name);
        let mut r = [0u8; 6];
        getrandom::fill(&mut r).map_err(|e| Error::io("get random bytes for", dest, std::io::Error::other(e)))?;
        let tmp = dir.join(format!(".{name}.restoring-{}", hex(&r)));
        let c = CString::new(tmp.as_os_str().as_bytes()).map_err(|_| refuse(dest, "NUL in the path"))?;
        // SAFETY: a NUL-terminated path; O_EXCL|O_NOFOLLOW never opens an
        // existing file or follows a link planted under the name.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(Error::io("create restore target", &tmp, std::io::Error::last_os_error()));
        }
        // SAFETY: open just returned this descriptor to us alone.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: flock on a live descriptor; no memory is passed.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok(Output { path: tmp, file, device: false, dest: dest.to_path_buf(), committed: false })
    }

    /// Puts the restored file in place (a device needs nothing): renames the
    /// temporary file over the destination and flushes the folder.
    ///
    /// # Errors
    /// I/O errors; the temporary file is then removed.
    pub(crate) fn commit(mut self) -> Result<()> {
        if self.device {
            return Ok(());
        }
        std::fs::rename(&self.path, &self.dest)
            .map_err(|e| Error::io("rename restored disk into place", &self.dest, e))?;
        self.committed = true;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed {
            let _ = crate::no_follow::remove_if_same(&self.path, &self.file);
        }
    }
}

/// Removes temporary files of earlier restores to `name` in `dir` that a
/// killed restore left: regular files whose lock is free.
fn remove_stale(dir: &Path, name: &str) {
    let prefix = format!(".{name}.restoring");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = crate::no_follow::open_regular(&path) else { continue };
        // SAFETY: flock on a live descriptor; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = crate::no_follow::remove_if_same(&path, &file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_planted_at_the_temporary_name_is_never_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root's").expect("write");
        // The old fixed name, and any name an attacker may guess: the
        // random suffix and O_EXCL|O_NOFOLLOW leave them alone.
        std::os::unix::fs::symlink(&secret, dir.path().join(".root.img.restoring")).expect("symlink");
        let out = Output::open(&dir.path().join("root.img")).expect("open");
        assert!(!out.device);
        out.commit().expect("commit");
        assert_eq!(std::fs::read(&secret).expect("read"), b"root's");
    }

    #[test]
    fn special_files_and_folders_are_refused_and_links_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Output::open(Path::new("/dev/null")).expect_err("a character device");
        assert!(e.to_string().contains("character device"), "{e}");
        let e = Output::open(dir.path()).expect_err("a folder");
        assert!(e.to_string().contains("folder"), "{e}");
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").expect("write");
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let out = Output::open(&link).expect("open");
        out.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        assert!(std::fs::symlink_metadata(&link).expect("stat").is_file(), "the link itself was replaced");
    }

    #[test]
    fn a_dropped_output_leaves_nothing_and_stale_ones_are_cleaned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("d.img");
        let out = Output::open(&dest).expect("open");
        let tmp = out.path.clone();
        assert!(tmp.exists());
        drop(out);
        assert!(!tmp.exists() && !dest.exists());
        // A killed restore's file: no lock held.
        let stale = dir.path().join(".d.img.restoring-abc");
        std::fs::write(&stale, b"x").expect("write");
        let out = Output::open(&dest).expect("open");
        assert!(!stale.exists(), "a stale temporary file is removed");
        drop(out);
    }
}
