//! A guardian process that thaws a frozen guest if this process dies (and
//! pauses or removes a domain that stood on this process's exports).
//!
//! A freeze outlives the process that made it: the kernel keeps a
//! `FIFREEZE`, and qemu-ga on Linux never thaws by itself. A process killed
//! with `SIGKILL` runs no destructor and no watchdog. So before freezing,
//! [`Guardian::spawn`] forks a small child that holds the read end of a
//! socket pair whose other end only this process keeps, and waits on it:
//!
//! - a byte: this process thawed by itself; the child exits;
//! - end of file: this process died (the kernel closed its end), or
//!   [`Guardian::thaw_now`] asked; the child thaws and exits;
//! - the freeze timeout (plus a margin) passes: the child thaws, in case
//!   this process hangs.
//!
//! How it thaws is a [`ThawAction`]: `FITHAW` on descriptors of host
//! mounts, in reverse freeze order; or `execve` of a command prepared
//! before the fork (`virsh -c URI domfsthaw DOMAIN` for a libvirt guest).
//!
//! The child is forked from a process with threads, so between `fork` and
//! `_exit`/`execve` it makes only async-signal-safe system calls on memory
//! prepared before the fork: `close_range`, `dup2`, `signal`, `poll`,
//! `read`, `ioctl`, `execve`. It closes every other descriptor at once, so
//! it holds no vault lock and no other pipe's write end; its standard
//! streams are `/dev/null`. The parent writes with `MSG_NOSIGNAL`: a child
//! already gone never raises `SIGPIPE` in a host that does not ignore it.
//!
//! A rare leftover: if this process thaws and dies before it tells the
//! child, the child thaws again; a thaw of a guest or file system that is
//! not frozen fails harmlessly, unless another freezer froze it in between.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::error::{Error, Result};

/// `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FITHAW: libc::c_ulong = 0xC004_5878;

/// How a guardian thaws.
pub(crate) enum ThawAction {
    /// `FITHAW` on these descriptors of mount points (given in freeze
    /// order; thawed in reverse).
    Mounts(Vec<RawFd>),
    /// Runs this program (an absolute path) with these arguments, the first
    /// being its name.
    #[cfg_attr(not(feature = "libvirt"), allow(dead_code))]
    Exec(Vec<CString>),
}

/// The child that thaws if this process dies; told to stand down by
/// [`Guardian::stand_down`] or on drop.
#[derive(Debug)]
pub(crate) struct Guardian {
    pid: libc::pid_t,
    tell: Option<OwnedFd>,
}

impl Guardian {
    /// Forks the guardian, which thaws with `action` when this process dies
    /// or after `timeout` plus a margin. Call it before freezing.
    ///
    /// # Errors
    /// The socket pair, `/dev/null` or the fork fails; a command with a
    /// NUL byte.
    pub(crate) fn spawn(action: ThawAction, timeout: Duration) -> Result<Guardian> {
        let wait_ms = libc::c_int::try_from((timeout + Duration::from_secs(5)).as_millis()).unwrap_or(libc::c_int::MAX);
        Self::spawn_waiting(action, wait_ms)
    }

    /// Forks a guardian that acts only when this process dies (or is told
    /// to by [`thaw_now`](Self::thaw_now)), however long that takes: it
    /// pauses or removes a domain that stands on this process's exports.
    #[cfg_attr(not(feature = "libvirt"), allow(dead_code))]
    pub(crate) fn spawn_until_death(action: ThawAction) -> Result<Guardian> {
        Self::spawn_waiting(action, -1)
    }

