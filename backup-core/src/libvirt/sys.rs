//! libvirt's C API, loaded at run time: the first call that needs libvirt
//! opens `libvirt.so.0` and `libvirt-qemu.so.0` with `dlopen` and looks up
//! the functions below. A command that never touches a domain (a backup of
//! an image file, a restore, a verify) then never maps libvirt and the
//! sixty libraries it pulls in, which cost every such command 12 MiB of
//! memory when they were linked (BENCHMARKS.md, issue 21). It also means
//! that building vmbackup needs no libvirt headers, and that a host without
//! libvirt gets an error naming the missing library only when it asks for a
//! domain.
//!
//! Only the calls vmbackup makes are declared, with their C signatures
//! from libvirt's headers (`libvirt-domain.h`, `libvirt-domain-checkpoint.h`,
//! `libvirt-stream.h`, `virterror.h`, `libvirt-qemu.h`); `handle` wraps them
//! in owned, safe handles.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulong, c_void};
use std::sync::OnceLock;

/// `virConnectPtr`, `virDomainPtr`, `virStreamPtr`,
/// `virDomainCheckpointPtr`: opaque to us.
pub(super) type Ptr = *mut c_void;

/// `virDomainBlockJobInfo`.
#[repr(C)]
#[derive(Default)]
pub(super) struct BlockJobInfo {
    pub kind: c_int,
    pub bandwidth: c_ulong,
    pub cur: u64,
    pub end: u64,
}

/// `virErrorFunc`.
pub(super) type ErrorFunc = unsafe extern "C" fn(*mut c_void, *mut c_void);

/// Declares the function table and its loader: each entry is a field of
/// [`Api`] holding the function of the same name from the given library.
macro_rules! api {
    ($($lib:literal => { $(fn $name:ident($($arg:ty),*) -> $ret:ty;)* })*) => {
        /// The libvirt functions vmbackup calls, as loaded.
        #[allow(non_snake_case)]
        pub(super) struct Api {
            $($(pub $name: unsafe extern "C" fn($($arg),*) -> $ret,)*)*
        }

        impl Api {
            #[allow(non_snake_case)]
            fn load() -> Result<Api, String> {
                $(
                    let lib_name: &str = $lib;
                    let lib = open(lib_name)?;
                    $(
                        let f = symbol(lib, lib_name, concat!(stringify!($name), "\0"))?;
                        // SAFETY: `f` is the non-null address of the C
                        // function of this name, whose signature in
                        // libvirt's headers is the one declared here.
                        let $name = unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> $ret>(f)
                        };
                    )*
                )*
                Ok(Api { $($($name,)*)* })
            }
        }
    };
}

