//! Freezing file systems mounted on the host around a snapshot.
//!
//! [`FreezeGuard::freeze`] freezes every listed mount (`FIFREEZE` on a
//! descriptor of the mount point: the kernel flushes the file system and
//! blocks new writes) in the order given; [`FreezeGuard::thaw`] thaws them
//! (`FITHAW`) in reverse order. Nothing leaves a file system frozen:
//!
//! - a watchdog thread thaws by itself once the timeout passes (default
//!   [`DEFAULT_FREEZE_TIMEOUT`]); the thaw then reports `expired`, and a
//!   snapshot taken under it is not file-system-consistent;
//! - dropping the guard thaws, so an error or a panic between freeze and
//!   thaw does too;
//! - a process-wide registry of frozen file systems (by device number)
//!   makes a second freeze of one file system wait for the first to end, so
//!   two freezes never overlap (the kernel would refuse the second one, and
//!   the first thaw would end both).
//!
//! - a guardian process (`guardian`), forked before the freeze, thaws if
//!   this process dies while a freeze is held, `SIGKILL` included: the
//!   kernel keeps a freeze after the process that froze is gone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// `_IOWR('X', 119, int)` from `<linux/fs.h>`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `_IOWR('X', 120, int)` from `<linux/fs.h>`.
const FITHAW: libc::c_ulong = 0xC004_5878;

/// How long a freeze may last before the watchdog thaws it.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

/// Device numbers of the file systems frozen (or about to be) by this
/// process, and a condition variable signalled when one is released.
static REGISTRY: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static RELEASED: Condvar = Condvar::new();

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must never stop a thaw.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Frozen {
    mount: PathBuf,
    file: File,
}

struct State {
    /// Mounts frozen so far, in freeze order.
    frozen: Vec<Frozen>,
    /// Device numbers claimed in the registry.
    claimed: Vec<u64>,
    /// Thawed (or never to be frozen again).
    done: bool,
    /// The watchdog thawed.
    expired: bool,
    warnings: Vec<String>,
    /// Thaws if this process dies while frozen; stands down after a thaw.
    guardian: Option<super::guardian::Guardian>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// What a thaw reports.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ThawReport {
    /// The watchdog thawed before the caller did: writes were possible
    /// during part of what the freeze was meant to cover.
    pub expired: bool,
    /// How long the file systems were frozen, at most.
    pub held: Duration,
    /// Thaw failures and the watchdog's note.
    pub warnings: Vec<String>,
}

/// Frozen file systems; thawed by [`thaw`](Self::thaw), on drop, or by the
/// watchdog, whichever comes first.
pub struct FreezeGuard {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    started: Instant,
}

impl std::fmt::Debug for FreezeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.shared.state);
        f.debug_struct("FreezeGuard")
            .field("mounts", &s.frozen.iter().map(|m| &m.mount).collect::<Vec<_>>())
            .field("done", &s.done)
            .field("expired", &s.expired)
            .finish()
    }
}

