//! Protection against deletion, from C: the vault's soft-delete settings,
//! deleting a point, the list of soft-deleted points, and undelete.

use std::ffi::c_char;

use backup_core::{DeletedPoint, SettingsChange, StoreLock, VaultSettings};

use crate::point::vmb_point;
use crate::status::{arg_out, arg_ref, arg_str, ffi, ffi_free, nth, vmb_status, write_out};
use crate::vault::vmb_vault;

/// A vault's settings, as `vmbackup config` shows them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmb_vault_settings {
    /// Set by the caller before the call: `sizeof(struct vmb_vault_settings)`,
    /// or 0 for the first layout; the library fills that much and sets it
    /// to the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// Days a point removed by prune or delete stays recoverable; 0: soft
    /// delete is off and removed points are gone at once.
    pub soft_delete_days: u32,
    /// Soft delete can never be turned off, nor its days shortened.
    pub soft_delete_always_on: bool,
    /// Points younger than this many days are immutable (delete refuses
    /// them, prune spares them, gc leaves what was written in that time);
    /// 0: off. Appended after the first layout.
    pub immutable_days: u32,
}

crate::extensible::extensible!(vmb_vault_settings, soft_delete_always_on: bool);

impl From<VaultSettings> for vmb_vault_settings {
    fn from(s: VaultSettings) -> Self {
        vmb_vault_settings {
            struct_size: 0,
            soft_delete_days: s.soft_delete_days,
            soft_delete_always_on: s.soft_delete_always_on,
            immutable_days: s.immutable_days,
        }
    }
}

/// The vault's settings as its store holds them now.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or an initialized struct.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_get_settings(vault: *const vmb_vault, out: *mut vmb_vault_settings) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        if out.is_null() {
            return Err(crate::status::Failure::null("out"));
        }
        crate::extensible::check_out!(out, "out");
        crate::extensible::fill_out!(out, vmb_vault_settings::from(v.vault.settings()?));
        Ok(())
    }
}

/// Whether the store beneath a vault can lock the objects the vault writes
/// (so that not even the vault's own credentials can delete them): one of
/// the `VMB_STORE_LOCK_*` values.
pub type vmb_store_lock = u32;
/// The store cannot lock objects: a folder (protect it with the host's
/// permissions), or Azure Blob (set an immutability policy on the
/// container; this build sets none).
pub const VMB_STORE_LOCK_UNAVAILABLE: vmb_store_lock = 0;
/// An S3 bucket without Object Lock: `vmb_vault_set_immutable_days` refuses
/// to make the vault immutable there.
pub const VMB_STORE_LOCK_DISABLED: vmb_store_lock = 1;
/// An S3 bucket with Object Lock: while the vault is immutable, each object
/// it writes is locked (compliance mode) for its immutable days.
pub const VMB_STORE_LOCK_ENABLED: vmb_store_lock = 2;

/// Asks the vault's store whether it can lock the objects the vault writes
/// (for S3, the bucket's Object Lock configuration) and writes the answer,
/// a `VMB_STORE_LOCK_*` value, to `out`.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_store_lock(vault: *const vmb_vault, out: *mut vmb_store_lock) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let out = arg_out!(out, "out");
        let lock = match v.vault.store_lock()? {
            StoreLock::Disabled => VMB_STORE_LOCK_DISABLED,
            StoreLock::Enabled => VMB_STORE_LOCK_ENABLED,
            _ => VMB_STORE_LOCK_UNAVAILABLE,
        };
        write_out!(out, lock);
        Ok(())
    }
}

/// Sets the vault's soft delete: `days` (0 turns it off), and, with
/// `always_on`, makes it always on for good. A vault whose soft delete is
/// always on refuses 0 days and fewer days than it has, with
/// `VMB_ERR_PROTECTED` (nothing changed). `out` (may be NULL) receives the
/// settings as they now are.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or an initialized struct.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_set_soft_delete(
    vault: *const vmb_vault,
    days: u32,
    always_on: bool,
    out: *mut vmb_vault_settings,
) -> vmb_status {
    let mut change = SettingsChange::default();
    change.soft_delete_days = Some(days);
    change.soft_delete_always_on = always_on;
    // SAFETY: the same contract, passed on.
    unsafe { change_settings(vault, &change, out) }
}

/// Makes points younger than `days` days immutable: delete refuses them
/// with `VMB_ERR_PROTECTED`, prune spares them, gc neither removes nor
/// rewrites what was written in that time. The days can only grow: fewer
/// than the vault has is `VMB_ERR_PROTECTED` (nothing changed). On S3 each
/// object written from then on is also locked for that long (Object Lock);
/// a bucket without it is `VMB_ERR_INVALID_ARGUMENT` (nothing changed). `out` (may
/// be NULL) receives the settings as they now are.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or an initialized struct.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_set_immutable_days(
    vault: *const vmb_vault,
    days: u32,
    out: *mut vmb_vault_settings,
) -> vmb_status {
    let mut change = SettingsChange::default();
    change.immutable_days = Some(days);
    // SAFETY: the same contract, passed on.
    unsafe { change_settings(vault, &change, out) }
}

