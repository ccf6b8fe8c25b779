//! `vmbackup.Vault`: a vault opened from Python, and the operations on it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backup_core::{
    BackupOptions, Consistency, ConsistentProvider, GcOptions, MixedProvider, OsType, Policy, PruneOptions,
    VaultOptions, VerifyOptions, Vm, VmDisk, validate_name,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMapping, PyString};

use crate::errors::{callable_arg, int_arg, new_error, to_py, type_name};
use crate::job;
use crate::maintenance::{GcReport, PruneReport};
use crate::protection::{CopyReport, DeletedPoint, Deletion, VaultSettings};
use crate::provider::PyDevice;
use crate::tiers::{KeptSnapshot, ReleaseReport};
use crate::types::{KeySlot, RecoveryPoint, RestoreStats, VerifyReport};

/// A vault of recovery points, in a local folder or on object storage.
///
/// Open one with `Vault.init(path)` (a new vault) or `Vault.open(path)`.
/// A vault is a context manager: leaving the `with` block closes it. It may
/// be shared by several Python threads, and several backups may run into it
/// at once (from threads or processes). Every operation releases the GIL
/// while the engine works.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct Vault {
    inner: RwLock<Option<Arc<backup_core::Vault>>>,
    path: PathBuf,
}

/// How a vault uses the page cache: the `buffered_io` and `direct_io`
/// arguments.
struct PageCache {
    buffered_io: bool,
    direct_io: bool,
}

/// Vault options from the Python arguments.
fn vault_options(
    lock_timeout: f64,
    passphrase: Option<String>,
    key_file: Option<PathBuf>,
    io: PageCache,
) -> PyResult<VaultOptions> {
    if !(0.0..=1e9).contains(&lock_timeout) {
        return Err(PyValueError::new_err(format!(
            "lock_timeout must be a number of seconds from 0 to 1e9, not {lock_timeout}"
        )));
    }
    let mut o = VaultOptions::default();
    o.lock_timeout = Duration::from_secs_f64(lock_timeout);
    o.buffered_io = io.buffered_io;
    o.direct_io = io.direct_io;
    o.key = key_source(passphrase, key_file)?;
    Ok(o)
}

/// The key a `passphrase=` or `key_file=` argument gives, if any;
/// `ValueError` for both.
fn key_source(passphrase: Option<String>, key_file: Option<PathBuf>) -> PyResult<Option<backup_core::KeySource>> {
    match (passphrase, key_file) {
        (Some(p), None) => Ok(Some(backup_core::KeySource::passphrase(p))),
        (None, Some(f)) => Ok(Some(backup_core::KeySource::key_file(f))),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(PyValueError::new_err("give passphrase or key_file, not both")),
    }
}

/// A vault from one of `backup_core::Vault`'s constructors, made with the
/// GIL released: the body of `Vault.init` and `Vault.open`.
fn make_vault(
    py: Python<'_>,
    path: &std::path::Path,
    options: VaultOptions,
    remote: &backup_core::RemoteOptions,
    make: fn(&std::path::Path, VaultOptions, &backup_core::RemoteOptions) -> backup_core::Result<backup_core::Vault>,
) -> PyResult<Vault> {
    py.detach(|| make(path, options, remote)).map(Vault::new).map_err(|e| to_py(py, e))
}

impl Vault {
    fn new(vault: backup_core::Vault) -> Self {
        Vault { path: vault.path().to_path_buf(), inner: RwLock::new(Some(Arc::new(vault))) }
    }

    /// The open vault, or `ValueError` after `close()`.
    fn get(&self) -> PyResult<Arc<backup_core::Vault>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PyValueError::new_err("operation on a closed vault"))
    }
}

/// The disks of a backup: the core's VM and the Python devices by name.
fn resolve_disks(py: Python<'_>, vm: &str, disks: &Bound<'_, PyAny>) -> PyResult<(Vm, MixedProvider)> {
    let device_class = py.import("vmbackup._device")?.getattr("BlockDevice")?;
    let os_pathlike = py.import("os")?.getattr("PathLike")?;
    if disks.is_instance_of::<PyString>()
        || disks.is_instance_of::<PyBytes>()
        || disks.is_instance(&os_pathlike)?
        || disks.is_instance(&device_class)?
    {
        return Err(PyTypeError::new_err(
            "disks must be a list of disks (paths or BlockDevice objects), not a single disk",
        ));
    }
    let items: Vec<(Option<String>, Bound<'_, PyAny>)> = if let Ok(map) = disks.cast::<PyMapping>() {
        let mut items = Vec::new();
        for pair in map.items()?.iter() {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract()?;
            let name = k
                .extract::<String>()
                .map_err(|_| PyTypeError::new_err(format!("disk names must be str, not {}", type_name(&k))))?;
            items.push((Some(name), v));
        }
        items
    } else {
        let iter = disks.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "disks must be a list of paths and BlockDevice objects, or a dict of them by name, not {}",
                type_name(disks)
            ))
        })?;
        iter.map(|i| i.map(|v| (None, v))).collect::<PyResult<Vec<_>>>()?
    };
    let mut vm_disks = Vec::with_capacity(items.len());
    let mut provider = MixedProvider::new();
    for (i, (name, item)) in items.into_iter().enumerate() {
        if item.is_instance(&device_class)? {
            let name = match name {
                Some(n) => n,
                None => {
                    let n = item.getattr("name")?;
                    if n.is_none() {
                        format!("disk{i}")
                    } else {
                        n.extract::<String>().map_err(|_| {
                            PyTypeError::new_err(format!(
                                "disk {i}: BlockDevice.name must be a str or None, not {}",
                                type_name(&n)
                            ))
                        })?
                    }
                }
            };
            let size = int_arg(&item.call_method0("size")?, "BlockDevice.size()")?;
            let size = u64::try_from(size)
                .map_err(|_| PyValueError::new_err(format!("disk {name}: size() returned {size} < 0")))?;
            let has_allocated = !item.get_type().getattr("allocated")?.is(&device_class.getattr("allocated")?);
            let device = Arc::new(PyDevice::new(item.clone().unbind(), size, has_allocated));
            provider.add_device(&name, device, None, "python");
            vm_disks.extend(provider.disk(&name));
        } else {
            let path: PathBuf = item.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "disk {i} must be a path (str or os.PathLike) or a vmbackup.BlockDevice, not {}",
                    type_name(&item)
                ))
            })?;
            let location = path.to_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                PyValueError::new_err(format!("disk {i}: path {} is empty or not UTF-8", path.display()))
            })?;
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "disk {i}: path {} has no UTF-8 file name to name the disk by",
                            path.display()
                        ))
                    })?
                    .to_string(),
            };
            vm_disks.push(VmDisk { name, location: location.to_string() });
        }
    }
    let vm = Vm { name: vm.to_string(), os: OsType::Other, disks: vm_disks };
    vm.validate().map_err(|e| to_py(py, e))?;
    Ok((vm, provider))
}

