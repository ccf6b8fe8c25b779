//! Recovery points as seen from C: a point handle with accessors, a list of
//! points, and the report of a verify.

use std::ffi::{CString, c_char};

use backup_core::{PointManifest, VerifyReport};

use crate::job::{consistency_to_c, vmb_consistency};
use crate::status::{Failure, FfiResult, arg_out, arg_ref, c_string, ffi, ffi_free, nth, vmb_status, write_out};

/// A recovery point (a copy of its manifest). Immutable: every accessor is
/// thread-safe. Strings it hands out live as long as the point.
pub struct vmb_point {
    pub(crate) manifest: PointManifest,
    id: CString,
    vm: CString,
    time: CString,
    parent: Option<CString>,
    disk_names: Vec<CString>,
    warnings: Vec<CString>,
    configuration: Option<(CString, CString)>,
    /// The point's `change_detection`, then each disk's.
    change_detection: CString,
    disk_change_detection: Vec<CString>,
    snapshot_methods: Vec<CString>,
}

impl vmb_point {
    pub(crate) fn new(manifest: PointManifest) -> FfiResult<vmb_point> {
        let disk_names =
            manifest.disks.iter().map(|d| c_string(&d.name, "disk name")).collect::<FfiResult<Vec<_>>>()?;
        let warnings = manifest.warnings.iter().map(|w| c_string(w, "warning")).collect::<FfiResult<Vec<_>>>()?;
        let disk_change_detection = manifest
            .disks
            .iter()
            .map(|d| c_string(&d.stats.change_detection, "change detection"))
            .collect::<FfiResult<Vec<_>>>()?;
        let snapshot_methods = manifest
            .disks
            .iter()
            .map(|d| c_string(&d.snapshot_method, "snapshot method"))
            .collect::<FfiResult<Vec<_>>>()?;
        Ok(vmb_point {
            snapshot_methods,
            change_detection: c_string(&manifest.stats.totals.change_detection, "change detection")?,
            disk_change_detection,
            id: c_string(&manifest.id, "point id")?,
            vm: c_string(&manifest.vm, "vm name")?,
            time: c_string(&manifest.time.to_string(), "time")?,
            parent: manifest.parent.as_deref().map(|p| c_string(p, "parent point id")).transpose()?,
            disk_names,
            warnings,
            configuration: manifest
                .configuration
                .as_ref()
                .map(|c| {
                    Ok::<_, Failure>((c_string(&c.kind, "configuration kind")?, c_string(&c.text, "configuration")?))
                })
                .transpose()?,
            manifest,
        })
    }

    pub(crate) fn into_raw(self) -> *mut vmb_point {
        Box::into_raw(Box::new(self))
    }

    /// The disk named `name`, by its name only: a disk named "1" is never
    /// confused with disk 1, whose name `vmb_point_disk_name` gives.
    pub(crate) fn disk_named<'a>(&self, name: &'a str) -> FfiResult<&'a str> {
        if self.manifest.disks.iter().any(|d| d.name == name) {
            return Ok(name);
        }
        Err(Failure::new(
            crate::status::vmb_status::VMB_ERR_NOT_FOUND,
            format!(
                "disk {name} not found in point {} of vm {} (it has: {}); a disk is named, and vmb_point_disk_name gives the name of disk N",
                self.manifest.id,
                self.manifest.vm,
                self.manifest.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    fn disk(&self, index: usize) -> FfiResult<&backup_core::DiskRecord> {
        self.manifest.disks.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "disk index {index}: point {} has {} disks",
                self.manifest.id,
                self.manifest.disks.len()
            ))
        })
    }
}