/// The setters' one body: applies `change`, hands out the settings.
///
/// # Safety
/// As `vmb_vault_set_soft_delete`.
unsafe fn change_settings(
    vault: *const vmb_vault,
    change: &SettingsChange,
    out: *mut vmb_vault_settings,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        crate::extensible::check_out!(out, "out");
        let now = v.vault.change_settings(change)?;
        crate::extensible::fill_out!(out, vmb_vault_settings::from(now));
        Ok(())
    }
}

/// Deletes a point of a VM (by id, a unique prefix of one, or "latest").
/// While soft delete is on the point stays recoverable by
/// `vmb_vault_undelete_point` until `*recoverable_until` (Unix seconds);
/// with it off the point is gone at once and `*recoverable_until` is 0.
/// `point` (may be NULL) receives the deleted point, freed with
/// `vmb_point_free`; `recoverable_until` may be NULL.
///
/// # Safety
/// `vault` is NULL or live; `vm` and `id` are NULL or NUL-terminated;
/// `point` and `recoverable_until` are NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_delete_point(
    vault: *const vmb_vault,
    vm: *const c_char,
    id: *const c_char,
    point: *mut *mut vmb_point,
    recoverable_until: *mut i64,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let vm = arg_str!(vm, "vm name");
        let id = arg_str!(id, "point id");
        let d = backup_core::delete_point(&v.vault, vm, id)?;
        if !recoverable_until.is_null() {
            write_out!(recoverable_until, d.recoverable_until.map_or(0, |t| t.as_second()));
        }
        if !point.is_null() {
            write_out!(point, vmb_point::new(d.point)?.into_raw());
        }
        Ok(())
    }
}

/// Brings back a soft-deleted point of a VM (by id or a unique prefix of
/// one); `VMB_ERR_NOT_FOUND` when no deleted point matches. `point` (may be
/// NULL) receives it, freed with `vmb_point_free`.
///
/// # Safety
/// As `vmb_vault_delete_point`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_undelete_point(
    vault: *const vmb_vault,
    vm: *const c_char,
    id: *const c_char,
    point: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let vm = arg_str!(vm, "vm name");
        let id = arg_str!(id, "point id");
        let back = backup_core::undelete_point(&v.vault, vm, id)?;
        if !point.is_null() {
            write_out!(point, vmb_point::new(back)?.into_raw());
        }
        Ok(())
    }
}

/// The soft-deleted points of a vault. Immutable: accessors are
/// thread-safe.
pub struct vmb_deleted_list {
    deleted: Vec<DeletedPoint>,
}

/// Lists the soft-deleted points of `vm` (of every VM when NULL), by VM
/// then id. Free the list with `vmb_deleted_list_free`.
///
/// # Safety
/// `vault` is NULL or live; `vm` is NULL or NUL-terminated; `out` is NULL
/// or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_list_deleted(
    vault: *const vmb_vault,
    vm: *const c_char,
    out: *mut *mut vmb_deleted_list,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let out = arg_out!(out, "out");
        let vm = if vm.is_null() { None } else { Some(arg_str!(vm, "vm name")) };
        let deleted = backup_core::deleted_points(&v.vault, vm)?;
        write_out!(out, Box::into_raw(Box::new(vmb_deleted_list { deleted })));
        Ok(())
    }
}

/// The number of deleted points in the list.
///
/// # Safety
/// `list` is NULL or a live list; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_deleted_list_len(list: *const vmb_deleted_list, out: *mut usize) -> vmb_status {
    ffi! {
        let l = arg_ref!(list, "list");
        let out = arg_out!(out, "out");
        write_out!(out, l.deleted.len());
        Ok(())
    }
}

/// Entry `index` of the list: a new handle of the point as it was (freed
/// with `vmb_point_free`, independently of the list), when it was deleted
/// and when gc may remove it for good (Unix seconds). `deleted` and
/// `purge_after` may be NULL.
///
/// # Safety
/// `list` is NULL or a live list; the out pointers are NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_deleted_list_get(
    list: *const vmb_deleted_list,
    index: usize,
    point: *mut *mut vmb_point,
    deleted: *mut i64,
    purge_after: *mut i64,
) -> vmb_status {
    ffi! {
        let l = arg_ref!(list, "list");
        let point = arg_out!(point, "point");
        let d = nth(&l.deleted, index, "deleted point", "list")?;
        if !deleted.is_null() {
            write_out!(deleted, d.deleted.as_second());
        }
        if !purge_after.is_null() {
            write_out!(purge_after, d.purge_after.as_second());
        }
        write_out!(point, vmb_point::new(d.point.clone())?.into_raw());
        Ok(())
    }
}

/// Frees a list. NULL is ignored. Points taken from it stay valid.
///
/// # Safety
/// `list` is NULL or a list from `vmb_vault_list_deleted` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_deleted_list_free(list: *mut vmb_deleted_list) {
    ffi_free! {
        if !list.is_null() {
            // SAFETY: from `Box::into_raw` in `vmb_vault_list_deleted`, freed once.
            drop(unsafe { Box::from_raw(list) });
        }
    }
}
