//! A read-only FUSE file system over a vault: `vm/point/disk.img`.
//!
//! Nothing is restored: each read of a disk image is served from the
//! vault, local or remote, through a [`DiskReader`] (one per open file), so
//! every block is checked against its id as it is read. A damaged range
//! fails that read with `EIO` and is recorded, never returned as data.
//! The mount holds the vault's shared lock, so prune and gc cannot remove
//! what it shows, and the kernel is told the file system is read-only.
//!
//! The tree is made when the vault is mounted: points made later do not
//! appear until it is mounted again. The same file system also serves the
//! guest-file reader (`guest`), which mounts one volume (a partition or a
//! logical volume, pieced together from ranges of a disk) privately so that
//! the kernel can loop-mount it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

use crate::disk_reader::DiskReader;
use crate::error::{Error, Result};
use crate::vault::{LockMode, PointManifest, Vault, VaultLock};

/// How long the kernel may cache names and attributes: the tree never
/// changes while mounted.
const TTL: Duration = Duration::from_secs(3600);

/// Which points a mount shows.
#[derive(Debug, Clone, Default)]
pub struct MountSelection {
    /// Only this VM (all VMs when None).
    pub vm: Option<String>,
    /// Only this point of it: an id, a unique prefix, or `latest` (all
    /// points when None). Needs `vm`.
    pub point: Option<String>,
}

/// A byte range of a disk: part of a file in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where it starts on the disk, in bytes.
    pub offset: u64,
    /// How long it is, in bytes.
    pub length: u64,
}

/// A file of the tree: ranges of one disk of one point, end to end.
#[derive(Debug, Clone)]
pub(crate) struct VolumeFile {
    pub(crate) point: Arc<PointManifest>,
    pub(crate) disk: String,
    pub(crate) extents: Vec<Extent>,
}

impl VolumeFile {
    fn size(&self) -> u64 {
        self.extents.iter().map(|e| e.length).sum()
    }
}

enum Node {
    Dir { children: Vec<(String, u64)> },
    File(VolumeFile),
}

struct Entry {
    parent: u64,
    node: Node,
    time: SystemTime,
}

/// An open file: its inode and its reader.
type OpenFile = (u64, DiskReader<Arc<Vault>>);

/// The file system the kernel talks to.
struct VaultFs {
    vault: Arc<Vault>,
    /// Index = inode - 1; inode 1 is the root.
    nodes: Vec<Entry>,
    /// Open files: handle -> (inode, its reader).
    open: Mutex<HashMap<u64, OpenFile>>,
    next_handle: AtomicU64,
    errors: Arc<Mutex<Vec<String>>>,
    uid: u32,
    gid: u32,
}

impl VaultFs {
    fn new(vault: Arc<Vault>, errors: Arc<Mutex<Vec<String>>>) -> Self {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        VaultFs {
            vault,
            nodes: vec![Entry { parent: 1, node: Node::Dir { children: Vec::new() }, time: SystemTime::now() }],
            open: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            errors,
            uid,
            gid,
        }
    }

    /// Adds `name` under folder `parent` (an inode); returns its inode.
    fn add(&mut self, parent: u64, name: String, node: Node, time: SystemTime) -> u64 {
        let ino = self.nodes.len() as u64 + 1;
        self.nodes.push(Entry { parent, node, time });
        if let Some(Entry { node: Node::Dir { children }, .. }) = self.nodes.get_mut(parent as usize - 1) {
            children.push((name, ino));
        }
        ino
    }

    fn entry(&self, ino: INodeNo) -> Option<&Entry> {
        (ino.0 as usize).checked_sub(1).and_then(|i| self.nodes.get(i))
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let e = self.entry(INodeNo(ino))?;
        let (kind, perm, size, nlink) = match &e.node {
            Node::Dir { children } => (FileType::Directory, 0o555, 0, 2 + children.len() as u32),
            Node::File(f) => (FileType::RegularFile, 0o444, f.size(), 1),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: e.time,
            mtime: e.time,
            ctime: e.time,
            crtime: e.time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        })
    }

    fn record(&self, message: String) {
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(message);
        }
    }

    /// Reads `size` bytes of file `ino` at `offset` through its reader.
    fn read_file(&self, ino: u64, reader: &mut DiskReader<Arc<Vault>>, offset: u64, size: u32) -> Result<Vec<u8>> {
        let Some(Entry { node: Node::File(file), .. }) = self.entry(INodeNo(ino)) else {
            return Err(Error::NotFound { what: format!("inode {ino}") });
        };
        let end = offset.saturating_add(u64::from(size)).min(file.size());
        let mut out = vec![0u8; end.saturating_sub(offset) as usize];
        read_extents(reader, &file.extents, offset, &mut out)?;
        Ok(out)
    }
}

