//! `vmbackup copy`: points of one vault into another (a second site).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use backup_core::{CopyOptions, PointSelection};

use crate::globals::Globals;
use crate::output::outln;

/// What `vmbackup copy` was asked.
pub struct Args<'a> {
    /// The source vault.
    pub from: &'a Path,
    /// The target vault.
    pub to: &'a Path,
    /// Only these VMs.
    pub vms: Vec<String>,
    /// Which points: latest, all, since=TIME.
    pub points: &'a str,
    /// The source's key file.
    pub from_key_file: Option<PathBuf>,
    /// The source's passphrase file.
    pub from_passphrase_file: Option<PathBuf>,
    /// The source's store endpoint (the global --endpoint is the target's).
    pub from_endpoint: Option<String>,
    /// The source's cache folder (the global --cache is the target's).
    pub from_cache: Option<PathBuf>,
}

/// Copies, then says what moved.
pub fn run(g: &Globals, args: Args<'_>, as_json: bool) -> Result<ExitCode> {
    let selection: PointSelection = args.points.parse()?;
    let mut source = g.clone();
    source.remote.endpoint = args.from_endpoint;
    source.remote.cache = args.from_cache;
    if source.remote.cache.is_some() && source.remote.cache == g.remote.cache {
        bail!("--from-cache and --cache name the same folder: each vault needs a cache of its own");
    }
    let from = crate::keys::open_source(
        args.from,
        &source,
        args.from_key_file.as_deref(),
        args.from_passphrase_file.as_deref(),
    )?;
    let to = g.open(args.to)?;
    let mut options = CopyOptions::default();
    options.vms = args.vms;
    options.points = selection;
    options.cancel = crate::signals::cancel_on_signals();
    let report = backup_core::copy(&from, &to, &options)?;
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "copied": report.copied,
                "already_there": report.already_there,
                "verdicts_copied": report.verdicts_copied,
                "vm_records_copied": report.vm_records_copied,
                "bytes_added": report.bytes_added(),
            }))?
        );
    } else {
        for c in &report.copied {
            outln!(
                "copied point {} of vm {}: read {}, {} new to the target, wrote {}",
                c.id,
                c.vm,
                crate::human(c.bytes_read),
                crate::human(c.bytes_lacked),
                crate::human(c.bytes_added)
            );
        }
        if !report.already_there.is_empty() {
            outln!("{} points were already there", report.already_there.len());
        }
        if !report.verdicts_copied.is_empty() || !report.vm_records_copied.is_empty() {
            outln!(
                "brought along {} boot verdicts and {} VM records",
                report.verdicts_copied.len(),
                report.vm_records_copied.len()
            );
        }
        outln!("copied {} points, wrote {}", report.copied.len(), crate::human(report.bytes_added()));
    }
    Ok(ExitCode::SUCCESS)
}
