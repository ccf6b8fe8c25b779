//! The read-only result objects: recovery points, their disks and
//! statistics, restore statistics, verify reports and their problems.

use backup_core::{DiskStats, PointManifest};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::errors::new_error;

/// A recovery point: a VM's disks at one instant, as committed to a vault.
///
/// Points compare equal when they name the same point of the same VM.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct RecoveryPoint {
    pub(crate) manifest: PointManifest,
}

impl RecoveryPoint {
    pub(crate) fn new(manifest: PointManifest) -> Self {
        RecoveryPoint { manifest }
    }
}

/// A string as Python's `repr` shows it (single quotes), for `__repr__`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn quote_opt(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "None".to_string(), quote)
}

/// `datetime.datetime(...)` in UTC for a timestamp.
pub(crate) fn utc_datetime<'py>(py: Python<'py>, ts: jiff::Timestamp) -> PyResult<Bound<'py, PyAny>> {
    static DATETIME: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static UTC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let class = DATETIME.import(py, "datetime", "datetime")?;
    let utc = UTC.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("datetime")?.getattr("timezone")?.getattr("utc")?.unbind())
    })?;
    let t = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    class.call1((
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.subsec_nanosecond() / 1000,
        utc.bind(py),
    ))
}

#[pymethods]
impl RecoveryPoint {
    /// The point's id: the snapshot's time and a random suffix.
    #[getter]
    fn id(&self) -> &str {
        &self.manifest.id
    }

    /// The VM's name.
    #[getter]
    fn vm(&self) -> &str {
        &self.manifest.vm
    }

    /// The VM's configuration stored with the point (a libvirt domain's
    /// XML), or None.
    #[getter]
    fn configuration(&self) -> Option<&str> {
        self.manifest.configuration.as_ref().map(|c| c.text.as_str())
    }

    /// What `configuration` is (`"libvirt-domain-xml"`), or None.
    #[getter]
    fn configuration_kind(&self) -> Option<&str> {
        self.manifest.configuration.as_ref().map(|c| c.kind.as_str())
    }

    /// When the snapshot was taken, as a time-zone aware `datetime` in UTC.
    #[getter]
    fn time<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        utc_datetime(py, self.manifest.time)
    }

    /// The consistency achieved: "crash", "filesystem" or "application".
    #[getter]
    fn consistency(&self) -> &'static str {
        self.manifest.consistency.as_str()
    }

    /// The consistency asked for.
    #[getter]
    fn wanted_consistency(&self) -> &'static str {
        self.manifest.wanted_consistency.as_str()
    }

    /// The id of the VM's previous point this one was compared against, or
    /// None for a VM's first point.
    #[getter]
    fn parent(&self) -> Option<&str> {
        self.manifest.parent.as_deref()
    }

    /// The disks, in the VM's order.
    #[getter]
    fn disks(&self) -> Vec<DiskInfo> {
        self.manifest
            .disks
            .iter()
            .map(|d| DiskInfo {
                name: d.name.clone(),
                size: d.size,
                block_size: d.block_size,
                snapshot_method: d.snapshot_method.clone(),
                stats: BackupStats::new(&d.stats, None),
            })
            .collect()
    }

    /// What the backup did, all disks added up, and `bytes_added`: all it
    /// added to the vault.
    #[getter]
    fn stats(&self) -> BackupStats {
        let s = &self.manifest.stats;
        BackupStats::new(&s.totals, Some(s.bytes_added))
    }

    /// What a user should know about how the point was made.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.manifest.warnings.clone()
    }

    fn __eq__(&self, other: PyRef<'_, RecoveryPoint>) -> bool {
        self.manifest.vm == other.manifest.vm && self.manifest.id == other.manifest.id
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.manifest.vm, &self.manifest.id).hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!(
            "RecoveryPoint(vm={}, id={}, consistency={}, disks={})",
            quote(&self.manifest.vm),
            quote(&self.manifest.id),
            quote(self.manifest.consistency.as_str()),
            self.manifest.disks.len()
        )
    }
}

/// One disk of a recovery point.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct DiskInfo {
    /// The disk's name within its VM.
    name: String,
    /// Its size in bytes.
    size: u64,
    /// The block size of its chain, in bytes.
    block_size: u32,
    /// How its snapshot was taken: "reflink", "in-place" or "python".
    snapshot_method: String,
    /// What the backup did for this disk.
    stats: BackupStats,
}

#[pymethods]
impl DiskInfo {
    fn __repr__(&self) -> String {
        format!("DiskInfo(name={:?}, size={}, block_size={})", self.name, self.size, self.block_size)
    }
}

