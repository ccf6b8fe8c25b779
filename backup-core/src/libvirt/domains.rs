//! The libvirt calls that bring a VM back: define or create a domain,
//! start, pause, resume and remove it, pull its disks' backing data in
//! (block pull) and watch that job, take a screenshot. Errors are strings
//! with libvirt's own message; the callers name the domain and step.

use super::handle::{Connect, Domain};

/// `VIR_DOMAIN_PAUSED`, `_SHUTOFF`, `_CRASHED`.
pub(crate) const PAUSED: i32 = 3;
pub(crate) const SHUTOFF: i32 = 5;
pub(crate) const CRASHED: i32 = 6;
/// The reason of a pause on an I/O error (`VIR_DOMAIN_PAUSED_IOERROR`).
pub(crate) const PAUSED_IOERROR: i32 = 5;

/// A connection whose errors reach only our values, not stderr.
pub(crate) struct Libvirt {
    pub uri: String,
    pub conn: Connect,
}

impl Libvirt {
    /// Connects to `uri`.
    pub fn open(uri: &str) -> Result<Libvirt, String> {
        let conn = Connect::open(uri).map_err(|e| format!("cannot connect to {uri}: {e}"))?;
        Ok(Libvirt { uri: uri.to_string(), conn })
    }

    /// The domain of that name, if there is one.
    pub fn lookup(&self, name: &str) -> Option<Domain> {
        self.conn.lookup_domain_by_name(name).ok()
    }

    /// Defines a persistent domain.
    pub fn define(&self, xml: &str) -> Result<Domain, String> {
        self.conn.define_domain_xml(xml).map_err(|e| format!("cannot define the domain: {e}"))
    }

    /// Creates and starts a transient domain (gone when it stops).
    pub fn create_transient(&self, xml: &str) -> Result<Domain, String> {
        self.conn.create_domain_xml(xml).map_err(|e| format!("cannot start the domain: {e}"))
    }

    /// The names of all domains, running or defined.
    pub fn names(&self) -> Vec<String> {
        self.conn.list_all_domains().unwrap_or_default().iter().filter_map(|d| d.name().ok()).collect()
    }

    /// A PNG (or whatever the hypervisor sends) of the first screen.
    pub fn screenshot(&self, dom: &Domain) -> Result<Vec<u8>, String> {
        let stream = self.conn.new_stream()?;
        dom.screenshot(&stream)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = stream.recv(&mut buf)?;
            if n == 0 || out.len() > 16 << 20 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let _ = stream.finish();
        Ok(out)
    }
}

/// Stops the domain (if it runs) and undefines it (if it is persistent),
/// with its checkpoints' and snapshots' metadata.
pub(crate) fn remove(dom: &Domain) -> Result<(), String> {
    if dom.is_active().unwrap_or(false) {
        dom.destroy().map_err(|e| format!("cannot stop the domain: {e}"))?;
    }
    if dom.is_persistent().unwrap_or(false) {
        dom.undefine().map_err(|e| format!("cannot undefine the domain: {e}"))?;
    }
    Ok(())
}

/// Starts pulling a disk's backing data into its top image, at most
/// `bandwidth` bytes per second (0: as fast as it goes).
pub(crate) fn block_pull(dom: &Domain, disk: &str, bandwidth: u64) -> Result<(), String> {
    dom.block_pull(disk, bandwidth).map_err(|e| format!("cannot start the block pull of {disk}: {e}"))
}

/// The disk's block job: (bytes done, bytes in all), or None when it has
/// none.
pub(crate) fn block_job(dom: &Domain, disk: &str) -> Result<Option<(u64, u64)>, String> {
    dom.block_job(disk).map_err(|e| format!("cannot read the block job of {disk}: {e}"))
}

/// Sets the speed of a disk's block job, if any (bytes per second, 0:
/// unlimited): a resumed recovery's pull goes on at the rerun's speed.
pub(crate) fn set_block_job_speed(dom: &Domain, disk: &str, bandwidth: u64) -> Result<(), String> {
    dom.set_block_job_speed(disk, bandwidth)
        .map_err(|e| format!("cannot set the speed of the block job of {disk}: {e}"))
}
