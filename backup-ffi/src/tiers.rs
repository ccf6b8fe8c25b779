//! Instant-restore tiers: where a point can be restored from now, restores
//! from a snapshot kept after its job, and releasing kept snapshots whose
//! days are over. A backup keeps its snapshot when its job asks
//! (`vmb_job_set_instant_restore_days`) and the snapshot outlives the job
//! (reflink clones of image files).

use std::ffi::{CString, c_char};
use std::path::Path;

use backup_core::{KeptSnapshot, ReleaseReport};

use crate::point::vmb_point;
use crate::status::{
    Failure, FfiResult, arg_out, arg_ref, arg_str, c_string, ffi, ffi_free, nth, vmb_status, write_out,
};
use crate::vault::{hand_out_stats, restore_options, vmb_restore_stats, vmb_vault};

/// The point can be restored from the snapshot kept after its job.
pub const VMB_TIER_SNAPSHOT: u32 = 1;
/// The point is committed to the vault.
pub const VMB_TIER_VAULT: u32 = 2;

/// Where a point can be restored from now: `VMB_TIER_SNAPSHOT` while its
/// kept snapshot is there and unchanged, and `VMB_TIER_VAULT` (always, for
/// a point read from the vault), or-ed together into `out`. A damaged
/// snapshot record is an error (`VMB_ERR_CORRUPT` or `VMB_ERR_TAMPERED`)
/// naming it; the vault tier is not affected by it.
///
/// # Safety
/// `vault` and `point` are NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_point_tiers(
    vault: *const vmb_vault,
    point: *const vmb_point,
    out: *mut u32,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        let tiers = backup_core::point_tiers(&v.vault, &p.manifest)?;
        let mut bits = 0;
        for t in tiers {
            bits |= match t {
                backup_core::Tier::Snapshot => VMB_TIER_SNAPSHOT,
                _ => VMB_TIER_VAULT,
            };
        }
        write_out!(out, bits);
        Ok(())
    }
}

/// Restores the disk named `disk` (a name only, as in
/// `vmb_vault_restore_disk_to_file`) of a
/// point from the snapshot kept after its job: a reflink copy of the clone
/// where the file system allows, else a sparse copy, checked against the
/// size and time the clone had when kept. `*restored` is false, and nothing
/// is written, when the point has no usable snapshot tier: restore it from
/// the vault (`vmb_vault_restore_disk_to_file`) then. `job` and `stats`
/// may be NULL.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_restore_disk_from_snapshot(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    path: *const c_char,
    job: *const crate::job::vmb_job,
    stats: *mut vmb_restore_stats,
    restored: *mut bool,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let disk = p.disk_named(arg_str!(disk, "disk"))?;
        let path = arg_str!(path, "path");
        let restored = arg_out!(restored, "restored");
        crate::extensible::check_out!(stats, "stats");
        let options = restore_options(job);
        let r = backup_core::restore_disk_from_snapshot(&v.vault, &p.manifest, disk, Path::new(path), &options)?;
        write_out!(restored, r.is_some());
        if let Some(s) = r {
            hand_out_stats(stats, s)?;
        }
        Ok(())
    }
}

/// A kept snapshot as a release report hands it to C.
struct Kept {
    vm: CString,
    point: CString,
    expires: i64,
}

impl Kept {
    fn new(k: &KeptSnapshot) -> FfiResult<Kept> {
        Ok(Kept {
            vm: c_string(&k.vm, "vm name")?,
            point: c_string(&k.point, "point id")?,
            expires: k.expires.as_second(),
        })
    }
}

/// What `vmb_vault_release_expired` did. Immutable: accessors are
/// thread-safe; every string lives as long as the report.
pub struct vmb_release_report {
    /// The snapshots released, with why.
    released: Vec<(Kept, CString)>,
    /// The snapshots still kept.
    kept: Vec<Kept>,
    /// Snapshots that could not be released, and damaged records.
    problems: Vec<CString>,
}

impl vmb_release_report {
    fn new(r: ReleaseReport) -> FfiResult<vmb_release_report> {
        Ok(vmb_release_report {
            released: r
                .released
                .iter()
                .map(|(k, why)| Ok((Kept::new(k)?, c_string(why, "reason")?)))
                .collect::<FfiResult<_>>()?,
            kept: r.kept.iter().map(Kept::new).collect::<FfiResult<_>>()?,
            problems: r.problems.iter().map(|p| c_string(p, "problem")).collect::<FfiResult<_>>()?,
        })
    }
}