/// What a backup did, for one disk (`vmb_point_disk_stats`) or a whole
/// point (`vmb_point_stats`: the disks' figures added up). Each field has
/// the name and meaning it has in Rust (`backup_core::DiskStats`), Python
/// (`BackupStats`) and the command line's `--json`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmb_backup_stats {
    /// Set by the caller before the call: `sizeof(struct vmb_backup_stats)`, or 0 for
    /// the first layout (0.1); the library fills that much and sets it to
    /// the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// Bytes of disk covered (the disks' sizes).
    pub bytes_scanned: u64,
    /// Bytes read from the disks (unchanged and unallocated areas are not
    /// read).
    pub bytes_read: u64,
    /// Bytes in all-zero blocks and holes (never stored).
    pub bytes_zero: u64,
    /// Bytes in blocks equal to the previous point's.
    pub bytes_unchanged: u64,
    /// Bytes in blocks whose content was not in the previous point.
    pub bytes_new: u64,
    /// Of the new bytes, those the vault already held (deduplicated).
    pub bytes_deduplicated: u64,
    /// Bytes of chunk frames (compressed) and index segments written.
    pub bytes_stored: u64,
    /// Everything the point added to the vault: `bytes_stored` plus pack
    /// trailers, chunk index files and the manifest. A point's only: 0 for
    /// a disk.
    pub bytes_added: u64,
    /// Wall-clock seconds (for a point: of the slowest disk).
    pub seconds: f64,
    /// Bytes change tracking reported as changed (0 without it).
    pub bytes_dirty: u64,
    /// Blocks change tracking called clean that were re-read to audit it.
    pub audited_blocks: u64,
    /// How changes were found: "none" (first backup), "compare", "cbt" or
    /// "cbt distrusted: why"; for a point, its disks' values each once,
    /// joined by ", ". Lives as long as the point.
    pub change_detection: *const c_char,
}

impl vmb_backup_stats {
    fn of(s: &backup_core::DiskStats, bytes_added: u64, change_detection: &CString) -> vmb_backup_stats {
        vmb_backup_stats {
            struct_size: 0,
            bytes_scanned: s.bytes_scanned,
            bytes_read: s.bytes_read,
            bytes_zero: s.bytes_zero,
            bytes_unchanged: s.bytes_unchanged,
            bytes_new: s.bytes_new,
            bytes_deduplicated: s.bytes_deduplicated,
            bytes_stored: s.bytes_stored,
            bytes_added,
            seconds: s.seconds,
            bytes_dirty: s.bytes_dirty,
            audited_blocks: s.audited_blocks,
            change_detection: change_detection.as_ptr(),
        }
    }
}

/// Frees a point. NULL is ignored.
///
/// # Safety
/// `point` is NULL or a point from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_free(point: *mut vmb_point) {
    ffi_free! {
        if !point.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(point) });
        }
    }
}

/// The point's id (NUL-terminated, lives as long as the point).
///
/// # Safety
/// `point` is NULL or a live point; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_id(point: *const vmb_point, out: *mut *const c_char) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.id.as_ptr());
        Ok(())
    }
}

/// The VM's configuration stored with the point, when its provider gave
/// one: `*kind` is what it is (`libvirt-domain-xml`) and `*text` the
/// configuration itself; both NULL when the point has none. They live as
/// long as the point.
///
/// # Safety
/// `point` is NULL or a live point; `kind` and `text` are NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_configuration(
    point: *const vmb_point,
    kind: *mut *const c_char,
    text: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let kind = arg_out!(kind, "kind");
        let text = arg_out!(text, "text");
        let (k, t) = p.configuration.as_ref().map_or((std::ptr::null(), std::ptr::null()), |(k, t)| (k.as_ptr(), t.as_ptr()));
        write_out!(kind, k);
        write_out!(text, t);
        Ok(())
    }
}

/// The name of the point's VM (lives as long as the point).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_vm(point: *const vmb_point, out: *mut *const c_char) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.vm.as_ptr());
        Ok(())
    }
}

/// The id of the point this one was taken against (the VM's previous point),
/// or NULL for a VM's first point (lives as long as the point).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_parent(point: *const vmb_point, out: *mut *const c_char) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.parent.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()));
        Ok(())
    }
}

/// When the snapshot was taken, in seconds since the Unix epoch (UTC).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_time(point: *const vmb_point, out: *mut i64) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.manifest.time.as_second());
        Ok(())
    }
}

/// When the snapshot was taken, as RFC 3339 text in UTC (lives as long as
/// the point).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_time_text(point: *const vmb_point, out: *mut *const c_char) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.time.as_ptr());
        Ok(())
    }
}

/// The consistency the snapshot really achieved.
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_consistency(point: *const vmb_point, out: *mut vmb_consistency) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, consistency_to_c(p.manifest.consistency));
        Ok(())
    }
}

/// The consistency the backup asked for.
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_wanted_consistency(
    point: *const vmb_point,
    out: *mut vmb_consistency,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, consistency_to_c(p.manifest.wanted_consistency));
        Ok(())
    }
}

