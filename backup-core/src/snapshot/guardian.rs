//! A guardian process that thaws frozen file systems if this process dies.
//!
//! The kernel keeps a `FIFREEZE` after the process that froze is gone, and
//! a process killed with `SIGKILL` runs no destructor and no watchdog. So
//! before freezing, [`Guardian::spawn`] forks a small child that holds
//! descriptors of the mounts and the read end of a pipe whose only write
//! end this process keeps. It then waits on the pipe:
//!
//! - a byte: this process thawed by itself; the child exits;
//! - end of file: this process died (the kernel closed the write end); the
//!   child thaws every mount, in reverse order, and exits;
//! - the freeze timeout (plus a margin) passes: the child thaws, as the
//!   watchdog thread does, in case this process hangs.
//!
//! The child is forked from a process with threads, so between `fork` and
//! `_exit` it makes only async-signal-safe system calls on memory prepared
//! before the fork: `close_range`, `signal`, `poll`, `read`, `ioctl`. It
//! closes every other descriptor at once, so it holds no vault lock and no
//! other pipe's write end.
//!
//! A rare leftover: if this process thaws and dies before it tells the
//! child, the child thaws again; `FITHAW` on a file system that is not
//! frozen fails harmlessly, unless another freezer froze it in between.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::error::{Error, Result};

/// `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FITHAW: libc::c_ulong = 0xC004_5878;

/// The child that thaws if this process dies; told to stand down by
/// [`Guardian::stand_down`] or on drop.
#[derive(Debug)]
pub(crate) struct Guardian {
    pid: libc::pid_t,
    tell: Option<OwnedFd>,
}

impl Guardian {
    /// Forks the guardian of `mounts` (descriptors of mount points, in
    /// freeze order), which thaws them by itself after `timeout` plus a
    /// margin. Call it before freezing.
    ///
    /// # Errors
    /// The pipe or the fork fails.
    pub(crate) fn spawn(mounts: &[RawFd], timeout: Duration) -> Result<Guardian> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills a two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::io("make the freeze guardian's pipe", "pipe", std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 just returned both descriptors to us alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Everything the child needs, made before the fork: the descriptors
        // to keep, sorted, and the wait in milliseconds.
        let mut keep: Vec<RawFd> = mounts.to_vec();
        keep.push(read.as_raw_fd());
        keep.sort_unstable();
        let thaw: Vec<RawFd> = mounts.iter().rev().copied().collect();
        let wait_ms = libc::c_int::try_from((timeout + Duration::from_secs(5)).as_millis()).unwrap_or(libc::c_int::MAX);
        let read_fd = read.as_raw_fd();

        // SAFETY: fork has no preconditions; the child runs only the
        // async-signal-safe code of `guard_child`, which never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::io("start the freeze guardian", "fork", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            guard_child(&keep, &thaw, read_fd, wait_ms);
        }
        drop(read);
        Ok(Guardian { pid, tell: Some(write) })
    }

    /// Tells the guardian that the mounts are thawed, and reaps it.
    pub(crate) fn stand_down(&mut self) {
        if let Some(w) = self.tell.take() {
            // SAFETY: a one-byte write from a live buffer to our pipe end.
            unsafe { libc::write(w.as_raw_fd(), b"T".as_ptr().cast(), 1) };
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

/// The guardian's whole life. Async-signal-safe system calls only.
fn guard_child(keep: &[RawFd], thaw: &[RawFd], read_fd: RawFd, wait_ms: libc::c_int) -> ! {
    // SAFETY (the whole block): raw system calls on integers and on memory
    // that was allocated before the fork and is only read here.
    unsafe {
        // Close every descriptor but those kept: the gaps between them.
        let mut from: libc::c_uint = 0;
        for &k in keep {
            let k = k as libc::c_uint;
            if k > from {
                libc::syscall(libc::SYS_close_range, from, k - 1, 0);
            }
            from = k + 1;
        }
        libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
        // A Ctrl-C at the terminal reaches the whole process group: the
        // guardian must outlive it to do its job.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let mut pfd = libc::pollfd { fd: read_fd, events: libc::POLLIN, revents: 0 };
        let mut thaw_now = true;
        loop {
            let r = libc::poll(&mut pfd, 1, wait_ms);
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if r > 0 {
                let mut b = 0u8;
                // 1: the parent thawed; 0: the parent is gone.
                thaw_now = libc::read(read_fd, (&mut b as *mut u8).cast(), 1) != 1;
            }
            break;
        }
        if thaw_now {
            for &fd in thaw {
                libc::ioctl(fd, FITHAW as _, 0);
            }
        }
        libc::_exit(0)
    }
}
