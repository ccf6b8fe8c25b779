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
}

impl vmb_point {
    pub(crate) fn new(manifest: PointManifest) -> FfiResult<vmb_point> {
        let disk_names =
            manifest.disks.iter().map(|d| c_string(&d.name, "disk name")).collect::<FfiResult<Vec<_>>>()?;
        let warnings = manifest.warnings.iter().map(|w| c_string(w, "warning")).collect::<FfiResult<Vec<_>>>()?;
        Ok(vmb_point {
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

/// What a backup did, summed over the point's disks.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmb_backup_stats {
    /// Bytes of disk covered.
    pub bytes_scanned: u64,
    /// Bytes read from the disks (unchanged and unallocated areas are not
    /// read).
    pub bytes_read: u64,
    /// Bytes of all-zero blocks (never stored).
    pub bytes_zero: u64,
    /// Bytes of blocks unchanged since the parent point.
    pub bytes_unchanged: u64,
    /// Bytes of blocks that changed or are new.
    pub bytes_new: u64,
    /// Bytes of new blocks the vault already held (deduplicated).
    pub bytes_deduplicated: u64,
    /// Bytes written for new chunks, after compression.
    pub bytes_stored: u64,
    /// Bytes the vault grew by for this point (packs, indexes, manifest).
    pub bytes_added: u64,
    /// Wall-clock seconds of the transfer (the slowest disk).
    pub seconds: f64,
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
        let t = &p.manifest.stats.totals;
        write_out!(out, vmb_backup_stats {
            bytes_scanned: t.bytes_scanned,
            bytes_read: t.bytes_read,
            bytes_zero: t.bytes_zero,
            bytes_unchanged: t.bytes_unchanged,
            bytes_new: t.bytes_new,
            bytes_deduplicated: t.bytes_deduplicated,
            bytes_stored: t.bytes_stored,
            bytes_added: p.manifest.stats.bytes_added,
            seconds: t.seconds,
        });
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
        let t = &p.disk(index)?.stats;
        write_out!(out, vmb_backup_stats {
            bytes_scanned: t.bytes_scanned,
            bytes_read: t.bytes_read,
            bytes_zero: t.bytes_zero,
            bytes_unchanged: t.bytes_unchanged,
            bytes_new: t.bytes_new,
            bytes_deduplicated: t.bytes_deduplicated,
            bytes_stored: t.bytes_stored,
            bytes_added: 0,
            seconds: t.seconds,
        });
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
}

impl vmb_verify_report {
    pub(crate) fn new(report: VerifyReport) -> vmb_verify_report {
        let problems = report
            .problems
            .iter()
            .map(|p| CString::new(p.to_string().replace('\0', " ")).unwrap_or_default())
            .collect();
        vmb_verify_report { report, problems }
    }
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
