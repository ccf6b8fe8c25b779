//! `vmbackup.LibvirtProvider`: a libvirt domain as the source of a backup
//! (`Vault.backup(vm, provider)`), built with the `libvirt` feature (on by
//! default; libvirt itself is loaded when a domain is first asked for).

use std::path::PathBuf;

use backup_core::{Consistency, LibvirtProvider as CoreProvider};
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::types::quote;

/// A libvirt domain to back up: its disks come from the domain's XML, each
/// snapshot is a libvirt checkpoint and pull-mode backup job (incremental
/// from the VM's previous point), quiesced through the guest agent (in-guest
/// pre/post scripts, then a freeze) as far as the backup's consistency asks
/// and the guest allows; a shut-off domain's disks are read in place. The
/// point stores the domain's XML (`RecoveryPoint.configuration`).
///
/// `include`/`exclude` select disks by target name (`"vda"`);
/// `guest_scripts` is a `VMSnapshotScriptPluginConfig.json` on this host
/// whose scripts are installed into the guest when the VM is prepared;
/// `min_consistency` makes a weaker fallback fail the backup.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct LibvirtProvider {
    pub(crate) inner: CoreProvider,
}

#[pymethods]
impl LibvirtProvider {
    #[new]
    #[pyo3(signature = (domain, *, uri = None, include = None, exclude = None, guest_scripts = None, min_consistency = None, work_dir = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        domain: String,
        uri: Option<String>,
        include: Option<Vec<String>>,
        exclude: Option<Vec<String>>,
        guest_scripts: Option<PathBuf>,
        min_consistency: Option<String>,
        work_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let mut p = CoreProvider::new(domain);
        if let Some(uri) = uri {
            p.uri = uri;
        }
        p.include = include.unwrap_or_default();
        p.exclude = exclude.unwrap_or_default();
        p.guest_scripts = guest_scripts;
        if let Some(m) = min_consistency {
            p.min_consistency = m.parse::<Consistency>().map_err(|e| to_py(py, e))?;
        }
        if let Some(w) = work_dir {
            p.work_dir = w;
        }
        Ok(LibvirtProvider { inner: p })
    }

    /// The domain's name.
    #[getter]
    fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The libvirt connection URI.
    #[getter]
    fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The disks the next backup takes (target names), and the ones it
    /// skips as `(target, why)`: asks libvirt now.
    fn disks(&self, py: Python<'_>) -> PyResult<(Vec<String>, backup_core::SkippedDisks)> {
        let p = self.inner.clone();
        let (disks, skipped) = py.detach(move || p.disks()).map_err(|e| to_py(py, e))?;
        Ok((disks.into_iter().map(|d| d.target).collect(), skipped))
    }

    fn __repr__(&self) -> String {
        format!("LibvirtProvider({}, uri={})", quote(&self.inner.domain), quote(&self.inner.uri))
    }
}
