//! `vmbackup prune`, `vmbackup gc` and `vmbackup policy check`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use backup_core::{GcOptions, Policy, PruneOptions};
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// `vmbackup prune`: judges every point by the policy's retention, then
/// removes the condemned manifests (unless `dry_run`).
pub fn prune(
    g: &Globals,
    vault: &Path,
    policy: &Path,
    vm: Option<String>,
    dry_run: bool,
    as_json: bool,
) -> Result<ExitCode> {
    // Retention alone: a policy file for prune needs no [schedule].
    let retention = Policy::retention_from_file(policy)?;
    let vault = g.open(vault)?;
    let mut options = PruneOptions::default();
    options.vm = vm;
    options.dry_run = dry_run;
    let plan = backup_core::prune_plan(&vault, &retention, jiff::Timestamp::now(), &options)?;
    let report = backup_core::prune(&vault, &plan)?;
    if as_json {
        let out = json!({
            "dry_run": dry_run,
            "now": plan.now.to_string(),
            "points": plan.points,
            "removed": report.removed.iter().map(|p| json!({"vm": p.vm, "point": p.id})).collect::<Vec<_>>(),
            "spared": report.spared,
            "unreadable": plan.unreadable,
            "manifest_bytes_removed": report.manifest_bytes_removed,
            "job_logs_removed": report.job_logs_removed,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for e in &plan.unreadable {
            eprintln!("warning: not judged: {e}");
        }
        for p in &plan.points {
            let why: Vec<&str> = p.reasons.iter().map(|r| r.as_str()).collect();
            let verdict = match (p.keep(), dry_run) {
                (true, _) => "keep",
                (false, true) => "would remove",
                (false, false) => "remove",
            };
            outln!(
                "{:<13} {:<16} {:<24} {}  {}",
                verdict,
                p.vm,
                p.id,
                p.time.to_zoned(retention.time_zone.clone()).strftime("%Y-%m-%d %H:%M %Z"),
                why.join(",")
            );
        }
        for s in &report.spared {
            eprintln!("spared: {s}");
        }
        let kept = plan.to_keep().count();
        let logs = match report.job_logs_removed.len() {
            0 => String::new(),
            n => format!(" and {n} job logs older than {} days", retention.job_log_days),
        };
        if dry_run {
            outln!("dry run: would remove {} points{logs}, keep {kept}", report.removed.len());
        } else {
            outln!(
                "removed {} points{logs}, kept {kept}; run `vmbackup gc` to reclaim their space",
                report.removed.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `vmbackup gc` was asked.
pub struct GcArgs {
    /// Minutes of the grace period.
    pub grace: u64,
    /// The dead share that gets a pack rewritten.
    pub repack_threshold: f64,
    /// Change nothing.
    pub dry_run: bool,
    /// The fake "now" of soft-deleted points' days.
    pub now: Option<jiff::Timestamp>,
}

/// `vmbackup gc`: removes what no point references.
pub fn gc(g: &Globals, vault: &Path, args: GcArgs, as_json: bool) -> Result<ExitCode> {
    let GcArgs { grace: grace_minutes, repack_threshold, dry_run, now } = args;
    let vault = g.open(vault)?;
    let mut options = GcOptions::default();
    options.grace = Duration::from_secs(grace_minutes.saturating_mul(60));
    options.repack_threshold = repack_threshold;
    options.dry_run = dry_run;
    options.now = now.map(std::time::SystemTime::from);
    let r = backup_core::gc(&vault, &options)?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let would = if dry_run { "would remove" } else { "removed" };
        outln!("{} points keep {} chunks and {} segments", r.points, r.live_chunks, r.live_segments);
        if r.deleted_points_kept + r.deleted_points_purged > 0 {
            outln!(
                "{} soft-deleted points kept (their days are not over); {} {} for good",
                r.deleted_points_kept,
                if dry_run { "would remove" } else { "removed" },
                r.deleted_points_purged
            );
        }
        outln!(
            "{would} {} chunks ({}), {} segments ({}), {} whole packs; {} packs repacked into {}",
            r.chunks_removed,
            crate::human(r.chunk_bytes_removed),
            r.segments_removed,
            crate::human(r.segment_bytes_removed),
            r.packs_removed,
            r.packs_repacked,
            r.packs_written
        );
        if r.staging_removed + r.orphan_index_files_removed > 0 {
            outln!(
                "{would} {} abandoned staging entries and {} chunk index files without a pack",
                r.staging_removed,
                r.orphan_index_files_removed
            );
        }
        if r.packs_marked + r.segments_marked > 0 {
            outln!(
                "{} {} packs and {} segments for removal by a gc run after the grace period ({grace_minutes} min)",
                if dry_run { "would mark" } else { "marked" },
                r.packs_marked,
                r.segments_marked
            );
        }
        if r.protected > 0 {
            outln!("{} objects newer than the grace period ({grace_minutes} min) left alone", r.protected);
        }
        let freed = crate::human(r.bytes_freed.unsigned_abs());
        outln!(
            "{} {freed}",
            if r.bytes_freed < 0 {
                "grew by"
            } else if dry_run {
                "would free"
            } else {
                "freed"
            }
        );
        for p in &r.problems {
            eprintln!("problem: {p}");
        }
    }
    Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `vmbackup policy check`: the policy in words and its next runs.
pub fn policy_check(file: &Path, runs: usize, as_json: bool) -> Result<ExitCode> {
    let policy = Policy::from_file(file)?;
    let next = policy.next_runs(jiff::Timestamp::now(), runs)?;
    if as_json {
        let out = json!({
            "ok": true,
            "time_zone": policy.time_zone_name,
            "instant_restore_days": policy.instant_restore_days,
            "summary": policy.summary(),
            "next_runs": next.iter().map(|z| json!({
                "local": z.to_string(),
                "utc": z.timestamp().to_string(),
            })).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("policy {} is valid", file.display());
        for line in policy.summary() {
            outln!("  {line}");
        }
        outln!("next runs:");
        for z in &next {
            outln!("  {}  ({})", z.strftime("%a %Y-%m-%d %H:%M %Z (%:z)"), z.timestamp());
        }
    }
    Ok(ExitCode::SUCCESS)
}
