//! Status codes, the per-thread last error, and the macro every entry point
//! runs inside.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};

use backup_core::Error;

/// The result of every call. The numbers are stable: a code is never
/// renumbered, and a retired code stays reserved.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum vmb_status {
    /// Success.
    VMB_OK = 0,
    /// A required pointer argument was NULL.
    VMB_ERR_NULL_ARGUMENT = 1,
    /// An argument is out of range or malformed (a bad name, an index past
    /// the end, an unknown consistency level).
    VMB_ERR_INVALID_ARGUMENT = 2,
    /// A string argument is not valid UTF-8.
    VMB_ERR_INVALID_UTF8 = 3,
    /// A file system call failed (the message names the path).
    VMB_ERR_IO = 4,
    /// The path holds no vault.
    VMB_ERR_NOT_A_VAULT = 5,
    /// A vault (or other files) already exists where one was to be created.
    VMB_ERR_ALREADY_EXISTS = 6,
    /// The vault has a format version this build does not read.
    VMB_ERR_UNSUPPORTED_VERSION = 7,
    /// Another process holds the vault's lock; retrying later may work.
    VMB_ERR_LOCKED = 8,
    /// Stored data is damaged.
    VMB_ERR_CORRUPT = 9,
    /// A VM, point or disk does not exist.
    VMB_ERR_NOT_FOUND = 10,
    /// The snapshot provider (a host callback or a built-in one) failed.
    VMB_ERR_PROVIDER = 11,
    /// Reading a disk failed; the message names the VM, disk and byte
    /// offset.
    VMB_ERR_DEVICE_READ = 12,
    /// Writing a restored disk failed; the message names the disk, target
    /// and byte offset.
    VMB_ERR_RESTORE_WRITE = 13,
    /// A disk changed while it was read in place; nothing was committed.
    VMB_ERR_SOURCE_CHANGED = 14,
    /// The job was cancelled (by `vmb_job_cancel` or a progress callback);
    /// nothing was committed.
    VMB_ERR_CANCELLED = 15,
    /// A bug: the library panicked. The panic was caught; the handles
    /// passed to the call may be left in an unspecified but safe state.
    VMB_ERR_PANIC = 16,
    /// An error of a kind this version of the C API does not name.
    VMB_ERR_OTHER = 17,
    /// A sealed object of an encrypted vault fails authentication (changed,
    /// swapped, moved from another vault, or forged); the message names the
    /// object and offset.
    VMB_ERR_TAMPERED = 18,
    /// The vault is encrypted and no passphrase or key file was given.
    VMB_ERR_KEY_REQUIRED = 19,
    /// The passphrase or key file opens none of the vault's key slots.
    VMB_ERR_WRONG_KEY = 20,
    /// A guest's partition table, volume group or file system inside a
    /// point cannot be read as asked (ext4 and XFS need root; the vault
    /// itself may be sound).
    VMB_ERR_GUEST = 21,
    /// The vault's protection settings refuse the change (soft delete
    /// always on); nothing was changed.
    VMB_ERR_PROTECTED = 22,
}

use vmb_status::*;

