//! The vault's folder, opened once and walked only beneath itself.
//!
//! Whoever can write a vault's storage (a share that other hosts write, a
//! disk an attacker can reach) must not be able to make this process read,
//! write or delete anything outside it. Every file-system call on a vault
//! path therefore goes through a [`VaultDir`]: the path is made relative to
//! the vault's root, and resolved from a descriptor of that root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`.
//! The kernel refuses `..` out of the root and any symbolic link on the
//! way, including the last component, so a `tmp/` swapped for a link to
//! `/etc` is an error, never followed (a check by path would race with
//! the swap; this cannot). Removals, renames and links act on a name inside
//! a parent folder opened that way (`unlinkat`, `renameat`, `linkat` never
//! follow their last component).
//!
//! Files are opened for reading only when they are regular files (opened
//! with `O_NONBLOCK` first, so that a FIFO planted in `packs/` cannot make
//! the open hang, then checked with `fstat`), and whole-file reads take a
//! size limit, so that an index linked to a huge file is refused before it
//! is read.
//!
//! The root itself is resolved as the operator named it: a vault folder
//! that is itself a symbolic link is the operator's choice.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// A vault folder, held open: every call resolves beneath it.
#[derive(Debug, Clone)]
pub(crate) struct VaultDir {
    root: PathBuf,
    fd: std::sync::Arc<OwnedFd>,
}

/// What a path inside the vault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// Anything else: a symbolic link, FIFO, socket or device.
    Other,
}

/// The size and times of a path inside the vault (never of what a link
/// points to).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub kind: Kind,
    pub len: u64,
    pub modified: std::time::SystemTime,
}

