//! Extensible structs: every struct of the C ABI starts with
//! `struct_size`, so that a later version can append fields without
//! breaking a program built against an older header (the scheme of Linux's
//! `openat2` and `clone3`).
//!
//! - A struct the caller passes in (a callback table, options, a key) is
//!   read up to the size the caller gives: 0 means the first layout, the
//!   one this version's header declares; fields the caller does not know
//!   read as zero. A size larger than the library's is accepted when the
//!   bytes beyond are zero, and refused when not (the caller asks for
//!   something this library cannot do).
//! - A struct the library fills in is written up to the caller's size (0:
//!   the first layout), and its `struct_size` then says how many bytes were
//!   written. The caller must initialize it (`= {0}` or
//!   `{.struct_size = sizeof x}`) before the call.

use std::mem::{MaybeUninit, size_of};

use crate::status::{Failure, FfiResult};

/// A C struct whose first field is `uint32_t struct_size`.
///
/// # Safety
/// The implementor is `#[repr(C)]`, starts with a `u32` size field, and
/// every field is valid when all its bytes are zero (integers, floats,
/// `bool`, raw pointers, optional function pointers).
pub(crate) unsafe trait Extensible: Copy {
    /// The size of the first layout: what `struct_size == 0` means. It
    /// never changes once released; fields are only appended.
    const FIRST_SIZE: usize;
    /// The struct's name, for errors.
    const NAME: &'static str;
}

/// Implements [`Extensible`] with the first layout ending at `last`.
macro_rules! extensible {
    ($t:ty, $last:ident: $last_ty:ty) => {
        // SAFETY: see the trait; checked by the tests of `extensible`.
        unsafe impl $crate::extensible::Extensible for $t {
            const FIRST_SIZE: usize = (std::mem::offset_of!($t, $last) + std::mem::size_of::<$last_ty>())
                .next_multiple_of(std::mem::align_of::<$t>());
            const NAME: &'static str = stringify!($t);
        }
    };
}
/// A struct argument the caller passes in, read as [`read`] says, or a
/// NULL-argument failure.
macro_rules! arg_in {
    ($p:expr, $what:expr) => {{
        let p = $p;
        if p.is_null() {
            return Err($crate::status::Failure::null($what));
        }
        // SAFETY: not NULL; the C contract is a struct of the size its
        // `struct_size` says, alive during the call.
        unsafe { $crate::extensible::read(p) }
            .map_err(|e| $crate::status::Failure::invalid(format!("{}: {}", $what, e.message)))?
    }};
}
/// Checks a struct the library will fill (NULL passes) before any work.
macro_rules! check_out {
    ($p:expr, $what:expr) => {{
        // SAFETY: the C contract is NULL or a struct whose `struct_size`
        // the caller set.
        unsafe { $crate::extensible::check_size($p) }
            .map_err(|e| $crate::status::Failure::invalid(format!("{}: {}", $what, e.message)))?
    }};
}

/// Fills a struct the caller passed (NULL: nothing), after `check_out!`.
macro_rules! fill_out {
    ($p:expr, $v:expr) => {{
        let v = $v;
        // SAFETY: `check_out!` accepted its size; writable by the C
        // contract.
        unsafe { $crate::extensible::write($p, v) }?
    }};
}
pub(crate) use {arg_in, check_out, extensible, fill_out};

/// The size a caller gave in `struct_size` (0: the first layout).
///
/// # Safety
/// `p` is not NULL and readable for 4 bytes.
unsafe fn given_size<T: Extensible>(p: *const T) -> FfiResult<usize> {
    // SAFETY: as the function's contract says.
    let given = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    if given == 0 {
        return Ok(T::FIRST_SIZE);
    }
    if given < T::FIRST_SIZE {
        return Err(Failure::invalid(format!(
            "{}: struct_size {given} is smaller than its first layout ({} bytes): set it to sizeof, or 0",
            T::NAME,
            T::FIRST_SIZE
        )));
    }
    Ok(given)
}

/// Reads a struct the caller passed in.
///
/// # Safety
/// `p` is not NULL and points to a struct of the size its `struct_size`
/// says (the first layout when 0).
pub(crate) unsafe fn read<T: Extensible>(p: *const T) -> FfiResult<T> {
    // SAFETY: `p` is readable for its first field at least.
    let given = unsafe { given_size(p) }?;
    let own = size_of::<T>();
    if given > own {
        // SAFETY: the caller says the struct is `given` bytes long.
        let beyond = unsafe { std::slice::from_raw_parts(p.cast::<u8>().add(own), given - own) };
        if let Some(i) = beyond.iter().position(|b| *b != 0) {
            return Err(Failure::invalid(format!(
                "{}: struct_size {given} is larger than this library's {own} bytes and byte {} is set: \
                 the program was built against a newer vmbackup.h than this library",
                T::NAME,
                own + i
            )));
        }
    }
    let mut out = MaybeUninit::<T>::zeroed();
    // SAFETY: both are valid for `min(given, own)` bytes and do not
    // overlap; an all-zero `T` is valid (trait contract), and the caller's
    // bytes are a valid prefix of one (C contract).
    unsafe {
        std::ptr::copy_nonoverlapping(p.cast::<u8>(), out.as_mut_ptr().cast::<u8>(), given.min(own));
        Ok(out.assume_init())
    }
}

