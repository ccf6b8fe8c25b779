//! The libvirt calls that bring a VM back: define or create a domain,
//! start, pause, resume and remove it, pull its disks' backing data in
//! (block pull) and watch that job, take a screenshot. Errors are strings
//! with libvirt's own message; the callers name the domain and step.

use std::ffi::CString;

use super::last_error;

/// `VIR_DOMAIN_PAUSED`, `_SHUTOFF`, `_CRASHED`.
pub(crate) const PAUSED: i32 = 3;
pub(crate) const SHUTOFF: i32 = 5;
pub(crate) const CRASHED: i32 = 6;
/// The reason of a pause on an I/O error (`VIR_DOMAIN_PAUSED_IOERROR`).
pub(crate) const PAUSED_IOERROR: i32 = 5;

/// A connection whose errors reach only our values, not stderr.
pub(crate) struct Libvirt {
    pub uri: String,
    pub conn: virt::connect::Connect,
}

impl Libvirt {
    /// Connects to `uri`.
    pub fn open(uri: &str) -> Result<Libvirt, String> {
        let conn = virt::connect::Connect::open(Some(uri)).map_err(|e| format!("cannot connect to {uri}: {e}"))?;
        // SAFETY: a live connection; the handler ignores its arguments.
        unsafe { virt_sys::virConnSetErrorFunc(conn.as_ptr(), std::ptr::null_mut(), Some(super::silent)) };
        Ok(Libvirt { uri: uri.to_string(), conn })
    }

    /// The domain of that name, if there is one.
    pub fn lookup(&self, name: &str) -> Option<virt::domain::Domain> {
        self.conn.lookup_domain_by_name(name).ok()
    }

    /// Defines a persistent domain.
    pub fn define(&self, xml: &str) -> Result<virt::domain::Domain, String> {
        self.conn.define_domain_xml(xml).map_err(|e| format!("cannot define the domain: {e}"))
    }

    /// Creates and starts a transient domain (gone when it stops).
    pub fn create_transient(&self, xml: &str) -> Result<virt::domain::Domain, String> {
        self.conn.create_domain_xml(xml, 0).map_err(|e| format!("cannot start the domain: {e}"))
    }

    /// The names of all domains, running or defined.
    pub fn names(&self) -> Vec<String> {
        self.conn.list_all_domains(0).unwrap_or_default().iter().filter_map(|d| d.name().ok()).collect()
    }

    /// A PNG (or whatever the hypervisor sends) of the first screen.
    pub fn screenshot(&self, dom: &virt::domain::Domain) -> Result<Vec<u8>, String> {
        let stream = virt::stream::Stream::new(&self.conn, 0).map_err(|e| e.to_string())?;
        dom.screenshot(&stream, 0, 0).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = stream.recv(&mut buf).map_err(|e| e.to_string())?;
            if n <= 0 || out.len() > 16 << 20 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        let _ = stream.finish();
        Ok(out)
    }
}

/// The domain's state and its reason (libvirt's numbers).
pub(crate) fn state(dom: &virt::domain::Domain) -> Result<(i32, i32), String> {
    let (mut state, mut reason) = (0, 0);
    // SAFETY: a live domain and two integers to fill.
    if unsafe { virt_sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) } < 0 {
        return Err(last_error());
    }
    Ok((state, reason))
}

/// Stops the domain (if it runs) and undefines it (if it is persistent),
/// with its checkpoints' and snapshots' metadata.
pub(crate) fn remove(dom: &virt::domain::Domain) -> Result<(), String> {
    if dom.is_active().unwrap_or(false) {
        dom.destroy().map_err(|e| format!("cannot stop the domain: {e}"))?;
    }
    if dom.is_persistent().unwrap_or(false) {
        let flags = virt_sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | virt_sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | virt_sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE;
        dom.undefine_flags(flags).map_err(|e| format!("cannot undefine the domain: {e}"))?;
    }
    Ok(())
}

