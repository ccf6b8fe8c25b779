//! Random access to a disk of a point from C: `vmb_disk_reader_open`,
//! `_size`, `_pread` and `_close`, for a host that reads a point as it
//! would read an image file (a partition table parser, a file system
//! library), without restoring it.

use std::ffi::c_char;
use std::sync::{Arc, Mutex};

use backup_core::{DiskReader, Vault};

use crate::point::vmb_point;
use crate::status::{Failure, FfiResult, arg_out, arg_ref, arg_str, ffi, ffi_free, vmb_status, write_out};
use crate::vault::vmb_vault;

/// A read-only view of one disk of a point. It holds the vault's shared
/// lock (prune and gc wait) and keeps the vault open until it is closed,
/// even if the vault handle is freed first. Thread-safe: reads from several
/// threads are served one at a time.
pub struct vmb_disk_reader {
    reader: Mutex<DiskReader<Arc<Vault>>>,
    size: u64,
}

impl vmb_disk_reader {
    fn read(&self, offset: u64, buf: &mut [u8]) -> FfiResult<usize> {
        let mut r = self
            .reader
            .lock()
            .map_err(|_| Failure::new(vmb_status::VMB_ERR_PANIC, "the reader was poisoned by an earlier panic"))?;
        Ok(r.read_at(offset, buf)?)
    }
}

/// Opens the disk named `disk` (a name only: `vmb_point_disk_name` gives
/// the name of disk N) of `point` for reading; `*out` is the reader, closed
/// with `vmb_disk_reader_close`.
///
/// ```c
/// struct vmb_disk_reader *r = NULL;
/// if (vmb_disk_reader_open(vault, point, "root.img", &r) == VMB_OK) {
///     char sector[512];
///     size_t got = 0;
///     if (vmb_disk_reader_pread(r, sector, sizeof sector, 0, &got) == VMB_OK && got == sizeof sector)
///         printf("MBR signature %02x%02x\n", (unsigned char)sector[510], (unsigned char)sector[511]);
///     vmb_disk_reader_close(r);
/// }
/// ```
///
/// # Errors
/// `VMB_ERR_NOT_FOUND` for an unknown disk; `VMB_ERR_LOCKED` when an
/// exclusive lock (gc) holds the vault past its lock timeout;
/// `VMB_ERR_CORRUPT` for a point whose index does not fit its disk.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disk_reader_open(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    out: *mut *mut vmb_disk_reader,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let disk = p.disk_named(arg_str!(disk, "disk"))?;
        let out = arg_out!(out, "out");
        let reader = DiskReader::open(v.vault.clone(), &p.manifest, disk)?;
        let size = reader.size();
        write_out!(out, Box::into_raw(Box::new(vmb_disk_reader { reader: Mutex::new(reader), size })));
        Ok(())
    }
}

/// The disk's size in bytes; 0 for a NULL reader.
///
/// # Safety
/// `reader` is NULL or a live reader.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disk_reader_size(reader: *const vmb_disk_reader) -> u64 {
    if reader.is_null() {
        return 0;
    }
    // SAFETY: not NULL, and live by the C contract.
    unsafe { &*reader }.size
}

/// Reads up to `len` bytes at byte `offset` of the disk into `buf`, as
/// `pread(2)` does: `*got` is `len` except at the end of the disk (0 at or
/// past it). Every block is checked as it is read: damaged data is
/// `VMB_ERR_CORRUPT` naming the disk's byte range, never returned as data.
///
/// # Safety
/// Pointers are NULL or live/writable as their types say; `buf` is
/// writable for `len` bytes (it may be NULL when `len` is 0).
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disk_reader_pread(
    reader: *const vmb_disk_reader,
    buf: *mut u8,
    len: usize,
    offset: u64,
    got: *mut usize,
) -> vmb_status {
    ffi! {
        let r = arg_ref!(reader, "reader");
        let got = arg_out!(got, "got");
        let n = if len == 0 {
            0
        } else {
            if buf.is_null() {
                return Err(Failure::null("buf"));
            }
            // SAFETY: not NULL; the C contract is `len` writable bytes that
            // nothing else touches during the call.
            let buf = unsafe { std::slice::from_raw_parts_mut(buf, len) };
            r.read(offset, buf)?
        };
        write_out!(got, n);
        Ok(())
    }
}

/// Closes a reader (releasing its hold on the vault). NULL is ignored.
///
/// # Safety
/// `reader` is NULL or a reader from `vmb_disk_reader_open` not yet closed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_disk_reader_close(reader: *mut vmb_disk_reader) {
    ffi_free! {
        if !reader.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(reader) });
        }
    }
}
