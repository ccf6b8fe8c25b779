//! Bringing a VM back from a point under libvirt, from C: a target handle
//! (the new domain's name and where its disks go), a restore as a domain,
//! an instant recovery, and a boot verification with its verdict. Built
//! with the `libvirt` feature.

use std::ffi::{CString, c_char};
use std::time::Duration;

use backup_core::{BootVerdict, BootVerifyOptions, DomainTarget, ImageFormat, InstantOptions};

use crate::job::{settings, vmb_job};
use crate::point::vmb_point;
use crate::status::{FfiResult, arg_out, arg_ref, arg_str, c_string, ffi, ffi_free, vmb_status, write_out};
use crate::vault::vmb_vault;

/// The format of restored disks.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum vmb_image_format {
    /// qcow2 (the default).
    VMB_IMAGE_QCOW2 = 0,
    /// A raw, sparse file.
    VMB_IMAGE_RAW = 1,
}

/// Where and how a point becomes a libvirt domain. Created with
/// `vmb_domain_target_new`, freed with `vmb_domain_target_free`; not to be
/// changed while a call uses it.
pub struct vmb_domain_target {
    target: DomainTarget,
}

/// The target behind a pointer, to change.
fn target_mut<'a>(target: *mut vmb_domain_target) -> FfiResult<&'a mut vmb_domain_target> {
    // SAFETY: NULL is refused; the C contract: live and not in use by a
    // call while it is changed.
    unsafe { target.as_mut() }.ok_or_else(|| crate::status::Failure::null("target"))
}

/// A new target: the domain `name` on connection `uri` (NULL:
/// `qemu:///system`), disks into `/var/lib/libvirt/images` as qcow2, not
/// replacing, not started.
///
/// # Safety
/// `name` is a NUL-terminated string (NULL is refused); `uri` is NULL or
/// NUL-terminated; `out` is writable (NULL is refused).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_domain_target_new(
    name: *const c_char,
    uri: *const c_char,
    out: *mut *mut vmb_domain_target,
) -> vmb_status {
    ffi! {
        let name = arg_str!(name, "name");
        let out = arg_out!(out, "out");
        let mut target = DomainTarget::new(name);
        if !uri.is_null() {
            target.uri = arg_str!(uri, "uri").to_string();
        }
        write_out!(out, Box::into_raw(Box::new(vmb_domain_target { target })));
        Ok(())
    }
}

/// Frees a target. NULL is ignored.
///
/// # Safety
/// `target` is NULL or from `vmb_domain_target_new`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_domain_target_free(target: *mut vmb_domain_target) {
    ffi_free! {
        if !target.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(target) });
        }
    }
}

/// The folder the disks go to, as `NAME-DISK.FORMAT`.
///
/// # Safety
/// `target` is a live target and `dir` a NUL-terminated string (NULL is
/// refused for both).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_domain_target_set_pool(target: *mut vmb_domain_target, dir: *const c_char) -> vmb_status {
    ffi! {
        let dir = arg_str!(dir, "dir");
        let t = target_mut(target)?;
        t.target.pool = dir.into();
        Ok(())
    }
}

/// Where export sockets and other temporary files live (default
/// `/var/tmp/vmbackup-libvirt`).
///
/// # Safety
/// As `vmb_domain_target_set_pool`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_domain_target_set_work_dir(
    target: *mut vmb_domain_target,
    dir: *const c_char,
) -> vmb_status {
    ffi! {
        let dir = arg_str!(dir, "dir");
        let t = target_mut(target)?;
        t.target.work_dir = dir.into();
        Ok(())
    }
}