fn cstr(name: &std::ffi::OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `openat2` beneath `dir`, refusing every symbolic link and `..` escape.
fn openat2(dir: RawFd, rel: &Path, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
    let path = cstr(if rel.as_os_str().is_empty() { std::ffi::OsStr::new(".") } else { rel.as_os_str() })?;
    // SAFETY: open_how is a plain C struct for which all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // openat2 refuses O_PATH with any flag but O_CLOEXEC, O_DIRECTORY and
    // O_NOFOLLOW (open(2) ignored them).
    let extra = if flags & libc::O_PATH != 0 { libc::O_CLOEXEC } else { libc::O_CLOEXEC | libc::O_NOCTTY };
    how.flags = (flags | extra) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { u64::from(mode) } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a live open_how of
        // the size passed; the kernel returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor to us alone.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = errno();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            // Kernels before 5.6, and valgrind, have no openat2.
            return walk(dir, rel, flags, mode);
        }
        // RESOLVE_BENEATH makes the kernel answer EAGAIN when a rename
        // raced with the walk; trying again is what it asks for.
        if e.raw_os_error() != Some(libc::EAGAIN) && e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What `openat2` does here, one component at a time: each folder opened
/// from the one before with `O_NOFOLLOW`, the last component too. A link
/// anywhere fails with `ELOOP`; `..` never reaches here (`VaultDir::rel`).
fn walk(dir: RawFd, rel: &Path, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
    let names: Vec<CString> = rel.components().map(|c| cstr(c.as_os_str())).collect::<std::io::Result<_>>()?;
    let open = |at: RawFd, name: &CString, flags: libc::c_int| -> std::io::Result<OwnedFd> {
        loop {
            // SAFETY: a live folder descriptor and a NUL-terminated name.
            let fd = unsafe { libc::openat(at, name.as_ptr(), flags | libc::O_CLOEXEC, libc::c_uint::from(mode)) };
            if fd >= 0 {
                // SAFETY: openat just returned this descriptor to us alone.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let e = errno();
            if e.kind() != std::io::ErrorKind::Interrupted {
                // A link where a folder was expected: say "link", as openat2 does.
                if e.raw_os_error() == Some(libc::ENOTDIR) && is_link(at, name) {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                return Err(e);
            }
        }
    };
    let Some((last, folders)) = names.split_last() else {
        return open(dir, &CString::from(c"."), flags | libc::O_NOFOLLOW);
    };
    let mut cur: Option<OwnedFd> = None;
    for name in folders {
        let at = cur.as_ref().map_or(dir, AsRawFd::as_raw_fd);
        cur = Some(open(at, name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)?);
    }
    let at = cur.as_ref().map_or(dir, AsRawFd::as_raw_fd);
    let fd = open(at, last, flags | libc::O_NOFOLLOW)?;
    if flags & libc::O_PATH != 0 && is_link(at, last) {
        // O_PATH | O_NOFOLLOW opens a link itself; openat2 refuses it.
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(fd)
}

/// Whether `name` in folder `at` is a symbolic link.
fn is_link(at: RawFd, name: &CString) -> bool {
    // SAFETY: all-zero is a valid stat; fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live folder descriptor, a NUL-terminated name, a live stat.
    let found = unsafe { libc::fstatat(at, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0;
    found && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

fn fstat(fd: RawFd) -> std::io::Result<libc::stat> {
    // SAFETY: all-zero is a valid stat; fstat fills it for a live fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call and `st` is a live stat.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st)
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        _ => Kind::Other,
    }
}

fn stat_of(st: &libc::stat) -> Stat {
    let secs = st.st_mtime;
    let nanos = st.st_mtime_nsec.clamp(0, 999_999_999) as u32;
    let modified = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::new(secs.unsigned_abs(), 0)
    };
    Stat { kind: kind_of(st.st_mode), len: st.st_size.max(0) as u64, modified }
}

impl VaultDir {
    /// Opens the vault folder `root` (following it if the operator named a
    /// link), for every later call to resolve beneath.
    ///
    /// # Errors
    /// I/O errors opening the folder.
    pub(crate) fn open_root(root: &Path) -> Result<VaultDir> {
        use std::os::unix::fs::OpenOptionsExt;
        let fd = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)
            .map_err(|e| Error::io("open vault folder", root, e))?;
        Ok(VaultDir { root: root.to_path_buf(), fd: std::sync::Arc::new(fd.into()) })
    }

    /// The folder's path, as it was opened.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `path` relative to the root: an absolute path must lie under it,
    /// and no component may be `..`.
    fn rel<'p>(&self, path: &'p Path) -> std::io::Result<&'p Path> {
        let rel = if path.is_absolute() || path.starts_with(&self.root) {
            path.strip_prefix(&self.root).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not inside the vault")
            })?
        } else {
            path
        };
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path leaves the vault"));
        }
        Ok(rel)
    }

    /// Maps the kernel's refusal of a link into an error that says so.
    fn err(&self, action: &'static str, path: &Path, e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => Error::corrupt(
                format!("vault object {}", path.display()),
                "it is, or lies under, a symbolic link or a mount point inside the vault: not followed",
            ),
            _ => Error::io(action, path, e),
        }
    }

    fn open_fd(&self, path: &Path, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<OwnedFd> {
        openat2(self.fd.as_raw_fd(), self.rel(path)?, flags, mode)
    }

    /// The folder that holds `path`, opened beneath the root, and the last
    /// component's name.
    fn parent(&self, path: &Path) -> std::io::Result<(OwnedFd, CString)> {
        let rel = self.rel(path)?;
        let name = rel.file_name().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let dir =
            openat2(self.fd.as_raw_fd(), rel.parent().unwrap_or(Path::new("")), libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok((dir, cstr(name)?))
    }

    /// Opens a regular file for reading. A FIFO, device, socket or link is
    /// refused without blocking.
    ///
    /// # Errors
    /// `NotFound` and other I/O errors; [`Error::Corrupt`] for a link or
    /// a file that is not a regular file.
    pub(crate) fn open(&self, path: &Path) -> Result<File> {
        self.open_with(path, 0)
    }

    /// As [`open`](Self::open), with extra `open` flags (`O_DIRECT`).
    pub(crate) fn open_with(&self, path: &Path, flags: libc::c_int) -> Result<File> {
        let fd =
            self.open_fd(path, libc::O_RDONLY | libc::O_NONBLOCK | flags, 0).map_err(|e| self.err("open", path, e))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| Error::io("stat", path, e))?;
        if kind_of(st.st_mode) != Kind::File {
            return Err(Error::corrupt(
                format!("vault object {}", path.display()),
                "not a regular file (a FIFO, device, socket or folder): not read",
            ));
        }
        clear_nonblocking(&fd);
        Ok(File::from(fd))
    }

    /// Reads a whole regular file of at most `limit` bytes.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`Error::Corrupt`] for a larger file.
    pub(crate) fn read(&self, path: &Path, limit: u64) -> Result<Vec<u8>> {
        let mut f = self.open(path)?;
        let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
        if len > limit {
            return Err(Error::corrupt(
                format!("vault object {}", path.display()),
                format!("{len} bytes, more than the {limit} such an object may have"),
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        // One more byte than allowed tells a file that grew since the stat.
        (&mut f).take(limit.saturating_add(1)).read_to_end(&mut out).map_err(|e| Error::io("read", path, e))?;
        if out.len() as u64 > limit {
            return Err(Error::corrupt(format!("vault object {}", path.display()), "it grew past its size limit"));
        }
        Ok(out)
    }

    /// What `path` is, without following a link at its end.
    ///
    /// # Errors
    /// `NotFound` and other I/O errors; a link on the way.
    pub(crate) fn stat(&self, path: &Path) -> Result<Stat> {
        let fd = self.open_fd(path, libc::O_PATH, 0).map_err(|e| match e.raw_os_error() {
            // The last component may be a link: O_PATH with
            // RESOLVE_NO_SYMLINKS refuses it, and it is "other".
            Some(libc::ELOOP) => Error::io("stat", path, e),
            _ => self.err("stat", path, e),
        })?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| Error::io("stat", path, e))?;
        Ok(stat_of(&st))
    }

    /// Creates `path` (which must not exist, not even as a link) for
    /// writing, mode 0600.
    ///
    /// # Errors
    /// `AlreadyExists` and other I/O errors.
    pub(crate) fn create_new(&self, path: &Path) -> Result<File> {
        self.create_new_with(path, 0)
    }

    /// As [`create_new`](Self::create_new), with extra flags (`O_DIRECT`).
    pub(crate) fn create_new_with(&self, path: &Path, flags: libc::c_int) -> Result<File> {
        let fd = self
            .open_fd(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | flags, 0o600)
            .map_err(|e| self.err("create", path, e))?;
        Ok(File::from(fd))
    }

    /// Opens an existing regular file for appending (job logs).
    pub(crate) fn open_append(&self, path: &Path, create: bool) -> Result<File> {
        let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_NONBLOCK | if create { libc::O_CREAT } else { 0 };
        let fd = self.open_fd(path, flags, 0o600).map_err(|e| self.err("open", path, e))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| Error::io("stat", path, e))?;
        if kind_of(st.st_mode) != Kind::File {
            return Err(Error::corrupt(format!("vault object {}", path.display()), "not a regular file: not written"));
        }
        clear_nonblocking(&fd);
        Ok(File::from(fd))
    }

    /// Creates `path` (which must not exist) and writes `bytes`, without
    /// flushing: the caller flushes it before anything names it.
    pub(crate) fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<File> {
        let mut f = self.create_new(path)?;
        f.write_all(bytes).map_err(|e| Error::io("write", path, e))?;
        Ok(f)
    }

    /// Creates `path` (which must not exist), writes `bytes` and flushes it.
    pub(crate) fn write_flushed(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.write_new(path, bytes)?.sync_all().map_err(|e| Error::io("flush", path, e))
    }

    /// Writes `bytes` to `tmp`, flushes it, renames it to `dest` (replacing
    /// it), then flushes `dest`'s folder.
    pub(crate) fn write_durable(&self, tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
        // A file left at `tmp` by a killed writer would make create_new fail.
        let _ = self.remove_file(tmp);
        self.write_flushed(tmp, bytes)?;
        self.rename(tmp, dest)?;
        if let Some(parent) = dest.parent() {
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    /// Renames `from` to `to` (replacing a file there), both beneath the root.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let (fd, fname) = self.parent(from).map_err(|e| self.err("rename", from, e))?;
        let (td, tname) = self.parent(to).map_err(|e| self.err("rename", to, e))?;
        // SAFETY: both folders are open descriptors and both names are
        // NUL-terminated single components.
        if unsafe { libc::renameat(fd.as_raw_fd(), fname.as_ptr(), td.as_raw_fd(), tname.as_ptr()) } != 0 {
            return Err(Error::io("rename into place", to, errno()));
        }
        Ok(())
    }

    /// Makes `to` a new name of `from` (fails when `to` exists).
    pub(crate) fn hard_link(&self, from: &Path, to: &Path) -> Result<()> {
        let (fd, fname) = self.parent(from).map_err(|e| self.err("link", from, e))?;
        let (td, tname) = self.parent(to).map_err(|e| self.err("link", to, e))?;
        // SAFETY: as in rename; flags 0 never follows `from` if a link.
        if unsafe { libc::linkat(fd.as_raw_fd(), fname.as_ptr(), td.as_raw_fd(), tname.as_ptr(), 0) } != 0 {
            return Err(Error::io("publish", to, errno()));
        }
        Ok(())
    }

    /// Removes a file (or a link, never what it points to).
    ///
    /// # Errors
    /// `NotFound` and other I/O errors.
    pub(crate) fn remove_file(&self, path: &Path) -> Result<()> {
        let (dir, name) = self.parent(path).map_err(|e| self.err("remove", path, e))?;
        // SAFETY: a live folder descriptor and a NUL-terminated name.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(Error::io("remove", path, errno()));
        }
        Ok(())
    }

    /// Removes a file, and is content when it is already gone.
    pub(crate) fn remove_file_if_exists(&self, path: &Path) -> Result<bool> {
        match self.remove_file(path) {
            Ok(()) => Ok(true),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a folder and everything in it, never following a link: a
    /// link inside is removed itself.
    pub(crate) fn remove_dir_all(&self, path: &Path) -> Result<()> {
        let (parent, name) = self.parent(path).map_err(|e| self.err("remove", path, e))?;
        remove_tree_at(parent.as_raw_fd(), &name).map_err(|e| Error::io("remove", path, e))
    }

    /// Creates a folder and its parents beneath the root.
    pub(crate) fn mkdirs(&self, path: &Path) -> Result<()> {
        let rel = self.rel(path).map_err(|e| self.err("create folder", path, e))?;
        let mut sofar = PathBuf::new();
        for c in rel.components() {
            let parent = openat2(self.fd.as_raw_fd(), &sofar, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| self.err("create folder", path, e))?;
            let name = cstr(c.as_os_str()).map_err(|e| Error::io("create folder", path, e))?;
            // SAFETY: a live folder descriptor and a NUL-terminated name.
            if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
                let e = errno();
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(Error::io("create folder", path, e));
                }
            }
            sofar.push(c);
        }
        // Every component must now be a real folder, not a link.
        openat2(self.fd.as_raw_fd(), rel, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map(drop)
            .map_err(|e| self.err("create folder", path, e))
    }

    /// Flushes a folder so that a rename or a new file in it survives a crash.
    pub(crate) fn sync_dir(&self, path: &Path) -> Result<()> {
        let fd =
            self.open_fd(path, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| self.err("flush folder", path, e))?;
        File::from(fd).sync_all().map_err(|e| Error::io("flush folder", path, e))
    }

    /// The names in a folder, sorted, or none when it does not exist.
    ///
    /// # Errors
    /// A link on the way; other I/O errors.
    pub(crate) fn list(&self, path: &Path) -> Result<Vec<String>> {
        let fd = match self.open_fd(path, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err("list", path, e)),
        };
        let mut names = list_fd(&fd).map_err(|e| Error::io("list", path, e))?;
        names.sort();
        Ok(names)
    }
}

/// The names in an open folder (not `.` and `..`), read through the
/// process's own view of the descriptor.
fn list_fd(fd: &OwnedFd) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))? {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Removes `name` in folder `dir`: a folder with all it holds, anything
/// else (a link included) by unlinking it.
fn remove_tree_at(dir: RawFd, name: &CString) -> std::io::Result<()> {
    // SAFETY: a live folder descriptor and a NUL-terminated name; the
    // flags make openat refuse anything that is not a real folder.
    let fd = unsafe {
        libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    };
    if fd < 0 {
        let e = errno();
        return match e.raw_os_error() {
            // Not a folder (or a link to one): unlink it.
            Some(libc::ENOTDIR) | Some(libc::ELOOP) => {
                // SAFETY: as above.
                if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 { Err(errno()) } else { Ok(()) }
            }
            Some(libc::ENOENT) => Ok(()),
            _ => Err(e),
        };
    }
    // SAFETY: openat just returned this descriptor to us alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for child in list_fd(&fd)? {
        remove_tree_at(fd.as_raw_fd(), &cstr(std::ffi::OsStr::new(&child))?)?;
    }
    // SAFETY: as above.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let e = errno();
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
    }
    Ok(())
}