/// Reads `buf.len()` bytes at `offset` of the file made of `extents` (ranges
/// of the disk `reader` reads, end to end), cut at the file's end; returns
/// how many bytes that is.
pub(crate) fn read_extents<V: std::ops::Deref<Target = Vault>>(
    reader: &mut DiskReader<V>,
    extents: &[Extent],
    offset: u64,
    buf: &mut [u8],
) -> Result<usize> {
    let size: u64 = extents.iter().map(|e| e.length).sum();
    let end = offset.saturating_add(buf.len() as u64).min(size);
    let mut start = 0u64; // where the current extent starts in the file
    for e in extents {
        let (lo, hi) = (offset.max(start), end.min(start + e.length));
        if lo < hi {
            let at = (lo - offset) as usize;
            reader.read_exact_at(e.offset + (lo - start), &mut buf[at..at + (hi - lo) as usize])?;
        }
        start += e.length;
    }
    Ok(end.saturating_sub(offset) as usize)
}

impl Filesystem for VaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = match self.entry(parent) {
            Some(Entry { node: Node::Dir { children }, .. }) => {
                children.iter().find(|(n, _)| OsStr::new(n) == name).map(|&(_, ino)| ino)
            }
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => None,
        };
        match found.and_then(|ino| self.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let Some(Entry { node: Node::File(file), .. }) = self.entry(ino) else {
            return reply.error(Errno::EISDIR);
        };
        match DiskReader::unlocked(self.vault.clone(), &file.point, &file.disk) {
            Ok(reader) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                match self.open.lock() {
                    Ok(mut open) => {
                        open.insert(fh, (ino.0, reader));
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                    Err(_) => reply.error(Errno::EIO),
                }
            }
            Err(e) => {
                self.record(format!(
                    "cannot open disk {} of point {} of vm {}: {e}",
                    file.disk, file.point.id, file.point.vm
                ));
                reply.error(Errno::EIO);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Take the reader out while reading, so that other files' reads
        // (with more than one FUSE thread) do not wait on this one.
        let taken = self.open.lock().ok().and_then(|mut open| open.remove(&fh.0));
        let Some((file_ino, mut reader)) = taken else {
            return reply.error(Errno::EBADF);
        };
        let result = if file_ino == ino.0 { self.read_file(ino.0, &mut reader, offset, size) } else { Ok(Vec::new()) };
        if let Ok(mut open) = self.open.lock() {
            open.insert(fh.0, (file_ino, reader));
        }
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => {
                self.record(e.to_string());
                reply.error(Errno::EIO);
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&fh.0);
        }
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(Entry { node: Node::Dir { children }, parent, .. }) = self.entry(ino) else {
            return reply.error(Errno::ENOTDIR);
        };
        let dots = [(".".to_string(), ino.0), ("..".to_string(), *parent)];
        for (i, (name, child)) in dots.iter().chain(children.iter()).enumerate().skip(offset as usize) {
            let kind = match self.entry(INodeNo(*child)).map(|e| &e.node) {
                Some(Node::File(_)) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(*child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.entry(ino).is_none() {
            reply.error(Errno::ENOENT);
        } else if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}

/// The name of a disk's image file in the tree: the disk's name, with
/// `.img` added unless it already ends so, and `/` replaced.
pub fn image_file_name(disk: &str) -> String {
    let name = disk.replace('/', "_");
    if name.ends_with(".img") { name } else { format!("{name}.img") }
}

fn point_time(point: &PointManifest) -> SystemTime {
    let t = point.time;
    let secs = t.as_second();
    if secs >= 0 { UNIX_EPOCH + Duration::new(secs as u64, t.subsec_nanosecond().max(0) as u32) } else { UNIX_EPOCH }
}

/// A vault mounted read-only; unmounted when dropped or by
/// [`MountedVault::unmount`].
///
/// ```no_run
/// use backup_core::*;
/// use std::sync::Arc;
/// let vault = Arc::new(Vault::open("/srv/vault")?);
/// let mounted = MountedVault::mount(vault, "/mnt/points".as_ref(), &MountSelection::default())?;
/// // /mnt/points/web/<point>/root.img is the disk, read-only.
/// mounted.unmount()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MountedVault {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    errors: Arc<Mutex<Vec<String>>>,
    _lock: VaultLock,
}

impl std::fmt::Debug for MountedVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountedVault").field("mountpoint", &self.mountpoint).finish_non_exhaustive()
    }
}

impl MountedVault {
    /// Takes the vault's shared lock and mounts the points `selection`
    /// names at `mountpoint` (an empty folder), as `vm/point/disk.img`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown VM or point; [`Error::Locked`];
    /// [`Error::InvalidArgument`] for a point without a VM;
    /// [`Error::Io`] when the kernel refuses the mount (no `/dev/fuse`, no
    /// `fusermount3` for a user who is not root).
    pub fn mount(vault: Arc<Vault>, mountpoint: &Path, selection: &MountSelection) -> Result<MountedVault> {
        let lock = vault.lock(LockMode::Shared)?;
        let points = match (&selection.vm, &selection.point) {
            (Some(vm), Some(p)) => vec![vault.find_point(vm, p)?],
            (Some(vm), None) => {
                let points = vault.points(Some(vm))?;
                if points.is_empty() {
                    return Err(Error::NotFound { what: format!("points of vm {vm}") });
                }
                points
            }
            (None, Some(_)) => return Err(Error::invalid("point", "a point is chosen within a VM: name the VM too")),
            (None, None) => vault.points(None)?,
        };
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut fs = VaultFs::new(vault.clone(), errors.clone());
        let mut vms: HashMap<String, u64> = HashMap::new();
        for point in points {
            let time = point_time(&point);
            let vm_dir = match vms.get(&point.vm) {
                Some(&ino) => ino,
                None => {
                    let ino = fs.add(1, point.vm.clone(), Node::Dir { children: Vec::new() }, time);
                    vms.insert(point.vm.clone(), ino);
                    ino
                }
            };
            let point_dir = fs.add(vm_dir, point.id.clone(), Node::Dir { children: Vec::new() }, time);
            let point = Arc::new(point);
            for disk in &point.disks {
                let file = VolumeFile {
                    point: point.clone(),
                    disk: disk.name.clone(),
                    extents: vec![Extent { offset: 0, length: disk.size }],
                };
                fs.add(point_dir, image_file_name(&disk.name), Node::File(file), time);
            }
        }
        let session = spawn(fs, mountpoint, "vmbackup")?;
        Ok(MountedVault { session: Some(session), mountpoint: mountpoint.to_path_buf(), errors, _lock: lock })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether it is still mounted: false once someone else unmounted it
    /// (`fusermount3 -u`, `umount`).
    pub fn is_mounted(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.guard.is_finished())
    }

    /// The reads that failed since the last call (damaged or unreachable
    /// data), each naming the disk and byte range; they failed with `EIO`.
    pub fn take_errors(&self) -> Vec<String> {
        self.errors.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }

    /// Unmounts it and releases the vault's lock.
    ///
    /// # Errors
    /// [`Error::Io`] when the kernel refuses (a file in it is open:
    /// `EBUSY`); it is then still mounted until dropped.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> Result<()> {
        if let Some(session) = self.session.take() {
            session.umount_and_join().map_err(|e| Error::io("unmount", &self.mountpoint, e))?;
        }
        Ok(())
    }
}

