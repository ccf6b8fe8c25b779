//! Protection against deletion from Python: the vault's settings
//! (`Vault.settings`, `Vault.configure`), `Vault.delete`, the soft-deleted
//! points (`Vault.deleted_points`) and `Vault.undelete`.

use pyo3::prelude::*;

use crate::types::{RecoveryPoint, utc_datetime};

/// A vault's settings, as `vmbackup config` shows them.
#[pyclass(module = "vmbackup", frozen, get_all, eq)]
#[derive(PartialEq)]
pub(crate) struct VaultSettings {
    /// Days a point removed by prune or delete stays recoverable (0: soft
    /// delete is off, removed points are gone at once).
    soft_delete_days: u32,
    /// Soft delete can never be turned off, nor its days shortened.
    soft_delete_always_on: bool,
    /// Points younger than this many days are immutable (0: off).
    immutable_days: u32,
}

impl From<backup_core::VaultSettings> for VaultSettings {
    fn from(s: backup_core::VaultSettings) -> Self {
        VaultSettings {
            soft_delete_days: s.soft_delete_days,
            soft_delete_always_on: s.soft_delete_always_on,
            immutable_days: s.immutable_days,
        }
    }
}

#[pymethods]
impl VaultSettings {
    fn __repr__(&self) -> String {
        format!(
            "VaultSettings(soft_delete_days={}, soft_delete_always_on={}, immutable_days={})",
            self.soft_delete_days,
            if self.soft_delete_always_on { "True" } else { "False" },
            self.immutable_days
        )
    }
}

/// What `Vault.delete` did: the point as it was, and until when
/// `Vault.undelete` can bring it back (None: soft delete is off, and the
/// point is gone for good).
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct Deletion {
    deletion: backup_core::Deletion,
}

impl Deletion {
    pub(crate) fn new(deletion: backup_core::Deletion) -> Self {
        Deletion { deletion }
    }
}

#[pymethods]
impl Deletion {
    /// The point deleted.
    #[getter]
    fn point(&self) -> RecoveryPoint {
        RecoveryPoint::new(self.deletion.point.clone())
    }

    /// Until when it can be undeleted (a UTC `datetime`), or None.
    #[getter]
    fn recoverable_until<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.deletion.recoverable_until.map(|t| utc_datetime(py, t)).transpose()
    }

    fn __repr__(&self) -> String {
        let p = &self.deletion.point;
        match self.deletion.recoverable_until {
            Some(t) => format!("Deletion(vm={:?}, point={:?}, recoverable_until={t})", p.vm, p.id),
            None => format!("Deletion(vm={:?}, point={:?}, gone for good)", p.vm, p.id),
        }
    }
}

/// A soft-deleted point: the point as it was, when it was deleted, and
/// when gc may remove it for good.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct DeletedPoint {
    deleted: backup_core::DeletedPoint,
}

impl DeletedPoint {
    pub(crate) fn new(deleted: backup_core::DeletedPoint) -> Self {
        DeletedPoint { deleted }
    }
}

#[pymethods]
impl DeletedPoint {
    /// The point as it was (its `id` is what `Vault.undelete` takes).
    #[getter]
    fn point(&self) -> RecoveryPoint {
        RecoveryPoint::new(self.deleted.point.clone())
    }

    /// When it was deleted (a UTC `datetime`, by the store's clock).
    #[getter]
    fn deleted<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_datetime(py, self.deleted.deleted)
    }

    /// When gc may remove it for good (a UTC `datetime`).
    #[getter]
    fn purge_after<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_datetime(py, self.deleted.purge_after)
    }

    fn __repr__(&self) -> String {
        let p = &self.deleted.point;
        format!("DeletedPoint(vm={:?}, point={:?}, purge_after={})", p.vm, p.id, self.deleted.purge_after)
    }
}

/// One point a copy committed: its VM and id (the same in both vaults),
/// the bytes of the source's disks read, the bytes of blocks the target
/// lacked (before compression), and the bytes written to the target.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct CopiedPoint {
    /// The VM.
    vm: String,
    /// The point's id.
    id: String,
    /// Bytes of the source's disks read.
    bytes_read: u64,
    /// Bytes of blocks the target lacked, before compression.
    bytes_lacked: u64,
    /// Bytes written to the target: what moved, and the manifest.
    bytes_added: u64,
}

#[pymethods]
impl CopiedPoint {
    fn __repr__(&self) -> String {
        format!("CopiedPoint(vm={:?}, id={:?}, bytes_added={})", self.vm, self.id, self.bytes_added)
    }
}

/// What `Vault.copy_to` did.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct CopyReport {
    /// The points copied, oldest first within each VM.
    copied: Vec<Py<CopiedPoint>>,
    /// The points the target already held, as `(vm, id)`.
    already_there: Vec<(String, String)>,
    /// The boot verdicts brought along (the target lacked them or held
    /// older ones), as `(vm, id)`.
    verdicts_copied: Vec<(String, String)>,
    /// The VMs whose record (what preparing the VM found and changed) was
    /// brought along.
    vm_records_copied: Vec<String>,
    /// Bytes written to the target in all.
    bytes_added: u64,
}

impl CopyReport {
    pub(crate) fn new(py: Python<'_>, r: backup_core::CopyReport) -> PyResult<CopyReport> {
        let bytes_added = r.bytes_added();
        let copied = r
            .copied
            .into_iter()
            .map(|c| {
                Py::new(
                    py,
                    CopiedPoint {
                        vm: c.vm,
                        id: c.id,
                        bytes_read: c.bytes_read,
                        bytes_lacked: c.bytes_lacked,
                        bytes_added: c.bytes_added,
                    },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        let vm_and_id = |s: String| match s.split_once('/') {
            Some((vm, id)) => (vm.to_string(), id.to_string()),
            None => (String::new(), s),
        };
        let already_there = r.already_there.into_iter().map(vm_and_id).collect();
        let verdicts_copied = r.verdicts_copied.into_iter().map(vm_and_id).collect();
        Ok(CopyReport { copied, already_there, verdicts_copied, vm_records_copied: r.vm_records_copied, bytes_added })
    }
}

#[pymethods]
impl CopyReport {
    fn __repr__(&self) -> String {
        format!(
            "CopyReport(copied={}, already_there={}, bytes_added={})",
            self.copied.len(),
            self.already_there.len(),
            self.bytes_added
        )
    }
}