/// Clears `O_NONBLOCK`, which opened a file without waiting on a FIFO.
fn clear_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own touch only flags.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_the_vault_are_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("vault");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("packs")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), b"keep me").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("tmp")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("packs").join("a.pack")).expect("symlink");
        let v = VaultDir::open_root(&root).expect("open");

        let e = v.list(&root.join("tmp")).expect_err("a linked folder");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(v.read(&root.join("tmp/secret"), 100).is_err());
        assert!(v.remove_file(&root.join("tmp/secret")).is_err());
        assert!(v.open(&root.join("packs/a.pack")).is_err(), "a linked file is not read");
        assert!(v.read(&root.join("../outside/secret"), 100).is_err(), "no way out by ..");
        assert!(v.read(&outside.join("secret"), 100).is_err(), "no absolute path outside");
        // Removing a link removes the link alone.
        v.remove_file(&root.join("packs/a.pack")).expect("unlink the link");
        v.remove_dir_all(&root.join("tmp")).expect("remove the linked folder's link");
        assert_eq!(std::fs::read(outside.join("secret")).expect("still there"), b"keep me");
    }

    #[test]
    fn the_fallback_walk_refuses_links_as_openat2_does() {
        // What runs where openat2 is missing (old kernels, valgrind).
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("vault");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("packs")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), b"x").expect("write");
        std::fs::write(root.join("packs/a.pack"), b"pack").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("tmp")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("packs/b.pack")).expect("symlink");
        let v = VaultDir::open_root(&root).expect("open");
        let at = v.fd.as_raw_fd();
        let elooped = |r: std::io::Result<OwnedFd>| r.err().and_then(|e| e.raw_os_error()) == Some(libc::ELOOP);
        assert!(elooped(walk(at, Path::new("tmp/secret"), libc::O_RDONLY, 0)), "a linked folder");
        assert!(elooped(walk(at, Path::new("packs/b.pack"), libc::O_RDONLY, 0)), "a linked file");
        assert!(elooped(walk(at, Path::new("packs/b.pack"), libc::O_PATH, 0)), "a linked file, O_PATH");
        assert!(elooped(walk(at, Path::new("tmp"), libc::O_PATH | libc::O_DIRECTORY, 0)), "a linked folder, O_PATH");
        let f = File::from(walk(at, Path::new("packs/a.pack"), libc::O_RDONLY, 0).expect("a real file"));
        assert_eq!(f.metadata().expect("stat").len(), 4);
        walk(at, Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY, 0).expect("the root itself");
    }

    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let fifo = CString::new(root.join("fifo").as_os_str().as_bytes()).expect("cstr");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let v = VaultDir::open_root(&root).expect("open");
        let e = v.read(&root.join("fifo"), 100).expect_err("a fifo");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::write(root.join("big"), vec![1u8; 200]).expect("write");
        assert!(v.read(&root.join("big"), 100).expect_err("too big").to_string().contains("more than"));
        assert_eq!(v.read(&root.join("big"), 200).expect("fits").len(), 200);
    }

    #[test]
    fn a_tree_is_removed_without_following_its_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("vault");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("tmp/backup-1/packs")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("x"), b"x").expect("write");
        std::fs::write(root.join("tmp/backup-1/packs/p"), b"p").expect("write");
        std::os::unix::fs::symlink(&outside, root.join("tmp/backup-1/evil")).expect("symlink");
        let v = VaultDir::open_root(&root).expect("open");
        v.remove_dir_all(&root.join("tmp/backup-1")).expect("remove");
        assert!(!root.join("tmp/backup-1").exists());
        assert!(outside.join("x").exists());
        v.mkdirs(&root.join("a/b/c")).expect("mkdirs");
        assert!(root.join("a/b/c").is_dir());
    }
}
