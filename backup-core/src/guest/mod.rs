//! Guest files inside a point, read-only, without restoring a disk.
//!
//! A disk of a point is read through a checked [`DiskReader`]. Its
//! partition table (GPT or MBR) and any LVM2 volume groups on it are parsed
//! here, in user space, into *volumes*: `p1`, `p2` for partitions,
//! `vg/lv` for logical volumes, `disk` for a file system on the whole disk.
//! Each volume is a list of byte ranges of the disk, so the host's LVM never
//! sees the guest's volume groups, and two points whose volume groups carry
//! the same UUIDs open side by side.
//!
//! A volume's files are then read in one of two ways:
//! - **FAT** (an EFI system partition) in user space (the `fatfs` crate):
//!   no privileges needed.
//! - **ext2/3/4 and XFS** by the host's kernel, which knows them best: the
//!   volume is served as one file of a private read-only FUSE mount, and
//!   mounted from it through a loop device, read-only and without replaying
//!   its journal (`ro,noload` for ext4, `ro,norecovery,nouuid` for XFS, so
//!   the guest's journal is never written and two copies of one XFS mount at
//!   once). This needs root. Every path is resolved inside the guest's root
//!   (`openat2` with `RESOLVE_IN_ROOT`): a guest's absolute symlink can
//!   never lead to the host's files.
//!
//! ```no_run
//! use backup_core::*;
//! use std::sync::Arc;
//! let vault = Arc::new(Vault::open("/srv/vault")?);
//! let point = vault.find_point("web", "latest")?;
//! let disk = GuestDisk::open(vault.clone(), &point, "vda")?;
//! for v in disk.volumes() {
//!     println!("{} {} {} bytes {:?}", v.name, v.fs, v.size, v.label);
//! }
//! let (fs, path) = disk.open_path("p2:/etc/fstab")?;
//! let mut text = String::new();
//! std::io::Read::read_to_string(&mut fs.open(&path)?, &mut text)?;
//! fs.extract("/etc".as_ref(), "/tmp/restored".as_ref())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod beneath;
mod extract;
mod fat;
mod find;
mod kernel;
mod lvm;
mod partitions;
mod probe;

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::disk_reader::DiskReader;
use crate::error::{Error, Result};
use crate::mount::{Extent, VolumeFile};
use crate::vault::{LockMode, PointManifest, Vault, VaultLock};
use partitions::ReadAt;

pub use extract::ExtractReport;
pub use find::{FoundFile, find_files, glob_match};
pub use partitions::TableKind;
pub use probe::FsType;

/// What kind of volume it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// The whole disk (no partition table).
    Disk,
    /// A partition.
    Partition,
    /// An LVM logical volume.
    LogicalVolume,
}

/// A volume of a guest disk: a partition, a logical volume, or the whole
/// disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// How paths name it: `p1`, `vg/lv`, or `disk`.
    pub name: String,
    /// What kind it is.
    pub kind: VolumeKind,
    /// What it holds.
    pub fs: FsType,
    /// Its size in bytes.
    pub size: u64,
    /// Its file system's label, or the GPT partition's name.
    pub label: Option<String>,
    /// Its file system's UUID.
    pub uuid: Option<String>,
    /// Where its bytes lie on the disk, in order.
    pub extents: Vec<Extent>,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket (listed, never extracted).
    Other,
}

/// A file, folder or link in a guest's file system, as `stat` sees it
/// (without following a link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Its absolute path in the guest's file system.
    pub path: PathBuf,
    /// What it is.
    pub kind: FileKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its permission bits (with set-uid, set-gid and sticky): `0o7777`.
    pub mode: u32,
    /// Its owner's user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
    /// When its content last changed.
    pub mtime: jiff::Timestamp,
    /// When it was last read.
    pub atime: jiff::Timestamp,
    /// Where a symbolic link points.
    pub target: Option<PathBuf>,
}

/// How a file system's files are read (one per kind of file system).
trait Backend {
    /// The entry at `path`, not following a link at its end.
    fn stat(&self, path: &Path) -> io::Result<FileEntry>;
    /// The entries in folder `path`, sorted by name.
    fn list(&self, path: &Path) -> io::Result<Vec<FileEntry>>;
    /// The content of file `path`, following links inside the guest.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>>;
    /// A read error's cause in the vault, if a read failed there.
    fn vault_error(&self) -> Option<String> {
        None
    }
}

