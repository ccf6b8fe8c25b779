//! What a host plugs in through tables of function pointers: disks
//! ([`vmb_disk_ops`] as a core `BlockDevice`), snapshots
//! ([`vmb_provider`] as a core `SnapshotProvider`) and restore targets
//! ([`vmb_write_target`] as a core `RestoreTarget`).

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::ops::Range;

use backup_core::{
    BlockDevice, Consistency, Error, PrepareReport, RestoreTarget, Snapshot, SnapshotDisk, SnapshotProvider, Vm,
};

use crate::job::{consistency_from_c, consistency_to_c, vmb_consistency};
use crate::status::{Failure, arg_str, ffi, vmb_status};

/// What a map callback returns when it cannot tell (every byte of the
/// window may hold data / may have changed). Any other non-zero value is an
/// error.
pub const VMB_MAP_UNKNOWN: c_int = 1;

/// A host's disk (or a snapshot of one), read by position.
///
/// Every callback gets `userdata` first and returns 0 on success; a
/// failure is any other value: a positive one is read as an `errno` value
/// (`EIO`) and named as one in the error, a negative one is shown as the
/// host's own code. It may be explained by calling `vmb_callback_error`
/// before returning.
/// Callbacks come from the library's worker threads (a rayon pool),
/// **several at once** for the same disk, and must not throw or `longjmp`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vmb_disk_ops {
    /// The size of this struct as the caller's header declares it:
    /// `sizeof(struct vmb_disk_ops)`, or 0 for the first layout (0.1). Fields
    /// added by a later version are appended; see "Extensible structs" in
    /// the header's rules.
    pub struct_size: u32,
    /// Passed to every callback; owned by the library from
    /// `vmb_snapshot_add_disk` on, and given back through `destroy`.
    pub userdata: *mut c_void,
    /// Required. Writes the disk's size in bytes to `*size`. Called once,
    /// when the disk is added.
    pub size: Option<unsafe extern "C" fn(userdata: *mut c_void, size: *mut u64) -> c_int>,
    /// Required. Fills `buf` (`len` bytes, owned by the library and valid
    /// only during the call) with the disk's bytes at `offset`. A short read
    /// is an error.
    pub read_at: Option<unsafe extern "C" fn(userdata: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> c_int>,
    /// Optional. The ranges of `[start, end)` that may hold data, given by
    /// calling `vmb_ranges_add(ranges, ...)`; everything else reads as zeros
    /// and is not read. Return 0, or `VMB_MAP_UNKNOWN` when it cannot tell.
    pub allocated:
        Option<unsafe extern "C" fn(userdata: *mut c_void, start: u64, end: u64, ranges: *mut vmb_ranges) -> c_int>,
    /// Optional (changed block tracking). The ranges of `[start, end)` that
    /// changed since the state named by `token` (a change token this disk's
    /// snapshot gave for the previous point; NUL-terminated, valid during
    /// the call), by `vmb_ranges_add`. Return 0, or `VMB_MAP_UNKNOWN` when
    /// it cannot tell for this token (the window is then read whole).
    pub changed_since: Option<
        unsafe extern "C" fn(
            userdata: *mut c_void,
            token: *const c_char,
            start: u64,
            end: u64,
            ranges: *mut vmb_ranges,
        ) -> c_int,
    >,
    /// Optional. Called exactly once, when the library no longer needs the
    /// disk (after the job, whatever its outcome), from the thread that
    /// started the job.
    pub destroy: Option<unsafe extern "C" fn(userdata: *mut c_void)>,
}

/// Ranges a map callback hands back with `vmb_ranges_add`. Owned by the
/// library; valid only during the callback it was passed to.
pub struct vmb_ranges {
    window: Range<u64>,
    ranges: Vec<Range<u64>>,
}

/// Adds `[offset, offset + length)` to the ranges of a map callback. They
/// may come in any order and overlap; parts outside the asked window are
/// ignored.
///
/// # Safety
/// `ranges` is NULL or the pointer passed to the running callback.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_ranges_add(ranges: *mut vmb_ranges, offset: u64, length: u64) -> vmb_status {
    ffi! {
        if ranges.is_null() {
            return Err(Failure::null("ranges"));
        }
        // SAFETY: not NULL; the C contract is the pointer passed to the
        // running map callback, which only that callback's thread uses.
        let r = unsafe { &mut *ranges };
        let end = offset.checked_add(length).ok_or_else(|| {
            Failure::invalid(format!("range at {offset} of {length} bytes ends past 2^64"))
        })?;
        let start = offset.max(r.window.start);
        let end = end.min(r.window.end);
        if start < end {
            r.ranges.push(start..end);
        }
        Ok(())
    }
}