/// Thaws every frozen mount in reverse order and gives back the claims.
fn thaw_all(state: &mut State) {
    while let Some(m) = state.frozen.pop() {
        // SAFETY: FITHAW takes no argument; the descriptor belongs to a
        // live File.
        let r = unsafe { libc::ioctl(m.file.as_raw_fd(), FITHAW as _, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            state.warnings.push(format!("cannot thaw (FITHAW) {}: {e}", m.mount.display()));
        }
    }
    state.done = true;
    if let Some(mut g) = state.guardian.take() {
        g.stand_down();
    }
    if !state.claimed.is_empty() {
        let mut reg = lock(&REGISTRY);
        reg.retain(|d| !state.claimed.contains(d));
        state.claimed.clear();
        RELEASED.notify_all();
    }
}

/// Opens a mount point and returns it with its file system's device number.
fn open_mount(mount: &Path) -> Result<(File, u64)> {
    let file = File::open(mount).map_err(|e| Error::io("open mount point", mount, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat mount point", mount, e))?;
    if !meta.is_dir() {
        return Err(Error::invalid("freeze mount", format!("{} is not a folder", mount.display())));
    }
    // FIFREEZE freezes the whole file system under any path; insist on the
    // mount point itself so that a typo cannot freeze the host's root (and
    // with it the vault and this process's own writes).
    let canonical = mount.canonicalize().map_err(|e| Error::io("resolve mount point", mount, e))?;
    let parent_dev = match canonical.parent() {
        Some(p) => std::fs::metadata(p).map_err(|e| Error::io("stat", p, e))?.dev(),
        None => {
            return Err(Error::invalid(
                "freeze mount",
                "/ is the root file system; freezing it would freeze the backup itself".to_string(),
            ));
        }
    };
    if parent_dev == meta.dev() {
        return Err(Error::invalid(
            "freeze mount",
            format!("{} is not a mount point (it is on the same file system as its parent)", mount.display()),
        ));
    }
    Ok((file, meta.dev()))
}

impl FreezeGuard {
    /// Freezes `mounts` in order, and starts a watchdog that thaws them
    /// after `timeout`. A mount frozen by another guard in this process is
    /// waited for (at most `timeout`); a mount listed twice is frozen once.
    ///
    /// # Errors
    /// A path that is not a mount point; a mount that cannot be frozen
    /// (with the mount and the system's error; the mounts frozen before it
    /// are thawed); a mount still frozen by another backup after `timeout`.
    pub fn freeze(mounts: &[PathBuf], timeout: Duration) -> Result<FreezeGuard> {
        let mut opened: Vec<(PathBuf, File, u64)> = Vec::new();
        for m in mounts {
            let (file, dev) = open_mount(m)?;
            if !opened.iter().any(|(_, _, d)| *d == dev) {
                opened.push((m.clone(), file, dev));
            }
        }
        let devs: Vec<u64> = opened.iter().map(|(_, _, d)| *d).collect();

        // Claim every file system at once, so two guards over overlapping
        // lists cannot each hold half and wait for the other.
        {
            let deadline = Instant::now() + timeout;
            let mut reg = lock(&REGISTRY);
            while let Some(busy) = devs.iter().find(|d| reg.contains(d)) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let mount = opened.iter().find(|(_, _, d)| d == busy).map_or(Path::new("?"), |m| m.0.as_path());
                    return Err(Error::io(
                        "freeze",
                        mount,
                        std::io::Error::new(
                            std::io::ErrorKind::ResourceBusy,
                            format!("still frozen by another backup after {:.1} s", timeout.as_secs_f64()),
                        ),
                    ));
                }
                reg = RELEASED.wait_timeout(reg, left).unwrap_or_else(|p| p.into_inner()).0;
            }
            reg.extend(&devs);
        }

        let fds: Vec<std::os::fd::RawFd> = opened.iter().map(|(_, f, _)| f.as_raw_fd()).collect();
        let guardian = match (!fds.is_empty())
            .then(|| super::guardian::Guardian::spawn(super::guardian::ThawAction::Mounts(fds.clone()), timeout))
            .transpose()
        {
            Ok(g) => g,
            Err(e) => {
                let mut reg = lock(&REGISTRY);
                reg.retain(|d| !devs.contains(d));
                RELEASED.notify_all();
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                frozen: Vec::new(),
                claimed: devs,
                done: false,
                expired: false,
                warnings: Vec::new(),
                guardian,
            }),
            wake: Condvar::new(),
        });
        let started = Instant::now();
        let dog = Arc::clone(&shared);
        let watchdog = std::thread::Builder::new().name("vmbackup-freeze-watchdog".into()).spawn(move || {
            let s = lock(&dog.state);
            let (mut s, _) = dog.wake.wait_timeout_while(s, timeout, |s| !s.done).unwrap_or_else(|p| p.into_inner());
            if !s.done {
                s.expired = true;
                let names: Vec<String> = s.frozen.iter().map(|m| m.mount.display().to_string()).collect();
                s.warnings.push(format!(
                    "the freeze watchdog thawed {} after {:.1} s: the snapshot step took too long, so the snapshot is not file-system-consistent",
                    names.join(", "),
                    timeout.as_secs_f64()
                ));
                thaw_all(&mut s);
            }
        });
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                thaw_all(&mut lock(&shared.state));
                return Err(Error::io("start the freeze watchdog for", &opened[0].0, e));
            }
        };
        // From here the guard's Drop thaws whatever is frozen.
        let guard = FreezeGuard { shared, watchdog: Some(watchdog), started };
        for (mount, file, _) in opened {
            let mut s = lock(&guard.shared.state);
            if s.done {
                return Err(Error::io(
                    "freeze",
                    &mount,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "the watchdog expired while freezing"),
                ));
            }
            // SAFETY: FIFREEZE takes no argument; the descriptor belongs to
            // a live File.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), FIFREEZE as _, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                drop(s);
                drop(guard);
                return Err(Error::io("freeze (FIFREEZE)", mount, e));
            }
            s.frozen.push(Frozen { mount, file });
        }
        Ok(guard)
    }

    /// The mounts frozen now (empty once thawed).
    pub fn mounts(&self) -> Vec<PathBuf> {
        lock(&self.shared.state).frozen.iter().map(|m| m.mount.clone()).collect()
    }

    /// Thaws in reverse order (unless the watchdog already did) and says
    /// whether the freeze held until now.
    pub fn thaw(mut self) -> ThawReport {
        self.finish()
    }

    fn finish(&mut self) -> ThawReport {
        let report = {
            let mut s = lock(&self.shared.state);
            if !s.done {
                thaw_all(&mut s);
            }
            self.shared.wake.notify_all();
            ThawReport { expired: s.expired, held: self.started.elapsed(), warnings: std::mem::take(&mut s.warnings) }
        };
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        report
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_path_that_is_not_a_mount_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = FreezeGuard::freeze(&[dir.path().to_path_buf()], Duration::from_secs(1)).expect_err("not a mount");
        assert!(e.to_string().contains("not a mount point"), "{e}");
        let e = FreezeGuard::freeze(&[PathBuf::from("/")], Duration::from_secs(1)).expect_err("root");
        assert!(e.to_string().contains("root file system"), "{e}");
        let e = FreezeGuard::freeze(&[dir.path().join("missing")], Duration::from_secs(1)).expect_err("missing");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(lock(&REGISTRY).is_empty());
    }

    #[test]
    fn an_empty_list_freezes_nothing() {
        let g = FreezeGuard::freeze(&[], Duration::from_millis(50)).expect("nothing to freeze");
        assert!(g.mounts().is_empty());
        let r = g.thaw();
        assert!(!r.expired);
    }
}
