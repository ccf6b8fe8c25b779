//! Instant-restore tiers from Python: the snapshots kept after their job
//! (`Vault.kept_snapshots`), where a point can be restored from
//! (`Vault.tiers`), restores from a kept snapshot
//! (`Vault.restore_from_snapshot`), and `Vault.release_expired`.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::types::{quote, utc_datetime};

/// A snapshot kept after its job for instant restore (`Vault.backup(...,
/// instant_restore_days=N)` on a file system with reflinks): the point it
/// belongs to, until when it is kept, and each disk's clone.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct KeptSnapshot {
    kept: backup_core::KeptSnapshot,
}

impl KeptSnapshot {
    pub(crate) fn new(kept: backup_core::KeptSnapshot) -> Self {
        KeptSnapshot { kept }
    }
}

#[pymethods]
impl KeptSnapshot {
    /// The VM.
    #[getter]
    fn vm(&self) -> &str {
        &self.kept.vm
    }

    /// The id of the point it belongs to.
    #[getter]
    fn point(&self) -> &str {
        &self.kept.point
    }

    /// The id of the job that took it.
    #[getter]
    fn job(&self) -> &str {
        &self.kept.job
    }

    /// The snapshot provider's name and version.
    #[getter]
    fn provider(&self) -> &str {
        &self.kept.provider
    }

    /// When it was taken, as a time-zone aware `datetime` in UTC.
    #[getter]
    fn taken<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_datetime(py, self.kept.taken)
    }

    /// When it is released, as a time-zone aware `datetime` in UTC.
    #[getter]
    fn expires<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_datetime(py, self.kept.expires)
    }

    /// Each disk's clone, as `(disk name, path)`.
    #[getter]
    fn disks(&self) -> Vec<(String, PathBuf)> {
        self.kept.disks.iter().map(|d| (d.name.clone(), d.path.clone())).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "KeptSnapshot(vm={}, point={}, expires={})",
            quote(&self.kept.vm),
            quote(&self.kept.point),
            quote(&self.kept.expires.to_string())
        )
    }
}

/// What `Vault.release_expired` did.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct ReleaseReport {
    released: Vec<(Py<KeptSnapshot>, String)>,
    kept: Vec<Py<KeptSnapshot>>,
    problems: Vec<String>,
}

impl ReleaseReport {
    pub(crate) fn new(py: Python<'_>, r: backup_core::ReleaseReport) -> PyResult<Self> {
        Ok(ReleaseReport {
            released: r
                .released
                .into_iter()
                .map(|(k, why)| Ok((Py::new(py, KeptSnapshot::new(k))?, why)))
                .collect::<PyResult<_>>()?,
            kept: r.kept.into_iter().map(|k| Py::new(py, KeptSnapshot::new(k))).collect::<PyResult<_>>()?,
            problems: r.problems,
        })
    }
}

#[pymethods]
impl ReleaseReport {
    /// The snapshots released, each with why: `"expired"`, `"job ended
    /// without its point"` or `"point pruned"`.
    #[getter]
    fn released(&self, py: Python<'_>) -> Vec<(Py<KeptSnapshot>, String)> {
        self.released.iter().map(|(k, why)| (k.clone_ref(py), why.clone())).collect()
    }

    /// The snapshots still kept.
    #[getter]
    fn kept(&self, py: Python<'_>) -> Vec<Py<KeptSnapshot>> {
        self.kept.iter().map(|k| k.clone_ref(py)).collect()
    }

    /// Snapshots that could not be released (tried again next time) and
    /// damaged records, as sentences naming them.
    #[getter]
    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "ReleaseReport(released={}, kept={}, problems={})",
            self.released.len(),
            self.kept.len(),
            self.problems.len()
        )
    }
}