/// The index of a disk given by position (an int, negative from the end)
/// or by name (a str).
fn disk_name(point: &RecoveryPoint, disk: &Bound<'_, PyAny>) -> PyResult<String> {
    let m = &point.manifest;
    let not_found = |what: String| {
        new_error(
            disk.py(),
            "NotFoundError",
            (format!(
                "disk {what} not found in point {} of vm {} (it has: {})",
                m.id,
                m.vm,
                m.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ),),
            &[],
        )
    };
    if let Ok(name) = disk.cast::<PyString>() {
        let name = name.to_cow()?;
        return m
            .disks
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.name.clone())
            .ok_or_else(|| not_found(format!("{name:?}")));
    }
    let i = int_arg(disk, "disk (an index or a name)")?;
    let n = m.disks.len() as i64;
    let index = if i < 0 { i + n } else { i };
    usize::try_from(index)
        .ok()
        .and_then(|i| m.disks.get(i))
        .map(|d| d.name.clone())
        .ok_or_else(|| not_found(format!("index {i}")))
}

fn remote_options(cache: Option<PathBuf>, endpoint: Option<String>) -> backup_core::RemoteOptions {
    let mut o = backup_core::RemoteOptions::default();
    o.cache = cache;
    o.endpoint = endpoint;
    o
}

#[pymethods]
impl Vault {
    /// Creates a new vault in a folder that does not exist or is empty, or
    /// on object storage at a URL (`az://CONTAINER/PREFIX`,
    /// `s3://BUCKET/PREFIX`; `cache` is then the local cache folder,
    /// `endpoint` the store's endpoint, e.g. an emulator's).
    ///
    /// `lock_timeout` is how many seconds an operation waits for a lock
    /// held by another process before it raises `VaultLockedError`. With
    /// `passphrase` or `key_file` the vault is encrypted: every chunk,
    /// index segment and manifest is sealed before it is written.
    /// Packs are written around the page cache (`O_DIRECT`) unless
    /// `buffered_io`; restores read them through it unless `direct_io`.
    #[staticmethod]
    #[pyo3(signature = (path, *, lock_timeout = 60.0, passphrase = None, key_file = None, cache = None, endpoint = None, buffered_io = false, direct_io = false))]
    // Each argument is one of Python's keyword arguments.
    #[allow(clippy::too_many_arguments)]
    fn init(
        py: Python<'_>,
        path: PathBuf,
        lock_timeout: f64,
        passphrase: Option<String>,
        key_file: Option<PathBuf>,
        cache: Option<PathBuf>,
        endpoint: Option<String>,
        buffered_io: bool,
        direct_io: bool,
    ) -> PyResult<Vault> {
        let options = vault_options(lock_timeout, passphrase, key_file, PageCache { buffered_io, direct_io })?;
        make_vault(py, &path, options, &remote_options(cache, endpoint), |p, o, r| {
            backup_core::Vault::init_location(p, o, r)
        })
    }