thread_local! {
    static CALLBACK_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
    /// How many host callbacks this thread is inside. They nest: a
    /// snapshot callback adds disks, whose size callback runs at once.
    static CALLBACK_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Explains the failure a callback is about to return. Call it from inside
/// the callback, on the thread the callback runs on; the text is copied and
/// becomes part of the job's error message. Called anywhere else (no
/// callback of this library running on the thread) it returns
/// `VMB_ERR_INVALID_ARGUMENT` and keeps nothing: the text would explain no
/// failure. Its status may be ignored (it is not marked `VMB_MUST_USE`):
/// the callback returns its own failure either way.
///
/// # Safety
/// `message` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_callback_error(message: *const c_char) -> vmb_status {
    ffi! {
        let s = arg_str!(message, "message");
        if CALLBACK_DEPTH.with(Cell::get) == 0 {
            return Err(Failure::invalid(format!(
                "vmb_callback_error explains a failing callback, and no callback of this library runs on this thread; its message was: {s}"
            )));
        }
        CALLBACK_ERROR.with(|c| *c.borrow_mut() = Some(s.to_string()));
        Ok(())
    }
}

/// A host callback running on this thread: entering clears any stale
/// explanation, and while it lives `vmb_callback_error` is accepted.
struct InCallback;

impl InCallback {
    fn enter() -> InCallback {
        CALLBACK_ERROR.with(|c| c.borrow_mut().take());
        CALLBACK_DEPTH.with(|d| d.set(d.get().saturating_add(1)));
        InCallback
    }
}

