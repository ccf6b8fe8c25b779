//! Copying guest files out: contents, modes, times, and (as root) owners.
//!
//! Nothing lands outside the target folder: every name is one plain
//! component (never `..`, never with a `/`), links are made as links and
//! never written through, and files are created new (an existing file is an
//! error, never overwritten). Folders get their mode and times after their
//! contents, so a read-only guest folder still fills.

use std::ffi::CString;
use std::fs::{self, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FileEntry, FileKind, GuestFs};
use crate::error::{Error, Result};

/// What an extraction copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Regular files written.
    pub files: u64,
    /// Folders made (or filled, for the first).
    pub dirs: u64,
    /// Symbolic links made.
    pub links: u64,
    /// Devices, FIFOs and sockets left out.
    pub skipped: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

fn system_time(t: jiff::Timestamp) -> SystemTime {
    let (s, n) = (t.as_second(), t.subsec_nanosecond());
    if s >= 0 { UNIX_EPOCH + Duration::new(s as u64, n.max(0) as u32) } else { UNIX_EPOCH }
}

fn timespec(t: jiff::Timestamp) -> libc::timespec {
    libc::timespec { tv_sec: t.as_second() as libc::time_t, tv_nsec: libc::c_long::from(t.subsec_nanosecond()) }
}

/// Which side of a copy failed.
enum Failed {
    /// Reading the guest's file (its file system, or the vault beneath).
    Read(io::Error),
    /// Writing the copy on this host.
    Write(io::Error),
}

/// Copies `input` to `out` to the end, saying which side failed: a guest
/// file that cannot be read is the point's fault, a write that fails the
/// host's.
fn copy_out(input: &mut impl Read, out: &mut impl Write) -> std::result::Result<u64, Failed> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failed::Read(e)),
        };
        out.write_all(&buf[..n]).map_err(Failed::Write)?;
        total += n as u64;
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(action, path, e)
}

/// Sets a link's own times (std has no call for it).
fn link_times(path: &Path, e: &FileEntry) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let times = [timespec(e.atime), timespec(e.mtime)];
    // SAFETY: `c` is a valid C string and `times` two valid timespecs; the
    // call only reads them.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Copies `path` of `fs` into `to` (see [`GuestFs::extract`]).
pub(super) fn extract(fs: &GuestFs, path: &Path, to: &Path) -> Result<ExtractReport> {
    fs::create_dir_all(to).map_err(io_err("create", to))?;
    let start = fs.stat(path)?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut report = ExtractReport::default();
    let mut dirs: Vec<(PathBuf, FileEntry)> = Vec::new();
    let base = start.path.clone();
    let keep_name = base.file_name().is_some();
    fs.walk(&base, &mut |e| {
        let rel = e.path.strip_prefix(&base).unwrap_or(Path::new(""));
        let mut dest = to.to_path_buf();
        let names = base.file_name().filter(|_| keep_name).map(Path::new).into_iter().chain(
            rel.components()
                .map(|c| match c {
                    Component::Normal(n) => Ok(Path::new(n)),
                    _ => Err(()),
                })
                .collect::<std::result::Result<Vec<_>, ()>>()
                .map_err(|_| escape(fs, &e.path))?,
        );
        for n in names {
            let s = n.as_os_str().as_bytes();
            if s.is_empty() || s == b"." || s == b".." || s.contains(&b'/') {
                return Err(escape(fs, &e.path));
            }
            dest.push(n);
        }
        match e.kind {
            FileKind::Dir => {
                if dest != to {
                    match fs::create_dir(&dest) {
                        Ok(()) => {}
                        // An existing real folder (not a link) is filled.
                        Err(err)
                            if err.kind() == io::ErrorKind::AlreadyExists
                                && fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) => {}
                        Err(err) => return Err(Error::io("create folder", &dest, err)),
                    }
                }
                report.dirs += 1;
                dirs.push((dest, e.clone()));
            }
            FileKind::File => {
                let mut out = File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(io_err("create", &dest))?;
                let mut input = fs.open(&e.path)?;
                let n = copy_out(&mut input, &mut out).map_err(|failed| match failed {
                    Failed::Read(err) => {
                        let cause = fs.backend.vault_error().map(|c| format!(" (the vault: {c})")).unwrap_or_default();
                        Error::Guest {
                            place: fs.place.clone(),
                            why: format!("reading {}: {err}{cause}", e.path.display()),
                        }
                    }
                    Failed::Write(err) => Error::io("write", &dest, err),
                })?;
                if root {
                    std::os::unix::fs::fchown(&out, Some(e.uid), Some(e.gid))
                        .map_err(io_err("change the owner of", &dest))?;
                }
                out.set_permissions(fs::Permissions::from_mode(e.mode)).map_err(io_err("set the mode of", &dest))?;
                let times = FileTimes::new().set_accessed(system_time(e.atime)).set_modified(system_time(e.mtime));
                out.set_times(times).map_err(io_err("set the times of", &dest))?;
                report.files += 1;
                report.bytes += n;
            }
            FileKind::Symlink => {
                let target = e.target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(&target, &dest).map_err(io_err("create link", &dest))?;
                if root {
                    std::os::unix::fs::lchown(&dest, Some(e.uid), Some(e.gid))
                        .map_err(io_err("change the owner of", &dest))?;
                }
                link_times(&dest, e).map_err(io_err("set the times of", &dest))?;
                report.links += 1;
            }
            FileKind::Other => report.skipped += 1,
        }
        Ok(())
    })?;
    // Folders last, deepest first: their modes may forbid writing in them,
    // and filling them changed their times.
    for (dest, e) in dirs.iter().rev() {
        if dest == to && !keep_name {
            continue; // the target folder itself stays as it was
        }
        if root {
            std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid)).map_err(io_err("change the owner of", dest))?;
        }
        fs::set_permissions(dest, fs::Permissions::from_mode(e.mode)).map_err(io_err("set the mode of", dest))?;
        let dir = File::open(dest).map_err(io_err("open", dest))?;
        let times = FileTimes::new().set_accessed(system_time(e.atime)).set_modified(system_time(e.mtime));
        dir.set_times(times).map_err(io_err("set the times of", dest))?;
    }
    Ok(report)
}

fn escape(fs: &GuestFs, path: &Path) -> Error {
    Error::Guest {
        place: fs.place.clone(),
        why: format!("refusing to extract {}: its name would land outside the target folder", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_copy_says_whether_the_guest_file_or_the_host_copy_failed() {
        let mut out = Vec::new();
        assert!(matches!(copy_out(&mut Broken, &mut out), Err(Failed::Read(e)) if e.raw_os_error() == Some(libc::EIO)));
        let data = vec![7u8; 300 << 10];
        assert!(
            matches!(copy_out(&mut &data[..], &mut Broken), Err(Failed::Write(e)) if e.raw_os_error() == Some(libc::ENOSPC))
        );
        assert!(matches!(copy_out(&mut &data[..], &mut out), Ok(n) if n == data.len() as u64));
        assert!(out == data);
    }
}