/// A read-only, random-access view of ranges of a disk: a volume.
pub(crate) struct VolumeReader {
    disk: DiskReader<Arc<Vault>>,
    extents: Vec<Extent>,
    size: u64,
    position: u64,
}

impl VolumeReader {
    fn new(disk: DiskReader<Arc<Vault>>, extents: Vec<Extent>) -> Self {
        let size = extents.iter().map(|e| e.length).sum();
        VolumeReader { disk, extents, size, position: 0 }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        crate::mount::read_extents(&mut self.disk, &self.extents, offset, buf)
    }
}

impl Read for VolumeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.position, buf).map_err(io::Error::other)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl io::Seek for VolumeReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let at = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = at.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.position)
    }
}

/// Writes fail: the FAT reader asks for a writable device, and must never
/// write to it.
impl io::Write for VolumeReader {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "a point is read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One disk of a point, its volumes found. It holds the vault's shared
/// lock, as does every [`GuestFs`] opened from it.
pub struct GuestDisk {
    vault: Arc<Vault>,
    point: Arc<PointManifest>,
    disk: String,
    table: Option<TableKind>,
    volumes: Vec<Volume>,
    lock: Arc<VaultLock>,
}

impl std::fmt::Debug for GuestDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDisk")
            .field("vm", &self.point.vm)
            .field("point", &self.point.id)
            .field("disk", &self.disk)
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

impl GuestDisk {
    /// Takes the vault's shared lock, opens `disk` (a name or an index) of
    /// `point`, and finds its volumes.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown disk; [`Error::Guest`] for a
    /// partition table or LVM metadata that cannot be read; damaged vault
    /// data as [`DiskReader`] reports it.
    pub fn open(vault: Arc<Vault>, point: &PointManifest, disk: &str) -> Result<GuestDisk> {
        let lock = Arc::new(vault.lock(LockMode::Shared)?);
        let mut reader = DiskReader::unlocked(vault.clone(), point, disk)?;
        let name = reader.name().to_string();
        let size = reader.size();
        let place = format!("disk {name} of point {} of vm {}", point.id, point.vm);
        let guest = |why: String| Error::Guest { place: place.clone(), why };
        let mut read = |at: u64, len: usize| -> std::result::Result<Vec<u8>, String> {
            let mut b = vec![0u8; len];
            let n = reader.read_at(at, &mut b).map_err(|e| e.to_string())?;
            b.truncate(n);
            b.resize(len, 0);
            Ok(b)
        };
        let (table, volumes) = find_volumes(&mut read, size).map_err(guest)?;
        Ok(GuestDisk { vault, point: Arc::new(point.clone()), disk: name, table, volumes, lock })
    }

    /// The volumes: partitions in table order, each volume group's logical
    /// volumes after its PV; or the whole disk.
    pub fn volumes(&self) -> &[Volume] {
        &self.volumes
    }

    /// The partition table, if the disk has one.
    pub fn table(&self) -> Option<TableKind> {
        self.table
    }

    /// The disk's name in the point.
    pub fn disk(&self) -> &str {
        &self.disk
    }

    /// The point it belongs to.
    pub fn point(&self) -> &PointManifest {
        &self.point
    }

    fn place(&self, volume: &str) -> String {
        format!("volume {volume} of disk {} of point {} of vm {}", self.disk, self.point.id, self.point.vm)
    }