/// Starts pulling a disk's backing data into its top image, at most
/// `bandwidth` bytes per second (0: as fast as it goes).
pub(crate) fn block_pull(dom: &virt::domain::Domain, disk: &str, bandwidth: u64) -> Result<(), String> {
    let d = CString::new(disk).map_err(|_| "NUL in a disk name".to_string())?;
    let flags = virt_sys::VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES;
    // SAFETY: a live domain and a NUL-terminated disk name.
    if unsafe { virt_sys::virDomainBlockPull(dom.as_ptr(), d.as_ptr(), bandwidth as libc::c_ulong, flags) } < 0 {
        return Err(format!("cannot start the block pull of {disk}: {}", last_error()));
    }
    Ok(())
}

/// The disk's block job: (bytes done, bytes in all), or None when it has
/// none.
pub(crate) fn block_job(dom: &virt::domain::Domain, disk: &str) -> Result<Option<(u64, u64)>, String> {
    let d = CString::new(disk).map_err(|_| "NUL in a disk name".to_string())?;
    let mut info = virt_sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
    // SAFETY: a live domain, a NUL-terminated name, a struct to fill.
    match unsafe { virt_sys::virDomainGetBlockJobInfo(dom.as_ptr(), d.as_ptr(), &mut info, 0) } {
        r if r < 0 => Err(format!("cannot read the block job of {disk}: {}", last_error())),
        0 => Ok(None),
        _ => Ok(Some((info.cur, info.end))),
    }
}

/// Sets the speed of a disk's block job, if any (bytes per second, 0:
/// unlimited): a resumed recovery's pull goes on at the rerun's speed.
pub(crate) fn set_block_job_speed(dom: &virt::domain::Domain, disk: &str, bandwidth: u64) -> Result<(), String> {
    let d = CString::new(disk).map_err(|_| "NUL in a disk name".to_string())?;
    let flags = virt_sys::VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES;
    // SAFETY: a live domain and a NUL-terminated name.
    if unsafe { virt_sys::virDomainBlockJobSetSpeed(dom.as_ptr(), d.as_ptr(), bandwidth as libc::c_ulong, flags) } < 0 {
        return Err(format!("cannot set the speed of the block job of {disk}: {}", last_error()));
    }
    Ok(())
}

/// Ends a disk's block job, if any.
pub(crate) fn abort_block_job(dom: &virt::domain::Domain, disk: &str) {
    if let Ok(d) = CString::new(disk) {
        // SAFETY: a live domain and a NUL-terminated name; an error (no
        // job) is fine.
        unsafe { virt_sys::virDomainBlockJobAbort(dom.as_ptr(), d.as_ptr(), 0) };
    }
}

/// Sets the domain's description (what `virsh desc` and `dominfo` show),
/// live and in its definition.
pub(crate) fn set_description(dom: &virt::domain::Domain, text: &str) {
    let live = if dom.is_active().unwrap_or(false) { virt_sys::VIR_DOMAIN_AFFECT_LIVE } else { 0 };
    let config = if dom.is_persistent().unwrap_or(false) { virt_sys::VIR_DOMAIN_AFFECT_CONFIG } else { 0 };
    let text = if text.is_empty() { None } else { Some(text) };
    let _ = dom.set_metadata(virt_sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32, text, None, None, live | config);
}

/// The domain's description.
pub(crate) fn description(dom: &virt::domain::Domain) -> String {
    // SAFETY: a live domain; libvirt returns a string we free, or null.
    let p = unsafe {
        virt_sys::virDomainGetMetadata(
            dom.as_ptr(),
            virt_sys::VIR_DOMAIN_METADATA_DESCRIPTION as i32,
            std::ptr::null(),
            0,
        )
    };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string from libvirt, freed once.
    let text = unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: as above.
    unsafe { libc::free(p.cast()) };
    text
}
