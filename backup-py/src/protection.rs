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
}

impl From<backup_core::VaultSettings> for VaultSettings {
    fn from(s: backup_core::VaultSettings) -> Self {
        VaultSettings { soft_delete_days: s.soft_delete_days, soft_delete_always_on: s.soft_delete_always_on }
    }
}

#[pymethods]
impl VaultSettings {
    fn __repr__(&self) -> String {
        format!(
            "VaultSettings(soft_delete_days={}, soft_delete_always_on={})",
            self.soft_delete_days,
            if self.soft_delete_always_on { "True" } else { "False" }
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
