//! Keeping a vault in shape: prune by a policy's retention rules, then
//! garbage collection of what no point references; repair of a damaged
//! vault.

use std::ffi::{CString, c_char};
use std::time::Duration;

use backup_core::{GcOptions, GcReport, Policy, PruneOptions, PruneReport, RepairOptions, RepairReport};

use crate::status::{Failure, arg_out, arg_ref, arg_str, c_string, ffi, ffi_free, nth, vmb_status, write_out};
use crate::vault::vmb_vault;

/// What a prune did (or, in a dry run, would do). Immutable: accessors are
/// thread-safe.
pub struct vmb_prune_report {
    report: PruneReport,
    kept: usize,
    /// (vm, point id) of each removed point.
    removed: Vec<(CString, CString)>,
}

/// A backup policy (schedule and retention), parsed and checked. Made by
/// `vmb_policy_parse` or `vmb_policy_load`, applied by `vmb_vault_prune_by`,
/// freed with `vmb_policy_free`. Immutable: usable from any thread.
pub struct vmb_policy {
    policy: Policy,
    /// The `[copy]` section's target, for `vmb_policy_copy_to`.
    copy_to: Option<CString>,
}

impl vmb_policy {
    fn new(policy: Policy) -> Result<vmb_policy, Failure> {
        let copy_to = policy.copy.as_ref().map(|c| c_string(&c.to, "copy target")).transpose()?;
        Ok(vmb_policy { policy, copy_to })
    }
}

/// Parses a policy from TOML text (the format of `vmbackup policy check`).
/// A bad policy is `VMB_ERR_INVALID_ARGUMENT`, and `vmb_last_error` names
/// the field.
///
/// # Safety
/// `toml` is NULL or NUL-terminated; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_policy_parse(toml: *const c_char, out: *mut *mut vmb_policy) -> vmb_status {
    ffi! {
        let text = arg_str!(toml, "policy");
        let out = arg_out!(out, "out");
        let policy = Policy::from_toml_str(text)?;
        write_out!(out, Box::into_raw(Box::new(vmb_policy::new(policy)?)));
        Ok(())
    }
}

/// Reads and parses a policy file.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_policy_load(path: *const c_char, out: *mut *mut vmb_policy) -> vmb_status {
    ffi! {
        let path = arg_str!(path, "path");
        let out = arg_out!(out, "out");
        let policy = Policy::from_file(path)?;
        write_out!(out, Box::into_raw(Box::new(vmb_policy::new(policy)?)));
        Ok(())
    }
}

/// The second site the policy's `[copy]` section names (a folder or a
/// URL), where a host copies each new point after its backup with
/// `vmb_vault_copy`; NULL when the policy has none. The string lives as
/// long as the policy.
///
/// # Safety
/// `policy` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_policy_copy_to(policy: *const vmb_policy, out: *mut *const c_char) -> vmb_status {
    ffi! {
        let p = arg_ref!(policy, "policy");
        let out = arg_out!(out, "out");
        write_out!(out, p.copy_to.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()));
        Ok(())
    }
}

/// Frees a policy; NULL is ignored.
///
/// # Safety
/// `policy` is NULL or from `vmb_policy_parse`/`vmb_policy_load`, not
/// freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_policy_free(policy: *mut vmb_policy) {
    ffi_free! {
        if !policy.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(policy) });
        }
    }
}

/// As `vmb_vault_prune`, with a parsed policy.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say;
/// `vm` may be NULL.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_prune_by(
    vault: *const vmb_vault,
    policy: *const vmb_policy,
    vm: *const c_char,
    dry_run: bool,
    out: *mut *mut vmb_prune_report,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let policy = arg_ref!(policy, "policy");
        let out = arg_out!(out, "out");
        let vm = if vm.is_null() { None } else { Some(arg_str!(vm, "vm name").to_string()) };
        write_out!(out, prune_with(v, &policy.policy.retention, vm, dry_run)?);
        Ok(())
    }
}

