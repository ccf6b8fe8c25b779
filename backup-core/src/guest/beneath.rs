//! Opening a guest's path beneath the root of its mounted file system, as
//! the guest would resolve it: `..` stops at the root, and a link (even an
//! absolute one) is followed inside the guest, never onto the host.
//!
//! The kernel does this itself with `openat2(RESOLVE_IN_ROOT)` (Linux 5.6).
//! Where that call is missing (`ENOSYS`: older kernels, valgrind), the same
//! walk is done here one component at a time. The file system is a private
//! read-only mount, so nothing changes under the walk.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How many links one resolution follows before `ELOOP` (the kernel's 40).
const MAX_LINKS: u32 = 40;

/// Opens `path` (absolute in the guest) beneath `root` with `flags`,
/// following links inside the guest.
pub(super) fn open_beneath(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    match openat2_in_root(root, path, flags) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => walk_in_root(root, path, flags),
        r => r,
    }
}

fn openat(dir: libc::c_int, name: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid C string; openat returns a new fd or -1.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; no one else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kernel's way.
pub(super) fn openat2_in_root(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let c = CString::new(rel.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is three integers (and maybe padding): all zeros is
    // a valid value of it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
    // SAFETY: `c` is a valid C string and `how` a valid open_how of the size
    // passed; the kernel reads both and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; no one else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

/// The same resolution, one component at a time.
pub(super) fn walk_in_root(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut todo: VecDeque<OsString> = names(path).collect();
    // The folders walked into below the root; the last is the current one.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            stack.pop(); // at the root, `..` is the root
            continue;
        }
        let dir = stack.last().unwrap_or(root).as_raw_fd();
        let here = PathBuf::from(format!("/proc/self/fd/{dir}")).join(&name);
        if std::fs::symlink_metadata(&here)?.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = std::fs::read_link(&here)?;
            if target.is_absolute() {
                stack.clear();
            }
            for n in names(&target).collect::<Vec<_>>().into_iter().rev() {
                todo.push_front(n);
            }
            continue;
        }
        if todo.is_empty() {
            return openat(dir, Path::new(&name), flags | libc::O_NOFOLLOW);
        }
        stack.push(openat(dir, Path::new(&name), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)?);
    }
    openat(stack.last().unwrap_or(root).as_raw_fd(), Path::new("."), flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Both ways open the same file (or fail the same way) for every path.
    #[test]
    fn the_walk_resolves_as_the_kernel_does() {
        let dir = std::env::temp_dir().join(format!("vmb-beneath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("etc/ssh")).expect("tree");
        std::fs::create_dir_all(dir.join("host/etc")).expect("host");
        std::fs::write(root.join("etc/passwd"), "guest").expect("file");
        std::fs::write(dir.join("host/etc/passwd"), "host").expect("file");
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, root.join(at)).expect("link");
        link("/etc/passwd", "abs");
        link("../../../../etc/passwd", "etc/ssh/up");
        link("/etc", "etcdir");
        link("loop2", "loop1");
        link("loop1", "loop2");
        let root_fd = OwnedFd::from(std::fs::File::open(&root).expect("root"));
        let ino = |r: io::Result<OwnedFd>| -> Result<u64, Option<i32>> {
            r.map(|fd| std::fs::File::from(fd).metadata().expect("fstat").ino()).map_err(|e| e.raw_os_error())
        };
        for path in [
            "/",
            "/etc/passwd",
            "/abs",
            "/etc/ssh/up",
            "/etcdir/passwd",
            "/../../etc/passwd",
            "/etc/../..",
            "/nope",
            "/loop1",
            "/etcdir/ssh/../passwd",
        ] {
            for flags in [libc::O_RDONLY, libc::O_PATH] {
                let kernel = ino(openat2_in_root(&root_fd, Path::new(path), flags));
                let walked = ino(walk_in_root(&root_fd, Path::new(path), flags));
                assert_eq!(walked, kernel, "{path} with flags {flags:#x}");
            }
        }
        let guest = std::fs::metadata(root.join("etc/passwd")).expect("guest").ino();
        assert_eq!(ino(walk_in_root(&root_fd, Path::new("/etc/ssh/up"), libc::O_RDONLY)), Ok(guest));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