impl Drop for InCallback {
    fn drop(&mut self) {
        CALLBACK_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// What a callback that returned `code` said went wrong. A positive code
/// is read as an `errno` value and named as one; a negative one is the
/// host's own.
fn callback_failure(callback: &str, code: c_int) -> String {
    let said = CALLBACK_ERROR.with(|c| c.borrow_mut().take());
    let code = if code > 0 {
        let text = io::Error::from_raw_os_error(code).to_string();
        let text = text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_string();
        format!("errno {code} ({text})")
    } else {
        format!("code {code}")
    };
    match said {
        Some(s) => format!("host {callback} callback failed with {code}: {s}"),
        None => format!("host {callback} callback failed with {code}"),
    }
}

fn callback_io_error(callback: &str, code: c_int) -> io::Error {
    let kind = if code > 0 { io::Error::from_raw_os_error(code).kind() } else { io::ErrorKind::Other };
    io::Error::new(kind, callback_failure(callback, code))
}

/// A host disk as a core block device.
pub(crate) struct HostDisk {
    ops: vmb_disk_ops,
    read_at: unsafe extern "C" fn(*mut c_void, u64, *mut u8, usize) -> c_int,
    size: u64,
}

// SAFETY: the header's contract for `vmb_disk_ops` is that its callbacks
// may be called from any thread, several at once, with its userdata.
unsafe impl Send for HostDisk {}
// SAFETY: as above.
unsafe impl Sync for HostDisk {}

impl Drop for HostDisk {
    fn drop(&mut self) {
        if let Some(destroy) = self.ops.destroy {
            // SAFETY: called once, as the last use of the userdata.
            unsafe { destroy(self.ops.userdata) };
        }
    }
}

impl HostDisk {
    /// Takes ownership of the ops' userdata, whatever the outcome.
    pub(crate) fn new(ops: vmb_disk_ops, name: &str) -> Result<HostDisk, Failure> {
        let destroy_now = |why: String| {
            if let Some(destroy) = ops.destroy {
                // SAFETY: the library owns the userdata from now on and
                // gives it back once.
                unsafe { destroy(ops.userdata) };
            }
            Failure::invalid(why)
        };
        let (Some(size_fn), Some(read_at)) = (ops.size, ops.read_at) else {
            return Err(destroy_now(format!("disk {name}: its ops table needs both size and read_at")));
        };
        let mut disk = HostDisk { ops, read_at, size: 0 };
        let mut size = 0u64;
        let _in = InCallback::enter();
        // SAFETY: a host callback with its own userdata and a valid out
        // pointer.
        let r = unsafe { size_fn(ops.userdata, &mut size) };
        if r != 0 {
            // Dropping `disk` destroys the userdata.
            return Err(Failure::new(
                vmb_status::VMB_ERR_PROVIDER,
                format!("disk {name}: {}", callback_failure("size", r)),
            ));
        }
        disk.size = size;
        Ok(disk)
    }

    /// What both ways of adding a host disk start with: takes ownership
    /// of `ops`'s userdata, then reads the disk's name and change token.
    /// Every failure destroys the userdata (dropping a `HostDisk` calls
    /// `destroy`), so the caller's "owned whatever the result" holds.
    pub(crate) fn adopt(
        ops: vmb_disk_ops,
        name: *const c_char,
        change_token: *const c_char,
    ) -> Result<(String, HostDisk, Option<String>), Failure> {
        let name = match checked_str(name, "disk name") {
            Ok(n) => n,
            Err(e) => {
                drop(HostDisk::new(ops, "?"));
                return Err(e);
            }
        };
        let device = HostDisk::new(ops, &name)?;
        let token = checked_opt_str(change_token, "change token")?;
        Ok((name, device, token))
    }

    fn map(
        &self,
        window: Range<u64>,
        call: impl FnOnce(*mut vmb_ranges) -> c_int,
        callback: &str,
    ) -> io::Result<Option<Vec<Range<u64>>>> {
        let mut ranges = vmb_ranges { window, ranges: Vec::new() };
        let _in = InCallback::enter();
        match call(&mut ranges) {
            0 => {}
            VMB_MAP_UNKNOWN => return Ok(None),
            code => return Err(callback_io_error(callback, code)),
        }
        // The engine wants them sorted and disjoint; hosts need not bother.
        let mut v = ranges.ranges;
        v.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        Ok(Some(merged))
    }
}

impl BlockDevice for HostDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {} bytes past the end ({})", buf.len(), self.size),
            ));
        }
        let _in = InCallback::enter();
        // SAFETY: the buffer is valid and exclusively ours for `len` bytes
        // during the call; the callback may run on any thread (contract).
        let r = unsafe { (self.read_at)(self.ops.userdata, offset, buf.as_mut_ptr(), buf.len()) };
        if r == 0 { Ok(()) } else { Err(callback_io_error("read_at", r)) }
    }

    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let Some(f) = self.ops.allocated else {
            return Ok(None);
        };
        let (start, end) = (window.start, window.end);
        // SAFETY: a host callback with its userdata and the live ranges.
        self.map(window, |r| unsafe { f(self.ops.userdata, start, end, r) }, "allocated")
    }

    fn changed_since(&self, token: &str, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let Some(f) = self.ops.changed_since else {
            return Ok(None);
        };
        // A token with a NUL cannot come from C; treat it as unknown.
        let Ok(token) = CString::new(token) else {
            return Ok(None);
        };
        let (start, end) = (window.start, window.end);
        // SAFETY: a host callback with its userdata, a NUL-terminated token
        // and the live ranges, all valid during the call.
        self.map(window, |r| unsafe { f(self.ops.userdata, token.as_ptr(), start, end, r) }, "changed_since")
    }
}

/// A snapshot being built by a host's `snapshot` callback. Owned by the
/// library; valid only during that callback.
pub struct vmb_snapshot {
    vm: String,
    wanted: Vec<String>,
    disks: Vec<SnapshotDisk>,
    warnings: Vec<String>,
}

/// Adds a disk to the snapshot being taken: `name` must be one of the VM's
/// disks, `ops` serves its bytes, `change_token` (NULL when the host tracks
/// no changes) names this state of the disk for the next backup's
/// `changed_since`. The table is copied.
///
/// From this call on the library owns `ops->userdata`, **whatever the
/// result**: `ops->destroy` is called exactly once when it is no longer
/// needed (at once on failure). Only a table it cannot read (`ops` NULL,
/// or a `struct_size` it refuses) stays the caller's.
///
/// # Safety
/// `snapshot` is the pointer passed to the running `snapshot` callback;
/// `name` and `change_token` are NULL or NUL-terminated; `ops` is NULL or a
/// readable `vmb_disk_ops`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_snapshot_add_disk(
    snapshot: *mut vmb_snapshot,
    name: *const c_char,
    ops: *const vmb_disk_ops,
    change_token: *const c_char,
) -> vmb_status {
    ffi! {
        let ops = crate::extensible::arg_in!(ops, "ops");
        let (disk_name, device, token) = HostDisk::adopt(ops, name, change_token)?;
        if snapshot.is_null() {
            return Err(Failure::null("snapshot"));
        }
        // SAFETY: not NULL, and the C contract is the pointer given to the
        // running snapshot callback, used by this thread only.
        let snap = unsafe { &mut *snapshot };
        if !snap.wanted.contains(&disk_name) {
            return Err(Failure::invalid(format!(
                "vm {} has no disk named {disk_name} (it has: {})",
                snap.vm,
                snap.wanted.join(", ")
            )));
        }
        if snap.disks.iter().any(|d| d.name == disk_name) {
            return Err(Failure::invalid(format!("disk {disk_name} was added twice")));
        }
        snap.disks.push(SnapshotDisk {
            name: disk_name,
            device: std::sync::Arc::new(device),
            change_token: token,
            method: "host".into(),
        });
        Ok(())
    }
}