/// Checks, before any work, that a struct the library will fill has a
/// size it can fill. NULL passes (the caller wants nothing).
///
/// # Safety
/// `p` is NULL or readable for 4 bytes.
pub(crate) unsafe fn check_size<T: Extensible>(p: *mut T) -> FfiResult {
    if p.is_null() {
        return Ok(());
    }
    // SAFETY: not NULL; readable by contract.
    unsafe { given_size(p.cast_const()) }.map(|_| ())
}

/// Fills a struct the caller passed (NULL: nothing is written) up to its
/// size, and sets its `struct_size` to the bytes written.
///
/// # Safety
/// `p` is NULL or writable for the size its `struct_size` says, which
/// [`check_size`] accepted.
pub(crate) unsafe fn write<T: Extensible>(p: *mut T, value: T) -> FfiResult {
    if p.is_null() {
        return Ok(());
    }
    // SAFETY: not NULL; readable by contract.
    let n = unsafe { given_size(p.cast_const()) }?.min(size_of::<T>());
    // SAFETY: `value` is `size_of::<T>()` bytes and `p` is writable for
    // `n` of them; the first 4 bytes are the size field (trait contract).
    unsafe {
        std::ptr::copy_nonoverlapping((&raw const value).cast::<u8>(), p.cast::<u8>(), n);
        p.cast::<u32>().write_unaligned(n as u32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::vmb_copy_stats;
    use crate::host::{vmb_disk_ops, vmb_provider, vmb_write_target};
    use crate::maintenance::{vmb_gc_stats, vmb_repair_stats};
    use crate::point::{vmb_backup_stats, vmb_verify_problem};
    use crate::protection::vmb_vault_settings;
    use crate::vault::{vmb_key, vmb_restore_stats, vmb_vault_options};

    /// The first layouts as released in 0.1 (x86-64 and aarch64 Linux):
    /// these numbers never change; a new field is appended after them.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn first_layouts_are_frozen() {
        assert_eq!(vmb_disk_ops::FIRST_SIZE, 56);
        assert_eq!(vmb_provider::FIRST_SIZE, 48);
        assert_eq!(vmb_write_target::FIRST_SIZE, 40);
        assert_eq!(vmb_key::FIRST_SIZE, 32);
        assert_eq!(vmb_vault_options::FIRST_SIZE, 48);
        assert_eq!(vmb_backup_stats::FIRST_SIZE, 104);
        assert_eq!(vmb_restore_stats::FIRST_SIZE, 40);
        assert_eq!(vmb_gc_stats::FIRST_SIZE, 72);
        assert_eq!(vmb_repair_stats::FIRST_SIZE, 64);
        assert_eq!(vmb_verify_problem::FIRST_SIZE, 72);
        assert_eq!(vmb_vault_settings::FIRST_SIZE, 12);
        assert_eq!(vmb_copy_stats::FIRST_SIZE, 48);
    }

    #[test]
    fn a_newer_caller_is_read_when_what_it_adds_is_zero_and_refused_when_not() {
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Newer {
            old: vmb_restore_stats,
            added: u64,
        }
        let mut n = Newer { old: vmb_restore_stats::default(), added: 0 };
        n.old.struct_size = size_of::<Newer>() as u32;
        n.old.size = 7;
        // SAFETY: `n` is as long as its struct_size says.
        let r = unsafe { read::<vmb_restore_stats>((&raw const n).cast()) }.expect("zero beyond");
        assert_eq!(r.size, 7);
        n.added = 1;
        // SAFETY: as above.
        let e = unsafe { read::<vmb_restore_stats>((&raw const n).cast()) }.expect_err("set beyond");
        assert!(e.message.contains("newer vmbackup.h"), "{}", e.message);
    }

    #[test]
    fn a_caller_gets_what_its_size_holds_and_is_told_how_much() {
        let mut out = vmb_restore_stats::default();
        let value = vmb_restore_stats { struct_size: 0, size: 1, bytes_written: 2, bytes_zero: 3, seconds: 4.0 };
        // SAFETY: `out` is a whole struct with struct_size 0.
        unsafe { write(&raw mut out, value) }.expect("write");
        assert_eq!((out.struct_size as usize, out.size, out.seconds), (vmb_restore_stats::FIRST_SIZE, 1, 4.0));
        let mut bad = vmb_restore_stats { struct_size: 3, ..vmb_restore_stats::default() };
        // SAFETY: as above.
        assert!(unsafe { check_size(&raw mut bad) }.is_err());
    }
}