impl Drop for MountedVault {
    fn drop(&mut self) {
        let _ = self.unmount_now();
    }
}

/// Mounts `fs` read-only at `mountpoint` with a thread serving it.
fn spawn(fs: VaultFs, mountpoint: &Path, name: &str) -> Result<fuser::BackgroundSession> {
    let mut config = Config::default();
    config.mount_options =
        vec![MountOption::RO, MountOption::FSName(name.to_string()), MountOption::Subtype("vmbackup".into())];
    fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| Error::io("mount a FUSE file system at", mountpoint, e))
}
/// One file, `volume`, in a private read-only mount: what the guest-file
/// reader hands to the kernel's loop device.
pub(crate) struct MountedVolume {
    session: Option<fuser::BackgroundSession>,
    file: PathBuf,
    errors: Arc<Mutex<Vec<String>>>,
}

impl MountedVolume {
    /// Mounts `volume` as `mountpoint/volume`; the caller holds the lock.
    pub(crate) fn mount(vault: Arc<Vault>, volume: VolumeFile, mountpoint: &Path) -> Result<MountedVolume> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut fs = VaultFs::new(vault, errors.clone());
        let time = point_time(&volume.point);
        fs.add(1, "volume".into(), Node::File(volume), time);
        let session = spawn(fs, mountpoint, "vmbackup-volume")?;
        Ok(MountedVolume { session: Some(session), file: mountpoint.join("volume"), errors })
    }

    /// The file that holds the volume.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The first read that failed, if any.
    pub(crate) fn first_error(&self) -> Option<String> {
        self.errors.lock().ok().and_then(|e| e.first().cloned())
    }
}

impl Drop for MountedVolume {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