/// Adds a warning a user should see (a fallback taken) to the snapshot
/// being taken; it is recorded in the point. Its status may be ignored
/// (it is not marked `VMB_MUST_USE`): a warning that could not be added
/// leaves nothing for the callback to undo.
///
/// # Safety
/// As `vmb_snapshot_add_disk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_snapshot_warn(snapshot: *mut vmb_snapshot, message: *const c_char) -> vmb_status {
    ffi! {
        let m = arg_str!(message, "message").to_string();
        if snapshot.is_null() {
            return Err(Failure::null("snapshot"));
        }
        // SAFETY: as in `vmb_snapshot_add_disk`.
        unsafe { (*snapshot).warnings.push(m) };
        Ok(())
    }
}

/// A UTF-8 copy of a C string argument, without the early-return macros
/// (for paths that must clean up first).
pub(crate) fn checked_str(p: *const c_char, what: &str) -> Result<String, Failure> {
    if p.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL; a NUL-terminated string by contract.
    let c = unsafe { CStr::from_ptr(p) };
    Ok(crate::status::utf8(c, what)?.to_string())
}

pub(crate) fn checked_opt_str(p: *const c_char, what: &str) -> Result<Option<String>, Failure> {
    if p.is_null() { Ok(None) } else { checked_str(p, what).map(Some) }
}

/// How a host takes snapshots of its VMs (this is how a Windows host plugs
/// VSS in). The table is borrowed for the duration of the backup call.
///
/// Every callback gets `userdata` first and returns 0 on success, any other
/// value on failure (explained with `vmb_callback_error`). They are called
/// on the thread that called `vmb_vault_backup_host`, one at a time, and must not
/// throw or `longjmp`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vmb_provider {
    /// The size of this struct as the caller's header declares it:
    /// `sizeof(struct vmb_provider)`, or 0 for the first layout (0.1). Fields
    /// added by a later version are appended; see "Extensible structs" in
    /// the header's rules.
    pub struct_size: u32,
    /// Passed to every callback.
    pub userdata: *mut c_void,
    /// Optional: the provider's name and version. When it differs from the
    /// one recorded at the VM's last `prepare`, the VM is prepared again.
    pub version: *const c_char,
    /// Optional. Prepares a VM before its first backup (installs what the
    /// snapshots need); must be idempotent.
    pub prepare: Option<unsafe extern "C" fn(userdata: *mut c_void, vm: *const c_char) -> c_int>,
    /// Required. Takes a snapshot of `vm` at the `wanted` consistency or the
    /// best it can, writes the consistency it really achieved to
    /// `*achieved` (preset to `VMB_CONSISTENCY_CRASH`), and adds every disk
    /// of the VM with `vmb_snapshot_add_disk(snapshot, ...)`. On failure it
    /// must undo what it did itself: `release` is called only after a
    /// successful snapshot.
    pub snapshot: Option<
        unsafe extern "C" fn(
            userdata: *mut c_void,
            vm: *const c_char,
            wanted: vmb_consistency,
            achieved: *mut vmb_consistency,
            snapshot: *mut vmb_snapshot,
        ) -> c_int,
    >,
    /// Optional. Releases the snapshot; called exactly once after every
    /// successful `snapshot`, whether the job succeeded or not, after the
    /// last read of its disks.
    pub release: Option<unsafe extern "C" fn(userdata: *mut c_void, vm: *const c_char) -> c_int>,
}

/// The host's provider table as a core snapshot provider.
pub(crate) struct HostProvider {
    table: vmb_provider,
    snapshot: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        vmb_consistency,
        *mut vmb_consistency,
        *mut vmb_snapshot,
    ) -> c_int,
    version: String,
    /// The weakest consistency the job accepts.
    min: Consistency,
}