/// The number of disks in the point.
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_disk_count(point: *const vmb_point, out: *mut usize) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.manifest.disks.len());
        Ok(())
    }
}

/// The name of disk `index` (lives as long as the point).
///
/// # Errors
/// `VMB_ERR_INVALID_ARGUMENT` when `index` is not below the disk count.
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_disk_name(
    point: *const vmb_point,
    index: usize,
    out: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        p.disk(index)?;
        let name = p.disk_names.get(index).ok_or_else(|| Failure::invalid("disk index"))?;
        write_out!(out, name.as_ptr());
        Ok(())
    }
}

/// The size in bytes of disk `index`.
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_disk_size(point: *const vmb_point, index: usize, out: *mut u64) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.disk(index)?.size);
        Ok(())
    }
}

/// The block size in bytes of disk `index` (its chain's, fixed at its
/// first point).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_disk_block_size(point: *const vmb_point, index: usize, out: *mut u32) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.disk(index)?.block_size);
        Ok(())
    }
}

/// How the snapshot of disk `index` was taken ("reflink", "in-place",
/// "host", "libvirt-backup", ...; lives as long as the point).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_disk_snapshot_method(
    point: *const vmb_point,
    index: usize,
    out: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        p.disk(index)?;
        let m = nth(&p.snapshot_methods, index, "disk", "point")?;
        write_out!(out, m.as_ptr());
        Ok(())
    }
}

/// The statistics of the whole point.
///
/// # Safety
/// As `vmb_point_id`; `out` points to a writable `vmb_backup_stats`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_stats(point: *const vmb_point, out: *mut vmb_backup_stats) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        crate::extensible::check_out!(out, "out");
        let s = &p.manifest.stats;
        crate::extensible::fill_out!(out, vmb_backup_stats::of(&s.totals, s.bytes_added, &p.change_detection));
        Ok(())
    }
}

/// The statistics of disk `index` (`bytes_added` is 0: it is counted per
/// point).
///
/// # Safety
/// As `vmb_point_stats`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_disk_stats(
    point: *const vmb_point,
    index: usize,
    out: *mut vmb_backup_stats,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        let stats = &p.disk(index)?.stats;
        let method = p.disk_change_detection.get(index).ok_or_else(|| Failure::invalid("disk index"))?;
        crate::extensible::check_out!(out, "out");
        crate::extensible::fill_out!(out, vmb_backup_stats::of(stats, 0, method));
        Ok(())
    }
}

/// The number of warnings recorded in the point (fallbacks, in-place
/// reads, distrusted change tracking).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_warning_count(point: *const vmb_point, out: *mut usize) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        write_out!(out, p.warnings.len());
        Ok(())
    }
}

/// Warning `index` (lives as long as the point).
///
/// # Safety
/// As `vmb_point_id`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_warning(
    point: *const vmb_point,
    index: usize,
    out: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        let w = nth(&p.warnings, index, "warning", "point")?;
        write_out!(out, w.as_ptr());
        Ok(())
    }
}

/// A list of points, oldest first. Immutable: accessors are thread-safe.
pub struct vmb_point_list {
    pub(crate) points: Vec<PointManifest>,
}

/// The number of points in the list.
///
/// # Safety
/// `list` is NULL or a live list; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_list_len(list: *const vmb_point_list, out: *mut usize) -> vmb_status {
    ffi! {
        let l = arg_ref!(list, "list");
        let out = arg_out!(out, "out");
        write_out!(out, l.points.len());
        Ok(())
    }
}

/// A new point handle for entry `index` of the list (0 is the oldest); the
/// caller frees it with `vmb_point_free`, independently of the list.
///
/// # Safety
/// As `vmb_point_list_len`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_list_get(
    list: *const vmb_point_list,
    index: usize,
    out: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let l = arg_ref!(list, "list");
        let out = arg_out!(out, "out");
        let m = nth(&l.points, index, "point", "list")?;
        write_out!(out, vmb_point::new(m.clone())?.into_raw());
        Ok(())
    }
}

/// Frees a list. NULL is ignored. Points taken from it stay valid.
///
/// # Safety
/// `list` is NULL or a list from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_point_list_free(list: *mut vmb_point_list) {
    ffi_free! {
        if !list.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(list) });
        }
    }
}

/// What a verify found. Immutable: accessors are thread-safe.
pub struct vmb_verify_report {
    report: VerifyReport,
    problems: Vec<CString>,
    details: Vec<ProblemStrings>,
}