    /// Opens an existing vault (a folder or a URL, as `init` takes);
    /// `NotFoundError` when `path` holds none. An encrypted vault needs its
    /// `passphrase` or `key_file` (`KeyRequiredError` without,
    /// `WrongKeyError` with a wrong one). `buffered_io` and `direct_io` as
    /// `init` takes them.
    #[staticmethod]
    #[pyo3(signature = (path, *, lock_timeout = 60.0, passphrase = None, key_file = None, cache = None, endpoint = None, buffered_io = false, direct_io = false))]
    // Each argument is one of Python's keyword arguments.
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        lock_timeout: f64,
        passphrase: Option<String>,
        key_file: Option<PathBuf>,
        cache: Option<PathBuf>,
        endpoint: Option<String>,
        buffered_io: bool,
        direct_io: bool,
    ) -> PyResult<Vault> {
        let options = vault_options(lock_timeout, passphrase, key_file, PageCache { buffered_io, direct_io })?;
        make_vault(py, &path, options, &remote_options(cache, endpoint), |p, o, r| {
            backup_core::Vault::open_location(p, o, r)
        })
    }

    /// Where the vault is: its URL, or its folder, as a string.
    #[getter]
    fn location(&self) -> PyResult<String> {
        Ok(self.get()?.location())
    }

    /// The vault's folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The vault's random id, made at init.
    #[getter]
    fn id(&self) -> PyResult<String> {
        Ok(self.get()?.id().to_string())
    }

    /// Whether the vault is encrypted.
    #[getter]
    fn encrypted(&self) -> PyResult<bool> {
        Ok(self.get()?.is_encrypted())
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// Closes the vault: later calls raise `ValueError`. Operations still
    /// running in other threads finish first. Closing twice is allowed.
    fn close(&self) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().get()?;
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!("Vault({:?}{})", self.path.display().to_string(), if self.closed() { ", closed" } else { "" })
    }

    /// Backs up a VM and returns its new recovery point.
    ///
    /// `disks` is a list whose items are paths of raw image files (`str` or
    /// `os.PathLike`, named after their file names) or `vmbackup.BlockDevice`
    /// objects; or a dict of them by disk name; or a
    /// `vmbackup.LibvirtProvider`, whose domain's disks are backed up. Only
    /// blocks that changed since the VM's previous point are stored.
    ///
    /// `consistency` is the level asked for ("crash", "filesystem" or
    /// "application"); image files and Python disks give "crash", and the
    /// point records what was achieved, with a warning (`point.warnings`)
    /// when it is less than was asked for. `min_consistency` is the weakest
    /// level accepted: a backup that would fall below it fails with
    /// `VmBackupError` and commits nothing. `block_size` is a power of two from
    /// 16384 to 4194304, used for a disk's first point (a disk keeps its
    /// chain's block size).
    ///
    /// `instant_restore_days` (0 to 30) keeps the snapshot after the job
    /// for that many days, where it outlives the job (reflink clones of
    /// image files): the point can then be restored from it
    /// (`restore_from_snapshot`) until `release_expired` releases it.
    ///
    /// `progress(done_bytes, total_bytes)` is called from the calling
    /// thread, at most ten times a second and once with `done == total`
    /// before the point is committed. An exception it raises cancels the
    /// backup, which commits nothing, and is re-raised as it is; so is
    /// `KeyboardInterrupt` (Ctrl-C) while a backup runs.
    #[pyo3(
        signature = (vm, disks, *, consistency = None, min_consistency = None, block_size = None, instant_restore_days = 0, progress = None),
        text_signature = "(self, vm, disks, *, consistency='crash', min_consistency='crash', block_size=65536, instant_restore_days=0, progress=None)"
    )]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn backup(
        &self,
        py: Python<'_>,
        vm: &Bound<'_, PyAny>,
        disks: &Bound<'_, PyAny>,
        consistency: Option<&Bound<'_, PyAny>>,
        min_consistency: Option<&Bound<'_, PyAny>>,
        block_size: Option<&Bound<'_, PyAny>>,
        instant_restore_days: u32,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<RecoveryPoint> {
        let vault = self.get()?;
        let vm = str_arg(vm, "vm")?;
        validate_name("vm name", &vm).map_err(|e| to_py(py, e))?;
        let consistency: Consistency = match consistency {
            None => Consistency::Crash,
            Some(c) => str_arg(c, "consistency")?.parse().map_err(|e| to_py(py, e))?,
        };
        let min_consistency: Consistency = match min_consistency {
            None => Consistency::Crash,
            Some(c) => str_arg(c, "min_consistency")?.parse().map_err(|e| to_py(py, e))?,
        };
        let block_size = match block_size {
            None => backup_core::DEFAULT_BLOCK_SIZE,
            Some(b) => {
                let b = int_arg(b, "block_size")?;
                let b = u32::try_from(b).map_err(|_| {
                    PyValueError::new_err(format!(
                        "block_size {b} is not a power of two from {} to {}",
                        backup_core::MIN_BLOCK_SIZE,
                        backup_core::MAX_BLOCK_SIZE
                    ))
                })?;
                backup_core::check_block_size(b).map_err(|e| to_py(py, e))?;
                b
            }
        };
        backup_core::check_instant_restore_days(instant_restore_days).map_err(|e| to_py(py, e))?;
        let settings = Settings { consistency, block_size, instant_restore_days };
        let progress = callable_arg(progress, "progress")?;
        #[cfg(feature = "libvirt")]
        if let Ok(lp) = disks.cast::<crate::libvirt::LibvirtProvider>() {
            let mut provider = lp.get().inner.clone();
            // The stricter of the provider's minimum and this call's.
            provider.min_consistency = provider.min_consistency.max(min_consistency);
            let report = job::run(py, progress, move |p, cancel| {
                provider.cancel = cancel.clone();
                let o = options(settings, p, cancel);
                let (vm, _skipped) = provider.vm(&vm)?;
                backup_core::backup(&vault, &provider, &vm, &o)
            })?;
            return Ok(RecoveryPoint::new(report.point));
        }
        let (vm, provider) = resolve_disks(py, &vm, disks)?;
        // Borrowed by the job, so that the Python devices are dropped here,
        // with the GIL held.
        let provider = &provider;
        let report = job::run(py, progress, move |p, cancel| {
            // No scripts and no freeze: it settles what was achieved
            // against what was asked for, warns or fails below the minimum.
            let provider =
                ConsistentProvider::new(provider).with_min_consistency(min_consistency).with_cancel(cancel.clone());
            backup_core::backup(&vault, &provider, &vm, &options(settings, p, cancel))
        })?;
        Ok(RecoveryPoint::new(report.point))
    }

    /// The recovery points of one VM (or of all VMs), oldest first.
    ///
    /// Raises `NotFoundError` when `vm` names a VM the vault holds no point
    /// of (see `vms()`).
    #[pyo3(signature = (vm = None))]
    fn points(&self, py: Python<'_>, vm: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<RecoveryPoint>> {
        let vault = self.get()?;
        let vm = match vm {
            Some(v) if !v.is_none() => Some(str_arg(v, "vm")?),
            _ => None,
        };
        if let Some(v) = &vm {
            validate_name("vm name", v).map_err(|e| to_py(py, e))?;
        }
        let points = job::run(py, None, |_, _| match &vm {
            // A VM the vault holds nothing of is a NotFoundError (a typo).
            Some(v) => vault.vm_points(v),
            None => vault.points(None),
        })?;
        Ok(points.into_iter().map(RecoveryPoint::new).collect())
    }

    /// A point of a VM by id, by a unique prefix of its id, or "latest".
    /// `NotFoundError` when none (or several) match.
    #[pyo3(signature = (vm, id = None), text_signature = "(self, vm, id='latest')")]
    fn point(&self, py: Python<'_>, vm: &Bound<'_, PyAny>, id: Option<&Bound<'_, PyAny>>) -> PyResult<RecoveryPoint> {
        let vault = self.get()?;
        let vm = str_arg(vm, "vm")?;
        let id = match id {
            None => "latest".to_string(),
            Some(i) => str_arg(i, "id")?,
        };
        job::run(py, None, |_, _| vault.find_point(&vm, &id)).map(RecoveryPoint::new)
    }

    /// The names of the VMs that have points, sorted.
    fn vms(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let vault = self.get()?;
        let mut vms = job::run(py, None, |_, _| vault.vms())?;
        vms.sort();
        Ok(vms)
    }

    /// Restores one disk of a point to the file `to` (created sparse, or
    /// replaced; written under a temporary name and renamed when complete)
    /// or to a block device. `disk` is the disk's index in `point.disks`
    /// (negative from the end) or its name.
    ///
    /// `progress` works as for `backup()`; an exception it raises stops
    /// the restore and is re-raised. With `allow_damaged=True` a damaged
    /// or missing chunk does not stop the restore: its block is written as
    /// zeros and listed in the stats' `damaged`.
    #[pyo3(signature = (point, *, disk, to, allow_damaged = false, progress = None))]
    fn restore(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        disk: &Bound<'_, PyAny>,
        to: PathBuf,
        allow_damaged: bool,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<RestoreStats> {
        let vault = self.get()?;
        let name = disk_name(&point, disk)?;
        let progress = callable_arg(progress, "progress")?;
        let (vm, id) = (point.manifest.vm.clone(), point.manifest.id.clone());
        job::run(py, progress, move |p, cancel| {
            // Read the point again: it must be this vault's.
            let m = vault.read_point(&vm, &id)?;
            let mut o = job::restore_options(p, cancel);
            o.allow_damaged = allow_damaged;
            backup_core::restore_disk_to_path(&vault, &m, &name, &to, &o)
        })
        .map(RestoreStats::from)
    }

    /// One disk of a point as a read-only binary file object
    /// (`io.RawIOBase`: `read`, `readinto`, `seek`, `tell`), read from the
    /// vault on demand without restoring the disk, so that any library
    /// that reads disk images reads the point. `disk` is an index in
    /// `point.disks` (negative from the end) or a name. The vault's shared
    /// lock is held until the file is closed; use it in a `with` block.
    fn open_disk<'py>(
        &self,
        py: Python<'py>,
        point: PyRef<'_, RecoveryPoint>,
        disk: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let vault = self.get()?;
        let name = disk_name(&point, disk)?;
        let (vm, id) = (point.manifest.vm.clone(), point.manifest.id.clone());
        let reader = py
            .detach(move || {
                // Read the point again: it must be this vault's.
                let m = vault.read_point(&vm, &id)?;
                backup_core::DiskReader::open(vault, &m, &name)
            })
            .map_err(|e| to_py(py, e))?;
        let native = Bound::new(py, crate::disk::DiskReader::new(reader))?;
        py.import("vmbackup._disk")?.getattr("DiskFile")?.call1((native,))
    }

    /// Mounts the vault's points read-only (FUSE) at `mountpoint` as
    /// `VM/POINT/DISK.img`: all of them, a VM's (`vm`), or one point
    /// (`vm` and `point`: an id, a prefix or "latest"). Reads come from the
    /// vault as they are made, checked. Returns a `Mount`; use it in a
    /// `with` block. Needs `/dev/fuse` and `fusermount3`.
    #[pyo3(signature = (mountpoint, vm = None, point = None))]
    fn mount(
        &self,
        py: Python<'_>,
        mountpoint: std::path::PathBuf,
        vm: Option<String>,
        point: Option<String>,
    ) -> PyResult<crate::files::Mount> {
        let vault = self.get()?;
        let selection = backup_core::MountSelection { vm, point };
        let mounted = py
            .detach(move || backup_core::MountedVault::mount(vault, &mountpoint, &selection))
            .map_err(|e| to_py(py, e))?;
        Ok(crate::files::Mount::new(mounted))
    }

    /// Opens disk `disk` (an index in `point.disks` or a name) of `point`
    /// for its guest files: a `GuestDisk` with its volumes (partitions,
    /// LVM volumes, or the whole disk), whose `open_fs` reads a volume's
    /// files. Holds the vault's shared lock until closed.
    fn guest_disk(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        disk: &Bound<'_, PyAny>,
    ) -> PyResult<crate::files::GuestDisk> {
        let vault = self.get()?;
        let name = disk_name(&point, disk)?;
        let (vm, id) = (point.manifest.vm.clone(), point.manifest.id.clone());
        let gd = py
            .detach(move || {
                let m = vault.read_point(&vm, &id)?;
                backup_core::GuestDisk::open(vault, &m, &name)
            })
            .map_err(|e| to_py(py, e))?;
        Ok(crate::files::GuestDisk::new(gd))
    }

    /// Every file, folder or link in every point of `vm` (oldest first)
    /// whose path matches `pattern` (`*` and `?`; a pattern with a `/`
    /// matches whole paths, one without names): a list of `FoundFile`.
    /// ext4 and XFS need root.
    fn find_files(&self, py: Python<'_>, vm: &str, pattern: &str) -> PyResult<Vec<crate::files::FoundFile>> {
        crate::files::find(py, self.get()?, vm, pattern)
    }

    /// Restores every disk of a point into the folder `to_dir` (created if
    /// needed), each as a file named after the disk, in parallel.
    #[pyo3(signature = (point, to_dir, *, progress = None))]
    fn restore_vm(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        to_dir: PathBuf,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<RestoreStats>> {
        let vault = self.get()?;
        let progress = callable_arg(progress, "progress")?;
        let (vm, id) = (point.manifest.vm.clone(), point.manifest.id.clone());
        let stats = job::run(py, progress, move |p, cancel| {
            let m = vault.read_point(&vm, &id)?;
            backup_core::restore_vm(&vault, &m, &to_dir, &job::restore_options(p, cancel))
        })?;
        Ok(stats.into_iter().map(RestoreStats::from).collect())
    }

    /// Where a point can be restored from now: `"snapshot"` while the
    /// snapshot kept after its job is there and unchanged, then `"vault"`.
    /// A damaged snapshot record raises (`CorruptError`, `TamperedError`).
    fn tiers(&self, py: Python<'_>, point: PyRef<'_, RecoveryPoint>) -> PyResult<Vec<String>> {
        let vault = self.get()?;
        let m = point.manifest.clone();
        let tiers = job::run(py, None, move |_, _| backup_core::point_tiers(&vault, &m))?;
        Ok(tiers.into_iter().map(|t| t.as_str().to_string()).collect())
    }

    /// The snapshots kept for instant restore, of one VM or of all, oldest
    /// first; a damaged record raises.
    #[pyo3(signature = (vm = None))]
    fn kept_snapshots(&self, py: Python<'_>, vm: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<KeptSnapshot>> {
        let vault = self.get()?;
        let vm = vm.filter(|v| !v.is_none()).map(|v| str_arg(v, "vm")).transpose()?;
        let (kept, mut bad) = job::run(py, None, move |_, _| backup_core::kept_snapshots(&vault, vm.as_deref()))?;
        if !bad.is_empty() {
            return Err(to_py(py, bad.swap_remove(0)));
        }
        Ok(kept.into_iter().map(KeptSnapshot::new).collect())
    }

    /// Restores one disk of a point from the snapshot kept after its job
    /// (a reflink copy of the clone where the file system allows, else a
    /// sparse copy), checked against the clone's size and time when kept.
    /// Returns None, and writes nothing, when the point has no usable
    /// snapshot tier: `restore()` from the vault then. `disk` is an index
    /// or a name, as for `restore()`.
    #[pyo3(signature = (point, *, disk, to, progress = None))]
    fn restore_from_snapshot(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        disk: &Bound<'_, PyAny>,
        to: PathBuf,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<RestoreStats>> {
        let vault = self.get()?;
        let name = disk_name(&point, disk)?;
        let progress = callable_arg(progress, "progress")?;
        let (vm, id) = (point.manifest.vm.clone(), point.manifest.id.clone());
        let stats = job::run(py, progress, move |p, cancel| {
            // Read the point again, as `restore` does: it must be this vault's.
            let m = vault.read_point(&vm, &id)?;
            backup_core::restore_disk_from_snapshot(&vault, &m, &name, &to, &job::restore_options(p, cancel))
        })?;
        Ok(stats.map(RestoreStats::from))
    }

    /// Releases the snapshots kept for instant restore whose days are over
    /// at `now` (a time-zone aware `datetime`; default the current time),
    /// whose job ended without committing their point, or whose point was
    /// pruned: removes each clone (only a file marked as this vault's clone
    /// of that point and disk), then its record. `vm=` releases one VM's.
    /// A snapshot that cannot be released is listed in the report's
    /// `problems` and tried again next time.
    #[pyo3(signature = (*, vm = None, now = None))]
    fn release_expired(
        &self,
        py: Python<'_>,
        vm: Option<&Bound<'_, PyAny>>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<ReleaseReport> {
        let vault = self.get()?;
        let vm = vm.filter(|v| !v.is_none()).map(|v| str_arg(v, "vm")).transpose()?;
        let now = match now.filter(|n| !n.is_none()) {
            None => jiff::Timestamp::now(),
            Some(n) => timestamp_arg(n, "now")?,
        };
        let report = job::run(py, None, move |_, _| backup_core::release_expired(&vault, vm.as_deref(), now))?;
        ReleaseReport::new(py, report)
    }

    /// Restores every disk of a point (in parallel) into `pool` as
    /// `NAME-DISK.FORMAT` and defines a new libvirt domain `name` from the
    /// point's saved domain XML, with a new UUID, new MAC addresses and the
    /// restored disks; `start=True` starts it. A domain of that name is
    /// refused unless `replace=True`, and the point's own domain always.
    #[cfg(feature = "libvirt")]
    #[pyo3(signature = (point, name, *, uri = "qemu:///system".to_string(), pool = PathBuf::from("/var/lib/libvirt/images"), format = "qcow2".to_string(), replace = false, start = false, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn restore_to_domain(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        name: String,
        uri: String,
        pool: PathBuf,
        format: String,
        replace: bool,
        start: bool,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Vec<RestoreStats>> {
        let args = crate::recovery::TargetArgs { name, uri, pool, format, replace, start };
        let progress = callable_arg(progress, "progress")?;
        let stats = crate::recovery::restore_to_domain(py, self.get()?, &point.manifest, args, progress)?;
        Ok(stats.into_iter().map(RestoreStats::from).collect())
    }

    /// Starts a point as the new libvirt domain `name` within seconds, on
    /// qcow2 overlays in `pool` over this process's NBD export of the
    /// point, moves the data into them (at most `bandwidth` bytes per
    /// second per disk; 0: no limit) and returns, when the domain stands on
    /// local disks only, the seconds until it ran. KeyboardInterrupt
    /// discards the recovery; any other failure leaves the domain paused
    /// and the same call resumes it.
    #[cfg(feature = "libvirt")]
    #[pyo3(signature = (point, name, *, uri = "qemu:///system".to_string(), pool = PathBuf::from("/var/lib/libvirt/images"), replace = false, bandwidth = 0, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn instant_restore(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        name: String,
        uri: String,
        pool: PathBuf,
        replace: bool,
        bandwidth: u64,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<f64> {
        let args = crate::recovery::TargetArgs { name, uri, pool, format: "qcow2".into(), replace, start: true };
        let progress = callable_arg(progress, "progress")?;
        crate::recovery::instant_restore(py, self.get()?, &point.manifest, args, bandwidth, progress)
    }

    /// Boots a point in a throwaway libvirt domain with no network, on
    /// discarded overlays; waits up to `timeout` seconds for its guest
    /// agent, then runs `script` (bytes or str: a script copied into the
    /// guest; exit status 0 passes). The verdict is recorded beside the
    /// point and returned (a failed boot is a verdict, not an exception).
    #[cfg(feature = "libvirt")]
    #[pyo3(signature = (point, *, uri = "qemu:///system".to_string(), timeout = 300.0, script = None, progress = None))]
    fn boot_verify(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
        uri: String,
        timeout: f64,
        script: Option<&Bound<'_, PyAny>>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<crate::recovery::BootVerdict> {
        let script = match script.filter(|s| !s.is_none()) {
            None => None,
            Some(s) => match s.cast::<pyo3::types::PyBytes>() {
                Ok(b) => Some(b.as_bytes().to_vec()),
                Err(_) => Some(str_arg(s, "script")?.into_bytes()),
            },
        };
        let progress = callable_arg(progress, "progress")?;
        crate::recovery::boot_verify(py, self.get()?, &point.manifest, uri, timeout, script, progress)
    }

    /// The last boot verdict recorded for a point, or None if it was never
    /// booted.
    #[cfg(feature = "libvirt")]
    fn boot_verdict(
        &self,
        py: Python<'_>,
        point: PyRef<'_, RecoveryPoint>,
    ) -> PyResult<Option<crate::recovery::BootVerdict>> {
        let vault = self.get()?;
        let (vm, id) = (point.manifest.vm.clone(), point.manifest.id.clone());
        let v = job::run(py, None, move |_, _| vault.boot_verdict(&vm, &id))?;
        Ok(v.map(|inner| crate::recovery::BootVerdict { inner }))
    }

    /// Verifies one point, one VM's points (`vm=`), or the whole vault
    /// (every pack read frame by frame, then every point). Damage is
    /// reported in the returned report, with the disk's byte ranges it
    /// hurts, not raised; call `report.check()` to raise it.
    #[pyo3(signature = (point = None, *, vm = None, progress = None))]
    fn verify(
        &self,
        py: Python<'_>,
        point: Option<&Bound<'_, PyAny>>,
        vm: Option<&Bound<'_, PyAny>>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<VerifyReport> {
        let vault = self.get()?;
        let mut o = VerifyOptions::default();
        if let Some(v) = vm.filter(|v| !v.is_none()) {
            o.vm = Some(str_arg(v, "vm")?);
        }
        if let Some(p) = point.filter(|p| !p.is_none()) {
            let p = p.cast::<RecoveryPoint>().map_err(|_| {
                PyTypeError::new_err(format!("point must be a RecoveryPoint or None, not {}", type_name(p)))
            })?;
            let m = &p.get().manifest;
            if o.vm.as_ref().is_some_and(|v| *v != m.vm) {
                return Err(PyValueError::new_err(format!(
                    "point {} is of vm {}, not {}",
                    m.id,
                    m.vm,
                    o.vm.as_deref().unwrap_or_default()
                )));
            }
            o.vm = Some(m.vm.clone());
            o.point = Some(m.id.clone());
        }
        let progress = callable_arg(progress, "progress")?;
        job::run(py, progress, move |p, cancel| {
            o.progress = p;
            o.cancel = cancel;
            backup_core::verify(&vault, &o)
        })
        .map(VerifyReport::from)
    }

    /// Prunes by the retention rules of a policy, a `Policy` or TOML text
    /// (the format `vmbackup policy check` reads; text needs only
    /// `timezone` and `[retention]`, and a `[schedule]` in it is checked):
    /// removes the points the rules
    /// do not keep (a VM's newest point is always kept) and the logs of
    /// finished jobs whose point is gone, once older than the policy's
    /// `job_logs` days. `vm=` prunes one VM's points; `dry_run=True`
    /// removes nothing and reports what it would. `gc()` then reclaims the
    /// space. A bad policy raises `ValueError` naming the field.
    #[pyo3(signature = (policy, *, vm = None, dry_run = false))]
    fn prune(
        &self,
        py: Python<'_>,
        policy: &Bound<'_, PyAny>,
        vm: Option<&Bound<'_, PyAny>>,
        dry_run: bool,
    ) -> PyResult<PruneReport> {
        let vault = self.get()?;
        let retention = match policy.cast::<crate::maintenance::Policy>() {
            Ok(p) => p.get().policy.retention.clone(),
            Err(_) => Policy::retention_from_toml_str(&str_arg(policy, "policy")?)
                .map_err(|e| PyValueError::new_err(e.to_string()))?,
        };
        let mut o = PruneOptions::default();
        if let Some(v) = vm.filter(|v| !v.is_none()) {
            o.vm = Some(str_arg(v, "vm")?);
        }
        o.dry_run = dry_run;
        job::run(py, None, move |_, _| {
            let plan = backup_core::prune_plan(&vault, &retention, jiff::Timestamp::now(), &o)?;
            let report = backup_core::prune(&vault, &plan)?;
            Ok(PruneReport::new(&plan, report))
        })
    }

    /// Removes what no point references (dead packs, or packs whose dead
    /// share of bytes reaches `repack_threshold` rewritten without their
    /// dead chunks; unreferenced segments; what killed backups left).
    /// Objects younger than `grace` seconds are spared: a backup in flight
    /// may be about to name them. On object storage a run marks, and a
    /// later run removes (see the README).
    ///
    /// Soft-deleted points whose days are not over keep their data; those
    /// whose days are over at `now` (a time-zone aware `datetime`; default
    /// the current time, a later one rehearses) are removed for good first.
    #[pyo3(signature = (*, grace = 3600.0, repack_threshold = 0.5, dry_run = false, now = None))]
    fn gc(
        &self,
        py: Python<'_>,
        grace: f64,
        repack_threshold: f64,
        dry_run: bool,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<GcReport> {
        let vault = self.get()?;
        if !(0.0..=1e9).contains(&grace) {
            return Err(PyValueError::new_err(format!("grace must be a number of seconds from 0 to 1e9, not {grace}")));
        }
        let mut o = GcOptions::default();
        o.grace = Duration::from_secs_f64(grace);
        o.repack_threshold = repack_threshold;
        o.dry_run = dry_run;
        if let Some(n) = now.filter(|n| !n.is_none()) {
            o.now = Some(std::time::SystemTime::from(timestamp_arg(n, "now")?));
        }
        job::run(py, None, move |_, _| backup_core::gc(&vault, &o)).map(GcReport::from)
    }

    /// Copies points of this vault into `target` (another open `Vault`: a
    /// second site, local or on object storage, encrypted or not): of the
    /// VMs in `vms` (every VM when None), the points `points` selects
    /// ("latest", "all", or a time-zone aware `datetime`: the points taken
    /// since), oldest first. Only the chunks `target` lacks move, sealed
    /// with its key; a point it already holds is skipped, so a rerun
    /// finishes a copy that was stopped. `progress` works as for
    /// `backup()`, once per point.
    #[pyo3(signature = (target, *, vms = None, points = None, progress = None))]
    fn copy_to(
        &self,
        py: Python<'_>,
        target: &Bound<'_, Vault>,
        vms: Option<Vec<String>>,
        points: Option<&Bound<'_, PyAny>>,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<CopyReport> {
        let from = self.get()?;
        let to = target.get().get()?;
        let mut o = backup_core::CopyOptions::default();
        o.vms = vms.unwrap_or_default();
        o.points = match points.filter(|p| !p.is_none()) {
            None => backup_core::PointSelection::Latest,
            Some(p) if p.is_instance_of::<PyString>() => match str_arg(p, "points")?.as_str() {
                "latest" => backup_core::PointSelection::Latest,
                "all" => backup_core::PointSelection::All,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "points must be \"latest\", \"all\" or a datetime, not {other:?}"
                    )));
                }
            },
            Some(p) => backup_core::PointSelection::Since(timestamp_arg(p, "points")?),
        };
        let progress = callable_arg(progress, "progress")?;
        let report = job::run(py, progress, move |p, cancel| {
            o.progress = Some(p);
            o.cancel = cancel;
            backup_core::copy(&from, &to, &o)
        })?;
        CopyReport::new(py, report)
    }

    /// The vault's settings as its store holds them now.
    fn settings(&self, py: Python<'_>) -> PyResult<VaultSettings> {
        let vault = self.get()?;
        job::run(py, None, move |_, _| vault.settings()).map(VaultSettings::from)
    }

    /// Whether the vault's store can lock the objects the vault writes, so
    /// that not even the vault's own credentials can delete them:
    /// "unavailable" (a folder; Azure Blob, whose container immutability
    /// policy is its owner's to set), "disabled" (an S3 bucket without
    /// Object Lock) or "enabled" (an S3 bucket with it: while the vault is
    /// immutable, each object written is locked for its immutable days).
    fn store_lock(&self, py: Python<'_>) -> PyResult<&'static str> {
        let vault = self.get()?;
        job::run(py, None, move |_, _| vault.store_lock()).map(backup_core::StoreLock::as_str)
    }

    /// Changes the vault's settings and returns them as they now are:
    /// `soft_delete_days` (0 turns soft delete off) and, with
    /// `soft_delete_always_on=True`, soft delete always on for good. A
    /// vault whose soft delete is always on raises `ProtectedError` for 0
    /// days or fewer days than it has (nothing changed).
    ///
    /// `immutable_days=N` makes points younger than N days immutable:
    /// `delete()` raises `ProtectedError` for them, prune spares them, gc
    /// neither removes nor rewrites what was written in that time. The
    /// days can only grow. On S3 each object written from then on is also
    /// locked for that long (Object Lock, compliance mode); a bucket
    /// without Object Lock raises `ValueError` (nothing changed).
    #[pyo3(signature = (*, soft_delete_days = None, soft_delete_always_on = false, immutable_days = None))]
    fn configure(
        &self,
        py: Python<'_>,
        soft_delete_days: Option<&Bound<'_, PyAny>>,
        soft_delete_always_on: bool,
        immutable_days: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<VaultSettings> {
        let vault = self.get()?;
        let mut change = backup_core::SettingsChange::default();
        change.soft_delete_days = days_arg(soft_delete_days, "soft_delete_days")?;
        change.soft_delete_always_on = soft_delete_always_on;
        change.immutable_days = days_arg(immutable_days, "immutable_days")?;
        job::run(py, None, move |_, _| vault.change_settings(&change)).map(VaultSettings::from)
    }

    /// Deletes point `id` of `vm` (an id, a unique prefix of one, or
    /// "latest"). While the vault's soft delete is on (14 days unless
    /// `configure()` says otherwise) it stays recoverable by `undelete()`
    /// and gc keeps its data; the `Deletion` says until when.
    fn delete(&self, py: Python<'_>, vm: &Bound<'_, PyAny>, id: &Bound<'_, PyAny>) -> PyResult<Deletion> {
        let vault = self.get()?;
        let (vm, id) = (str_arg(vm, "vm")?, str_arg(id, "id")?);
        job::run(py, None, move |_, _| backup_core::delete_point(&vault, &vm, &id)).map(Deletion::new)
    }

    /// The soft-deleted points of one VM (or of all VMs), by VM then id.
    #[pyo3(signature = (vm = None))]
    fn deleted_points(&self, py: Python<'_>, vm: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<DeletedPoint>> {
        let vault = self.get()?;
        let vm = vm.filter(|v| !v.is_none()).map(|v| str_arg(v, "vm")).transpose()?;
        let list = job::run(py, None, move |_, _| backup_core::deleted_points(&vault, vm.as_deref()))?;
        Ok(list.into_iter().map(DeletedPoint::new).collect())
    }

    /// Brings back soft-deleted point `id` of `vm` (an id or a unique
    /// prefix of one): the same point, restorable bit for bit.
    /// `NotFoundError` when no deleted point matches.
    fn undelete(&self, py: Python<'_>, vm: &Bound<'_, PyAny>, id: &Bound<'_, PyAny>) -> PyResult<RecoveryPoint> {
        let vault = self.get()?;
        let (vm, id) = (str_arg(vm, "vm")?, str_arg(id, "id")?);
        job::run(py, None, move |_, _| backup_core::undelete_point(&vault, &vm, &id)).map(RecoveryPoint::new)
    }

    /// Rebuilds the chunk index files from the packs (leaving damaged
    /// chunks out, so that backups store them again), then verifies the
    /// vault and reports what is lost. Other open handles of the vault keep
    /// the index they loaded: open them again.
    #[pyo3(signature = (*, dry_run = false))]
    fn repair(&self, py: Python<'_>, dry_run: bool) -> PyResult<crate::maintenance::RepairReport> {
        let vault = self.get()?;
        let mut o = backup_core::RepairOptions::default();
        o.dry_run = dry_run;
        job::run(py, None, move |_, _| backup_core::repair(&vault, &o)).map(crate::maintenance::RepairReport::from)
    }

    /// The key slots of an encrypted vault (empty for a vault without
    /// encryption): what opens it, never the keys themselves.
    fn key_slots(&self, py: Python<'_>) -> PyResult<Vec<KeySlot>> {
        let vault = self.get()?;
        py.detach(|| vault.key_slots()).map(|v| v.into_iter().map(KeySlot::from).collect()).map_err(|e| to_py(py, e))
    }

    /// Adds a key slot: `passphrase` or `key_file` opens the vault too from
    /// now on. Only the vault's config is rewritten; no data is
    /// re-encrypted. `ValueError` for a vault without encryption.
    #[pyo3(signature = (*, passphrase = None, key_file = None))]
    fn add_key(&self, py: Python<'_>, passphrase: Option<String>, key_file: Option<PathBuf>) -> PyResult<KeySlot> {
        let vault = self.get()?;
        let key = key_source(passphrase, key_file)?
            .ok_or_else(|| PyValueError::new_err("give passphrase or key_file (one of them)"))?;
        py.detach(|| vault.add_key(&key)).map(KeySlot::from).map_err(|e| to_py(py, e))
    }

    /// Removes a key slot by its id; refuses the last one, which would lock
    /// everyone out for good. `NotFoundError` for an unknown id.
    fn remove_key(&self, py: Python<'_>, slot_id: String) -> PyResult<KeySlot> {
        let vault = self.get()?;
        py.detach(|| vault.remove_key(&slot_id)).map(KeySlot::from).map_err(|e| to_py(py, e))
    }
}

/// What `Vault.backup`'s keyword arguments set.
#[derive(Clone, Copy)]
struct Settings {
    consistency: Consistency,
    block_size: u32,
    instant_restore_days: u32,
}

/// A backup's options from `Vault.backup`'s arguments and its job's
/// progress and cancel.
fn options(
    s: Settings,
    progress: std::sync::Arc<dyn backup_core::Progress>,
    cancel: backup_core::CancelToken,
) -> BackupOptions {
    let mut o = BackupOptions::default();
    o.consistency = s.consistency;
    o.block_size = s.block_size;
    o.instant_restore_days = s.instant_restore_days;
    o.progress = progress;
    o.cancel = cancel;
    o
}

/// A `str` argument: `TypeError` for anything else.
fn str_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    obj.cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be a str, not {}", type_name(obj))))?
        .to_cow()
        .map(|s| s.into_owned())
}

