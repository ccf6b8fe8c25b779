//! Python bindings of vmbackup: the private native module `vmbackup._native`
//! inside the pure-Python package `vmbackup` (see `python/vmbackup`).
//!
//! This crate only converts between Python and `backup-core`; every decision
//! about backups stays in the core. Three things are its own:
//!
//! - [`job::run`]: every engine call runs on a worker thread while the
//!   calling thread, with the GIL released, waits on a channel; between
//!   short waits it takes the GIL to call the progress callback (throttled)
//!   and to check for Ctrl-C. A progress exception or KeyboardInterrupt
//!   trips the core's `CancelToken` and is re-raised once the job stopped.
//! - [`provider::PyDevice`]: a Python `BlockDevice` as a core block
//!   device (a VM mixing it with image files goes through the core's
//!   `MixedProvider`).
//! - [`errors`]: core errors to the exception classes of
//!   `vmbackup._errors`.

use pyo3::prelude::*;

mod disk;
mod errors;
mod files;
mod job;
#[cfg(feature = "libvirt")]
mod libvirt;
mod maintenance;
mod protection;
mod provider;
#[cfg(feature = "libvirt")]
mod recovery;
mod tiers;
mod types;
mod vault;

/// The native half of the `vmbackup` package; import `vmbackup` instead.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<vault::Vault>()?;
    m.add_class::<types::RecoveryPoint>()?;
    m.add_class::<disk::DiskReader>()?;
    m.add_class::<files::Mount>()?;
    m.add_class::<files::GuestDisk>()?;
    m.add_class::<files::GuestFs>()?;
    m.add_class::<files::Volume>()?;
    m.add_class::<files::FileEntry>()?;
    m.add_class::<files::FoundFile>()?;
    m.add_class::<types::DiskInfo>()?;
    m.add_class::<types::BackupStats>()?;
    m.add_class::<types::RestoreStats>()?;
    m.add_class::<types::VerifyReport>()?;
    m.add_class::<types::Problem>()?;
    m.add_class::<types::KeySlot>()?;
    m.add_class::<maintenance::PruneReport>()?;
    m.add_class::<maintenance::GcReport>()?;
    m.add_class::<maintenance::RepairReport>()?;
    m.add_class::<maintenance::Policy>()?;
    m.add_class::<protection::VaultSettings>()?;
    m.add_class::<protection::Deletion>()?;
    m.add_class::<protection::DeletedPoint>()?;
    m.add_class::<protection::CopiedPoint>()?;
    m.add_class::<protection::CopyReport>()?;
    m.add_class::<tiers::KeptSnapshot>()?;
    m.add_class::<tiers::ReleaseReport>()?;
    #[cfg(feature = "libvirt")]
    m.add_class::<libvirt::LibvirtProvider>()?;
    #[cfg(feature = "libvirt")]
    m.add_class::<recovery::BootVerdict>()?;
    Ok(())
}