/// Prunes and makes the report handed to C.
fn prune_with(
    v: &vmb_vault,
    retention: &backup_core::Retention,
    vm: Option<String>,
    dry_run: bool,
) -> Result<*mut vmb_prune_report, Failure> {
    let mut options = PruneOptions::default();
    options.vm = vm;
    options.dry_run = dry_run;
    let plan = backup_core::prune_plan(&v.vault, retention, jiff::Timestamp::now(), &options)?;
    let report = backup_core::prune(&v.vault, &plan)?;
    let removed = report
        .removed
        .iter()
        .map(|p| Ok((c_string(&p.vm, "vm name")?, c_string(&p.id, "point id")?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    let kept = plan.to_keep().count();
    Ok(Box::into_raw(Box::new(vmb_prune_report { report, kept, removed })))
}

/// Prunes the vault by the retention rules of a policy given as TOML text
/// (the format of `vmbackup policy check`; only `timezone` and
/// `[retention]` are needed, a `[schedule]` is checked when present): removes the manifests of the
/// points the rules do not keep (the newest point of a VM is always kept)
/// and the logs of finished jobs whose point is gone once they are older
/// than the policy's `job_logs` days. Only `vm`'s points when `vm` is not
/// NULL. With `dry_run`, removes nothing and reports what it would remove.
/// The space is reclaimed by `vmb_vault_gc` afterwards. The caller frees
/// the report with `vmb_prune_report_free`.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say;
/// `vm` may be NULL.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_prune(
    vault: *const vmb_vault,
    policy_toml: *const c_char,
    vm: *const c_char,
    dry_run: bool,
    out: *mut *mut vmb_prune_report,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let text = arg_str!(policy_toml, "policy");
        let out = arg_out!(out, "out");
        let retention = Policy::retention_from_toml_str(text)?;
        let vm = if vm.is_null() { None } else { Some(arg_str!(vm, "vm name").to_string()) };
        write_out!(out, prune_with(v, &retention, vm, dry_run)?);
        Ok(())
    }
}

/// The number of points removed (or that a dry run would remove).
///
/// # Safety
/// `report` is NULL or a live report; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_prune_report_removed_count(
    report: *const vmb_prune_report,
    out: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.removed.len());
        Ok(())
    }
}

/// Removed point `index`: its VM and id (both live as long as the report).
///
/// # Safety
/// `report` is NULL or a live report; `vm` and `point_id` are NULL or
/// writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_prune_report_removed(
    report: *const vmb_prune_report,
    index: usize,
    vm: *mut *const c_char,
    point_id: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let vm = arg_out!(vm, "vm");
        let point_id = arg_out!(point_id, "point_id");
        let (v, p) = nth(&r.removed, index, "removed point", "report")?;
        write_out!(vm, v.as_ptr());
        write_out!(point_id, p.as_ptr());
        Ok(())
    }
}

/// The number of points the rules keep.
///
/// # Safety
/// As `vmb_prune_report_removed_count`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_prune_report_kept_count(report: *const vmb_prune_report, out: *mut usize) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.kept);
        Ok(())
    }
}

/// The number of job logs removed (or that a dry run would remove).
///
/// # Safety
/// As `vmb_prune_report_removed_count`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_prune_report_job_logs_removed(
    report: *const vmb_prune_report,
    out: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(report, "report");
        let out = arg_out!(out, "out");
        write_out!(out, r.report.job_logs_removed.len());
        Ok(())
    }
}

/// Frees a prune report. NULL is ignored.
///
/// # Safety
/// `report` is NULL or a report from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_prune_report_free(report: *mut vmb_prune_report) {
    ffi_free! {
        if !report.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(report) });
        }
    }
}

/// What a garbage collection did (or, in a dry run, would do).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmb_gc_stats {
    /// Set by the caller before the call: `sizeof(struct vmb_gc_stats)`, or 0 for
    /// the first layout (0.1); the library fills that much and sets it to
    /// the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// Points whose objects were kept.
    pub points: u64,
    /// Packs removed whole (no live chunk).
    pub packs_removed: u64,
    /// Packs rewritten without their dead chunks.
    pub packs_repacked: u64,
    /// Unreferenced index segments removed.
    pub segments_removed: u64,
    /// Chunk copies no longer stored.
    pub chunks_removed: u64,
    /// Bytes freed: dead chunk frames and segments.
    pub bytes_removed: u64,
    /// Live chunk bytes copied into new packs by repacking.
    pub bytes_copied: u64,
    /// Objects spared because they are newer than the grace period.
    pub protected: u64,
    /// Soft-deleted points whose days are not over: their data was kept
    /// (appended after 0.1).
    pub deleted_points_kept: u64,
    /// Soft-deleted points whose days were over, removed for good.
    pub deleted_points_purged: u64,
}

