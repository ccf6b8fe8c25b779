//! Files out of a point from Python: `Vault.mount` (a read-only FUSE tree),
//! `Vault.guest_disk` (a disk's volumes, then a volume's files), and
//! `Vault.find_files`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::to_py;
use crate::types::utc_datetime;

/// A vault mounted read-only (FUSE) as `VM/POINT/DISK.img`, made by
/// `Vault.mount`. Unmounted by `unmount()`, at the end of a `with` block,
/// or when garbage-collected.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct Mount {
    inner: Mutex<Option<backup_core::MountedVault>>,
    mountpoint: String,
}

impl Mount {
    pub(crate) fn new(mounted: backup_core::MountedVault) -> Self {
        Mount { mountpoint: mounted.mountpoint().display().to_string(), inner: Mutex::new(Some(mounted)) }
    }
}

#[pymethods]
impl Mount {
    /// Where it is mounted.
    #[getter]
    fn mountpoint(&self) -> &str {
        &self.mountpoint
    }

    /// Whether it is still mounted (False after `unmount()`, or once
    /// someone else unmounted it).
    #[getter]
    fn mounted(&self) -> bool {
        self.inner.lock().map(|g| g.as_ref().is_some_and(|m| m.is_mounted())).unwrap_or(false)
    }

    /// The reads that failed since the last call (damaged or unreachable
    /// data), each naming the disk and bytes; they failed with `EIO`.
    fn errors(&self) -> Vec<String> {
        self.inner.lock().map(|g| g.as_ref().map(|m| m.take_errors()).unwrap_or_default()).unwrap_or_default()
    }

    /// Unmounts it and releases the vault's lock; again is a no-op. Raises
    /// `VmBackupIOError` when a file in it is still open (it then goes when
    /// the object is garbage-collected).
    fn unmount(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.lock().map_err(|_| PyValueError::new_err("the mount failed earlier"))?.take();
        match taken {
            Some(m) => py.detach(|| m.unmount()).map_err(|e| to_py(py, e)),
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.unmount(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("Mount(mountpoint={:?}, mounted={})", self.mountpoint, self.mounted())
    }
}

/// A volume of a guest disk: a partition, an LVM logical volume, or the
/// whole disk.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct Volume {
    /// How paths name it: "p1", "vg/lv", or "disk".
    name: String,
    /// What it holds: "ext4", "xfs", "vfat", "LVM2_member", "swap",
    /// "unknown".
    #[pyo3(name = "type")]
    type_: String,
    /// "partition", "logicalvolume" or "disk".
    kind: String,
    /// Its size in bytes.
    size: u64,
    /// Its label (or GPT partition name), or None.
    label: Option<String>,
    /// Its file system's UUID, or None.
    uuid: Option<String>,
    /// Whether its files can be read (`GuestDisk.open_fs`).
    has_files: bool,
}

#[pymethods]
impl Volume {
    fn __repr__(&self) -> String {
        format!("Volume(name={:?}, type={:?}, size={}, label={:?})", self.name, self.type_, self.size, self.label)
    }
}

/// A file, folder or link in a guest's file system, as `lstat` sees it.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct FileEntry {
    /// Its absolute path in the guest ("/etc/fstab").
    path: String,
    /// "file", "dir", "symlink" or "other".
    kind: String,
    /// Its size in bytes.
    size: u64,
    /// Its permission bits, with set-uid, set-gid and sticky (0o7777).
    mode: u32,
    /// Its owner.
    uid: u32,
    /// Its group.
    gid: u32,
    /// Its modification time in nanoseconds since 1970 (UTC), exact.
    mtime_ns: i128,
    /// Where a link points, or None.
    target: Option<String>,
}

impl FileEntry {
    fn new(e: &backup_core::FileEntry) -> Self {
        FileEntry {
            path: e.path.to_string_lossy().to_string(),
            kind: format!("{:?}", e.kind).to_lowercase(),
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime_ns: e.mtime.as_nanosecond(),
            target: e.target.as_ref().map(|t| t.to_string_lossy().to_string()),
        }
    }
}

#[pymethods]
impl FileEntry {
    /// Its modification time, as a time-zone aware `datetime` in UTC
    /// (microseconds: `mtime_ns` is exact).
    #[getter]
    fn mtime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let ts = jiff::Timestamp::from_nanosecond(self.mtime_ns).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        utc_datetime(py, ts)
    }

    fn __repr__(&self) -> String {
        format!("FileEntry(path={:?}, kind={:?}, size={}, mode=0o{:o})", self.path, self.kind, self.size, self.mode)
    }
}

/// One disk of a point, its volumes found (partitions and LVM volumes are
/// read by vmbackup, never by the host's LVM). Made by `Vault.guest_disk`;
/// holds the vault's shared lock until closed.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct GuestDisk {
    inner: Mutex<Option<Arc<backup_core::GuestDisk>>>,
}

impl GuestDisk {
    pub(crate) fn new(disk: backup_core::GuestDisk) -> Self {
        GuestDisk { inner: Mutex::new(Some(Arc::new(disk))) }
    }

    fn get(&self) -> PyResult<Arc<backup_core::GuestDisk>> {
        self.inner
            .lock()
            .map_err(|_| PyValueError::new_err("the disk failed earlier"))?
            .clone()
            .ok_or_else(|| PyValueError::new_err("operation on a closed guest disk"))
    }
}

#[pymethods]
impl GuestDisk {
    /// The volumes: partitions in table order, each volume group's logical
    /// volumes after its PV; or the whole disk.
    #[getter]
    fn volumes(&self) -> PyResult<Vec<Volume>> {
        Ok(self
            .get()?
            .volumes()
            .iter()
            .map(|v| Volume {
                name: v.name.clone(),
                type_: v.fs.name().to_string(),
                kind: format!("{:?}", v.kind).to_lowercase(),
                size: v.size,
                label: v.label.clone(),
                uuid: v.uuid.clone(),
                has_files: v.fs.has_files(),
            })
            .collect())
    }

