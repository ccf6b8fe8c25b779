//! A VM's disk list, built once and named once: each disk is a name plus
//! either an image file (cloned with a reflink for the snapshot where the
//! file system can, else read in place and checked for changes) or a
//! host's `vmb_disk_ops` table. `vmb_vault_backup_disks` backs the list up
//! as one VM.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

use backup_core::{ConsistentProvider, MixedProvider, OsType, Vm, VmDisk, validate_name};

use crate::host::{HostDisk, checked_opt_str, vmb_disk_ops};
use crate::job::vmb_job;
use crate::point::vmb_point;
use crate::status::{Failure, FfiResult, arg_out, arg_ref, arg_str, ffi, ffi_free, vmb_status, write_out};
use crate::vault::{backup_options, hand_out_point, vmb_vault};

/// The disks of one VM, in order. Made by `vmb_disks_new`, filled by
/// `vmb_disks_add_image` and `vmb_disks_add_host`, freed by
/// `vmb_disks_free`. A list may be backed up any number of times, also by
/// several threads at once; it must not be changed while a backup uses it.
pub struct vmb_disks {
    disks: Vec<VmDisk>,
    provider: MixedProvider,
}

impl vmb_disks {
    fn check_new_name(&self, name: &str) -> FfiResult {
        validate_name("disk name", name)?;
        if self.disks.iter().any(|d| d.name == name) {
            return Err(Failure::invalid(format!(
                "the list already has a disk named {name}: give each disk its own name"
            )));
        }
        Ok(())
    }
}

/// A mutable reference from a disk list argument.
fn list_mut<'a>(disks: *mut vmb_disks) -> FfiResult<&'a mut vmb_disks> {
    if disks.is_null() {
        return Err(Failure::null("disks"));
    }
    // SAFETY: not NULL; the C contract is a live list from `vmb_disks_new`
    // that no other call uses while it is being changed.
    Ok(unsafe { &mut *disks })
}

/// Makes an empty disk list. Free it with `vmb_disks_free`.
///
/// # Safety
/// `out` must point to writable memory for one pointer.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disks_new(out: *mut *mut vmb_disks) -> vmb_status {
    ffi! {
        let out = arg_out!(out, "out");
        let list = Box::new(vmb_disks { disks: Vec::new(), provider: MixedProvider::new() });
        write_out!(out, Box::into_raw(list));
        Ok(())
    }
}

/// Frees a disk list, and with it the host disks' userdata (each
/// `destroy` is called here, once). NULL is ignored. The list must not be
/// in use by a backup.
///
/// # Safety
/// `disks` is NULL or a list from `vmb_disks_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disks_free(disks: *mut vmb_disks) {
    ffi_free! {
        if !disks.is_null() {
            // SAFETY: from `Box::into_raw` in `vmb_disks_new`, freed once.
            drop(unsafe { Box::from_raw(disks) });
        }
    }
}

/// Adds a raw image file at `path` as the disk `name` (NULL: the file's
/// name, as `vmb_vault_backup_images` names it). Names are unique within
/// the list: two `disk.img` files from different folders need names.
/// The file is opened when a backup runs, not here.
///
/// # Safety
/// `disks` is NULL or a live list; `name` is NULL or NUL-terminated;
/// `path` is NUL-terminated (NULL is refused).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disks_add_image(
    disks: *mut vmb_disks,
    name: *const c_char,
    path: *const c_char,
) -> vmb_status {
    ffi! {
        let list = list_mut(disks)?;
        let path = arg_str!(path, "path");
        if path.is_empty() {
            return Err(Failure::invalid("disk path is empty"));
        }
        let name = match checked_opt_str(name, "disk name")? {
            Some(n) => n,
            None => Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Failure::invalid(format!("disk path {path} has no file name to name the disk by")))?
                .to_string(),
        };
        list.check_new_name(&name)?;
        list.disks.push(VmDisk { name, location: path.to_string() });
        Ok(())
    }
}

/// Adds a disk the host serves through `ops` (the table is copied) as the
/// disk `name`. Its size is asked now. `change_token` (NULL when the host
/// tracks no changes) names this state of the disk: the next backup of the
/// VM passes it to `changed_since`. The disk is read as it is while a
/// backup runs, so the host serves a stable view (its own snapshot).
///
/// From this call on the library owns `ops->userdata`, **whatever the
/// result**: `ops->destroy` is called exactly once, by `vmb_disks_free`
/// (at once on failure). Only a table it cannot read (`ops` NULL, or a
/// `struct_size` it refuses) stays the caller's.
///
/// # Safety
/// `disks` is NULL or a live list; `name` is NUL-terminated (NULL is
/// refused); `change_token` is NULL or NUL-terminated; `ops` is NULL or a
/// readable `vmb_disk_ops` following its rules.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disks_add_host(
    disks: *mut vmb_disks,
    name: *const c_char,
    ops: *const vmb_disk_ops,
    change_token: *const c_char,
) -> vmb_status {
    ffi! {
        let ops = crate::extensible::arg_in!(ops, "ops");
        let (name, device, token) = HostDisk::adopt(ops, name, change_token)?;
        let list = list_mut(disks)?;
        list.check_new_name(&name)?;
        list.provider.add_device(&name, Arc::new(device), token, "host");
        list.disks.extend(list.provider.disk(&name));
        Ok(())
    }
}

/// Backs up the VM `vm` whose disks are `disks`, in the list's order, and
/// returns its new point in `*out` (NULL: not wanted). Image files are
/// snapshotted as `vmb_vault_backup_images` does; host disks are read
/// through their callbacks on the library's worker threads, several at
/// once. Only blocks that changed since the VM's previous point are
/// stored.
///
/// Image files and host disks are crash-consistent: a job asking more
/// (`vmb_job_set_consistency`) gets a point with a warning saying so, or
/// `VMB_ERR_PROVIDER` below `vmb_job_set_min_consistency`.
///
/// # Safety
/// `vault` is NULL or live; `vm` is NUL-terminated (NULL is refused);
/// `disks` is NULL or a live list; `job` is NULL or live; `out` is NULL or
/// writable.
///
/// # Example
/// ```c
/// vmb_disks *disks = NULL;
/// if (vmb_disks_new(&disks) != VMB_OK ||
///     vmb_disks_add_image(disks, "boot", "/srv/web/disk.img") != VMB_OK ||
///     vmb_disks_add_host(disks, "data", &data_ops, NULL) != VMB_OK ||
///     vmb_vault_backup_disks(vault, "web", disks, NULL, &point) != VMB_OK)
///     fprintf(stderr, "backup: %s\n", vmb_last_error());
/// vmb_disks_free(disks);
/// ```
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_backup_disks(
    vault: *const vmb_vault,
    vm: *const c_char,
    disks: *const vmb_disks,
    job: *const vmb_job,
    out: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let name = arg_str!(vm, "vm name");
        let list = arg_ref!(disks, "disks");
        let vm = Vm { name: name.to_string(), os: OsType::Other, disks: list.disks.clone() };
        vm.validate()?;
        let (options, min) = backup_options(job);
        // No scripts and no freeze: it settles what was achieved against
        // what was asked for, and warns or fails below the minimum.
        let provider = ConsistentProvider::new(&list.provider)
            .with_min_consistency(min)
            .with_cancel(options.cancel.clone());
        let report = backup_core::backup(&v.vault, &provider, &vm, &options)?;
        hand_out_point(out, report.point)
    }
}
