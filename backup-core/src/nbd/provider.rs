//! The provider for disks that an NBD server already exports.
//!
//! The snapshot is whatever the server exports: vmbackup freezes nothing
//! and cannot tell whether the export is a point-in-time view. Export a
//! stopped VM's image (`qemu-nbd -r`), a fleecing node, or a snapshot; the
//! point is recorded as crash-consistent at best.

use std::sync::Arc;

use super::{NbdAddress, NbdDevice, NbdOptions};
use crate::error::{Error, Result};
use crate::model::{Consistency, Vm};
use crate::snapshot::{PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider};

/// Snapshots of VMs whose disks are NBD exports: each
/// [`VmDisk::location`](crate::VmDisk::location) is an NBD URI
/// (`nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST:PORT/EXPORT`).
///
/// With [`NbdOptions::bitmap`], every disk's export must carry that dirty
/// bitmap, which becomes the disk's change tracking (see the trust rule in
/// the `nbd` module docs of [`NbdDevice`]).
#[derive(Debug, Clone, Default)]
pub struct NbdProvider {
    options: NbdOptions,
}

impl NbdProvider {
    /// A provider connecting with `options`.
    pub fn new(options: NbdOptions) -> Self {
        NbdProvider { options }
    }
}

impl SnapshotProvider for NbdProvider {
    fn prepare(&self, _vm: &Vm) -> Result<PrepareReport> {
        Ok(PrepareReport { provider_version: self.version(), changes: Vec::new() })
    }

    fn version(&self) -> String {
        concat!("nbd ", env!("CARGO_PKG_VERSION")).to_string()
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        let mut disks = Vec::new();
        for d in &vm.disks {
            let addr = NbdAddress::parse(&d.location)?;
            let device = NbdDevice::open(&addr, &self.options).map_err(|e| Error::Provider {
                vm: vm.name.clone(),
                step: "snapshot",
                message: format!("disk {}: {e}", d.name),
                retryable: matches!(e.kind(), crate::ErrorKind::Retryable),
            })?;
            let change_token = device.change_token();
            let method = if change_token.is_some() { "nbd export, dirty bitmap" } else { "nbd export" };
            disks.push(SnapshotDisk {
                name: d.name.clone(),
                device: Arc::new(device),
                change_token,
                method: method.into(),
            });
        }
        let mut warnings = Vec::new();
        if wanted != Consistency::Crash {
            warnings.push(format!(
                "nbd disks are read as their server exports them; nothing was frozen, so the point is crash-consistent (asked {wanted})"
            ));
        }
        Ok(Snapshot { disks, consistency: Consistency::Crash, warnings, provider_data: None })
    }

    fn release(&self, _vm: &Vm, snapshot: Snapshot) -> Result<()> {
        drop(snapshot);
        Ok(())
    }
}