/// The restored disks' format, whether to replace a domain of that name
/// (never the point's own), and whether to start it after a restore.
///
/// # Safety
/// `target` is a live target not in use by a call (NULL is refused).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_domain_target_set_options(
    target: *mut vmb_domain_target,
    format: vmb_image_format,
    replace: bool,
    start: bool,
) -> vmb_status {
    ffi! {
        let t = target_mut(target)?;
        t.target.format = match format {
            vmb_image_format::VMB_IMAGE_QCOW2 => ImageFormat::Qcow2,
            vmb_image_format::VMB_IMAGE_RAW => ImageFormat::Raw,
        };
        t.target.replace = replace;
        t.target.start = start;
        Ok(())
    }
}

/// Restores every disk of `point` into the target's pool (in parallel) and
/// defines the new domain from the point's saved XML, with a new UUID, new
/// MAC addresses and the restored disks; starts it if the target says.
/// Nothing is left behind on an error. `job` may be NULL (its progress and
/// cancel apply).
///
/// # Safety
/// `vault`, `point` and `target` are live (NULL is refused); `job` is NULL
/// or live.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_restore_to_domain(
    vault: *const vmb_vault,
    point: *const vmb_point,
    target: *const vmb_domain_target,
    job: *const vmb_job,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let t = arg_ref!(target, "target");
        let s = settings(job);
        let mut options = backup_core::RestoreOptions::default();
        options.progress = s.progress;
        options.cancel = s.cancel;
        backup_core::restore_to_domain(&v.vault, &p.manifest, &t.target, &options)?;
        Ok(())
    }
}

/// Starts `point` as the target's domain within seconds, on qcow2 overlays
/// over this process's NBD export of the point, moves the data into them
/// (at most `bandwidth` bytes per second per disk; 0: no limit) and
/// returns when the domain stands on local disks only. The process must
/// live until then. A job's cancel discards the recovery (domain and
/// overlays removed); any other failure leaves the domain paused, and the
/// same call resumes it. `seconds_to_start` (NULL: not wanted) receives
/// the seconds until the domain ran.
///
/// # Safety
/// `vault`, `point` and `target` are live (NULL is refused); `job` is NULL
/// or live; `seconds_to_start` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_instant_restore(
    vault: *const vmb_vault,
    point: *const vmb_point,
    target: *const vmb_domain_target,
    bandwidth: u64,
    job: *const vmb_job,
    seconds_to_start: *mut f64,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let t = arg_ref!(target, "target");
        let s = settings(job);
        let mut options = InstantOptions::default();
        options.progress = s.progress;
        options.cancel = s.cancel;
        options.bandwidth = bandwidth;
        let r = backup_core::instant_restore(&v.vault, &p.manifest, &t.target, &options)?;
        if !seconds_to_start.is_null() {
            // SAFETY: not NULL; writable by the C contract.
            unsafe { seconds_to_start.write(r.seconds_to_start) };
        }
        Ok(())
    }
}

/// What booting a point showed. Immutable; strings and bytes it hands out
/// live as long as it.
pub struct vmb_boot_verdict {
    verdict: BootVerdict,
    reason: Option<CString>,
    console: CString,
}

impl vmb_boot_verdict {
    fn new(verdict: BootVerdict) -> FfiResult<vmb_boot_verdict> {
        Ok(vmb_boot_verdict {
            reason: verdict.reason.as_deref().map(|r| c_string(r, "reason")).transpose()?,
            console: c_string(&verdict.console.replace('\0', ""), "console")?,
            verdict,
        })
    }
}

fn hand_out_verdict(out: *mut *mut vmb_boot_verdict, verdict: Option<BootVerdict>) -> FfiResult {
    let p = match verdict {
        Some(v) => Box::into_raw(Box::new(vmb_boot_verdict::new(v)?)),
        None => std::ptr::null_mut(),
    };
    // SAFETY: checked not NULL by the caller; writable by the C contract.
    unsafe { out.write(p) };
    Ok(())
}