/// What a backup did, for one disk (`DiskInfo.stats`) or a whole point
/// (`RecoveryPoint.stats`: the disks' figures added up). Each statistic has
/// the name and meaning it has in Rust (`backup_core::DiskStats`), C
/// (`vmb_backup_stats`) and the command line's `--json`.
#[pyclass(module = "vmbackup", frozen, get_all)]
#[derive(Clone)]
pub(crate) struct BackupStats {
    /// Bytes of the disks covered (their sizes).
    bytes_scanned: u64,
    /// Bytes read from the disks (unchanged and unallocated areas are not
    /// read).
    bytes_read: u64,
    /// Bytes in all-zero blocks and holes, never stored.
    bytes_zero: u64,
    /// Bytes in blocks equal to the previous point's.
    bytes_unchanged: u64,
    /// Bytes in blocks whose content was not in the previous point.
    bytes_new: u64,
    /// Of the new bytes, those the vault already held (deduplicated).
    bytes_deduplicated: u64,
    /// Bytes of chunk frames (compressed) and index segments written.
    bytes_stored: u64,
    /// Everything the point added to the vault: `bytes_stored` plus pack
    /// trailers, chunk index files and the manifest. A point's only: None
    /// for a disk.
    bytes_added: Option<u64>,
    /// Wall-clock seconds (for a point: of the slowest disk).
    seconds: f64,
    /// How changes were found: "none" (first backup), "compare", "cbt", or
    /// "cbt distrusted: why"; for a point, its disks' values each once,
    /// joined by ", ".
    change_detection: String,
    /// Bytes change tracking reported as changed (0 without it).
    bytes_dirty: u64,
    /// Blocks change tracking called clean that were re-read to audit it.
    audited_blocks: u64,
}

impl BackupStats {
    fn new(s: &DiskStats, bytes_added: Option<u64>) -> Self {
        BackupStats {
            bytes_scanned: s.bytes_scanned,
            bytes_read: s.bytes_read,
            bytes_zero: s.bytes_zero,
            bytes_unchanged: s.bytes_unchanged,
            bytes_new: s.bytes_new,
            bytes_deduplicated: s.bytes_deduplicated,
            bytes_stored: s.bytes_stored,
            bytes_added,
            seconds: s.seconds,
            change_detection: s.change_detection.clone(),
            bytes_dirty: s.bytes_dirty,
            audited_blocks: s.audited_blocks,
        }
    }
}

#[pymethods]
impl BackupStats {
    fn __repr__(&self) -> String {
        format!(
            "BackupStats(bytes_read={}, bytes_new={}, bytes_stored={}, seconds={:.3})",
            self.bytes_read, self.bytes_new, self.bytes_stored, self.seconds
        )
    }
}

/// What the restore of one disk did.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct RestoreStats {
    /// The disk's name.
    disk: String,
    /// Its size in bytes.
    size: u64,
    /// Bytes written to the target.
    bytes_written: u64,
    /// Bytes left as zeros (holes in a sparse file).
    bytes_zero: u64,
    /// Wall-clock seconds.
    seconds: f64,
    /// With `allow_damaged=True`: the byte ranges that could not be read
    /// and were written as zeros, as `(start, end, why)`; else empty.
    damaged: Vec<(u64, u64, String)>,
}

impl From<backup_core::RestoreStats> for RestoreStats {
    fn from(s: backup_core::RestoreStats) -> Self {
        RestoreStats {
            disk: s.disk,
            size: s.size,
            bytes_written: s.bytes_written,
            bytes_zero: s.bytes_zero,
            seconds: s.seconds,
            damaged: s.damaged.into_iter().map(|d| (d.range.start, d.range.end, d.detail)).collect(),
        }
    }
}

#[pymethods]
impl RestoreStats {
    fn __repr__(&self) -> String {
        format!("RestoreStats(disk={:?}, size={}, bytes_written={})", self.disk, self.size, self.bytes_written)
    }
}

/// A key slot of an encrypted vault: one passphrase or key file that
/// opens it.
#[pyclass(module = "vmbackup", frozen, get_all)]
pub(crate) struct KeySlot {
    /// The slot's id (8 hex digits), as `Vault.remove_key` takes it.
    id: String,
    /// `"passphrase"` or `"key_file"`.
    kind: String,
    /// When it was added, as RFC 3339 text in UTC.
    created: String,
}

impl From<backup_core::KeySlotInfo> for KeySlot {
    fn from(s: backup_core::KeySlotInfo) -> Self {
        let kind = match s.kind {
            backup_core::SlotKind::Passphrase => "passphrase",
            backup_core::SlotKind::KeyFile => "key_file",
        };
        KeySlot { id: s.id, kind: kind.to_string(), created: s.created.to_string() }
    }
}

#[pymethods]
impl KeySlot {
    fn __repr__(&self) -> String {
        format!("KeySlot(id={:?}, kind={:?}, created={:?})", self.id, self.kind, self.created)
    }
}