api! {
    "libvirt.so.0" => {
        fn virGetLastErrorMessage() -> *const c_char;
        fn virGetLastErrorCode() -> c_int;
        fn virConnectOpen(*const c_char) -> Ptr;
        fn virConnectClose(Ptr) -> c_int;
        fn virConnSetErrorFunc(Ptr, *mut c_void, Option<ErrorFunc>) -> ();
        fn virConnectListAllDomains(Ptr, *mut *mut Ptr, c_uint) -> c_int;
        fn virDomainLookupByName(Ptr, *const c_char) -> Ptr;
        fn virDomainDefineXML(Ptr, *const c_char) -> Ptr;
        fn virDomainCreateXML(Ptr, *const c_char, c_uint) -> Ptr;
        fn virDomainRef(Ptr) -> c_int;
        fn virDomainFree(Ptr) -> c_int;
        fn virDomainGetName(Ptr) -> *const c_char;
        fn virDomainGetUUIDString(Ptr, *mut c_char) -> c_int;
        fn virDomainGetXMLDesc(Ptr, c_uint) -> *mut c_char;
        fn virDomainIsActive(Ptr) -> c_int;
        fn virDomainIsPersistent(Ptr) -> c_int;
        fn virDomainGetState(Ptr, *mut c_int, *mut c_int, c_uint) -> c_int;
        fn virDomainCreate(Ptr) -> c_int;
        fn virDomainDestroy(Ptr) -> c_int;
        fn virDomainSuspend(Ptr) -> c_int;
        fn virDomainResume(Ptr) -> c_int;
        fn virDomainUndefineFlags(Ptr, c_uint) -> c_int;
        fn virDomainSetMetadata(Ptr, c_int, *const c_char, *const c_char, *const c_char, c_uint) -> c_int;
        fn virDomainGetMetadata(Ptr, c_int, *const c_char, c_uint) -> *mut c_char;
        fn virDomainScreenshot(Ptr, Ptr, c_uint, c_uint) -> *mut c_char;
        fn virDomainBlockPull(Ptr, *const c_char, c_ulong, c_uint) -> c_int;
        fn virDomainGetBlockJobInfo(Ptr, *const c_char, *mut BlockJobInfo, c_uint) -> c_int;
        fn virDomainBlockJobSetSpeed(Ptr, *const c_char, c_ulong, c_uint) -> c_int;
        fn virDomainBlockJobAbort(Ptr, *const c_char, c_uint) -> c_int;
        fn virDomainFSFreeze(Ptr, *mut *const c_char, c_uint, c_uint) -> c_int;
        fn virDomainFSThaw(Ptr, *mut *const c_char, c_uint, c_uint) -> c_int;
        fn virDomainBackupBegin(Ptr, *const c_char, *const c_char, c_uint) -> c_int;
        fn virDomainBackupGetXMLDesc(Ptr, c_uint) -> *mut c_char;
        fn virDomainAbortJob(Ptr) -> c_int;
        fn virDomainListAllCheckpoints(Ptr, *mut *mut Ptr, c_uint) -> c_int;
        fn virDomainCheckpointLookupByName(Ptr, *const c_char, c_uint) -> Ptr;
        fn virDomainCheckpointGetName(Ptr) -> *const c_char;
        fn virDomainCheckpointDelete(Ptr, c_uint) -> c_int;
        fn virDomainCheckpointFree(Ptr) -> c_int;
        fn virStreamNew(Ptr, c_uint) -> Ptr;
        fn virStreamRecv(Ptr, *mut c_char, usize) -> c_int;
        fn virStreamFinish(Ptr) -> c_int;
        fn virStreamFree(Ptr) -> c_int;
    }
    "libvirt-qemu.so.0" => {
        fn virDomainQemuAgentCommand(Ptr, *const c_char, c_int, c_uint) -> *mut c_char;
    }
}

/// libvirt's functions, loaded by the first call that finds them (and kept
/// for the life of the process); the error says which library or function
/// is missing. A failure is not kept: a long-running host (an agent that
/// embeds the library) that had no libvirt at its start finds it once it
/// is installed. Two threads that load at once both succeed; one table is
/// kept (`dlopen` counts the second opening, and nothing is closed).
pub(super) fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Api> = OnceLock::new();
    if let Some(api) = API.get() {
        return Ok(api);
    }
    let api = Api::load()?;
    Ok(API.get_or_init(|| api))
}

/// Opens a library (never closed: its functions stay in [`Api`]).
fn open(name: &str) -> Result<*mut c_void, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("NUL in the library name {name:?}"))?;
    // SAFETY: a NUL-terminated name; RTLD_NOW resolves every symbol now,
    // so a broken install fails here and not in the middle of a job.
    let lib = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return Err(format!("cannot load libvirt ({}); is libvirt installed (Debian: libvirt0)?", dl_error()));
    }
    Ok(lib)
}

/// The address of function `name` (NUL-terminated) in `lib`.
fn symbol(lib: *mut c_void, lib_name: &str, name: &'static str) -> Result<*mut c_void, String> {
    // SAFETY: a handle from dlopen and a NUL-terminated name.
    let f = unsafe { libc::dlsym(lib, name.as_ptr().cast()) };
    if f.is_null() {
        let name = name.trim_end_matches('\0');
        return Err(format!("{lib_name} has no {name} (vmbackup needs libvirt 6.0 or later): {}", dl_error()));
    }
    Ok(f)
}

/// dlerror's message.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string that stays
    // valid until the next dl call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "no reason given".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}
