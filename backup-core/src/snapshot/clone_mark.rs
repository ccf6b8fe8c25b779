//! The mark on a snapshot clone: proof, kept on the host, that a file is a
//! clone vmbackup made, and for which point.
//!
//! A kept snapshot's record lives in the vault, and the vault may be
//! writable by others (a share). Its disk paths are then no proof of
//! anything: a forged record could name `/etc/shadow` for release to
//! delete, or an attacker's file for restore to hand back. So every clone
//! carries an extended attribute set by the process that made it, and
//! nothing named by a record is read or removed unless it carries the mark
//! the record implies:
//!
//! | attribute (root)            | attribute (other users)  | value                                   |
//! |-----------------------------|--------------------------|-----------------------------------------|
//! | `trusted.vmbackup.snapshot` | `user.vmbackup.snapshot` | `v1 in-flight` while its job runs       |
//! |                             |                          | `v1 kept VAULT_ID VM POINT DISK` once kept |
//!
//! Only a process with `CAP_SYS_ADMIN` can set a `trusted.` attribute, so
//! whoever writes a vault cannot mark a file of a root-run host; a user's
//! `user.` attribute needs write access to the file itself. A clone whose
//! file system takes no extended attributes is used for its job and then
//! released, never kept.
//!
//! A job holds a shared `flock` on its in-flight clones: a clone marked
//! in-flight whose lock is free was left by a killed job, and the next
//! backup of the same image removes it ([`remove_abandoned`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// The value of an in-flight clone's mark.
pub(crate) const IN_FLIGHT: &str = "v1 in-flight";

/// The mark of a clone kept for a point's disk.
pub(crate) fn kept(vault_id: &str, vm: &str, point: &str, disk: &str) -> String {
    format!("v1 kept {vault_id} {vm} {point} {disk}")
}

fn attr_name() -> &'static std::ffi::CStr {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 { c"trusted.vmbackup.snapshot" } else { c"user.vmbackup.snapshot" }
}

/// Sets the mark on an open clone.
pub(crate) fn set(file: &File, value: &str) -> std::io::Result<()> {
    // SAFETY: a live descriptor, a NUL-terminated name, and a buffer of
    // the length passed.
    let r = unsafe { libc::fsetxattr(file.as_raw_fd(), attr_name().as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The mark of an open file, if it has one.
pub(crate) fn get(file: &File) -> Option<String> {
    let mut buf = [0u8; 512];
    // SAFETY: a live descriptor, a NUL-terminated name, and a buffer of
    // the length passed.
    let n = unsafe { libc::fgetxattr(file.as_raw_fd(), attr_name().as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    String::from_utf8(buf[..n].to_vec()).ok()
}

/// Opens `path` for reading without following a link at its end, and only
/// if it is a regular file carrying the mark `expected`.
///
/// # Errors
/// I/O errors; [`Error::InvalidArgument`] naming the file when it is a
/// link, not a regular file, or not marked so.
pub(crate) fn open_marked(path: &Path, expected: &str) -> Result<File> {
    let file = crate::no_follow::open_regular(path).map_err(|e| {
        if crate::no_follow::is_link_error(&e) {
            refused(path, "it is a symbolic link")
        } else if e.kind() == std::io::ErrorKind::InvalidInput {
            refused(path, "it is not a regular file")
        } else {
            Error::io("open snapshot clone", path, e)
        }
    })?;
    match get(&file) {
        Some(m) if m == expected => Ok(file),
        Some(m) => Err(refused(path, &format!("its vmbackup mark is \"{m}\", not this snapshot's"))),
        None => Err(refused(path, "it carries no vmbackup snapshot mark, so vmbackup did not make it")),
    }
}

fn refused(path: &Path, why: &str) -> Error {
    Error::invalid("snapshot clone", format!("refusing {}: {why}", path.display()))
}

/// Removes the clone at `path`, which `file` (opened by [`open_marked`])
/// is: the name is unlinked only if it still names that same file.
///
/// # Errors
/// I/O errors; the name now names another file.
pub(crate) fn remove(path: &Path, file: &File) -> Result<()> {
    match crate::no_follow::remove_if_same(path, file) {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused(path, "the name was changed to another file")),
        Err(e) => Err(Error::io("remove snapshot clone", path, e)),
    }
}

/// Takes a lock on a clone that says its job is alive: shared, so that
/// many readers of one job may hold it.
pub(crate) fn hold(file: &File) {
    // SAFETY: flock on a live descriptor; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
}

/// Removes the clones of `image` that a killed job left: named
/// `.NAME.vmbackup-snap-*` beside it, marked in-flight, and whose lock no
/// live job holds. Returns what it removed.
pub(crate) fn remove_abandoned(image: &Path) -> Vec<String> {
    let (Some(dir), Some(name)) = (image.parent(), image.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!(".{name}.vmbackup-snap-");
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = open_marked(&path, IN_FLIGHT) else { continue };
        // SAFETY: flock on a live descriptor; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue; // its job is alive
        }
        if remove(&path, &file).is_ok() {
            removed.push(format!("removed snapshot clone {} left by a killed backup", path.display()));
        }
    }
    removed
}
