//! The provider for VMs whose disks are raw image files.
//!
//! Where the image's file system has reflinks (XFS, Btrfs), the snapshot is
//! a `FICLONE` clone beside the image: instant, and the VM may go on
//! writing. Elsewhere the files are read in place, which is right only for a
//! stopped VM: the provider records each file's size and modification time
//! and refuses the point if either changed during the backup.
//!
//! Each clone carries a mark (see `clone_mark`) and a lock held while its
//! job lives; a clone left by a killed job is removed by the next snapshot
//! of the same image.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{KeptDisk, PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider};
use crate::device::RawImage;
use crate::error::{Error, Result};
use crate::model::{Consistency, Vm};

/// `_IOW(0x94, 9, int)` from `<linux/fs.h>`: clone a whole file.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Snapshots of VMs whose disks are raw image files (each
/// [`VmDisk::location`](crate::VmDisk::location) is a path).
#[derive(Debug, Clone, Default)]
pub struct ImageFileProvider {
    /// Never clone; always read in place (for a VM known to be stopped).
    pub in_place_only: bool,
}

impl ImageFileProvider {
    /// A provider that clones where it can and reads in place otherwise.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What release and the intact check need.
struct Taken {
    clones: Vec<PathBuf>,
    /// The clones, open: their lock says the job is alive.
    _held: Vec<File>,
    /// Whether every clone took its mark (else none may be kept).
    marked: bool,
    in_place: Vec<(String, PathBuf, u64, Option<SystemTime>)>,
}

/// Tries to clone `src` to a new file `dst`; Ok(None) when the file system
/// cannot (no reflinks, another device). The clone comes back open.
fn reflink(src: &Path, dst: &Path) -> Result<Option<File>> {
    let from = File::open(src).map_err(|e| Error::io("open disk image", src, e))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io("create snapshot clone", dst, e))?;
    // SAFETY: FICLONE takes the source descriptor as its integer argument;
    // both descriptors are owned by live `File`s for the whole call.
    let r = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) };
    if r == 0 {
        return Ok(Some(to));
    }
    let err = std::io::Error::last_os_error();
    drop(to);
    let _ = fs::remove_file(dst);
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS) => Ok(None),
        _ => Err(Error::io("clone (FICLONE)", src, err)),
    }
}

fn clone_path(image: &Path) -> PathBuf {
    let name = image.file_name().and_then(|n| n.to_str()).unwrap_or("disk");
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    image.with_file_name(format!(".{name}.vmbackup-snap-{}", crate::model::hex(&r)))
}

fn stamp(path: &Path) -> Result<(u64, Option<SystemTime>)> {
    let m = fs::metadata(path).map_err(|e| Error::io("stat disk image", path, e))?;
    Ok((m.len(), m.modified().ok()))
}

impl SnapshotProvider for ImageFileProvider {
    fn prepare(&self, _vm: &Vm) -> Result<PrepareReport> {
        Ok(PrepareReport { provider_version: self.version(), changes: Vec::new() })
    }

    fn version(&self) -> String {
        concat!("image-files ", env!("CARGO_PKG_VERSION")).to_string()
    }

    fn snapshot(&self, vm: &Vm, _wanted: Consistency) -> Result<Snapshot> {
        let mut taken = Taken { clones: Vec::new(), _held: Vec::new(), marked: true, in_place: Vec::new() };
        let mut disks = Vec::new();
        let mut warnings = Vec::new();
        for d in &vm.disks {
            let image = Path::new(&d.location);
            if is_special(image) {
                release_clones(&taken.clones);
                return Err(Error::invalid(
                    format!("disk {} of vm {}", d.name, vm.name),
                    format!("{} is a FIFO, socket or character device, not a disk image", image.display()),
                ));
            }
            let cloned = if self.in_place_only {
                None
            } else {
                warnings.extend(super::clone_mark::remove_abandoned(image));
                let dst = clone_path(image);
                match reflink(image, &dst) {
                    Ok(Some(file)) => {
                        if let Err(e) = super::clone_mark::set(&file, super::clone_mark::IN_FLIGHT) {
                            taken.marked = false;
                            warnings.push(format!(
                                "snapshot clone {} takes no vmbackup mark ({e}): it is released after the job, never kept",
                                dst.display()
                            ));
                        }
                        super::clone_mark::hold(&file);
                        taken._held.push(file);
                        Some(dst)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        release_clones(&taken.clones);
                        return Err(e);
                    }
                }
            };
            let (device, method) = match cloned {
                Some(clone) => {
                    taken.clones.push(clone.clone());
                    (RawImage::open(&clone), "reflink")
                }
                None => {
                    let (len, mtime) = match stamp(image) {
                        Ok(s) => s,
                        Err(e) => {
                            release_clones(&taken.clones);
                            return Err(e);
                        }
                    };
                    taken.in_place.push((d.name.clone(), image.to_path_buf(), len, mtime));
                    (RawImage::open(image), "in-place")
                }
            };
            let device = match device {
                Ok(dev) => dev,
                Err(e) => {
                    release_clones(&taken.clones);
                    return Err(e);
                }
            };
            if method == "in-place" {
                warnings.push(format!(
                    "disk {} is read in place (its file system has no reflinks): the VM must stay stopped",
                    d.name
                ));
            }
            disks.push(SnapshotDisk {
                name: d.name.clone(),
                device: Arc::new(device),
                change_token: None,
                method: method.to_string(),
            });
        }
        Ok(Snapshot { disks, consistency: Consistency::Crash, warnings, provider_data: Some(Box::new(taken)) })
    }

    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        let Some(taken) = snapshot.provider_data.as_ref().and_then(|d| d.downcast_ref::<Taken>()) else {
            return Ok(());
        };
        for (disk, path, len, mtime) in &taken.in_place {
            let now = stamp(path)?;
            if now != (*len, *mtime) {
                return Err(Error::SourceChanged {
                    vm: vm.name.clone(),
                    disk: disk.clone(),
                    detail: format!(
                        "{} was modified while it was read in place; stop the VM, or keep its images on a file system with reflinks",
                        path.display()
                    ),
                });
            }
        }
        Ok(())
    }

    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
        let taken = snapshot.provider_data.as_ref()?.downcast_ref::<Taken>()?;
        // Only clones outlive the job; an image read in place is the live disk.
        if !taken.marked || !taken.in_place.is_empty() || taken.clones.len() != snapshot.disks.len() {
            return None;
        }
        Some(
            snapshot
                .disks
                .iter()
                .zip(&taken.clones)
                .map(|(d, c)| KeptDisk { name: d.name.clone(), path: c.clone() })
                .collect(),
        )
    }

    fn release(&self, _vm: &Vm, snapshot: Snapshot) -> Result<()> {
        // Remove every clone even when one fails; report the first failure.
        let mut first = Ok(());
        if let Some(taken) = snapshot.provider_data.and_then(|d| d.downcast::<Taken>().ok()) {
            for clone in &taken.clones {
                if let Err(e) = fs::remove_file(clone)
                    && first.is_ok()
                {
                    first = Err(Error::io("remove snapshot clone", clone, e));
                }
            }
        }
        first
    }
}

/// Whether `path` is a FIFO, socket or character device: reading one as a
/// disk would hang or never end. (A block device is a disk.)
fn is_special(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(path).is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_socket() || t.is_char_device()
    })
}

fn release_clones(clones: &[PathBuf]) {
    for c in clones {
        let _ = fs::remove_file(c);
    }
}