impl From<&GcReport> for vmb_gc_stats {
    fn from(r: &GcReport) -> Self {
        vmb_gc_stats {
            struct_size: 0,
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

/// Removes what no point references: whole dead packs, packs mostly dead
/// are rewritten without their dead chunks, unreferenced segments, and
/// leftovers of killed backups. Objects younger than `grace_seconds` are
/// spared (backups in flight may be about to name them; 3600 is the
/// command line's default). With `dry_run`, removes nothing. `out` may be
/// NULL.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_gc(
    vault: *const vmb_vault,
    grace_seconds: u64,
    dry_run: bool,
    out: *mut vmb_gc_stats,
) -> vmb_status {
    // SAFETY: the same contract, passed on.
    unsafe { vmb_vault_gc_repack(vault, grace_seconds, GcOptions::default().repack_threshold, dry_run, out) }
}

/// As `vmb_vault_gc`, with the share (0 to 1) of a pack's chunk bytes that
/// must be dead for it to be rewritten without them (`vmb_vault_gc` uses
/// 0.5; 0 rewrites every pack with a dead chunk, 1 none). On a vault on
/// object storage a run marks what is dead and a later run removes it.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_gc_repack(
    vault: *const vmb_vault,
    grace_seconds: u64,
    repack_threshold: f64,
    dry_run: bool,
    out: *mut vmb_gc_stats,
) -> vmb_status {
    // SAFETY: the same contract, passed on.
    unsafe { gc_with(vault, grace_seconds, repack_threshold, dry_run, None, out) }
}

/// As `vmb_vault_gc_repack`, judging whether soft-deleted points' days are
/// over as if it were `now` (Unix seconds): a rehearsal of what gc will do
/// then, or a fake clock for tests. Packs' grace period still counts from
/// the real clock.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_gc_at(
    vault: *const vmb_vault,
    grace_seconds: u64,
    repack_threshold: f64,
    dry_run: bool,
    now: i64,
    out: *mut vmb_gc_stats,
) -> vmb_status {
    // SAFETY: the same contract, passed on.
    unsafe { gc_with(vault, grace_seconds, repack_threshold, dry_run, Some(now), out) }
}

/// The gc entry points' one body.
///
/// # Safety
/// As `vmb_vault_gc_repack`.
unsafe fn gc_with(
    vault: *const vmb_vault,
    grace_seconds: u64,
    repack_threshold: f64,
    dry_run: bool,
    now: Option<i64>,
    out: *mut vmb_gc_stats,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        crate::extensible::check_out!(out, "out");
        let mut options = GcOptions::default();
        options.grace = Duration::from_secs(grace_seconds);
        options.repack_threshold = repack_threshold;
        options.dry_run = dry_run;
        options.now = match now {
            None => None,
            Some(t) => Some(std::time::SystemTime::from(jiff::Timestamp::from_second(t).map_err(|e| {
                crate::status::Failure::invalid(format!("now {t}: {e}"))
            })?)),
        };
        let report = backup_core::gc(&v.vault, &options)?;
        crate::extensible::fill_out!(out, vmb_gc_stats::from(&report));
        Ok(())
    }
}

/// What a repair did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmb_repair_stats {
    /// Set by the caller before the call: `sizeof(struct vmb_repair_stats)`, or 0 for
    /// the first layout (0.1); the library fills that much and sets it to
    /// the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// Packs examined.
    pub packs: u64,
    /// Chunk index files rebuilt (or, in a dry run, that would be).
    pub rebuilt: u64,
    /// Damaged chunks left out of the rebuilt index files, so that backups
    /// store them again.
    pub dropped: u64,
    /// Packs that cannot be read at all.
    pub unreadable_packs: u64,
    /// Byte ranges of points' disks that cannot be restored.
    pub lost_ranges: u64,
    /// Other damage found (unreadable manifests, damaged frames).
    pub other_problems: u64,
    /// Whether no point lost data and no manifest is unreadable.
    pub nothing_lost: bool,
}

impl From<&RepairReport> for vmb_repair_stats {
    fn from(r: &RepairReport) -> Self {
        vmb_repair_stats {
            struct_size: 0,
            packs: r.packs,
            rebuilt: r.rebuilt.len() as u64,
            dropped: r.rebuilt.iter().map(|i| i.dropped).sum(),
            unreadable_packs: r.unreadable_packs.len() as u64,
            lost_ranges: r.lost.len() as u64,
            other_problems: r.other.len() as u64,
            nothing_lost: r.nothing_lost(),
        }
    }
}

/// Rebuilds the chunk index files from the packs (leaving damaged chunks
/// out, so that backups store them again), then verifies the vault and
/// counts what is lost: `vmb_vault_verify` names the ranges. Damage is
/// counted, not an error. Other open handles of the vault keep the index
/// they loaded: open them again. `out` may be NULL.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_repair(
    vault: *const vmb_vault,
    dry_run: bool,
    out: *mut vmb_repair_stats,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        crate::extensible::check_out!(out, "out");
        let mut options = RepairOptions::default();
        options.dry_run = dry_run;
        let report = backup_core::repair(&v.vault, &options)?;
        crate::extensible::fill_out!(out, vmb_repair_stats::from(&report));
        Ok(())
    }
}

crate::extensible::extensible!(vmb_gc_stats, protected: u64);

crate::extensible::extensible!(vmb_repair_stats, nothing_lost: bool);