    /// "gpt", "mbr", or None for a disk without a partition table.
    #[getter]
    fn table(&self) -> PyResult<Option<&'static str>> {
        Ok(self.get()?.table().map(|t| match t {
            backup_core::TableKind::Gpt => "gpt",
            backup_core::TableKind::Mbr => "mbr",
        }))
    }

    /// Opens the file system of volume `volume` ("p1", "vg/lv", "disk"),
    /// read-only. FAT needs no privileges; ext4 and XFS are mounted by the
    /// kernel (read-only, journal not replayed) and need root.
    fn open_fs(&self, py: Python<'_>, volume: &str) -> PyResult<GuestFs> {
        let disk = self.get()?;
        // Not detached: a guest file system is not Send (FAT's reader).
        let fs = disk.open_fs(volume).map_err(|e| to_py(py, e))?;
        Ok(GuestFs { inner: Mutex::new(Some(fs)) })
    }

    /// Releases the disk and its hold on the vault (file systems opened
    /// from it stay usable until closed).
    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.take();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

/// A guest file system opened read-only (`GuestDisk.open_fs`). Paths are
/// absolute guest paths; links are followed inside the guest only. Close
/// it (or use `with`) to unmount what was mounted for it.
#[pyclass(module = "vmbackup", unsendable)]
pub(crate) struct GuestFs {
    inner: Mutex<Option<backup_core::GuestFs>>,
}

impl GuestFs {
    fn with<T>(&self, py: Python<'_>, f: impl FnOnce(&backup_core::GuestFs) -> backup_core::Result<T>) -> PyResult<T> {
        let g = self.inner.lock().map_err(|_| PyValueError::new_err("the file system failed earlier"))?;
        let fs = g.as_ref().ok_or_else(|| PyValueError::new_err("operation on a closed guest file system"))?;
        f(fs).map_err(|e| to_py(py, e))
    }
}

#[pymethods]
impl GuestFs {
    /// Where it is: volume, type, disk, point and VM.
    #[getter]
    fn place(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |fs| Ok(fs.place().to_string()))
    }

    /// The entry at `path`, not following a link at its end. Raises
    /// `NotFoundError` when there is none.
    fn stat(&self, py: Python<'_>, path: &str) -> PyResult<FileEntry> {
        self.with(py, |fs| fs.stat(Path::new(path)).map(|e| FileEntry::new(&e)))
    }

    /// The entries of folder `path` sorted by name (or the entry of `path`
    /// alone when it is not a folder).
    fn list(&self, py: Python<'_>, path: &str) -> PyResult<Vec<FileEntry>> {
        self.with(py, |fs| fs.list(Path::new(path)).map(|l| l.iter().map(FileEntry::new).collect()))
    }

    /// `path` and everything under it, parents first, never following a
    /// link.
    #[pyo3(signature = (path = "/"))]
    fn walk(&self, py: Python<'_>, path: &str) -> PyResult<Vec<FileEntry>> {
        self.with(py, |fs| {
            let mut all = Vec::new();
            fs.walk(Path::new(path), &mut |e| {
                all.push(FileEntry::new(e));
                Ok(())
            })?;
            Ok(all)
        })
    }

    /// The whole content of file `path`.
    fn read<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with(py, |fs| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut fs.open(Path::new(path))?, &mut data).map_err(|e| {
                backup_core::Error::Guest { place: fs.place().to_string(), why: format!("{path}: {e}") }
            })?;
            Ok(data)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Copies `path` (a file, a link, or a folder and all under it; "/" the
    /// whole file system) into folder `to`, keeping modes, times and (as
    /// root) owners. Nothing is overwritten and no name lands outside
    /// `to`. Returns counts: files, dirs, links, skipped, bytes.
    fn extract(
        &self,
        py: Python<'_>,
        path: &str,
        to: std::path::PathBuf,
    ) -> PyResult<std::collections::BTreeMap<&'static str, u64>> {
        let r = self.with(py, |fs| fs.extract(Path::new(path), &to))?;
        Ok([("files", r.files), ("dirs", r.dirs), ("links", r.links), ("skipped", r.skipped), ("bytes", r.bytes)]
            .into_iter()
            .collect())
    }

    /// Unmounts what was mounted for it; later calls raise `ValueError`.
    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.take();
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

/// A file `Vault.find_files` found, and where.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct FoundFile {
    /// The point's id.
    point: String,
    /// The disk.
    disk: String,
    /// The volume ("p1", "vg/lv", "disk").
    volume: String,
    /// The file.
    entry: Py<FileEntry>,
}

#[pymethods]
impl FoundFile {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "FoundFile(point={:?}, disk={:?}, volume={:?}, path={:?})",
            self.point,
            self.disk,
            self.volume,
            self.entry.borrow(py).path
        )
    }
}

/// Every match of `pattern` in every point of `vm`, oldest first.
pub(crate) fn find(
    py: Python<'_>,
    vault: Arc<backup_core::Vault>,
    vm: &str,
    pattern: &str,
) -> PyResult<Vec<FoundFile>> {
    let found = py.detach(|| backup_core::find_files(&vault, vm, pattern)).map_err(|e| to_py(py, e))?;
    found
        .iter()
        .map(|f| {
            Ok(FoundFile {
                point: f.point.clone(),
                disk: f.disk.clone(),
                volume: f.volume.clone(),
                entry: Py::new(py, FileEntry::new(&f.entry))?,
            })
        })
        .collect()
}