/// Boots `point` in a throwaway domain with no network, on discarded
/// overlays, on connection `uri` (NULL: `qemu:///system`); waits up to
/// `timeout_secs` for the guest agent, then runs `script` (NULL: none; a
/// NUL-terminated script copied into the guest) with the same timeout.
/// The verdict is recorded beside the point and handed out in `*out` (a
/// failed boot is a verdict, not an error). Nothing temporary is left.
///
/// # Safety
/// `vault` and `point` are live (NULL is refused); `uri` and `script` are
/// NULL or NUL-terminated; `job` is NULL or live; `out` is writable (NULL
/// is refused).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_boot_verify(
    vault: *const vmb_vault,
    point: *const vmb_point,
    uri: *const c_char,
    timeout_secs: u32,
    script: *const c_char,
    job: *const vmb_job,
    out: *mut *mut vmb_boot_verdict,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        let s = settings(job);
        let mut options = BootVerifyOptions::default();
        if !uri.is_null() {
            options.uri = arg_str!(uri, "uri").to_string();
        }
        if !script.is_null() {
            options.script = Some(arg_str!(script, "script").as_bytes().to_vec());
        }
        options.timeout = Duration::from_secs(u64::from(timeout_secs));
        options.script_timeout = options.timeout;
        options.progress = s.progress;
        options.cancel = s.cancel;
        let verdict = backup_core::boot_verify(&v.vault, &p.manifest, &options)?;
        hand_out_verdict(out, Some(verdict))
    }
}

/// The last boot verdict recorded for `point`; `*out` is NULL when it was
/// never booted.
///
/// # Safety
/// `vault` and `point` are live (NULL is refused); `out` is writable (NULL
/// is refused).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_boot_verdict(
    vault: *const vmb_vault,
    point: *const vmb_point,
    out: *mut *mut vmb_boot_verdict,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let out = arg_out!(out, "out");
        let verdict = v.vault.boot_verdict(&p.manifest.vm, &p.manifest.id)?;
        hand_out_verdict(out, verdict)
    }
}

/// Whether the point booted, its agent answered and its test passed;
/// `*reason` is why not (NULL when it passed). Both out-pointers may be
/// NULL.
///
/// # Safety
/// `verdict` is live (NULL is refused); `passed` and `reason` are NULL or
/// writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_boot_verdict_passed(
    verdict: *const vmb_boot_verdict,
    passed: *mut bool,
    reason: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(verdict, "verdict");
        if !passed.is_null() {
            // SAFETY: not NULL; writable by the C contract.
            unsafe { passed.write(v.verdict.passed) };
        }
        if !reason.is_null() {
            let r = v.reason.as_ref().map_or(std::ptr::null(), |r| r.as_ptr());
            // SAFETY: not NULL; writable by the C contract.
            unsafe { reason.write(r) };
        }
        Ok(())
    }
}

/// The end of the guest's serial console (NUL-terminated) and the
/// screenshot (PNG bytes; `*len` 0 when none was taken). Out-pointers may
/// be NULL.
///
/// # Safety
/// `verdict` is live (NULL is refused); the others are NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_boot_verdict_evidence(
    verdict: *const vmb_boot_verdict,
    console: *mut *const c_char,
    screenshot: *mut *const u8,
    len: *mut usize,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(verdict, "verdict");
        if !console.is_null() {
            // SAFETY: not NULL; writable by the C contract.
            unsafe { console.write(v.console.as_ptr()) };
        }
        if !screenshot.is_null() {
            // SAFETY: not NULL; writable by the C contract.
            unsafe { screenshot.write(v.verdict.screenshot.as_ptr()) };
        }
        if !len.is_null() {
            // SAFETY: not NULL; writable by the C contract.
            unsafe { len.write(v.verdict.screenshot.len()) };
        }
        Ok(())
    }
}

/// Frees a verdict. NULL is ignored.
///
/// # Safety
/// `verdict` is NULL or from this library, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_boot_verdict_free(verdict: *mut vmb_boot_verdict) {
    ffi_free! {
        if !verdict.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(verdict) });
        }
    }
}
