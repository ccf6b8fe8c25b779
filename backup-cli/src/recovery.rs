//! `restore --to-libvirt`, `instant-restore` and `verify --boot`: a point
//! brought back as a libvirt domain, started from the vault while its data
//! moves, or booted in a throwaway domain and judged.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
#[cfg(feature = "libvirt")]
use serde_json::json;

use crate::globals::Globals;
#[cfg(feature = "libvirt")]
use crate::{human, outln, progress, signals};

/// Where and how the new domain is made (the command line's flags).
pub(crate) struct DomainArgs {
    pub name: String,
    pub connect: String,
    pub pool: PathBuf,
    pub format: String,
    pub replace: bool,
    pub start: bool,
}

#[cfg(feature = "libvirt")]
fn target(a: &DomainArgs) -> Result<backup_core::DomainTarget> {
    let mut t = backup_core::DomainTarget::new(&a.name);
    t.uri = a.connect.clone();
    t.pool = a.pool.clone();
    t.format = backup_core::ImageFormat::parse(&a.format)?;
    t.replace = a.replace;
    t.start = a.start;
    Ok(t)
}

/// `restore --to-libvirt NAME`.
#[cfg(feature = "libvirt")]
pub(crate) fn restore_as_domain(
    g: &Globals,
    vault: &Path,
    vm: &str,
    point: &str,
    a: &DomainArgs,
    json: bool,
) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let point = vault.find_point(vm, point)?;
    let mut options = backup_core::RestoreOptions::default();
    options.cancel = signals::cancel_on_signals();
    options.progress = progress::bar_or_lines("restore");
    let r = backup_core::restore_to_domain(&vault, &point, &target(a)?, &options)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&json!({ "point": point.id, "vm": vm, "restore": r }))?);
    } else {
        for (disk, path) in &r.disks {
            eprintln!("restored disk {disk} of point {} to {}", point.id, path.display());
        }
        let state = if r.started { "defined and started" } else { "defined" };
        outln!("domain {} {state} from point {} of vm {vm} in {:.1} s", r.domain, point.id, r.seconds);
    }
    Ok(ExitCode::SUCCESS)
}

/// `instant-restore --to-libvirt NAME`.
#[cfg(feature = "libvirt")]
pub(crate) fn instant(
    g: &Globals,
    vault: &Path,
    vm: &str,
    point: &str,
    a: &DomainArgs,
    bandwidth_mib: u64,
    json: bool,
) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let point = vault.find_point(vm, point)?;
    let mut options = backup_core::InstantOptions::default();
    options.bandwidth = bandwidth_mib << 20;
    options.cancel = signals::cancel_on_signals();
    options.progress = progress::bar_or_lines("move");
    let r = backup_core::instant_restore(&vault, &point, &target(a)?, &options)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&json!({ "point": point.id, "vm": vm, "instant_restore": r }))?);
    } else {
        let size: u64 = point.disks.iter().map(|d| d.size).sum();
        outln!(
            "domain {} ran from point {} of vm {vm} after {:.1} s{}; its {} moved to local disks in {:.1} s; the export stopped",
            r.domain,
            point.id,
            r.seconds_to_start,
            if r.resumed { " (resumed)" } else { "" },
            human(size),
            r.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How `verify --boot` judges a point (the command line's flags).
pub(crate) struct BootArgs<'a> {
    /// The test script run in the guest, if any.
    pub script: Option<&'a Path>,
    /// How long the boot (and the script) may take.
    pub timeout_secs: u64,
    /// The libvirt connection URI.
    pub connect: &'a str,
}

/// `verify --boot`: exit code 1 when the point fails.
#[cfg(feature = "libvirt")]
pub(crate) fn boot_verify(
    g: &Globals,
    vault: &Path,
    vm: &str,
    point: &str,
    a: &BootArgs,
    json: bool,
) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let point = vault.find_point(vm, point)?;
    let mut options = backup_core::BootVerifyOptions::default();
    options.uri = a.connect.to_string();
    options.timeout = std::time::Duration::from_secs(a.timeout_secs);
    options.script_timeout = options.timeout;
    if let Some(s) = a.script {
        options.script =
            Some(std::fs::read(s).map_err(|e| anyhow::anyhow!("cannot read the test {}: {e}", s.display()))?);
    }
    options.cancel = signals::cancel_on_signals();
    options.progress = progress::bar_or_lines("boot");
    let v = backup_core::boot_verify(&vault, &point, &options)?;
    if json {
        let mut o = serde_json::to_value(&v)?;
        o["screenshot"] = json!(v.screenshot.len());
        outln!("{}", serde_json::to_string_pretty(&o)?);
    } else {
        if let Some(out) = &v.script_output {
            eprintln!("in-guest test output:\n{}", out.trim_end());
        }
        outln!("point {} of vm {vm}: boot {}", point.id, v.summary());
    }
    Ok(if v.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(not(feature = "libvirt"))]
pub(crate) fn restore_as_domain(_: &Globals, _: &Path, _: &str, _: &str, _: &DomainArgs, _: bool) -> Result<ExitCode> {
    anyhow::bail!("this vmbackup was built without the libvirt feature")
}

#[cfg(not(feature = "libvirt"))]
pub(crate) fn instant(_: &Globals, _: &Path, _: &str, _: &str, _: &DomainArgs, _: u64, _: bool) -> Result<ExitCode> {
    anyhow::bail!("this vmbackup was built without the libvirt feature")
}

#[cfg(not(feature = "libvirt"))]
pub(crate) fn boot_verify(_: &Globals, _: &Path, _: &str, _: &str, _: &BootArgs, _: bool) -> Result<ExitCode> {
    anyhow::bail!("this vmbackup was built without the libvirt feature")
}
