//! ext2/3/4 and XFS, read by the host's kernel: the volume is one file of
//! a private read-only FUSE mount, loop-mounted read-only without replaying
//! the guest's journal. Needs root. Everything is undone on drop: the file
//! system, its loop device (auto-cleared), the FUSE mount, the folders.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::probe::FsType;
use super::{Backend, FileEntry, FileKind};
use crate::mount::{MountedVolume, VolumeFile};
use crate::vault::Vault;

/// A guest file system mounted read-only by the kernel.
pub(super) struct KernelFs {
    /// The mounted file system's root, opened once: every path is resolved
    /// beneath it.
    root: OwnedFd,
    /// Where the file system is mounted.
    dir: PathBuf,
    /// The private folder holding `fs` and `fuse`.
    work: PathBuf,
    /// The loop device the kernel mounted (`loop3`), once mounted.
    loop_device: Option<String>,
    volume: Option<MountedVolume>,
}

/// The prefix of the private folders, followed by the owner's pid.
const WORK_PREFIX: &str = "vmbackup-files-";

/// A folder of our own under the temporary folder (mode 0700), named
/// `vmbackup-files-PID-RANDOM`, after clearing what killed runs left.
fn work_dir() -> io::Result<PathBuf> {
    sweep_stale();
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
    let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("{WORK_PREFIX}{}-{name}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Unmounts and removes the private folders of processes that are gone (a
/// SIGKILL leaves its file system, loop device and dead FUSE mount): the
/// file system lazily, its loop device then auto-clears, the FUSE mount
/// (its server dead) detaches at once.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) =
            name.strip_prefix(WORK_PREFIX).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        for sub in ["fs", "fuse"] {
            let at = dir.join(sub);
            if let Ok(c) = CString::new(at.as_os_str().as_bytes()) {
                // SAFETY: `c` is a valid C string; umount2 only reads it.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_dir(&at);
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

use std::os::unix::fs::DirBuilderExt;

impl KernelFs {
    /// Mounts `volume` (of type `fs`) read-only. The caller holds the
    /// vault's lock.
    pub(super) fn mount(vault: Arc<Vault>, volume: VolumeFile, fs: FsType) -> Result<KernelFs, String> {
        // SAFETY: geteuid has no preconditions and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "reading {fs} needs root: the kernel mounts it read-only through a loop device (FAT volumes need no privileges)"
            ));
        }
        let work = work_dir()
            .map_err(|e| format!("cannot make a private folder under {}: {e}", std::env::temp_dir().display()))?;
        let fuse = work.join("fuse");
        let dir = work.join("fs");
        let mut this = KernelFs {
            root: OwnedFd::from(File::open("/").map_err(|e| e.to_string())?),
            dir,
            work,
            loop_device: None,
            volume: None,
        };
        for d in [&fuse, &this.dir] {
            std::fs::create_dir(d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
        }
        let mounted = MountedVolume::mount(vault, volume, &fuse).map_err(|e| e.to_string())?;
        let options = match fs {
            FsType::Xfs => "ro,norecovery,nouuid,loop",
            _ => "ro,noload,loop",
        };
        let kind = if fs == FsType::Xfs { "xfs" } else { "ext4" };
        let out = Command::new("mount")
            .args(["-t", kind, "-o", options])
            .arg(mounted.file())
            .arg(&this.dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        let vault_error = mounted.first_error();
        this.volume = Some(mounted);
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(match vault_error {
                Some(v) => format!("the kernel cannot mount it: {why} (the vault: {v})"),
                None => format!("the kernel cannot mount it: {why}"),
            });
        }
        this.loop_device = loop_of(&this.dir);
        let root = File::open(&this.dir).map_err(|e| format!("cannot open {}: {e}", this.dir.display()))?;
        this.root = OwnedFd::from(root);
        Ok(this)
    }

    /// Opens `path` beneath the root (`..` and absolute links stay inside).
    fn resolve(&self, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        super::beneath::open_beneath(&self.root, path, flags)
    }

    /// `/proc/self/fd/N`: a name for an open folder that std can use.
    fn fd_path(fd: &OwnedFd) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
}

fn timestamp(secs: i64, nanos: i64) -> jiff::Timestamp {
    jiff::Timestamp::new(secs, nanos as i32).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The entry for `meta`, found at guest path `path` (and `host`, for a
/// link's target).
fn entry(path: PathBuf, meta: &std::fs::Metadata, host: &Path) -> FileEntry {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    FileEntry {
        path,
        kind,
        size: meta.size(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: timestamp(meta.mtime(), meta.mtime_nsec()),
        atime: timestamp(meta.atime(), meta.atime_nsec()),
        target: if kind == FileKind::Symlink { std::fs::read_link(host).ok() } else { None },
    }
}

impl Backend for KernelFs {
    fn stat(&self, path: &Path) -> io::Result<FileEntry> {
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                let dir = self.resolve(parent, libc::O_PATH | libc::O_DIRECTORY)?;
                let host = Self::fd_path(&dir).join(name);
                let meta = std::fs::symlink_metadata(&host)?;
                Ok(entry(path.to_path_buf(), &meta, &host))
            }
            _ => {
                let root = self.resolve(Path::new("/"), libc::O_PATH | libc::O_DIRECTORY)?;
                let host = Self::fd_path(&root);
                Ok(entry(PathBuf::from("/"), &std::fs::metadata(&host)?, &host))
            }
        }
    }

    fn list(&self, path: &Path) -> io::Result<Vec<FileEntry>> {
        let dir = self.resolve(path, libc::O_PATH | libc::O_DIRECTORY)?;
        let host = Self::fd_path(&dir);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&host)? {
            let e = e?;
            let child = host.join(e.file_name());
            let meta = std::fs::symlink_metadata(&child)?;
            out.push(entry(path.join(e.file_name()), &meta, &child));
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        let file = File::from(self.resolve(path, libc::O_RDONLY | libc::O_NONBLOCK)?);
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(Box::new(file))
    }

    fn vault_error(&self) -> Option<String> {
        self.volume.as_ref().and_then(MountedVolume::first_error)
    }
}

/// The loop device (`loop3`) mounted at `dir`, from the mount table.
fn loop_of(dir: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let at = left.split(' ').nth(4)?;
        let source = right.split(' ').nth(1)?;
        (Path::new(at) == dir).then(|| source.strip_prefix("/dev/").unwrap_or(source).to_string())
    })
}

/// Whether loop device `device` (`loop3`) still has a file.
fn loop_attached(device: &str) -> bool {
    std::fs::read_to_string(format!("/sys/block/{device}/size")).is_ok_and(|s| s.trim() != "0")
}

/// Waits until `device` lets go of its file: its auto-clear after the
/// unmount, or else a detach asked for here.
fn release_loop(device: &str) {
    let wait = |limit: std::time::Duration| {
        let start = std::time::Instant::now();
        while loop_attached(device) && start.elapsed() < limit {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        !loop_attached(device)
    };
    if !wait(std::time::Duration::from_secs(2)) {
        let _ = Command::new("losetup").arg("-d").arg(format!("/dev/{device}")).output();
        wait(std::time::Duration::from_secs(10));
    }
}

impl Drop for KernelFs {
    fn drop(&mut self) {
        // Close the root first: an open fd keeps the mount busy.
        self.root = match File::open("/") {
            Ok(f) => OwnedFd::from(f),
            Err(_) => return,
        };
        if self.volume.is_some() {
            let c = CString::new(self.dir.as_os_str().as_bytes()).unwrap_or_default();
            // SAFETY: `c` is a valid C string; umount2 only reads it.
            let r = unsafe { libc::umount2(c.as_ptr(), 0) };
            if r != 0 {
                // Still busy (a reader elsewhere): detach it now, the
                // kernel finishes when the last file closes.
                // SAFETY: as above.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        // The loop device lets go of the volume's file a little after the
        // unmount (its auto-clear is deferred), and its release still reads
        // through the FUSE mount: only once it is free can that mount go.
        if let Some(device) = &self.loop_device {
            release_loop(device);
        }
        self.volume = None;
        let _ = std::fs::remove_dir(self.work.join("fs"));
        let _ = std::fs::remove_dir(self.work.join("fuse"));
        let _ = std::fs::remove_dir(&self.work);
    }
}