/// Releases the snapshots kept for instant restore whose days are over,
/// whose job ended without committing their point, or whose point was
/// pruned: removes each clone (only a file marked as this vault's clone of
/// that point and disk), then its record. Of `vm`'s points, or of every
/// VM's when `vm` is NULL. A snapshot that cannot be released is listed
/// among the report's problems and tried again next time; the call still
/// succeeds. Backups run this for their own VM when they end. The caller
/// frees the report with `vmb_release_report_free`.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say;
/// `vm` may be NULL.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_release_expired(
    vault: *const vmb_vault,
    vm: *const c_char,
    out: *mut *mut vmb_release_report,
) -> vmb_status {
    // SAFETY: the same contract, passed on.
    unsafe { vmb_vault_release_expired_at(vault, vm, jiff::Timestamp::now().as_second(), out) }
}

/// As `vmb_vault_release_expired`, with the time taken as now given in
/// seconds since the Unix epoch (for a host with its own clock, and for
/// tests).
///
/// # Safety
/// As `vmb_vault_release_expired`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_release_expired_at(
    vault: *const vmb_vault,
    vm: *const c_char,
    now_unix_seconds: i64,
    out: *mut *mut vmb_release_report,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let out = arg_out!(out, "out");
        let vm = if vm.is_null() { None } else { Some(arg_str!(vm, "vm name")) };
        let now = jiff::Timestamp::from_second(now_unix_seconds)
            .map_err(|e| Failure::invalid(format!("now_unix_seconds {now_unix_seconds}: {e}")))?;
        let report = backup_core::release_expired(&v.vault, vm, now)?;
        write_out!(out, Box::into_raw(Box::new(vmb_release_report::new(report)?)));
        Ok(())
    }
}

/// The number of snapshots released.
///
/// # Safety
/// `report` is NULL or a live report; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_released_count(
    report: *const vmb_release_report,
    out: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.released.len());
        Ok(())
    }
}

/// Released snapshot `index`: its VM, its point's id, and why it was
/// released ("expired", "job ended without its point", "point pruned").
///
/// # Safety
/// `report` is NULL or a live report; the other pointers are NULL or
/// writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_released(
    report: *const vmb_release_report,
    index: usize,
    vm: *mut *const c_char,
    point_id: *mut *const c_char,
    why: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let vm = arg_out!(vm, "vm");
        let point_id = arg_out!(point_id, "point_id");
        let why = arg_out!(why, "why");
        let (k, w) = nth(&r.released, index, "released snapshot", "report")?;
        write_out!(vm, k.vm.as_ptr());
        write_out!(point_id, k.point.as_ptr());
        write_out!(why, w.as_ptr());
        Ok(())
    }
}

/// The number of snapshots still kept.
///
/// # Safety
/// As `vmb_release_report_released_count`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_kept_count(
    report: *const vmb_release_report,
    out: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.kept.len());
        Ok(())
    }
}

/// Kept snapshot `index`: its VM, its point's id, and when it expires (in
/// whole seconds since the Unix epoch, rounded down: a release at that
/// second may still keep it, one second later releases it).
///
/// # Safety
/// `report` is NULL or a live report; the other pointers are NULL or
/// writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_kept(
    report: *const vmb_release_report,
    index: usize,
    vm: *mut *const c_char,
    point_id: *mut *const c_char,
    expires_unix_seconds: *mut i64,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let vm = arg_out!(vm, "vm");
        let point_id = arg_out!(point_id, "point_id");
        let expires = arg_out!(expires_unix_seconds, "expires_unix_seconds");
        let k = nth(&r.kept, index, "kept snapshot", "report")?;
        write_out!(vm, k.vm.as_ptr());
        write_out!(point_id, k.point.as_ptr());
        write_out!(expires, k.expires);
        Ok(())
    }
}

/// The number of problems: snapshots that could not be released, and
/// damaged records.
///
/// # Safety
/// As `vmb_release_report_released_count`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_problem_count(
    report: *const vmb_release_report,
    out: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.problems.len());
        Ok(())
    }
}

/// Problem `index`, as a sentence naming the snapshot or record.
///
/// # Safety
/// `report` is NULL or a live report; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_problem(
    report: *const vmb_release_report,
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

/// Frees a release report. NULL is ignored.
///
/// # Safety
/// `report` is NULL or a report from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_release_report_free(report: *mut vmb_release_report) {
    ffi_free! {
        if !report.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(report) });
        }
    }
}