impl vmb_status {
    /// A static, NUL-terminated description.
    pub(crate) fn text(self) -> &'static CStr {
        match self {
            VMB_OK => c"ok",
            VMB_ERR_NULL_ARGUMENT => c"a required pointer argument is NULL",
            VMB_ERR_INVALID_ARGUMENT => c"invalid argument",
            VMB_ERR_INVALID_UTF8 => c"a string argument is not valid UTF-8",
            VMB_ERR_IO => c"input/output error",
            VMB_ERR_NOT_A_VAULT => c"not a vmbackup vault",
            VMB_ERR_ALREADY_EXISTS => c"a vault or other files already exist there",
            VMB_ERR_UNSUPPORTED_VERSION => c"unsupported vault format version",
            VMB_ERR_LOCKED => c"the vault is locked by another process",
            VMB_ERR_CORRUPT => c"stored data is damaged",
            VMB_ERR_NOT_FOUND => c"not found",
            VMB_ERR_PROVIDER => c"the snapshot provider failed",
            VMB_ERR_DEVICE_READ => c"reading a disk failed",
            VMB_ERR_RESTORE_WRITE => c"writing a restored disk failed",
            VMB_ERR_SOURCE_CHANGED => c"a disk changed while it was backed up",
            VMB_ERR_CANCELLED => c"the job was cancelled; nothing was committed",
            VMB_ERR_PANIC => c"internal error (a panic was caught)",
            VMB_ERR_OTHER => c"error",
            VMB_ERR_TAMPERED => c"stored data was tampered with (it fails authentication)",
            VMB_ERR_KEY_REQUIRED => c"the vault is encrypted: a passphrase or key file is needed",
            VMB_ERR_WRONG_KEY => c"wrong passphrase or key file for the vault",
            VMB_ERR_GUEST => c"a guest's volumes or files cannot be read as asked",
            VMB_ERR_PROTECTED => c"the vault's protection settings refuse it",
        }
    }

    /// The status for a code, if it names one.
    pub(crate) fn from_code(code: c_int) -> Option<vmb_status> {
        const ALL: [vmb_status; 23] = [
            VMB_OK,
            VMB_ERR_NULL_ARGUMENT,
            VMB_ERR_INVALID_ARGUMENT,
            VMB_ERR_INVALID_UTF8,
            VMB_ERR_IO,
            VMB_ERR_NOT_A_VAULT,
            VMB_ERR_ALREADY_EXISTS,
            VMB_ERR_UNSUPPORTED_VERSION,
            VMB_ERR_LOCKED,
            VMB_ERR_CORRUPT,
            VMB_ERR_NOT_FOUND,
            VMB_ERR_PROVIDER,
            VMB_ERR_DEVICE_READ,
            VMB_ERR_RESTORE_WRITE,
            VMB_ERR_SOURCE_CHANGED,
            VMB_ERR_CANCELLED,
            VMB_ERR_PANIC,
            VMB_ERR_OTHER,
            VMB_ERR_TAMPERED,
            VMB_ERR_KEY_REQUIRED,
            VMB_ERR_WRONG_KEY,
            VMB_ERR_GUEST,
            VMB_ERR_PROTECTED,
        ];
        ALL.into_iter().find(|s| *s as c_int == code)
    }
}

/// A failure on its way to the C caller: a status and a message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: vmb_status,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(status: vmb_status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }
    pub(crate) fn null(what: &str) -> Failure {
        Failure::new(VMB_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(VMB_ERR_INVALID_ARGUMENT, message)
    }
}

/// Item `index` of a list a handle holds, or an invalid-argument failure
/// such as "problem index 3: the report has 2".
pub(crate) fn nth<'a, T>(items: &'a [T], index: usize, item: &str, holder: &str) -> Result<&'a T, Failure> {
    items.get(index).ok_or_else(|| Failure::invalid(format!("{item} index {index}: the {holder} has {}", items.len())))
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::Io { .. } | Error::CommitRaced { .. } => VMB_ERR_IO,
            Error::DeviceRead { .. } => VMB_ERR_DEVICE_READ,
            Error::RestoreWrite { .. } => VMB_ERR_RESTORE_WRITE,
            Error::NotAVault { .. } => VMB_ERR_NOT_A_VAULT,
            Error::AlreadyExists { .. } => VMB_ERR_ALREADY_EXISTS,
            Error::UnsupportedVersion { .. } => VMB_ERR_UNSUPPORTED_VERSION,
            Error::Locked { .. } => VMB_ERR_LOCKED,
            Error::Corrupt { .. } | Error::DamagedRange { .. } => VMB_ERR_CORRUPT,
            Error::NotFound { .. } => VMB_ERR_NOT_FOUND,
            Error::InvalidArgument { .. } => VMB_ERR_INVALID_ARGUMENT,
            Error::Provider { .. } | Error::Recovery { .. } => VMB_ERR_PROVIDER,
            Error::SourceChanged { .. } => VMB_ERR_SOURCE_CHANGED,
            Error::Cancelled { .. } => VMB_ERR_CANCELLED,
            Error::Tampered { .. } => VMB_ERR_TAMPERED,
            Error::KeyRequired { .. } => VMB_ERR_KEY_REQUIRED,
            Error::WrongKey { .. } => VMB_ERR_WRONG_KEY,
            Error::Guest { .. } => VMB_ERR_GUEST,
            Error::Protected { .. } => VMB_ERR_PROTECTED,
            _ => VMB_ERR_OTHER,
        };
        // The whole chain, so that a host's own message reaches the C side.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Failure { status, message }
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Replaces the calling thread's last error message.
pub(crate) fn set_last_error(message: &str) {
    // A message with an interior NUL (from a host's own text) is cut there
    // rather than lost.
    let cut = message.split('\0').next().unwrap_or_default();
    let c = CString::new(cut).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = c);
}