    /// The volume named `name` (`p1`, `vg/lv`, `disk`).
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the volumes there are.
    pub fn volume(&self, name: &str) -> Result<&Volume> {
        self.volumes.iter().find(|v| v.name == name).ok_or_else(|| Error::NotFound {
            what: format!(
                "volume {name} of disk {} of point {} of vm {} (it has: {})",
                self.disk,
                self.point.id,
                self.point.vm,
                self.volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// Opens the file system of volume `name` for reading.
    ///
    /// # Errors
    /// [`Error::Guest`] when the volume holds no file system read here, or
    /// ext4/XFS without root, or when the kernel refuses it.
    pub fn open_fs(&self, name: &str) -> Result<GuestFs> {
        let volume = self.volume(name)?;
        let place = format!("{} ({})", self.place(name), volume.fs);
        let guest = |why: String| Error::Guest { place: place.clone(), why };
        let backend: Box<dyn Backend> = match volume.fs {
            FsType::Vfat => {
                let disk = DiskReader::unlocked(self.vault.clone(), &self.point, &self.disk)?;
                Box::new(
                    fat::FatFs::open(VolumeReader::new(disk, volume.extents.clone()))
                        .map_err(|e| guest(e.to_string()))?,
                )
            }
            FsType::Ext2 | FsType::Ext3 | FsType::Ext4 | FsType::Xfs => {
                let file =
                    VolumeFile { point: self.point.clone(), disk: self.disk.clone(), extents: volume.extents.clone() };
                Box::new(kernel::KernelFs::mount(self.vault.clone(), file, volume.fs).map_err(guest)?)
            }
            other => return Err(guest(format!("holds {other}, not a file system whose files can be read"))),
        };
        Ok(GuestFs { place, backend, _lock: self.lock.clone() })
    }

    /// Opens the file system a path names, and the path inside it: `p1:/etc`
    /// (a partition), `vg/lv:/var/log` (a logical volume), or `/etc` for a
    /// disk with no partition table.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed path or a path without a
    /// volume on a partitioned disk; as [`GuestDisk::open_fs`].
    pub fn open_path(&self, spec: &str) -> Result<(GuestFs, PathBuf)> {
        let (volume, path) = split_path(spec)?;
        let volume = match volume {
            Some(v) => v,
            None if self.table.is_none() => "disk",
            None => {
                return Err(Error::invalid(
                    format!("path {spec}"),
                    format!(
                        "disk {} has partitions: name the volume first, as in {}:{spec} (volumes: {})",
                        self.disk,
                        self.volumes.iter().find(|v| v.fs.has_files()).map_or("p1", |v| v.name.as_str()),
                        self.volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        };
        Ok((self.open_fs(volume)?, path))
    }
}

/// The volumes of a disk of `size` bytes read through `read`: its
/// partitions (or the whole disk), each probed, and the logical volumes of
/// any LVM PV among them; and which partition table it has.
fn find_volumes(read: &mut ReadAt<'_>, size: u64) -> std::result::Result<(Option<TableKind>, Vec<Volume>), String> {
    let table = partitions::read(read, size)?;
    let mut volumes = Vec::new();
    let places: Vec<(String, VolumeKind, Extent, Option<String>)> = match &table {
        Some((_, parts)) => {
            parts.iter().map(|p| (format!("p{}", p.number), VolumeKind::Partition, p.extent, p.name.clone())).collect()
        }
        None => vec![("disk".into(), VolumeKind::Disk, Extent { offset: 0, length: size }, None)],
    };
    for (vname, kind, extent, part_name) in places {
        let found = probe::probe(read, extent.offset, extent.length)?;
        volumes.push(Volume {
            name: vname.clone(),
            kind,
            fs: found.fs,
            size: extent.length,
            label: found.label.or(part_name),
            uuid: found.uuid,
            extents: vec![extent],
        });
        if found.fs == FsType::LvmPv {
            let lvs = lvm::logical_volumes(read, extent).map_err(|why| format!("{vname}: {why}"))?;
            for lv in lvs {
                let first = lv.extents.first().copied().unwrap_or(Extent { offset: 0, length: 0 });
                let size = lv.extents.iter().map(|e| e.length).sum();
                // Probe through the volume's own mapping (its first
                // extent holds the superblock of anything we know).
                let found = if first.length >= 8192 {
                    probe::probe(read, first.offset, first.length)?
                } else {
                    probe::Probe { fs: FsType::Unknown, label: None, uuid: None }
                };
                volumes.push(Volume {
                    name: format!("{}/{}", lv.vg, lv.lv),
                    kind: VolumeKind::LogicalVolume,
                    fs: found.fs,
                    size,
                    label: found.label,
                    uuid: found.uuid,
                    extents: lv.extents,
                });
            }
        }
    }
    Ok((table.map(|t| t.0), volumes))
}

/// `find_volumes`, as `GuestDisk::open` runs it, over a disk held in memory
/// (for `fuzzing::guest_disk`). True when a table or a logical volume was
/// found.
pub(crate) fn fuzz_volumes(disk: &[u8]) -> bool {
    let mut read = |at: u64, len: usize| -> std::result::Result<Vec<u8>, String> {
        let start = (at as usize).min(disk.len());
        let mut b = disk[start..(start + len).min(disk.len())].to_vec();
        b.resize(len, 0);
        Ok(b)
    };
    find_volumes(&mut read, disk.len() as u64)
        .is_ok_and(|(table, volumes)| table.is_some() || volumes.iter().any(|v| v.kind == VolumeKind::LogicalVolume))
}

/// Splits `p1:/etc` into `(Some("p1"), "/etc")` and `/etc` into
/// `(None, "/etc")`; the path is made absolute and `.` removed.
///
/// # Errors
/// [`Error::InvalidArgument`] for a path that is neither.
pub fn split_path(spec: &str) -> Result<(Option<&str>, PathBuf)> {
    let (volume, path) = if spec.starts_with('/') {
        (None, spec)
    } else {
        match spec.split_once(':') {
            Some((v, p)) if !v.is_empty() => (Some(v), if p.is_empty() { "/" } else { p }),
            _ => {
                return Err(Error::invalid(
                    format!("path {spec}"),
                    "name a volume and a path in it (p1:/etc/fstab, vg/lv:/var/log), or /path on a disk without partitions",
                ));
            }
        }
    };
    if !path.starts_with('/') {
        return Err(Error::invalid(format!("path {spec}"), "the path inside the volume must start with /"));
    }
    let mut clean = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    Ok((volume, clean))
}

/// A guest file system opened read-only. Paths are absolute paths in the
/// guest (`/etc/fstab`); links are followed inside the guest only.
pub struct GuestFs {
    place: String,
    backend: Box<dyn Backend>,
    _lock: Arc<VaultLock>,
}

impl std::fmt::Debug for GuestFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestFs").field("place", &self.place).finish_non_exhaustive()
    }
}

impl GuestFs {
    /// Where it is: volume, type, disk, point and vm.
    pub fn place(&self) -> &str {
        &self.place
    }

    fn error(&self, path: &Path, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::NotFound {
            return Error::NotFound { what: format!("{} in {}", path.display(), self.place) };
        }
        let why = match self.backend.vault_error() {
            Some(cause) => format!("{}: {e} (the vault: {cause})", path.display()),
            None => format!("{}: {e}", path.display()),
        };
        Error::Guest { place: self.place.clone(), why }
    }

    /// The entry at `path`, not following a link at its end.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Guest`] for a read that failed.
    pub fn stat(&self, path: &Path) -> Result<FileEntry> {
        self.backend.stat(path).map_err(|e| self.error(path, e))
    }

    /// The entries of folder `path` sorted by name, or the entry of `path`
    /// alone when it is not a folder.
    ///
    /// # Errors
    /// As [`GuestFs::stat`].
    pub fn list(&self, path: &Path) -> Result<Vec<FileEntry>> {
        let entry = self.stat(path)?;
        let dir = entry.kind == FileKind::Dir || (entry.kind == FileKind::Symlink && self.backend.list(path).is_ok());
        if dir { self.backend.list(path).map_err(|e| self.error(path, e)) } else { Ok(vec![entry]) }
    }

    /// The content of file `path`.
    ///
    /// # Errors
    /// As [`GuestFs::stat`]; reads from it fail with an I/O error.
    pub fn open(&self, path: &Path) -> Result<Box<dyn Read + '_>> {
        self.backend.open(path).map_err(|e| self.error(path, e))
    }

    /// Calls `f` on `path` and, when it is a folder, on everything under
    /// it (parents before children, never following a link).
    ///
    /// # Errors
    /// As [`GuestFs::stat`], and what `f` returns.
    pub fn walk(&self, path: &Path, f: &mut dyn FnMut(&FileEntry) -> Result<()>) -> Result<()> {
        let entry = self.stat(path)?;
        self.walk_entry(&entry, f)
    }

    fn walk_entry(&self, entry: &FileEntry, f: &mut dyn FnMut(&FileEntry) -> Result<()>) -> Result<()> {
        f(entry)?;
        if entry.kind == FileKind::Dir {
            for child in self.backend.list(&entry.path).map_err(|e| self.error(&entry.path, e))? {
                self.walk_entry(&child, f)?;
            }
        }
        Ok(())
    }

    /// Copies `path` (a file, a link, or a folder with everything under it)
    /// into folder `to`, keeping modes, times and (as root) owners. `/`
    /// copies the file system's contents; anything else keeps its name.
    ///
    /// # Errors
    /// [`Error::Guest`] when a name would land outside `to`;
    /// [`Error::Io`] for the host's side, among them a file that is
    /// already there (nothing is overwritten); as [`GuestFs::stat`].
    pub fn extract(&self, path: &Path, to: &Path) -> Result<ExtractReport> {
        extract::extract(self, path, to)
    }
}