/// One thing verify found wrong.
#[pyclass(module = "vmbackup", frozen)]
#[derive(Clone)]
pub(crate) struct Problem {
    problem: backup_core::Problem,
}

impl From<backup_core::Problem> for Problem {
    fn from(problem: backup_core::Problem) -> Self {
        Problem { problem }
    }
}

#[pymethods]
impl Problem {
    /// The VM it hurts, when known.
    #[getter]
    fn vm(&self) -> Option<&str> {
        self.problem.vm.as_deref()
    }

    /// The point it hurts, when known.
    #[getter]
    fn point(&self) -> Option<&str> {
        self.problem.point.as_deref()
    }

    /// The disk it hurts, when known.
    #[getter]
    fn disk(&self) -> Option<&str> {
        self.problem.disk.as_deref()
    }

    /// The disk's bytes that cannot be restored as `(start, end)`, end
    /// exclusive; None when the damage is not tied to a disk (a damaged
    /// pack frame no point uses).
    #[getter]
    fn range(&self) -> Option<(u64, u64)> {
        self.problem.range.as_ref().map(|r| (r.start, r.end))
    }

    /// The first damaged byte, or None.
    #[getter]
    fn start(&self) -> Option<u64> {
        self.problem.range.as_ref().map(|r| r.start)
    }

    /// One past the last damaged byte, or None.
    #[getter]
    fn end(&self) -> Option<u64> {
        self.problem.range.as_ref().map(|r| r.end)
    }

    /// What is wrong, naming the damaged object.
    #[getter]
    fn what(&self) -> &str {
        &self.problem.what
    }

    /// Whether a sealed object of an encrypted vault failed authentication
    /// (changed on purpose, swapped or forged).
    #[getter]
    fn tampered(&self) -> bool {
        self.problem.is_tampered()
    }

    fn __str__(&self) -> String {
        self.problem.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Problem(vm={}, disk={}, range={}, what={})",
            quote_opt(&self.problem.vm),
            quote_opt(&self.problem.disk),
            self.problem.range.as_ref().map_or_else(|| "None".to_string(), |r| format!("({}, {})", r.start, r.end)),
            quote(&self.problem.what)
        )
    }
}

impl Problem {
    /// The problem as a `CorruptionError`.
    fn to_error(&self, py: Python<'_>) -> PyErr {
        let p = &self.problem;
        let opt_str = |s: &Option<String>| -> Bound<'_, PyAny> {
            match s {
                Some(s) => pyo3::types::PyString::new(py, s).into_any(),
                None => py.None().into_bound(py),
            }
        };
        let opt_u64 = |v: Option<u64>| -> Bound<'_, PyAny> {
            match v.map(|v| v.into_pyobject(py)) {
                Some(Ok(v)) => v.into_any(),
                _ => py.None().into_bound(py),
            }
        };
        new_error(
            py,
            "CorruptionError",
            (p.to_string(),),
            &[
                ("vm", opt_str(&p.vm)),
                ("point", opt_str(&p.point)),
                ("disk", opt_str(&p.disk)),
                ("start", opt_u64(p.range.as_ref().map(|r| r.start))),
                ("end", opt_u64(p.range.as_ref().map(|r| r.end))),
            ],
        )
    }
}

/// What verify found.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct VerifyReport {
    report: backup_core::VerifyReport,
}

impl From<backup_core::VerifyReport> for VerifyReport {
    fn from(report: backup_core::VerifyReport) -> Self {
        VerifyReport { report }
    }
}

#[pymethods]
impl VerifyReport {
    /// Whether nothing was found wrong.
    #[getter]
    fn ok(&self) -> bool {
        self.report.ok()
    }

    /// Everything found wrong; empty when all is well.
    #[getter]
    fn problems(&self) -> Vec<Problem> {
        self.report.problems.iter().map(|p| Problem { problem: p.clone() }).collect()
    }

    /// Points checked.
    #[getter]
    fn points(&self) -> u64 {
        self.report.points
    }

    /// Distinct chunks checked.
    #[getter]
    fn chunks(&self) -> u64 {
        self.report.chunks
    }

    /// Packs read whole (whole-vault verify only).
    #[getter]
    fn packs(&self) -> u64 {
        self.report.packs
    }

    /// Bytes of disk covered by the checked points.
    #[getter]
    fn bytes(&self) -> u64 {
        self.report.bytes
    }

    /// Raises `CorruptionError` for the first problem (preferring one with
    /// a byte range); does nothing when all is well.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let first = self.report.problems.iter().find(|p| p.range.is_some()).or(self.report.problems.first());
        match first {
            Some(p) => Err(Problem { problem: p.clone() }.to_error(py)),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "VerifyReport(ok={}, points={}, chunks={}, problems={})",
            if self.report.ok() { "True" } else { "False" },
            self.report.points,
            self.report.chunks,
            self.report.problems.len()
        )
    }
}