/// A number of days for a vault setting (None when not given):
/// `TypeError` for a non-int, `ValueError` below 0 or past `u32`.
fn days_arg(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<u32>> {
    let Some(d) = obj.filter(|d| !d.is_none()) else { return Ok(None) };
    let days = int_arg(d, what)?;
    u32::try_from(days).map(Some).map_err(|_| {
        PyValueError::new_err(format!("{what} must be from 0 to {}, not {days}", backup_core::MAX_SOFT_DELETE_DAYS))
    })
}

/// A time-zone aware `datetime` argument as a timestamp: `TypeError` for
/// anything else, `ValueError` for a naive one (its zone would be a guess).
fn timestamp_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<jiff::Timestamp> {
    let datetime = obj.py().import("datetime")?.getattr("datetime")?;
    if !obj.is_instance(&datetime)? {
        return Err(PyTypeError::new_err(format!("{what} must be a datetime, not {}", type_name(obj))));
    }
    if obj.getattr("tzinfo")?.is_none() {
        return Err(PyValueError::new_err(format!("{what} must be time-zone aware (give it tzinfo)")));
    }
    // Exactly, to the microsecond: `timestamp()` is a float.
    let epoch = obj.call_method1("fromtimestamp", (0, obj.getattr("tzinfo")?))?;
    let delta = obj.call_method1("__sub__", (epoch,))?;
    let days: i64 = delta.getattr("days")?.extract()?;
    let seconds: i64 = delta.getattr("seconds")?.extract()?;
    let micros: i64 = delta.getattr("microseconds")?.extract()?;
    let total = (i128::from(days) * 86_400 + i128::from(seconds)) * 1_000_000_000 + i128::from(micros) * 1000;
    jiff::Timestamp::from_nanosecond(total).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}
