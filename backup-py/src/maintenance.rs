//! What `Vault.prune`, `Vault.gc` and `Vault.repair` report, and
//! policies as objects.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::types::Problem;

/// A backup policy (schedule and retention), parsed and checked: what
/// `Vault.prune` applies. `Policy.from_toml(text)` or `Policy.load(path)`;
/// a bad policy raises `ValueError` naming the field.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct Policy {
    pub(crate) policy: backup_core::Policy,
}

#[pymethods]
impl Policy {
    /// Parses a policy from TOML text (the format `vmbackup policy check`
    /// reads).
    #[staticmethod]
    fn from_toml(text: &str) -> PyResult<Policy> {
        backup_core::Policy::from_toml_str(text)
            .map(|policy| Policy { policy })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Reads and parses a policy file (`OSError` when it cannot be read,
    /// `ValueError` naming the file and field when it is not a policy).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Policy> {
        match backup_core::Policy::from_file(&path) {
            Ok(policy) => Ok(Policy { policy }),
            Err(e @ backup_core::Error::InvalidArgument { .. }) => Err(PyValueError::new_err(e.to_string())),
            Err(e) => Err(crate::errors::to_py(py, e)),
        }
    }

    /// The second site the policy's `[copy]` section names (a folder or a
    /// URL), where each new point is copied after its backup
    /// (`Vault.copy_to`); None when it has none.
    #[getter]
    fn copy_to(&self) -> Option<String> {
        self.policy.copy.as_ref().map(|c| c.to.clone())
    }

    /// The policy in a few lines of English, as `vmbackup policy check`
    /// says it.
    fn summary(&self) -> Vec<String> {
        self.policy.summary()
    }

    fn __repr__(&self) -> String {
        format!("Policy({})", self.policy.summary().join("; "))
    }
}

/// What a prune did (or, in a dry run, would do).
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct PruneReport {
    /// Whether it was a dry run (nothing removed).
    dry_run: bool,
    /// The points removed (or that would be), as `(vm, point id)`.
    removed: Vec<(String, String)>,
    /// How many points the rules keep.
    kept: usize,
    /// Points the rules condemned that were kept after all, and why.
    spared: Vec<String>,
    /// Job logs removed (or that would be), as `vm/job id`.
    job_logs_removed: Vec<String>,
}

impl PruneReport {
    pub(crate) fn new(plan: &backup_core::PrunePlan, report: backup_core::PruneReport) -> PruneReport {
        PruneReport {
            dry_run: report.dry_run,
            removed: report.removed.iter().map(|p| (p.vm.clone(), p.id.clone())).collect(),
            kept: plan.to_keep().count(),
            spared: report.spared,
            job_logs_removed: report.job_logs_removed,
        }
    }
}

#[pymethods]
impl PruneReport {
    fn __repr__(&self) -> String {
        format!(
            "PruneReport(dry_run={}, removed={}, kept={}, job_logs_removed={})",
            if self.dry_run { "True" } else { "False" },
            self.removed.len(),
            self.kept,
            self.job_logs_removed.len()
        )
    }
}

/// What a garbage collection did (or, in a dry run, would do).
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct GcReport {
    /// On a vault on object storage: packs this run marked for removal by
    /// a later gc (rewritten ones included).
    packs_marked: u64,
    /// On a vault on object storage: segments this run marked.
    segments_marked: u64,
    /// Whether it was a dry run (nothing removed).
    dry_run: bool,
    /// Points whose objects were kept.
    points: u64,
    /// Packs removed whole (no live chunk).
    packs_removed: u64,
    /// Packs rewritten without their dead chunks.
    packs_repacked: u64,
    /// Unreferenced index segments removed.
    segments_removed: u64,
    /// Chunk copies no longer stored.
    chunks_removed: u64,
    /// Bytes freed: dead chunk frames and segments.
    bytes_removed: u64,
    /// Live chunk bytes copied into new packs by repacking.
    bytes_copied: u64,
    /// Objects spared because they are newer than the grace period.
    protected: u64,
    /// Soft-deleted points whose days are not over: their data was kept.
    deleted_points_kept: u64,
    /// Soft-deleted points whose days were over, removed for good.
    deleted_points_purged: u64,
}

impl From<backup_core::GcReport> for GcReport {
    fn from(r: backup_core::GcReport) -> Self {
        GcReport {
            packs_marked: r.packs_marked,
            segments_marked: r.segments_marked,
            dry_run: r.dry_run,
            points: r.points,
            packs_removed: r.packs_removed,
            packs_repacked: r.packs_repacked,
            segments_removed: r.segments_removed,
            chunks_removed: r.chunks_removed,
            bytes_removed: r.chunk_bytes_removed + r.segment_bytes_removed,
            bytes_copied: r.chunk_bytes_copied,
            protected: r.protected,
            deleted_points_kept: r.deleted_points_kept,
            deleted_points_purged: r.deleted_points_purged,
        }
    }
}

#[pymethods]
impl GcReport {
    fn __repr__(&self) -> String {
        format!(
            "GcReport(dry_run={}, packs_removed={}, packs_repacked={}, bytes_removed={})",
            if self.dry_run { "True" } else { "False" },
            self.packs_removed,
            self.packs_repacked,
            self.bytes_removed
        )
    }
}

/// What a repair did: chunk index files rebuilt from their packs, then a
/// verify of what is lost.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct RepairReport {
    /// Whether it was a dry run (nothing rewritten).
    dry_run: bool,
    /// Whether no point lost data and no manifest is unreadable.
    nothing_lost: bool,
    /// Packs examined.
    packs: u64,
    /// The packs whose index file was (or would be) rebuilt, with why.
    rebuilt: Vec<(String, String)>,
    /// Damaged chunks left out of the rebuilt index files (so that backups
    /// store them again).
    dropped: u64,
    /// Packs that cannot be read at all, with why.
    unreadable_packs: Vec<String>,
    /// The byte ranges of points' disks that cannot be restored.
    lost: Vec<Problem>,
    /// Other damage verify found.
    other: Vec<Problem>,
}

impl From<backup_core::RepairReport> for RepairReport {
    fn from(r: backup_core::RepairReport) -> Self {
        RepairReport {
            dry_run: r.dry_run,
            nothing_lost: r.nothing_lost(),
            packs: r.packs,
            dropped: r.rebuilt.iter().map(|i| i.dropped).sum(),
            rebuilt: r.rebuilt.into_iter().map(|i| (i.pack, i.why)).collect(),
            unreadable_packs: r.unreadable_packs,
            lost: r.lost.into_iter().map(Problem::from).collect(),
            other: r.other.into_iter().map(Problem::from).collect(),
        }
    }
}

#[pymethods]
impl RepairReport {
    fn __repr__(&self) -> String {
        format!(
            "RepairReport(nothing_lost={}, packs={}, rebuilt={}, lost={})",
            if self.nothing_lost { "True" } else { "False" },
            self.packs,
            self.rebuilt.len(),
            self.lost.len()
        )
    }
}
