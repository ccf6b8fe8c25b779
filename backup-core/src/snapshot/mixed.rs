//! A VM whose disks are image files and devices the host serves itself,
//! at once: the image files go through [`ImageFileProvider`] (a reflink
//! clone where the file system has one, else an in-place read that is
//! refused at commit if the file changed); a device is read as it is.
//!
//! This is how the C ABI's disk lists and Python's `Vault.backup` take a
//! mix of paths and callback devices in one call.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{ImageFileProvider, KeptDisk, PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider};
use crate::device::BlockDevice;
use crate::error::Result;
use crate::model::{Consistency, Vm, VmDisk};

/// A device the host serves for one disk, read as it is.
struct LiveDisk {
    device: Arc<dyn BlockDevice>,
    change_token: Option<String>,
    method: String,
}

/// Image files through [`ImageFileProvider`], the host's devices as they
/// are. A disk of the VM is a device when one was added under its name,
/// else an image file at its location.
///
/// ```
/// use std::sync::Arc;
/// use backup_core::*;
/// # let dir = tempfile::tempdir()?;
/// # let (boot, data) = (dir.path().join("boot.img"), dir.path().join("data.img"));
/// # std::fs::write(&boot, vec![1u8; 1 << 20])?;
/// # std::fs::write(&data, vec![7u8; 1 << 20])?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// // Any BlockDevice: a host's own reader of a disk.
/// let device: Arc<dyn BlockDevice> = Arc::new(RawImage::open(&data)?);
/// let provider = MixedProvider::new().with_device("data", device, None, "host");
/// let vm = Vm {
///     name: "web".into(),
///     os: OsType::Linux,
///     disks: vec![
///         VmDisk { name: "boot".into(), location: boot.to_str().unwrap().into() },
///         provider.disk("data").expect("added above"),
///     ],
/// };
/// let report = backup(&vault, &provider, &vm, &BackupOptions::default())?;
/// assert_eq!(report.point.disks.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct MixedProvider {
    images: ImageFileProvider,
    devices: HashMap<String, LiveDisk>,
}

impl MixedProvider {
    /// A provider with no devices: every disk is an image file.
    pub fn new() -> Self {
        MixedProvider::default()
    }

    /// Serves disk `name` from `device`. `change_token` names this state
    /// of the device for the next backup's `changed_since` (None when the
    /// host tracks no changes); `method` is recorded as how the disk was
    /// read ("host", "python").
    #[must_use]
    pub fn with_device(
        mut self,
        name: &str,
        device: Arc<dyn BlockDevice>,
        change_token: Option<String>,
        method: &str,
    ) -> Self {
        self.add_device(name, device, change_token, method);
        self
    }

    /// As [`with_device`](Self::with_device), on a provider being built.
    /// A second device under the same name replaces the first.
    pub fn add_device(&mut self, name: &str, device: Arc<dyn BlockDevice>, change_token: Option<String>, method: &str) {
        self.devices.insert(name.to_string(), LiveDisk { device, change_token, method: method.to_string() });
    }

    /// The VM disk for the device added as `name` (its location says how
    /// it is read, `host:NAME`), or None when no device has that name.
    pub fn disk(&self, name: &str) -> Option<VmDisk> {
        let d = self.devices.get(name)?;
        Some(VmDisk { name: name.to_string(), location: format!("{}:{name}", d.method) })
    }

    /// Whether disk `name` is served by a device rather than an image.
    pub fn is_device(&self, name: &str) -> bool {
        self.devices.contains_key(name)
    }

    /// The VM with its device disks left out: what the image provider sees.
    fn image_vm(&self, vm: &Vm) -> Vm {
        Vm {
            name: vm.name.clone(),
            os: vm.os,
            disks: vm.disks.iter().filter(|d| !self.devices.contains_key(&d.name)).cloned().collect(),
        }
    }
}

/// What release needs: the image provider's own data, lent back to it for
/// `check_intact`, `keepable` and `release`.
struct Taken {
    images: Mutex<Option<Option<Box<dyn Any + Send + Sync>>>>,
    consistency: Consistency,
}

impl Taken {
    fn image_snapshot(&self) -> Option<Snapshot> {
        let data = self.images.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(Snapshot { disks: Vec::new(), consistency: self.consistency, warnings: Vec::new(), provider_data: data })
    }

    fn give_back(&self, snapshot: Snapshot) {
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.provider_data);
    }
}

impl SnapshotProvider for MixedProvider {
    fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
        self.images.prepare(vm)
    }

    fn version(&self) -> String {
        self.images.version()
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        let image_vm = self.image_vm(vm);
        let (mut image_disks, consistency, warnings, data) = if image_vm.disks.is_empty() {
            (HashMap::new(), Consistency::Crash, Vec::new(), None)
        } else {
            let s = self.images.snapshot(&image_vm, wanted)?;
            let disks: HashMap<String, SnapshotDisk> = s.disks.into_iter().map(|d| (d.name.clone(), d)).collect();
            (disks, s.consistency, s.warnings, Some(s.provider_data))
        };
        let mut disks = Vec::with_capacity(vm.disks.len());
        for d in &vm.disks {
            if let Some(live) = self.devices.get(&d.name) {
                disks.push(SnapshotDisk {
                    name: d.name.clone(),
                    device: live.device.clone(),
                    change_token: live.change_token.clone(),
                    method: live.method.clone(),
                });
            } else if let Some(sd) = image_disks.remove(&d.name) {
                disks.push(sd);
            }
        }
        Ok(Snapshot {
            disks,
            // A device is read as it is: crash-consistent.
            consistency,
            warnings,
            provider_data: Some(Box::new(Taken { images: Mutex::new(data), consistency })),
        })
    }

    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        let Some(taken) = snapshot.provider_data.as_ref().and_then(|d| d.downcast_ref::<Taken>()) else {
            return Ok(());
        };
        let Some(inner) = taken.image_snapshot() else {
            return Ok(());
        };
        let r = self.images.check_intact(&self.image_vm(vm), &inner);
        taken.give_back(inner);
        r
    }

    /// Keepable only when every disk is an image file (a device is read
    /// live and cannot be kept) and the image provider's snapshot is
    /// keepable: reflink clones, in the VM's order.
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
        if snapshot.disks.iter().any(|d| self.devices.contains_key(&d.name)) {
            return None;
        }
        let taken = snapshot.provider_data.as_ref()?.downcast_ref::<Taken>()?;
        let mut inner = taken.image_snapshot()?;
        inner.disks = snapshot
            .disks
            .iter()
            .map(|d| SnapshotDisk {
                name: d.name.clone(),
                device: d.device.clone(),
                change_token: d.change_token.clone(),
                method: d.method.clone(),
            })
            .collect();
        let kept = self.images.keepable(&inner);
        inner.disks.clear();
        taken.give_back(inner);
        kept
    }

    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        let Snapshot { disks, provider_data, .. } = snapshot;
        // Close the images (and let go of the host's devices) first.
        drop(disks);
        let Some(taken) = provider_data.and_then(|d| d.downcast::<Taken>().ok()) else {
            return Ok(());
        };
        match taken.image_snapshot() {
            Some(inner) => self.images.release(&self.image_vm(vm), inner),
            None => Ok(()),
        }
    }
}
