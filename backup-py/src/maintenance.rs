//! What `Vault.prune` and `Vault.gc` report.

use pyo3::prelude::*;

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
}

impl From<backup_core::GcReport> for GcReport {
    fn from(r: backup_core::GcReport) -> Self {
        GcReport {
            dry_run: r.dry_run,
            points: r.points,
            packs_removed: r.packs_removed,
            packs_repacked: r.packs_repacked,
            segments_removed: r.segments_removed,
            chunks_removed: r.chunks_removed,
            bytes_removed: r.chunk_bytes_removed + r.segment_bytes_removed,
            bytes_copied: r.chunk_bytes_copied,
            protected: r.protected,
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
