//! # vmbackup C ABI
//!
//! The C face of `backup-core`: a shared and a static library named
//! `vmbackup` and the header `include/vmbackup.h`, generated from this crate
//! by cbindgen (see `backup-ffi/README.md` for the rules, the build and the
//! install step). This crate only converts between C and the engine; the
//! logic stays in `backup-core`.
//!
//! Layout: [`status`] (codes, last error, the entry-point macro), [`job`]
//! (options, progress, cancel), [`host`] (the host's disks, snapshots and
//! restore targets as function-pointer tables), [`disks`] (a VM's disk
//! list: image files and host disks, each named once), [`point`] (points, lists,
//! verify reports), [`vault`] (the vault and its operations), [`maintenance`]
//! (prune and gc), [`copy`] (points into a second vault), [`protection`] (soft delete: settings, delete, undelete),
//! [`tiers`] (instant-restore tiers and kept snapshots).

// The C names are the API: `vmb_vault`, `vmb_status`, `VMB_OK`.
#![allow(non_camel_case_types)]

pub mod copy;
pub mod disk_reader;
pub mod disks;
mod extensible;
pub mod files;
pub mod host;
pub mod job;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod maintenance;
pub mod point;
pub mod protection;
#[cfg(feature = "libvirt")]
pub mod recovery;
pub mod status;
pub mod tiers;
pub mod vault;

use std::ffi::{c_char, c_int};

pub use status::vmb_status;

/// The major version of the header, known at compile time; the library a
/// program runs with says its own with `vmb_version()`.
pub const VMB_VERSION_MAJOR: u32 = 0;
/// The minor version of the header (see `VMB_VERSION_MAJOR`).
pub const VMB_VERSION_MINOR: u32 = 1;
/// The patch version of the header (see `VMB_VERSION_MAJOR`).
pub const VMB_VERSION_PATCH: u32 = 0;

/// The library's version ("MAJOR.MINOR.PATCH"), a static string.
#[unsafe(no_mangle)]
pub extern "C" fn vmb_version() -> *const c_char {
    const VERSION: &std::ffi::CStr =
        match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// A static description of a status code; "unknown status code" for a
/// number that names none. Never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn vmb_status_str(code: c_int) -> *const c_char {
    match vmb_status::from_code(code) {
        Some(s) => s.text().as_ptr(),
        None => c"unknown status code".as_ptr(),
    }
}

/// The detailed message of the last call on the calling thread that
/// returned an error (what failed and where: path, VM, disk, byte offset);
/// the empty string after a call that succeeded. Never NULL. Owned by the
/// library: it stays valid and unchanged until this thread next calls a
/// function that returns a `vmb_status` (copy it to keep it longer).
/// `vmb_last_error`, `vmb_status_str`, `vmb_version` and the `_free`
/// functions leave it intact, so
/// `printf("%s: %s", vmb_status_str(st), vmb_last_error())` is safe.
#[unsafe(no_mangle)]
pub extern "C" fn vmb_last_error() -> *const c_char {
    std::panic::catch_unwind(status::last_error_ptr).unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    /// cbindgen writes only literal constants into the header, so the
    /// version macros are literals: a version bump must update them too.
    #[test]
    fn the_version_macros_are_the_crate_version() {
        let macros = [super::VMB_VERSION_MAJOR, super::VMB_VERSION_MINOR, super::VMB_VERSION_PATCH];
        let crate_version =
            [env!("CARGO_PKG_VERSION_MAJOR"), env!("CARGO_PKG_VERSION_MINOR"), env!("CARGO_PKG_VERSION_PATCH")];
        assert_eq!(macros.map(|v| v.to_string()), crate_version.map(str::to_string), "update VMB_VERSION_* in lib.rs");
    }
}