/// The strings of one problem's fields, owned by the report.
struct ProblemStrings {
    vm: Option<CString>,
    point: Option<CString>,
    disk: Option<CString>,
    what: CString,
}

/// A C string of report text; a NUL inside (never written by the engine)
/// becomes a space rather than losing the text.
fn text(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

impl vmb_verify_report {
    pub(crate) fn new(report: VerifyReport) -> vmb_verify_report {
        let problems = report.problems.iter().map(|p| text(&p.to_string())).collect();
        let details = report
            .problems
            .iter()
            .map(|p| ProblemStrings {
                vm: p.vm.as_deref().map(text),
                point: p.point.as_deref().map(text),
                disk: p.disk.as_deref().map(text),
                what: text(&p.what),
            })
            .collect();
        vmb_verify_report { report, problems, details }
    }
}

/// One problem verify found, as fields. Strings live as long as the
/// report; one that is not known is NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmb_verify_problem {
    /// Set by the caller before the call: `sizeof(struct vmb_verify_problem)`, or 0 for
    /// the first layout (0.1); the library fills that much and sets it to
    /// the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// The VM it hurts, or NULL (a problem of the vault itself).
    pub vm: *const c_char,
    /// The point it hurts, or NULL.
    pub point: *const c_char,
    /// The disk it hurts, or NULL.
    pub disk: *const c_char,
    /// Whether `start` and `end` are known.
    pub has_range: bool,
    /// The first byte of the disk that cannot be restored.
    pub start: u64,
    /// The byte after the last one that cannot be restored.
    pub end: u64,
    /// What is wrong, naming the damaged object.
    pub what: *const c_char,
    /// Whether a sealed object of an encrypted vault failed authentication
    /// (changed on purpose, swapped or forged) rather than being damaged by
    /// chance.
    pub tampered: bool,
}

/// Whether nothing was found wrong.
///
/// # Safety
/// `report` is NULL or a live report; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_verify_report_ok(report: *const vmb_verify_report, out: *mut bool) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.report.ok());
        Ok(())
    }
}

/// The number of points checked.
///
/// # Safety
/// As `vmb_verify_report_ok`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_verify_report_points(report: *const vmb_verify_report, out: *mut u64) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.report.points);
        Ok(())
    }
}

/// The number of problems found.
///
/// # Safety
/// As `vmb_verify_report_ok`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_verify_report_problem_count(
    report: *const vmb_verify_report,
    out: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.problems.len());
        Ok(())
    }
}

/// Problem `index`, as one line naming the VM, point, disk and byte range
/// when known (lives as long as the report).
///
/// # Safety
/// As `vmb_verify_report_ok`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_verify_report_problem(
    report: *const vmb_verify_report,
    index: usize,
    out: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        let p = nth(&r.problems, index, "problem", "report")?;
        write_out!(out, p.as_ptr());
        Ok(())
    }
}

/// Problem `index` as fields: the VM, point, disk and byte range it hurts
/// (each when known), what is wrong, and whether it was tampered with.
///
/// # Safety
/// As `vmb_verify_report_ok`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_verify_report_problem_detail(
    report: *const vmb_verify_report,
    index: usize,
    out: *mut vmb_verify_problem,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        let p = nth(&r.report.problems, index, "problem", "report")?;
        let s = nth(&r.details, index, "problem", "report")?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        crate::extensible::check_out!(out, "out");
        crate::extensible::fill_out!(out, vmb_verify_problem {
            struct_size: 0,
            vm: ptr(&s.vm),
            point: ptr(&s.point),
            disk: ptr(&s.disk),
            has_range: p.range.is_some(),
            start: p.range.as_ref().map_or(0, |r| r.start),
            end: p.range.as_ref().map_or(0, |r| r.end),
            what: s.what.as_ptr(),
            tampered: p.tampered,
        });
        Ok(())
    }
}

/// Frees a verify report. NULL is ignored.
///
/// # Safety
/// `report` is NULL or a report from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_verify_report_free(report: *mut vmb_verify_report) {
    ffi_free! {
        if !report.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(report) });
        }
    }
}

crate::extensible::extensible!(vmb_backup_stats, change_detection: *const c_char);

crate::extensible::extensible!(vmb_verify_problem, tampered: bool);
