//! Snapshots: the provider trait a host implements to prepare a VM, freeze
//! it at a consistency level and hand back one read-only device per disk;
//! the image-file provider; pre/post scripts (`scripts`), file-system
//! freeze (`freeze`) and the provider that wraps them around another one
//! with the fallback rules (`consistent`).

pub(crate) mod clone_mark;
pub(crate) mod consistent;
mod freeze;
pub(crate) mod guardian;
mod image_files;
mod mixed;
pub(crate) mod scripts;

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::device::BlockDevice;
use crate::error::Result;
use crate::model::{Consistency, Vm};

pub use consistent::ConsistentProvider;
pub use freeze::{DEFAULT_FREEZE_TIMEOUT, FreezeGuard, ThawReport};
pub use image_files::ImageFileProvider;
pub use mixed::MixedProvider;
pub use scripts::{DEFAULT_SCRIPT_TIMEOUT, MAX_SCRIPT_RETRIES, MAX_SCRIPT_TIMEOUT_SECS, OUTPUT_LIMIT, ScriptsConfig};

/// What a provider's `prepare` did to a VM before its first backup (for a
/// cloud service: installing its snapshot extension). Recorded in the
/// vault's record of the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareReport {
    /// The provider's name and version; a new version prepares again.
    pub provider_version: String,
    /// What was changed on the VM, one line each; empty when nothing was.
    pub changes: Vec<String>,
}

/// One disk of a snapshot.
pub struct SnapshotDisk {
    /// The disk's name, as in the VM.
    pub name: String,
    /// A read-only view of the disk at the snapshot's instant.
    pub device: Arc<dyn BlockDevice>,
    /// A token naming this state of the disk for change tracking: the next
    /// backup passes it to [`BlockDevice::changed_since`]. None when the
    /// provider tracks no changes.
    pub change_token: Option<String>,
    /// How the snapshot was taken ("reflink", "in-place", "host", ...).
    pub method: String,
}

/// A snapshot of all of a VM's disks.
pub struct Snapshot {
    /// The disks, in the VM's order.
    pub disks: Vec<SnapshotDisk>,
    /// The consistency really achieved.
    pub consistency: Consistency,
    /// Things a user should know about how it was taken (a fallback, a
    /// failed script).
    pub warnings: Vec<String>,
    /// Whatever the provider needs to release the snapshot.
    pub provider_data: Option<Box<dyn Any + Send + Sync>>,
}

/// A disk of a snapshot that can outlive its job: a file that holds the
/// disk as it was at the snapshot's instant, owned by vmbackup (a reflink
/// clone of an image). A job that keeps a snapshot for instant restore
/// records these files and releases the snapshot later by removing them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptDisk {
    /// The disk's name, as in the VM.
    pub name: String,
    /// The file holding the snapshot of the disk.
    pub path: std::path::PathBuf,
}

/// Takes snapshots of VMs. Implemented in the box for image files, and by
/// hosts (in Rust, C or Python) for their own hypervisors.
pub trait SnapshotProvider: Send + Sync {
    /// Prepares a VM for its first backup; must be idempotent.
    ///
    /// # Errors
    /// [`Error::Provider`](crate::Error::Provider) with step "prepare".
    fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
        let _ = vm;
        Ok(PrepareReport::default())
    }

    /// The provider's name and version; when it differs from the one
    /// recorded at the last `prepare`, the VM is prepared again.
    fn version(&self) -> String {
        String::new()
    }

    /// Takes a snapshot at the `wanted` consistency or the best the
    /// provider can get; [`Snapshot::consistency`] says which.
    ///
    /// # Errors
    /// [`Error::Provider`](crate::Error::Provider) with step "snapshot",
    /// or an I/O error naming the disk.
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot>;

    /// As [`snapshot`](Self::snapshot), told the change tokens of the VM's
    /// previous point: `(disk name, token)` for each of its disks that had
    /// one. A provider whose change tracking is relative to one checkpoint
    /// (a libvirt pull backup is incremental from a checkpoint it names)
    /// starts from the previous point's; the engine still checks the token
    /// chain (see `engine`), so a provider that ignores them loses nothing.
    /// The job calls this one; the default calls [`snapshot`](Self::snapshot).
    ///
    /// # Errors
    /// As [`snapshot`](Self::snapshot).
    fn snapshot_since(&self, vm: &Vm, wanted: Consistency, previous: &[(String, String)]) -> Result<Snapshot> {
        let _ = previous;
        self.snapshot(vm, wanted)
    }

    /// Called after the transfer, before the point is committed: a provider
    /// whose snapshot can be invalidated under it (an image read in place
    /// that changed) refuses the point here.
    ///
    /// # Errors
    /// [`Error::SourceChanged`](crate::Error::SourceChanged) or a provider
    /// error; the job then commits nothing.
    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        let _ = (vm, snapshot);
        Ok(())
    }

    /// The files that hold this snapshot's disks when the snapshot can
    /// outlive its job (every disk a reflink clone); None otherwise (the
    /// default). When a job keeps a snapshot for instant restore, it drops
    /// the [`Snapshot`] without calling [`release`](Self::release) and later
    /// releases it by removing these files: return Some only when that is
    /// all releasing takes.
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
        let _ = snapshot;
        None
    }

    /// The VM's configuration at this snapshot (a libvirt domain's XML),
    /// stored with the point so that a restore can re-create the VM; None
    /// (the default) when the provider has none.
    fn configuration(&self, vm: &Vm, snapshot: &Snapshot) -> Option<crate::model::VmConfiguration> {
        let _ = (vm, snapshot);
        None
    }

    /// Releases a snapshot. Called once for every snapshot taken, whether
    /// the job succeeded or not, unless the job keeps it (see
    /// [`keepable`](Self::keepable)).
    ///
    /// # Errors
    /// [`Error::Provider`](crate::Error::Provider) with step "release".
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()>;
}

/// A provider behind a pointer is a provider: forwards every call.
macro_rules! forward_provider {
    ($($ty:ty),*) => {$(
        impl<P: SnapshotProvider + ?Sized> SnapshotProvider for $ty {
            fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
                (**self).prepare(vm)
            }
            fn version(&self) -> String {
                (**self).version()
            }
            fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
                (**self).snapshot(vm, wanted)
            }
            fn snapshot_since(&self, vm: &Vm, wanted: Consistency, previous: &[(String, String)]) -> Result<Snapshot> {
                (**self).snapshot_since(vm, wanted, previous)
            }
            fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
                (**self).check_intact(vm, snapshot)
            }
            fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
                (**self).keepable(snapshot)
            }
            fn configuration(&self, vm: &Vm, snapshot: &Snapshot) -> Option<crate::model::VmConfiguration> {
                (**self).configuration(vm, snapshot)
            }
            fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
                (**self).release(vm, snapshot)
            }
        }
    )*};
}

// A boxed provider: hosts choose one per VM at run time. A borrowed one:
// a wrapper (`ConsistentProvider`) made per job around a provider that
// must outlive it.
forward_provider!(Box<P>, &P);