// SAFETY: the provider's callbacks run on the calling thread only (the core
// job calls prepare, snapshot and release from it); the bounds are needed
// by the trait, not used across threads.
unsafe impl Send for HostProvider {}
// SAFETY: as above.
unsafe impl Sync for HostProvider {}

impl HostProvider {
    pub(crate) fn new(table: vmb_provider, min: Consistency) -> Result<HostProvider, Failure> {
        let snapshot = table.snapshot.ok_or_else(|| Failure::invalid("provider: its snapshot callback is NULL"))?;
        let version = checked_opt_str(table.version, "provider version")?.unwrap_or_default();
        Ok(HostProvider { table, snapshot, version, min })
    }

    fn provider_error(vm: &Vm, step: &'static str, code: c_int) -> Error {
        let message = callback_failure(step, code);
        // EAGAIN and EBUSY say that trying again may work.
        let retryable = code == 11 || code == 16;
        Error::Provider { vm: vm.name.clone(), step, message, retryable }
    }
}

fn vm_cstring(vm: &Vm) -> CString {
    // Validated VM names hold no control characters, hence no NUL.
    CString::new(vm.name.as_str()).unwrap_or_default()
}

impl SnapshotProvider for HostProvider {
    fn prepare(&self, vm: &Vm) -> backup_core::Result<PrepareReport> {
        if let Some(prepare) = self.table.prepare {
            let name = vm_cstring(vm);
            let _in = InCallback::enter();
            // SAFETY: the host's callback with its userdata and a
            // NUL-terminated name valid during the call.
            let r = unsafe { prepare(self.table.userdata, name.as_ptr()) };
            if r != 0 {
                return Err(Self::provider_error(vm, "prepare", r));
            }
        }
        Ok(PrepareReport { provider_version: self.version(), changes: Vec::new() })
    }

    fn version(&self) -> String {
        if self.version.is_empty() { "host".into() } else { self.version.clone() }
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> backup_core::Result<Snapshot> {
        let name = vm_cstring(vm);
        let mut snap = vmb_snapshot {
            vm: vm.name.clone(),
            wanted: vm.disks.iter().map(|d| d.name.clone()).collect(),
            disks: Vec::new(),
            warnings: Vec::new(),
        };
        let mut achieved: vmb_consistency = crate::job::VMB_CONSISTENCY_CRASH;
        let _in = InCallback::enter();
        // SAFETY: the host's callback with its userdata; the name, the
        // achieved slot and the snapshot builder are valid during the call.
        let r = unsafe {
            (self.snapshot)(self.table.userdata, name.as_ptr(), consistency_to_c(wanted), &mut achieved, &mut snap)
        };
        if r != 0 {
            // Dropping `snap` destroys the disks added so far.
            return Err(Self::provider_error(vm, "snapshot", r));
        }
        let problem = match consistency_from_c(achieved) {
            Err(e) => Some(format!("achieved {}", e.message)),
            Ok(level) if level < self.min => Some(format!(
                "the snapshot is only {level}-consistent, and at least {} consistency is required",
                self.min
            )),
            Ok(_) => {
                let missing: Vec<&str> = snap
                    .wanted
                    .iter()
                    .filter(|w| !snap.disks.iter().any(|d| &d.name == *w))
                    .map(String::as_str)
                    .collect();
                (!missing.is_empty())
                    .then(|| format!("the host's snapshot gave no device for disk {}", missing.join(", ")))
            }
        };
        if let Some(message) = problem {
            // The host's snapshot succeeded: its disks go, then it is
            // released, before the job fails.
            snap.disks.clear();
            let _ = self.release_callback(vm);
            return Err(Error::Provider { vm: vm.name.clone(), step: "snapshot", message, retryable: false });
        }
        let consistency = consistency_from_c(achieved).unwrap_or(Consistency::Crash);
        // Keep the VM's disk order.
        let mut disks = Vec::with_capacity(snap.disks.len());
        for w in &snap.wanted {
            if let Some(i) = snap.disks.iter().position(|d| &d.name == w) {
                disks.push(snap.disks.swap_remove(i));
            }
        }
        Ok(Snapshot { disks, consistency, warnings: snap.warnings, provider_data: None })
    }

    fn release(&self, vm: &Vm, snapshot: Snapshot) -> backup_core::Result<()> {
        // The devices go first: the host may free what they read from.
        drop(snapshot);
        self.release_callback(vm)
    }
}

impl HostProvider {
    fn release_callback(&self, vm: &Vm) -> backup_core::Result<()> {
        let Some(release) = self.table.release else {
            return Ok(());
        };
        let name = vm_cstring(vm);
        let _in = InCallback::enter();
        // SAFETY: the host's callback with its userdata and a
        // NUL-terminated name valid during the call.
        let r = unsafe { release(self.table.userdata, name.as_ptr()) };
        if r != 0 {
            return Err(Self::provider_error(vm, "release", r));
        }
        Ok(())
    }
}

/// Where a host receives a restored disk. Borrowed for the duration of the
/// restore call.
///
/// Callbacks get `userdata` first and return 0 on success, anything else
/// on failure (a positive value is read as an `errno` value, a negative one
/// is the host's own code; explained with `vmb_callback_error`).
/// `write_at` and `write_zeros` come from the library's worker threads (a
/// rayon pool), **several at once**, for different offsets; `finish` comes
/// once, last, from the calling thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vmb_write_target {
    /// The size of this struct as the caller's header declares it:
    /// `sizeof(struct vmb_write_target)`, or 0 for the first layout (0.1). Fields
    /// added by a later version are appended; see "Extensible structs" in
    /// the header's rules.
    pub struct_size: u32,
    /// Passed to every callback.
    pub userdata: *mut c_void,
    /// Required. Writes `len` bytes of `data` (owned by the library, valid
    /// only during the call) at `offset`.
    pub write_at:
        Option<unsafe extern "C" fn(userdata: *mut c_void, offset: u64, data: *const u8, len: usize) -> c_int>,
    /// Optional. Makes `len` bytes at `offset` read as zeros. When NULL,
    /// zeros are written through `write_at`.
    pub write_zeros: Option<unsafe extern "C" fn(userdata: *mut c_void, offset: u64, len: u64) -> c_int>,
    /// Optional. Makes everything written durable; called once at the end
    /// of a successful restore.
    pub finish: Option<unsafe extern "C" fn(userdata: *mut c_void) -> c_int>,
}

