//! libvirt domains from C: a provider handle that names a domain (and how
//! to reach and quiesce it), and a backup of that domain. Built with the
//! `libvirt` feature (on by default; libvirt itself is loaded when a domain
//! is first asked for).

use std::ffi::c_char;
use std::sync::Mutex;

use backup_core::LibvirtProvider;

use crate::job::{consistency_from_c, vmb_consistency, vmb_job};
use crate::point::vmb_point;
use crate::status::{arg_out, arg_ref, arg_str, ffi, ffi_free, vmb_status, write_out};
use crate::vault::vmb_vault;

/// A libvirt domain to back up, with its settings. Created with
/// `vmb_provider_libvirt_new`, freed with `vmb_provider_libvirt_free`.
/// Thread-safe; a setting changed during a backup applies to the next one.
pub struct vmb_provider_libvirt {
    provider: Mutex<LibvirtProvider>,
}

impl vmb_provider_libvirt {
    fn with<T>(&self, f: impl FnOnce(&mut LibvirtProvider) -> T) -> T {
        f(&mut self.provider.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Creates a provider for libvirt domain `domain` on connection `uri`
/// (NULL: `qemu:///system`). Nothing is contacted until a backup.
///
/// # Safety
/// `domain` is NULL or NUL-terminated; `uri` is NULL or NUL-terminated;
/// `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_new(
    domain: *const c_char,
    uri: *const c_char,
    out: *mut *mut vmb_provider_libvirt,
) -> vmb_status {
    ffi! {
        let domain = arg_str!(domain, "domain");
        let out = arg_out!(out, "out");
        let mut p = LibvirtProvider::new(domain);
        if !uri.is_null() {
            p.uri = arg_str!(uri, "uri").to_string();
        }
        let handle = Box::new(vmb_provider_libvirt { provider: Mutex::new(p) });
        write_out!(out, Box::into_raw(handle));
        Ok(())
    }
}

/// Frees a provider. NULL is ignored. It must not be in use by a call.
///
/// # Safety
/// `provider` is NULL or from `vmb_provider_libvirt_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_free(provider: *mut vmb_provider_libvirt) {
    ffi_free! {
        if !provider.is_null() {
            // SAFETY: from `Box::into_raw` in `vmb_provider_libvirt_new`, freed once.
            drop(unsafe { Box::from_raw(provider) });
        }
    }
}

/// Backs up only this disk of the domain (a target name such as `vda`);
/// call once per disk. Without any, every disk that can be is backed up.
///
/// # Safety
/// `provider` is NULL or live; `disk` is NULL or NUL-terminated.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_include(
    provider: *const vmb_provider_libvirt,
    disk: *const c_char,
) -> vmb_status {
    // SAFETY: the caller's contract, passed on as it is.
    unsafe { add_disk(provider, disk, |p| &mut p.include) }
}

/// Never backs up this disk of the domain (a target name); call once per
/// disk.
///
/// # Safety
/// As `vmb_provider_libvirt_include`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_exclude(
    provider: *const vmb_provider_libvirt,
    disk: *const c_char,
) -> vmb_status {
    // SAFETY: the caller's contract, passed on as it is.
    unsafe { add_disk(provider, disk, |p| &mut p.exclude) }
}

/// Adds a disk's target name to one of the provider's lists.
///
/// # Safety
/// As `vmb_provider_libvirt_include`.
unsafe fn add_disk(
    provider: *const vmb_provider_libvirt,
    disk: *const c_char,
    list: fn(&mut LibvirtProvider) -> &mut Vec<String>,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(provider, "provider");
        let disk = arg_str!(disk, "disk").to_string();
        p.with(|p| list(p).push(disk));
        Ok(())
    }
}

/// A `VMSnapshotScriptPluginConfig.json` on this host whose pre/post
/// scripts are installed into the guest through its agent when the VM is
/// prepared, and run there for application consistency (Linux guests).
/// NULL installs nothing.
///
/// # Safety
/// `provider` is NULL or live; `config` is NULL or NUL-terminated.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_set_guest_scripts(
    provider: *const vmb_provider_libvirt,
    config: *const c_char,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(provider, "provider");
        let config = if config.is_null() { None } else { Some(arg_str!(config, "config").into()) };
        p.with(|p| p.guest_scripts = config);
        Ok(())
    }
}

/// The weakest consistency accepted: a fallback below it (no guest agent,
/// a failed freeze, a shut-off domain) fails the backup instead. Default
/// `VMB_CONSISTENCY_CRASH`.
///
/// # Safety
/// `provider` is NULL or live.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_set_min_consistency(
    provider: *const vmb_provider_libvirt,
    consistency: vmb_consistency,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(provider, "provider");
        let c = consistency_from_c(consistency)?;
        p.with(|p| p.min_consistency = c);
        Ok(())
    }
}

/// Where each backup job's NBD socket and scratch files go (default
/// `/var/tmp/vmbackup-libvirt`; QEMU's user must be able to reach it).
///
/// # Safety
/// `provider` is NULL or live; `dir` is NULL or NUL-terminated.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_provider_libvirt_set_work_dir(
    provider: *const vmb_provider_libvirt,
    dir: *const c_char,
) -> vmb_status {
    ffi! {
        let p = arg_ref!(provider, "provider");
        let dir = arg_str!(dir, "dir").into();
        p.with(|p| p.work_dir = dir);
        Ok(())
    }
}

/// Backs up the provider's domain as VM `vm` (NULL: named after the
/// domain): its disks come from the domain's XML, the snapshot is a libvirt
/// checkpoint and pull-mode backup job (incremental from the VM's previous
/// point), quiesced through the guest agent as far as the job's
/// consistency asks and the guest allows; a shut-off domain's disks are
/// read in place. The point records the consistency achieved and stores
/// the domain's XML (`vmb_point_configuration`).
///
/// `job` may be NULL (crash consistency, no progress, no cancel); its
/// cancel stops a running in-guest pre-script too. `out` as in
/// `vmb_vault_backup_images`.
///
/// # Safety
/// `vault` and `provider` are NULL or live; `vm` is NULL or
/// NUL-terminated; `job` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_backup_libvirt(
    vault: *const vmb_vault,
    provider: *const vmb_provider_libvirt,
    vm: *const c_char,
    job: *const vmb_job,
    out: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(provider, "provider");
        let (options, min) = crate::vault::backup_options(job);
        let mut provider = p.with(|p| p.clone());
        // The stricter of the provider's minimum and the job's.
        provider.min_consistency = provider.min_consistency.max(min);
        provider.cancel = options.cancel.clone();
        let name = if vm.is_null() { provider.domain.clone() } else { arg_str!(vm, "vm name").to_string() };
        let (vm, _skipped) = provider.vm(&name)?;
        let report = backup_core::backup(&v.vault, &provider, &vm, &options)?;
        crate::vault::hand_out_point(out, report.point)
    }
}
