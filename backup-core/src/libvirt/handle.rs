//! Owned handles on libvirt's objects (a connection, a domain, a stream)
//! over the functions `sys` loads. Each handle holds one libvirt reference
//! and gives it back when dropped; a domain keeps its connection alive.
//! Errors are libvirt's own message and error number; the callers say
//! which domain and step.

use std::ffi::{CStr, CString, c_char, c_int};

use super::sys::{self, Api, BlockJobInfo, Ptr};

/// `VIR_DOMAIN_AFFECT_LIVE`, `_CONFIG`.
const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
/// `VIR_DOMAIN_METADATA_DESCRIPTION`.
const METADATA_DESCRIPTION: c_int = 0;
/// `VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES`.
const BLOCK_PULL_BANDWIDTH_BYTES: u32 = 1 << 6;
/// `VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES`.
const BLOCK_JOB_SPEED_BANDWIDTH_BYTES: u32 = 1;
/// `VIR_DOMAIN_XML_INACTIVE`.
const XML_INACTIVE: u32 = 2;
/// `VIR_DOMAIN_UNDEFINE_MANAGED_SAVE`, `_SNAPSHOTS_METADATA`,
/// `_CHECKPOINTS_METADATA`.
const UNDEFINE_ALL_METADATA: u32 = 1 | 2 | 16;

/// libvirt's last error on this thread, as "message (libvirt error N)".
fn api_error(api: &Api) -> String {
    // SAFETY: both read this thread's last error; the message is null or a
    // NUL-terminated string owned by libvirt, copied at once.
    let (message, code) = unsafe { ((api.virGetLastErrorMessage)(), (api.virGetLastErrorCode)()) };
    let message = if message.is_null() {
        "an unknown libvirt error".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
    };
    format!("{message} (libvirt error {code})")
}

/// A C string of `text`, or an error naming `what`.
fn c_string(text: &str, what: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("NUL in the {what}"))
}

/// Takes a string libvirt allocated for us: copies it and frees it.
///
/// # Safety
/// `p` is null or a NUL-terminated string from libvirt's allocator that no
/// one else frees.
unsafe fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's promise.
    let text = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: the caller's promise: ours to free, once.
    unsafe { libc::free(p.cast()) };
    Some(text)
}

