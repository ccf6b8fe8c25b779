//! A point brought back under libvirt, from Python: the bodies of
//! `Vault.restore_to_domain`, `Vault.instant_restore`, `Vault.boot_verify`
//! and `Vault.boot_verdict`, and the `BootVerdict` they return. Built with
//! the `libvirt` feature.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backup_core::{DomainTarget, ImageFormat, PointManifest, Vault};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::job;
use crate::types::quote;

/// Where and how a point becomes a domain (the keyword arguments).
pub(crate) struct TargetArgs {
    pub name: String,
    pub uri: String,
    pub pool: PathBuf,
    pub format: String,
    pub replace: bool,
    pub start: bool,
}

impl TargetArgs {
    fn target(&self) -> backup_core::Result<DomainTarget> {
        let mut t = DomainTarget::new(&self.name);
        t.uri = self.uri.clone();
        t.pool = self.pool.clone();
        t.format = ImageFormat::parse(&self.format)?;
        t.replace = self.replace;
        t.start = self.start;
        Ok(t)
    }
}

/// `Vault.restore_to_domain`: the restored disks' statistics.
pub(crate) fn restore_to_domain(
    py: Python<'_>,
    vault: Arc<Vault>,
    point: &PointManifest,
    args: TargetArgs,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<backup_core::RestoreStats>> {
    let (vm, id) = (point.vm.clone(), point.id.clone());
    job::run(py, progress, move |p, cancel| {
        let m = vault.read_point(&vm, &id)?;
        backup_core::restore_to_domain(&vault, &m, &args.target()?, &job::restore_options(p, cancel)).map(|r| r.stats)
    })
}

/// `Vault.instant_restore`: seconds until the domain ran.
pub(crate) fn instant_restore(
    py: Python<'_>,
    vault: Arc<Vault>,
    point: &PointManifest,
    args: TargetArgs,
    bandwidth: u64,
    progress: Option<Py<PyAny>>,
) -> PyResult<f64> {
    let (vm, id) = (point.vm.clone(), point.id.clone());
    job::run(py, progress, move |p, cancel| {
        let m = vault.read_point(&vm, &id)?;
        let mut o = backup_core::InstantOptions::default();
        o.progress = p;
        o.cancel = cancel;
        o.bandwidth = bandwidth;
        backup_core::instant_restore(&vault, &m, &args.target()?, &o).map(|r| r.seconds_to_start)
    })
}

/// `Vault.boot_verify`.
pub(crate) fn boot_verify(
    py: Python<'_>,
    vault: Arc<Vault>,
    point: &PointManifest,
    uri: String,
    timeout: f64,
    script: Option<Vec<u8>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<BootVerdict> {
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "timeout must be positive seconds, not {timeout}"
        )));
    }
    let (vm, id) = (point.vm.clone(), point.id.clone());
    job::run(py, progress, move |p, cancel| {
        let m = vault.read_point(&vm, &id)?;
        let mut o = backup_core::BootVerifyOptions::default();
        o.uri = uri;
        o.timeout = Duration::from_secs_f64(timeout);
        o.script_timeout = o.timeout;
        o.script = script;
        o.progress = p;
        o.cancel = cancel;
        backup_core::boot_verify(&vault, &m, &o)
    })
    .map(|inner| BootVerdict { inner })
}

/// What booting a point in a throwaway domain showed (`Vault.boot_verify`,
/// `Vault.boot_verdict`).
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct BootVerdict {
    pub(crate) inner: backup_core::BootVerdict,
}

#[pymethods]
impl BootVerdict {
    /// The point's VM.
    #[getter]
    fn vm(&self) -> &str {
        &self.inner.vm
    }
    /// The point's id.
    #[getter]
    fn point_id(&self) -> &str {
        &self.inner.point
    }
    /// Whether the guest's agent answered and the in-guest test passed.
    #[getter]
    fn passed(&self) -> bool {
        self.inner.passed
    }
    /// Why it failed (None when it passed).
    #[getter]
    fn reason(&self) -> Option<&str> {
        self.inner.reason.as_deref()
    }
    /// When it was booted (Unix seconds).
    #[getter]
    fn checked_at(&self) -> u64 {
        self.inner.checked_at
    }
    /// Seconds from the start until the agent answered (None if never).
    #[getter]
    fn agent_seconds(&self) -> Option<f64> {
        self.inner.agent_seconds
    }
    /// The in-guest test's exit status (None without a test).
    #[getter]
    fn script_exit(&self) -> Option<i64> {
        self.inner.script_exit
    }
    /// The in-guest test's output.
    #[getter]
    fn script_output(&self) -> Option<&str> {
        self.inner.script_output.as_deref()
    }
    /// The end of the guest's serial console.
    #[getter]
    fn console(&self) -> &str {
        &self.inner.console
    }
    /// A PNG of the screen (empty when none could be taken).
    #[getter]
    fn screenshot<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.screenshot)
    }
    /// What was done to judge it beyond the boot.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.inner.notes.clone()
    }
    fn __bool__(&self) -> bool {
        self.inner.passed
    }
    fn __repr__(&self) -> String {
        format!(
            "BootVerdict(vm={}, point_id={}, passed={}, reason={})",
            quote(&self.inner.vm),
            quote(&self.inner.point),
            if self.inner.passed { "True" } else { "False" },
            self.inner.reason.as_deref().map_or_else(|| "None".to_string(), quote)
        )
    }
}
