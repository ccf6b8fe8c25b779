//! `vmbackup jobs` (the history of backup jobs, from their logs in the
//! vault) and `vmbackup release-expired` (release snapshots kept for instant
//! restore whose days are over).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use backup_core::{JobRecord, PointManifest, RestoreOptions, RestoreStats, Vault};
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// The JSON of one job as `vmbackup jobs --json` prints it.
fn job_json(j: &JobRecord) -> serde_json::Value {
    json!({
        "job": j.job,
        "vm": j.vm,
        "start": j.started.map(|t| t.to_string()),
        "end": j.ended.map(|t| t.to_string()),
        "result": j.result.as_str(),
        "point": j.point,
        "error": j.error,
        "seconds": j.seconds,
        "retries": j.retries,
        "warnings": j.warnings,
        "damaged_lines": j.damaged_lines,
        "log": j.path,
        "phases": j.phases.iter().map(|p| json!({
            "phase": p.phase.as_str(),
            "start": p.started.to_string(),
            "end": p.ended.map(|t| t.to_string()),
            "seconds": p.seconds,
            "ok": p.ok,
        })).collect::<Vec<_>>(),
    })
}

/// The phases of a job in one column: `prepare 0.00s, snapshot 0.01s, transfer FAILED 1.20s, ...`.
fn phases_text(j: &JobRecord) -> String {
    j.phases
        .iter()
        .map(|p| match (p.ok, p.seconds) {
            (Some(true), Some(s)) => format!("{} {s:.2}s", p.phase),
            (Some(false), Some(s)) => format!("{} FAILED {s:.2}s", p.phase),
            _ => format!("{} (not ended)", p.phase),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `vmbackup jobs`: prints the history of backup jobs, oldest first.
pub fn jobs(g: &Globals, vault: &Path, vm: Option<&str>, json: bool) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let jobs = backup_core::job_history(&vault, vm)?;
    if json {
        let all: Vec<_> = jobs.iter().map(job_json).collect();
        outln!("{}", serde_json::to_string_pretty(&json!({ "jobs": all }))?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<24} {:<16} {:<20} {:<20} {:<11} {:<24} PHASES", "JOB", "VM", "START", "END", "RESULT", "POINT");
    let when =
        |t: Option<jiff::Timestamp>| t.map_or_else(|| "-".to_string(), |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string());
    for j in &jobs {
        outln!(
            "{:<24} {:<16} {:<20} {:<20} {:<11} {:<24} {}",
            j.job,
            j.vm,
            when(j.started),
            when(j.ended),
            j.result.as_str(),
            j.point.as_deref().unwrap_or("-"),
            phases_text(j)
        );
        if let Some(e) = &j.error {
            outln!("    error: {e}");
        }
        if j.retries > 0 {
            outln!("    retried {} time(s)", j.retries);
        }
        if j.damaged_lines > 0 {
            outln!("    {} damaged line(s) in {}", j.damaged_lines, j.path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmbackup release-expired`: releases kept snapshots whose
/// instant-restore days are over, whose job committed nothing, or whose
/// point was pruned.
pub fn release_expired(
    g: &Globals,
    vault: &Path,
    vm: Option<&str>,
    now: Option<jiff::Timestamp>,
    json: bool,
) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let report = backup_core::release_expired(&vault, vm, now.unwrap_or_else(jiff::Timestamp::now))?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "released": report.released.iter().map(|(k, why)| json!({
                    "vm": k.vm, "point": k.point, "expires": k.expires.to_string(), "why": why,
                })).collect::<Vec<_>>(),
                "kept": report.kept.iter().map(|k| json!({
                    "vm": k.vm, "point": k.point, "expires": k.expires.to_string(),
                })).collect::<Vec<_>>(),
                "problems": report.problems,
            }))?
        );
    } else {
        for (k, why) in &report.released {
            outln!("released the snapshot of point {} of vm {} ({why})", k.point, k.vm);
        }
        for k in &report.kept {
            outln!("kept the snapshot of point {} of vm {} until {}", k.point, k.vm, k.expires);
        }
        for p in &report.problems {
            eprintln!("warning: {p}");
        }
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Where a point can be restored from now; a damaged snapshot record
/// counts as no snapshot tier.
pub fn tiers(vault: &Vault, p: &PointManifest) -> Vec<backup_core::Tier> {
    backup_core::point_tiers(vault, p).unwrap_or_else(|_| vec![backup_core::Tier::Vault])
}

/// Restores one disk: from the point's kept snapshot when it has one (a
/// copy of the clone, faster than reading the vault), else from the vault.
pub fn restore_disk(
    vault: &Vault,
    point: &PointManifest,
    disk: &str,
    to: &Path,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    // A damaged or forged snapshot record costs the snapshot tier, never
    // the vault's copy.
    match backup_core::restore_disk_from_snapshot(vault, point, disk, to, options) {
        Ok(Some(stats)) => {
            eprintln!("restored from the snapshot tier (the snapshot kept for instant restore)");
            return Ok(stats);
        }
        Ok(None) => {}
        Err(e @ backup_core::Error::Cancelled { .. }) => return Err(e.into()),
        Err(e) => eprintln!("warning: the snapshot tier cannot be used ({e}); restoring from the vault"),
    }
    Ok(backup_core::restore_disk_to_path(vault, point, disk, to, options)?)
}

/// Restores every disk of a point into a folder: from its kept snapshot
/// when it has one for every disk, else from the vault.
pub fn restore_vm(
    vault: &Vault,
    point: &PointManifest,
    to: &Path,
    options: &RestoreOptions,
) -> Result<Vec<RestoreStats>> {
    if backup_core::kept_snapshot(vault, &point.vm, &point.id)
        .unwrap_or_else(|e| {
            eprintln!("warning: the snapshot tier cannot be used ({e}); restoring from the vault");
            None
        })
        .is_some()
    {
        std::fs::create_dir_all(to).map_err(|e| anyhow::anyhow!("cannot create folder {}: {e}", to.display()))?;
        let mut all = Vec::new();
        for d in &point.disks {
            match backup_core::restore_disk_from_snapshot(vault, point, &d.name, &to.join(&d.name), options)? {
                Some(s) => all.push(s),
                None => break,
            }
        }
        if all.len() == point.disks.len() {
            eprintln!("restored from the snapshot tier (the snapshot kept for instant restore)");
            return Ok(all);
        }
    }
    Ok(backup_core::restore_vm(vault, point, to, options)?)
}

/// Restores a point that has no manifest yet (its job is still
/// transferring) from its kept snapshot: `point` is an id, a unique prefix
/// of one, or `latest`, among the VM's points that are only in the snapshot
/// tier. Returns None when there is no such point; the error of the vault
/// lookup is then the one to report.
pub fn restore_in_flight(
    vault: &Vault,
    vm: &str,
    point: &str,
    disk: Option<&str>,
    to: &Path,
    options: &RestoreOptions,
) -> Result<Option<(String, Vec<RestoreStats>)>> {
    let (only, _) = backup_core::snapshot_only_points(vault, Some(vm))?;
    let found = if point == "latest" {
        only.last()
    } else {
        match only.iter().filter(|k| k.point.starts_with(point)).collect::<Vec<_>>().as_slice() {
            [one] => Some(*one),
            [] => None,
            many => many.iter().copied().find(|k| k.point == point),
        }
    };
    let Some(k) = found else { return Ok(None) };
    match backup_core::restore_from_snapshot(vault, vm, &k.point, disk, to, options)? {
        Some(stats) => {
            eprintln!(
                "restored from the snapshot tier (point {} is not committed yet; its job {} is still running)",
                k.point, k.job
            );
            Ok(Some((k.point.clone(), stats)))
        }
        None => Ok(None),
    }
}