/// A string owned by a libvirt object (a name), copied.
///
/// # Safety
/// `p` is null or a NUL-terminated string that lives for the call.
unsafe fn borrowed_string(p: *const c_char) -> Option<String> {
    // SAFETY: the caller's promise.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// An error handler that does nothing: the error stays retrievable, and
/// libvirt does not print it on stderr (a probe that expects "no such job"
/// is not a user-visible error).
unsafe extern "C" fn silent(_: *mut std::ffi::c_void, _: *mut std::ffi::c_void) {}

/// A connection to a hypervisor.
pub(crate) struct Connect {
    api: &'static Api,
    ptr: Ptr,
}

// SAFETY: libvirt's connections are thread-safe (libvirt's "thread safety"
// page: every public API may be called from any thread on a shared
// connection); the handle only holds a reference.
unsafe impl Send for Connect {}
// SAFETY: as above.
unsafe impl Sync for Connect {}

impl Connect {
    /// Connects to `uri` (loading libvirt on the first call); its errors
    /// are not printed by libvirt.
    pub fn open(uri: &str) -> Result<Connect, String> {
        let api = sys::api()?;
        let c = c_string(uri, "connection URI")?;
        // SAFETY: a NUL-terminated URI.
        let ptr = unsafe { (api.virConnectOpen)(c.as_ptr()) };
        if ptr.is_null() {
            return Err(api_error(api));
        }
        // SAFETY: a live connection; the handler ignores its arguments.
        unsafe { (api.virConnSetErrorFunc)(ptr, std::ptr::null_mut(), Some(silent)) };
        Ok(Connect { api, ptr })
    }

    /// A domain from a pointer libvirt returned (null: its error).
    fn domain(&self, ptr: Ptr) -> Result<Domain, String> {
        if ptr.is_null() { Err(api_error(self.api)) } else { Ok(Domain { api: self.api, ptr }) }
    }

    /// The domain of that name.
    pub fn lookup_domain_by_name(&self, name: &str) -> Result<Domain, String> {
        let c = c_string(name, "domain name")?;
        // SAFETY: a live connection and a NUL-terminated name.
        self.domain(unsafe { (self.api.virDomainLookupByName)(self.ptr, c.as_ptr()) })
    }

    /// Defines a persistent domain from its XML.
    pub fn define_domain_xml(&self, xml: &str) -> Result<Domain, String> {
        let c = c_string(xml, "domain XML")?;
        // SAFETY: a live connection and a NUL-terminated document.
        self.domain(unsafe { (self.api.virDomainDefineXML)(self.ptr, c.as_ptr()) })
    }

    /// Creates and starts a transient domain from its XML.
    pub fn create_domain_xml(&self, xml: &str) -> Result<Domain, String> {
        let c = c_string(xml, "domain XML")?;
        // SAFETY: a live connection and a NUL-terminated document.
        self.domain(unsafe { (self.api.virDomainCreateXML)(self.ptr, c.as_ptr(), 0) })
    }

    /// Every domain, running or defined.
    pub fn list_all_domains(&self) -> Result<Vec<Domain>, String> {
        let mut list: *mut Ptr = std::ptr::null_mut();
        // SAFETY: a live connection; libvirt fills `list` with `n`
        // references, each taken by a Domain below.
        let n = unsafe { (self.api.virConnectListAllDomains)(self.ptr, &mut list, 0) };
        if n < 0 {
            return Err(api_error(self.api));
        }
        // SAFETY: `list` holds `n` live domain pointers.
        let out = (0..n as usize).map(|i| Domain { api: self.api, ptr: unsafe { *list.add(i) } }).collect();
        if !list.is_null() {
            // SAFETY: the array libvirt allocated, freed once.
            unsafe { libc::free(list.cast()) };
        }
        Ok(out)
    }

    /// A new stream on this connection (for a screenshot).
    pub fn new_stream(&self) -> Result<Stream, String> {
        // SAFETY: a live connection.
        let ptr = unsafe { (self.api.virStreamNew)(self.ptr, 0) };
        if ptr.is_null() { Err(api_error(self.api)) } else { Ok(Stream { api: self.api, ptr }) }
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        // SAFETY: our reference, given back once.
        unsafe { (self.api.virConnectClose)(self.ptr) };
    }
}

/// A domain (running, defined, or both).
pub(crate) struct Domain {
    api: &'static Api,
    ptr: Ptr,
}

// SAFETY: as for Connect: libvirt's objects may be used from any thread.
unsafe impl Send for Domain {}
// SAFETY: as above.
unsafe impl Sync for Domain {}

impl Clone for Domain {
    fn clone(&self) -> Domain {
        // SAFETY: a live domain; the new reference is the clone's.
        unsafe { (self.api.virDomainRef)(self.ptr) };
        Domain { api: self.api, ptr: self.ptr }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: our reference, given back once.
        unsafe { (self.api.virDomainFree)(self.ptr) };
    }
}

impl Domain {
    /// 0 or more: Ok; less: libvirt's error.
    fn check(&self, r: c_int) -> Result<c_int, String> {
        if r < 0 { Err(api_error(self.api)) } else { Ok(r) }
    }

    /// The domain's name.
    pub fn name(&self) -> Result<String, String> {
        // SAFETY: a live domain; the name lives as long as it.
        unsafe { borrowed_string((self.api.virDomainGetName)(self.ptr)) }.ok_or_else(|| api_error(self.api))
    }

    /// Its UUID, as text.
    pub fn uuid_string(&self) -> Result<String, String> {
        // VIR_UUID_STRING_BUFLEN
        let mut buf = [0 as c_char; 37];
        // SAFETY: a live domain and a buffer of the length libvirt writes
        // (36 characters and a NUL).
        self.check(unsafe { (self.api.virDomainGetUUIDString)(self.ptr, buf.as_mut_ptr()) })?;
        // SAFETY: libvirt wrote a NUL-terminated string into `buf`.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// The domain's live XML.
    pub fn xml_desc(&self) -> Result<String, String> {
        self.xml_with(0)
    }

    /// The domain's persistent definition (what re-creates it).
    pub fn inactive_xml_desc(&self) -> Result<String, String> {
        self.xml_with(XML_INACTIVE)
    }

    fn xml_with(&self, flags: u32) -> Result<String, String> {
        // SAFETY: a live domain; the string is ours to free.
        unsafe { take_string((self.api.virDomainGetXMLDesc)(self.ptr, flags)) }.ok_or_else(|| api_error(self.api))
    }

    /// Whether it runs.
    pub fn is_active(&self) -> Result<bool, String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainIsActive)(self.ptr) }).map(|r| r == 1)
    }

    /// Whether it is defined (not transient).
    pub fn is_persistent(&self) -> Result<bool, String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainIsPersistent)(self.ptr) }).map(|r| r == 1)
    }

    /// Its state and the reason (libvirt's numbers).
    pub fn state(&self) -> Result<(i32, i32), String> {
        let (mut state, mut reason) = (0, 0);
        // SAFETY: a live domain and two integers to fill.
        self.check(unsafe { (self.api.virDomainGetState)(self.ptr, &mut state, &mut reason, 0) })?;
        Ok((state, reason))
    }

    /// Starts a defined domain.
    pub fn create(&self) -> Result<(), String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainCreate)(self.ptr) }).map(drop)
    }

    /// Stops it at once (power off).
    pub fn destroy(&self) -> Result<(), String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainDestroy)(self.ptr) }).map(drop)
    }

    /// Pauses its CPUs.
    pub fn suspend(&self) -> Result<(), String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainSuspend)(self.ptr) }).map(drop)
    }

    /// Resumes its CPUs.
    pub fn resume(&self) -> Result<(), String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainResume)(self.ptr) }).map(drop)
    }

    /// Undefines it with its managed save and its snapshots' and
    /// checkpoints' metadata.
    pub fn undefine(&self) -> Result<(), String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainUndefineFlags)(self.ptr, UNDEFINE_ALL_METADATA) }).map(drop)
    }

    /// Sets its description (what `virsh desc` shows; empty removes it),
    /// live when it runs and in its definition when it has one.
    pub fn set_description(&self, text: &str) -> Result<(), String> {
        let live = if self.is_active().unwrap_or(false) { AFFECT_LIVE } else { 0 };
        let config = if self.is_persistent().unwrap_or(false) { AFFECT_CONFIG } else { 0 };
        let c = c_string(text, "description")?;
        let text = if text.is_empty() { std::ptr::null() } else { c.as_ptr() };
        let null = std::ptr::null();
        // SAFETY: a live domain; the text is null or NUL-terminated.
        let r =
            unsafe { (self.api.virDomainSetMetadata)(self.ptr, METADATA_DESCRIPTION, text, null, null, live | config) };
        self.check(r).map(drop)
    }

    /// Its description, empty when it has none.
    pub fn description(&self) -> String {
        // SAFETY: a live domain; the string, if any, is ours to free.
        unsafe { take_string((self.api.virDomainGetMetadata)(self.ptr, METADATA_DESCRIPTION, std::ptr::null(), 0)) }
            .unwrap_or_default()
    }

    /// Sends the first screen's image into `stream`.
    pub fn screenshot(&self, stream: &Stream) -> Result<(), String> {
        // SAFETY: a live domain and stream; the MIME type is ours to free.
        let mime = unsafe { take_string((self.api.virDomainScreenshot)(self.ptr, stream.ptr, 0, 0)) };
        mime.map(drop).ok_or_else(|| api_error(self.api))
    }

    /// Starts pulling a disk's backing data into its top image, at most
    /// `bandwidth` bytes per second (0: as fast as it goes). Errors name
    /// the disk, as do the other block job calls'.
    pub fn block_pull(&self, disk: &str, bandwidth: u64) -> Result<(), String> {
        let d = c_string(disk, "disk name")?;
        let flags = BLOCK_PULL_BANDWIDTH_BYTES;
        // SAFETY: a live domain and a NUL-terminated disk name.
        let r = unsafe { (self.api.virDomainBlockPull)(self.ptr, d.as_ptr(), bandwidth as _, flags) };
        self.check(r).map(drop).map_err(|e| format!("cannot start the block pull of {disk}: {e}"))
    }

    /// The disk's block job: (bytes done, bytes in all), or None.
    pub fn block_job(&self, disk: &str) -> Result<Option<(u64, u64)>, String> {
        let d = c_string(disk, "disk name")?;
        let mut info = BlockJobInfo::default();
        // SAFETY: a live domain, a NUL-terminated name, a struct to fill.
        let r = unsafe { (self.api.virDomainGetBlockJobInfo)(self.ptr, d.as_ptr(), &mut info, 0) };
        let r = self.check(r).map_err(|e| format!("cannot read the block job of {disk}: {e}"))?;
        Ok((r > 0).then_some((info.cur, info.end)))
    }

    /// Sets the speed of a disk's block job (bytes per second, 0:
    /// unlimited): a resumed recovery's pull goes on at the rerun's speed.
    pub fn set_block_job_speed(&self, disk: &str, bandwidth: u64) -> Result<(), String> {
        let d = c_string(disk, "disk name")?;
        let flags = BLOCK_JOB_SPEED_BANDWIDTH_BYTES;
        // SAFETY: a live domain and a NUL-terminated name.
        let r = unsafe { (self.api.virDomainBlockJobSetSpeed)(self.ptr, d.as_ptr(), bandwidth as _, flags) };
        self.check(r).map(drop).map_err(|e| format!("cannot set the speed of the block job of {disk}: {e}"))
    }

    /// Ends a disk's block job.
    pub fn abort_block_job(&self, disk: &str) -> Result<(), String> {
        let d = c_string(disk, "disk name")?;
        // SAFETY: a live domain and a NUL-terminated name.
        self.check(unsafe { (self.api.virDomainBlockJobAbort)(self.ptr, d.as_ptr(), 0) }).map(drop)
    }

    /// Freezes every file system of the guest (through its agent); how
    /// many.
    pub fn fs_freeze(&self) -> Result<u32, String> {
        // SAFETY: a live domain; no mount point list (null, 0) means all.
        self.check(unsafe { (self.api.virDomainFSFreeze)(self.ptr, std::ptr::null_mut(), 0, 0) }).map(|n| n as u32)
    }

    /// Thaws every file system of the guest; how many.
    pub fn fs_thaw(&self) -> Result<u32, String> {
        // SAFETY: as in `fs_freeze`.
        self.check(unsafe { (self.api.virDomainFSThaw)(self.ptr, std::ptr::null_mut(), 0, 0) }).map(|n| n as u32)
    }

    /// Sends one command to the guest agent; its reply.
    pub fn qemu_agent_command(&self, command: &str, timeout_secs: i32) -> Result<String, String> {
        let c = c_string(command, "agent command")?;
        // SAFETY: a live domain and a NUL-terminated command; the reply
        // is ours to free.
        unsafe { take_string((self.api.virDomainQemuAgentCommand)(self.ptr, c.as_ptr(), timeout_secs, 0)) }
            .ok_or_else(|| api_error(self.api))
    }

    /// Starts a pull-mode backup job with a new checkpoint.
    pub fn backup_begin(&self, backup_xml: &str, checkpoint_xml: &str) -> Result<(), String> {
        let (b, c) = (c_string(backup_xml, "backup XML")?, c_string(checkpoint_xml, "checkpoint XML")?);
        // SAFETY: a live domain and two NUL-terminated documents.
        self.check(unsafe { (self.api.virDomainBackupBegin)(self.ptr, b.as_ptr(), c.as_ptr(), 0) }).map(drop)
    }

    /// The XML of its running backup job, if it has one.
    pub fn backup_xml(&self) -> Option<String> {
        // SAFETY: a live domain; the string is ours to free.
        unsafe { take_string((self.api.virDomainBackupGetXMLDesc)(self.ptr, 0)) }
    }

    /// Ends its running job (a backup job), if any.
    pub fn abort_job(&self) -> Result<(), String> {
        // SAFETY: a live domain.
        self.check(unsafe { (self.api.virDomainAbortJob)(self.ptr) }).map(drop)
    }

    /// The names of its checkpoints.
    pub fn checkpoint_names(&self) -> Result<Vec<String>, String> {
        let mut list: *mut Ptr = std::ptr::null_mut();
        // SAFETY: a live domain; libvirt fills `list` with `n` references
        // that we free below.
        let n = self.check(unsafe { (self.api.virDomainListAllCheckpoints)(self.ptr, &mut list, 0) })?;
        let mut names = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: `list` holds `n` live checkpoint pointers; a name
            // lives as long as its checkpoint, which is freed once after.
            unsafe {
                let cp = *list.add(i);
                names.extend(borrowed_string((self.api.virDomainCheckpointGetName)(cp)));
                (self.api.virDomainCheckpointFree)(cp);
            }
        }
        if !list.is_null() {
            // SAFETY: the array libvirt allocated, freed once.
            unsafe { libc::free(list.cast()) };
        }
        Ok(names)
    }

    /// Deletes its checkpoint `name`.
    pub fn delete_checkpoint(&self, name: &str) -> Result<(), String> {
        let c = c_string(name, "checkpoint name")?;
        // SAFETY: a live domain and a NUL-terminated name.
        let cp = unsafe { (self.api.virDomainCheckpointLookupByName)(self.ptr, c.as_ptr(), 0) };
        if cp.is_null() {
            return Err(api_error(self.api));
        }
        // SAFETY: a live checkpoint, deleted, then freed once.
        let r = unsafe { (self.api.virDomainCheckpointDelete)(cp, 0) };
        let e = (r < 0).then(|| api_error(self.api));
        // SAFETY: as above.
        unsafe { (self.api.virDomainCheckpointFree)(cp) };
        e.map_or(Ok(()), Err)
    }
}

/// A data stream from the hypervisor (a screenshot's bytes).
pub(crate) struct Stream {
    api: &'static Api,
    ptr: Ptr,
}

impl Stream {
    /// Reads up to `buf.len()` bytes; 0 at the end.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, String> {
        // SAFETY: a live stream and a writable buffer of that length.
        let n = unsafe { (self.api.virStreamRecv)(self.ptr, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 { Err(api_error(self.api)) } else { Ok(n as usize) }
    }

    /// Ends the transfer.
    pub fn finish(&self) -> Result<(), String> {
        // SAFETY: a live stream.
        if unsafe { (self.api.virStreamFinish)(self.ptr) } < 0 { Err(api_error(self.api)) } else { Ok(()) }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: our reference, given back once.
        unsafe { (self.api.virStreamFree)(self.ptr) };
    }
}