    fn spawn_waiting(action: ThawAction, wait_ms: libc::c_int) -> Result<Guardian> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair fills a two-element array.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0
        {
            return Err(Error::io("make the freeze guardian's socket", "socketpair", std::io::Error::last_os_error()));
        }
        // SAFETY: socketpair just returned both descriptors to us alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Error::io("open for the freeze guardian", "/dev/null", e))?;
        // Everything the child needs, made before the fork: the descriptors
        // to keep, sorted, the thaw, and the wait in milliseconds.
        let mut keep: Vec<RawFd> = match &action {
            ThawAction::Mounts(m) => m.clone(),
            ThawAction::Exec(_) => Vec::new(),
        };
        keep.push(read.as_raw_fd());
        keep.push(null.as_raw_fd());
        keep.sort_unstable();
        let thaw: Vec<RawFd> = match &action {
            ThawAction::Mounts(m) => m.iter().rev().copied().collect(),
            ThawAction::Exec(_) => Vec::new(),
        };
        let argv: Vec<*const libc::c_char> = match &action {
            ThawAction::Exec(a) => a.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect(),
            ThawAction::Mounts(_) => Vec::new(),
        };
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                use std::os::unix::ffi::OsStrExt;
                CString::new([k.as_bytes(), b"=", v.as_bytes()].concat()).ok()
            })
            .collect();
        let envp: Vec<*const libc::c_char> =
            env.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
        let child = Child {
            keep: &keep,
            thaw: &thaw,
            argv: &argv,
            envp: &envp,
            read: read.as_raw_fd(),
            null: null.as_raw_fd(),
            wait_ms,
        };

        // SAFETY: fork has no preconditions; the child runs only the
        // async-signal-safe code of `guard_child`, which never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::io("start the freeze guardian", "fork", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            guard_child(&child);
        }
        drop(read);
        Ok(Guardian { pid, tell: Some(write) })
    }

    /// Tells the guardian that the guest is thawed, and reaps it.
    pub(crate) fn stand_down(&mut self) {
        self.finish(true);
    }

    /// Asks the guardian to thaw now (our own thaw failed), and waits for it.
    #[cfg_attr(not(feature = "libvirt"), allow(dead_code))]
    pub(crate) fn thaw_now(&mut self) {
        self.finish(false);
    }

    fn finish(&mut self, thawed: bool) {
        if let Some(w) = self.tell.take() {
            if thawed {
                // SAFETY: a one-byte send from a live buffer on our socket;
                // MSG_NOSIGNAL: a child already gone gives EPIPE, no signal.
                unsafe { libc::send(w.as_raw_fd(), b"T".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
            }
            drop(w);
            let mut status = 0;
            // SAFETY: waits for our own child; ECHILD (a host reaped it)
            // is harmless.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.stand_down();
    }
}

/// What the child uses, all prepared before the fork.
struct Child<'a> {
    keep: &'a [RawFd],
    thaw: &'a [RawFd],
    /// A null-terminated argv; empty for mounts.
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    read: RawFd,
    null: RawFd,
    wait_ms: libc::c_int,
}

/// The guardian's whole life. Async-signal-safe system calls only.
fn guard_child(c: &Child<'_>) -> ! {
    // SAFETY (the whole block): raw system calls on integers and on memory
    // that was allocated before the fork and is only read here.
    unsafe {
        // Close every descriptor but those kept: the gaps between them.
        let mut from: libc::c_uint = 0;
        for &k in c.keep {
            let k = k as libc::c_uint;
            if k > from {
                libc::syscall(libc::SYS_close_range, from, k - 1, 0);
            }
            from = k + 1;
        }
        libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
        for std in 0..3 {
            if c.null != std {
                libc::dup2(c.null, std);
            }
        }
        // A Ctrl-C at the terminal reaches the whole process group: the
        // guardian must outlive it to do its job.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let mut pfd = libc::pollfd { fd: c.read, events: libc::POLLIN, revents: 0 };
        let mut thaw_now = true;
        loop {
            let r = libc::poll(&mut pfd, 1, c.wait_ms);
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if r > 0 {
                let mut b = 0u8;
                // 1: the parent thawed; 0: the parent is gone or asks.
                thaw_now = libc::read(c.read, (&mut b as *mut u8).cast(), 1) != 1;
            }
            break;
        }
        if thaw_now {
            for &fd in c.thaw {
                libc::ioctl(fd, FITHAW as _, 0);
            }
            if let Some(&path) = c.argv.first()
                && !path.is_null()
            {
                libc::execve(path, c.argv.as_ptr(), c.envp.as_ptr());
            }
        }
        libc::_exit(0)
    }
}
