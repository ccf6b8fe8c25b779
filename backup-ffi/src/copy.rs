//! Copy from C: points of one vault into another (a second site).

use std::ffi::c_char;

use backup_core::{CopyOptions, CopyReport, PointSelection};

use crate::job::vmb_job;
use crate::status::{Failure, arg_ref, arg_str, ffi, vmb_status};
use crate::vault::vmb_vault;

/// Which points of each VM `vmb_vault_copy` takes: one of the
/// `VMB_POINTS_*` values.
pub type vmb_points = u32;
/// The newest point of each VM.
pub const VMB_POINTS_LATEST: vmb_points = 0;
/// Every point.
pub const VMB_POINTS_ALL: vmb_points = 1;
/// The points taken at or after `since` (Unix seconds).
pub const VMB_POINTS_SINCE: vmb_points = 2;

/// What a copy did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmb_copy_stats {
    /// Set by the caller before the call: `sizeof(struct vmb_copy_stats)`,
    /// or 0 for the first layout; the library fills that much and sets it
    /// to the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// Points copied.
    pub points_copied: u64,
    /// Points the target already held (skipped).
    pub points_already_there: u64,
    /// Bytes of the source's disks read.
    pub bytes_read: u64,
    /// Bytes of blocks the target lacked, before compression.
    pub bytes_lacked: u64,
    /// Bytes written to the target: what moved, and the manifests.
    pub bytes_added: u64,
    /// Boot verdicts of the points taken that the target lacked (or held
    /// older ones of), brought along. Appended after the first layout.
    pub verdicts_copied: u64,
    /// VM records (what preparing each VM found and changed) the target
    /// lacked or held older ones of, brought along.
    pub vm_records_copied: u64,
}

crate::extensible::extensible!(vmb_copy_stats, bytes_added: u64);

impl From<&CopyReport> for vmb_copy_stats {
    fn from(r: &CopyReport) -> Self {
        vmb_copy_stats {
            struct_size: 0,
            points_copied: r.copied.len() as u64,
            points_already_there: r.already_there.len() as u64,
            bytes_read: r.copied.iter().map(|c| c.bytes_read).sum(),
            bytes_lacked: r.copied.iter().map(|c| c.bytes_lacked).sum(),
            bytes_added: r.bytes_added(),
            verdicts_copied: r.verdicts_copied.len() as u64,
            vm_records_copied: r.vm_records_copied.len() as u64,
        }
    }
}

/// Copies points of `from` into `to` (a second site): of `vm` (every VM
/// when NULL), the points `which` selects (`since`: Unix seconds, for
/// `VMB_POINTS_SINCE`), oldest first. Only the chunks `to` lacks move,
/// sealed with `to`'s key; a point `to` already holds is skipped, so a
/// rerun finishes a copy that was stopped. Runs beside backups into `to`.
/// `job` (may be NULL) gives progress and cancel; `out` may be NULL.
///
/// # Safety
/// `from` and `to` are NULL or live; `vm` is NULL or NUL-terminated; `job`
/// is NULL or live; `out` is NULL or an initialized struct.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_copy(
    from: *const vmb_vault,
    to: *const vmb_vault,
    vm: *const c_char,
    which: vmb_points,
    since: i64,
    job: *const vmb_job,
    out: *mut vmb_copy_stats,
) -> vmb_status {
    ffi! {
        let from = arg_ref!(from, "from");
        let to = arg_ref!(to, "to");
        crate::extensible::check_out!(out, "out");
        let mut options = CopyOptions::default();
        if !vm.is_null() {
            options.vms = vec![arg_str!(vm, "vm name").to_string()];
        }
        options.points = match which {
            VMB_POINTS_LATEST => PointSelection::Latest,
            VMB_POINTS_ALL => PointSelection::All,
            VMB_POINTS_SINCE => PointSelection::Since(
                jiff::Timestamp::from_second(since).map_err(|e| Failure::invalid(format!("since {since}: {e}")))?,
            ),
            other => return Err(Failure::invalid(format!("which {other}: not one of the VMB_POINTS_* values"))),
        };
        let s = crate::job::settings(job);
        options.cancel = s.cancel;
        options.progress = Some(s.progress);
        let report = backup_core::copy(&from.vault, &to.vault, &options)?;
        crate::extensible::fill_out!(out, vmb_copy_stats::from(&report));
        Ok(())
    }
}