/// The calling thread's last error message; valid until the next call
/// into the library on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

/// Runs an entry point's body: catches panics, records the outcome in the
/// calling thread's last error, and turns it into a status.
pub(crate) fn run(body: impl FnOnce() -> FfiResult) -> vmb_status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            VMB_OK
        }
        Ok(Err(f)) => {
            set_last_error(&f.message);
            f.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error: vmbackup panicked ({what}); please report it"));
            VMB_ERR_PANIC
        }
    }
}

/// Every entry point that returns a status is one `ffi!` block: its body
/// runs inside [`run`], so no panic crosses the ABI, and `?` turns any
/// error into a status and a last-error message.
macro_rules! ffi {
    ($($body:tt)*) => {
        $crate::status::run(move || -> $crate::status::FfiResult { $($body)* })
    };
}

/// Free functions return nothing, but must not unwind either.
macro_rules! ffi_free {
    ($($body:tt)*) => {{
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || { $($body)* }));
    }};
}

/// A shared reference from a pointer argument, or a NULL-argument failure.
macro_rules! arg_ref {
    ($p:expr, $what:expr) => {{
        let p = $p;
        if p.is_null() {
            return Err($crate::status::Failure::null($what));
        }
        // SAFETY: the pointer is not NULL, and the C contract (see the
        // header) is that it points to a live object of this type that no
        // other thread frees during the call.
        unsafe { &*p }
    }};
}

/// A UTF-8 `&str` from a NUL-terminated C string argument.
macro_rules! arg_str {
    ($p:expr, $what:expr) => {{
        let p: *const std::ffi::c_char = $p;
        if p.is_null() {
            return Err($crate::status::Failure::null($what));
        }
        // SAFETY: not NULL; the C contract is a NUL-terminated string that
        // stays alive and unchanged during the call.
        let c = unsafe { std::ffi::CStr::from_ptr(p) };
        $crate::status::utf8(c, $what)?
    }};
}

/// An out-parameter that must not be NULL; checked before any work so that
/// nothing is done whose result cannot be handed back.
macro_rules! arg_out {
    ($p:expr, $what:expr) => {{
        let p = $p;
        if p.is_null() {
            return Err($crate::status::Failure::null($what));
        }
        p
    }};
}

/// Writes an out-parameter; called only on success.
macro_rules! write_out {
    ($p:expr, $v:expr) => {{
        let v = $v;
        // SAFETY: checked not NULL by `arg_out!`; the C contract is that it
        // points to writable memory of the right type.
        unsafe { $p.write(v) };
    }};
}

pub(crate) use {arg_out, arg_ref, arg_str, ffi, ffi_free, write_out};

/// Checks that a C string is UTF-8.
pub(crate) fn utf8<'a>(c: &'a CStr, what: &str) -> FfiResult<&'a str> {
    c.to_str().map_err(|e| {
        Failure::new(
            VMB_ERR_INVALID_UTF8,
            format!("{what} is not valid UTF-8 (bad byte at position {})", e.valid_up_to()),
        )
    })
}

/// A string for the C side: an error when it holds a NUL (it would be cut).
pub(crate) fn c_string(s: &str, what: &str) -> FfiResult<CString> {
    CString::new(s)
        .map_err(|_| Failure::new(VMB_ERR_CORRUPT, format!("{what} {s:?} holds a NUL byte and cannot be handed to C")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = run(|| panic!("boom"));
        assert_eq!(s, VMB_ERR_PANIC);
        // SAFETY: the pointer is this thread's last error, just set.
        let m = unsafe { CStr::from_ptr(last_error_ptr()) };
        assert!(m.to_str().unwrap_or_default().contains("boom"));
        assert_eq!(run(|| Ok(())), VMB_OK);
        // SAFETY: as above.
        assert!(unsafe { CStr::from_ptr(last_error_ptr()) }.is_empty());
    }

    #[test]
    fn every_code_round_trips() {
        for code in 0..23 {
            let s = vmb_status::from_code(code).expect("a code");
            assert_eq!(s as c_int, code);
            assert!(!s.text().is_empty());
        }
        assert!(vmb_status::from_code(23).is_none());
        assert!(vmb_status::from_code(-1).is_none());
    }
}
