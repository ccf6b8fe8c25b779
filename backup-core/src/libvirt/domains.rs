//! A connection for bringing a VM back (define or create a domain, list
//! and remove domains, take a screenshot) and libvirt's state numbers;
//! the calls on one domain are `handle::Domain`'s. Errors are strings with
//! libvirt's own message; the callers name the domain and step.

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