pub(crate) struct HostTarget {
    table: vmb_write_target,
    write_at: unsafe extern "C" fn(*mut c_void, u64, *const u8, usize) -> c_int,
}

// SAFETY: the header's contract for `vmb_write_target` is that write_at and
// write_zeros may be called from any thread, several at once.
unsafe impl Send for HostTarget {}
// SAFETY: as above.
unsafe impl Sync for HostTarget {}

impl HostTarget {
    pub(crate) fn new(table: vmb_write_target) -> Result<HostTarget, Failure> {
        let write_at = table.write_at.ok_or_else(|| Failure::invalid("write target: its write_at callback is NULL"))?;
        Ok(HostTarget { table, write_at })
    }
}

impl RestoreTarget for HostTarget {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _in = InCallback::enter();
        // SAFETY: the host's callback with its userdata; `data` is valid
        // for `len` bytes during the call.
        let r = unsafe { (self.write_at)(self.table.userdata, offset, data.as_ptr(), data.len()) };
        if r == 0 { Ok(()) } else { Err(callback_io_error("write_at", r)) }
    }

    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        if let Some(f) = self.table.write_zeros {
            let _in = InCallback::enter();
            // SAFETY: the host's callback with its userdata.
            let r = unsafe { f(self.table.userdata, offset, len) };
            return if r == 0 { Ok(()) } else { Err(callback_io_error("write_zeros", r)) };
        }
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = offset;
        let end = offset.saturating_add(len);
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.write_at(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    fn finish(&self) -> io::Result<()> {
        let Some(f) = self.table.finish else {
            return Ok(());
        };
        let _in = InCallback::enter();
        // SAFETY: the host's callback with its userdata.
        let r = unsafe { f(self.table.userdata) };
        if r == 0 { Ok(()) } else { Err(callback_io_error("finish", r)) }
    }

    fn describe(&self) -> String {
        "the host's write target".into()
    }
}

crate::extensible::extensible!(vmb_disk_ops, destroy: Option<unsafe extern "C" fn(userdata: *mut c_void)>);

crate::extensible::extensible!(vmb_provider, release: Option<unsafe extern "C" fn(userdata: *mut c_void, vm: *const c_char) -> c_int>);

crate::extensible::extensible!(vmb_write_target, finish: Option<unsafe extern "C" fn(userdata: *mut c_void) -> c_int>);
