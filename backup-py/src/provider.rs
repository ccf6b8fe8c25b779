//! A snapshot provider for a VM whose disks are image files and Python
//! `BlockDevice` objects at once.
//!
//! Image disks are delegated to the core's `ImageFileProvider` (a reflink
//! clone where the file system has one, else an in-place read that is
//! refused at commit if the file changed). Python disks are read through
//! [`PyDevice`], which takes the GIL for each read.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use backup_core::{
    BlockDevice, Consistency, ImageFileProvider, PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider, Vm,
};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use crate::errors::type_name;

/// A Python `vmbackup.BlockDevice` as a core block device.
pub(crate) struct PyDevice {
    obj: Py<PyAny>,
    /// Asked once, before the job starts.
    size: u64,
    /// Whether the class overrides `allocated`: when not, the engine is
    /// told "not known" without a trip through the GIL.
    has_allocated: bool,
}

impl PyDevice {
    pub(crate) fn new(obj: Py<PyAny>, size: u64, has_allocated: bool) -> Self {
        PyDevice { obj, size, has_allocated }
    }
}

/// An `io::Error` carrying a Python `ValueError`, for a device that broke
/// its contract.
fn contract(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, pyo3::exceptions::PyValueError::new_err(msg))
}

impl BlockDevice for PyDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Called on the engine's worker threads, several at once: each
        // waits for the GIL here.
        Python::attach(|py| {
            let data =
                self.obj.call_method1(py, intern!(py, "read_at"), (offset, buf.len())).map_err(io::Error::other)?;
            copy_into(data.bind(py), offset, buf)
        })
    }

    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        if !self.has_allocated {
            return Ok(None);
        }
        Python::attach(|py| {
            let r = self
                .obj
                .call_method1(py, intern!(py, "allocated"), (window.start, window.end))
                .map_err(io::Error::other)?;
            if r.is_none(py) {
                return Ok(None);
            }
            let list: Vec<(u64, u64)> = r.extract(py).map_err(|_| {
                io::Error::other(PyTypeError::new_err(
                    "BlockDevice.allocated must return a list of (start, end) int pairs or None",
                ))
            })?;
            let mut ranges: Vec<Range<u64>> = Vec::with_capacity(list.len());
            let mut last_end = 0;
            for (start, end) in list {
                if start > end || start < last_end {
                    return Err(contract(format!(
                        "BlockDevice.allocated({}, {}) returned ranges that are not sorted and disjoint",
                        window.start, window.end
                    )));
                }
                last_end = end;
                // Clip to the window: the engine asks one window at a time.
                let r = start.max(window.start)..end.min(window.end);
                if r.start < r.end {
                    ranges.push(r);
                }
            }
            Ok(Some(ranges))
        })
    }
}

/// Copies what `read_at` returned into `buf`, which it must fill exactly.
fn copy_into(data: &Bound<'_, PyAny>, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let owned;
    let bytes: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
        b.as_bytes()
    } else if let Ok(b) = data.cast::<PyByteArray>() {
        owned = b.to_vec();
        &owned
    } else if data.is_instance_of::<PyMemoryView>() {
        let b = data.call_method0(intern!(data.py(), "tobytes")).map_err(io::Error::other)?;
        owned = b.extract::<Vec<u8>>().map_err(io::Error::other)?;
        &owned
    } else {
        return Err(io::Error::other(PyTypeError::new_err(format!(
            "BlockDevice.read_at must return bytes, bytearray or memoryview, not {}",
            type_name(data)
        ))));
    };
    if bytes.len() != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("BlockDevice.read_at({offset}, {}) returned {} bytes", buf.len(), bytes.len()),
        ));
    }
    buf.copy_from_slice(bytes);
    Ok(())
}

/// Image files through the core's provider, Python devices as they are.
pub(crate) struct MixedProvider {
    images: ImageFileProvider,
    /// The Python disks, by disk name.
    devices: HashMap<String, Arc<PyDevice>>,
}

impl MixedProvider {
    pub(crate) fn new(devices: HashMap<String, Arc<PyDevice>>) -> Self {
        MixedProvider { images: ImageFileProvider::new(), devices }
    }

    fn image_vm(&self, vm: &Vm) -> Vm {
        Vm {
            name: vm.name.clone(),
            os: vm.os,
            disks: vm.disks.iter().filter(|d| !self.devices.contains_key(&d.name)).cloned().collect(),
        }
    }
}

/// What release needs: the image provider's own data, lent back to it for
/// `check_intact` and `release`.
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
    fn prepare(&self, vm: &Vm) -> backup_core::Result<PrepareReport> {
        self.images.prepare(vm)
    }

    fn version(&self) -> String {
        self.images.version()
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> backup_core::Result<Snapshot> {
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
            if let Some(dev) = self.devices.get(&d.name) {
                disks.push(SnapshotDisk {
                    name: d.name.clone(),
                    device: dev.clone(),
                    change_token: None,
                    method: "python".into(),
                });
            } else if let Some(sd) = image_disks.remove(&d.name) {
                disks.push(sd);
            }
        }
        Ok(Snapshot {
            disks,
            // A Python device is read as it is: crash-consistent.
            consistency,
            warnings,
            provider_data: Some(Box::new(Taken { images: Mutex::new(data), consistency })),
        })
    }

    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> backup_core::Result<()> {
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

    /// Keepable only when every disk is an image file (a Python device is
    /// read live and cannot be kept) and the image provider's snapshot is
    /// keepable: reflink clones, in the VM's order.
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<backup_core::KeptDisk>> {
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

    fn release(&self, vm: &Vm, snapshot: Snapshot) -> backup_core::Result<()> {
        let Snapshot { disks, provider_data, .. } = snapshot;
        // Close the images (and let go of the Python objects) first.
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
