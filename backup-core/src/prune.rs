//! Prune: [`prune_plan`] then [`prune`] (its doc states the guarantees).

use jiff::Timestamp;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::policy::{KeepReason, PointRef, Retention};
use crate::vault::{LockMode, Vault};

/// How a prune runs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Only this VM's points (every VM when None).
    pub vm: Option<String>,
    /// Plan only: [`prune`] then removes nothing and reports what it would.
    pub dry_run: bool,
}

/// The verdict on one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPoint {
    /// The VM.
    pub vm: String,
    /// The point's id.
    pub id: String,
    /// When its snapshot was taken.
    pub time: Timestamp,
    /// Why it is kept; empty when it is to be removed.
    pub reasons: Vec<KeepReason>,
    /// Bytes its backup added to the vault (an upper bound of what removing
    /// it frees: later points may share them).
    pub bytes_added: u64,
}

impl PlannedPoint {
    /// Whether the plan keeps it.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// What [`prune_plan`] decided: every point judged, by VM then time.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PrunePlan {
    /// The "now" the rules were applied at.
    pub now: Timestamp,
    /// Whether [`prune`] is to remove nothing.
    pub dry_run: bool,
    /// Every point judged.
    pub points: Vec<PlannedPoint>,
    /// Manifests that could not be read: never judged, never removed.
    pub unreadable: Vec<String>,
    /// Job logs to remove: finished jobs whose point is gone (or condemned
    /// by this plan, or never committed), ended more than the retention's
    /// `job_log_days` ago.
    pub job_logs: Vec<PlannedJobLog>,
}

/// A job log the plan removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedJobLog {
    /// The VM.
    pub vm: String,
    /// The job's id.
    pub job: String,
    /// When the job ended (when it started, for a killed job).
    pub time: Timestamp,
    /// The point it committed, if any.
    pub point: Option<String>,
}

impl PrunePlan {
    /// The points the plan removes.
    pub fn to_remove(&self) -> impl Iterator<Item = &PlannedPoint> {
        self.points.iter().filter(|p| !p.keep())
    }

    /// The points the plan keeps.
    pub fn to_keep(&self) -> impl Iterator<Item = &PlannedPoint> {
        self.points.iter().filter(|p| p.keep())
    }
}

/// What [`prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct PruneReport {
    /// Whether it was a dry run (nothing removed).
    pub dry_run: bool,
    /// The points removed (or, in a dry run, that would be).
    pub removed: Vec<PlannedPoint>,
    /// Points the plan condemned that were kept after all, and why.
    pub spared: Vec<String>,
    /// Bytes of manifests removed.
    pub manifest_bytes_removed: u64,
    /// Job logs removed (or, in a dry run, that would be), as `vm/job`.
    pub job_logs_removed: Vec<String>,
}

/// Judges every point of the vault (or of one VM) by `retention` at `now`.
/// Changes nothing.
///
/// # Errors
/// The vault locked; an unknown or invalid VM name; I/O errors listing
/// points.
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, vec![1u8; 1 << 20])?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// for _ in 0..3 {
///     backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default())?;
/// }
/// let policy = Policy::from_toml_str(r#"
///     timezone = "UTC"
///     [schedule]
///     frequency = "daily"
///     times = ["02:00"]
///     [retention]
///     keep_last = 2
/// "#)?;
/// let plan = prune_plan(&vault, &policy.retention, jiff::Timestamp::now(), &PruneOptions::default())?;
/// assert_eq!(plan.to_remove().count(), 1);
/// let report = prune(&vault, &plan)?;
/// assert_eq!(report.removed.len(), 1);
/// assert_eq!(vault.points(Some("web"))?.len(), 2);
/// gc(&vault, &GcOptions::default())?; // reclaims what only the removed point used
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn prune_plan(vault: &Vault, retention: &Retention, now: Timestamp, options: &PruneOptions) -> Result<PrunePlan> {
    let _lock = vault.lock(LockMode::Shared)?;
    let vms = match &options.vm {
        Some(vm) => {
            crate::model::validate_name("vm name", vm)?;
            if vault.point_ids(vm)?.is_empty() {
                return Err(Error::NotFound { what: format!("points of vm {vm}") });
            }
            vec![vm.clone()]
        }
        None => vault.vms()?,
    };
    let mut plan =
        PrunePlan { now, dry_run: options.dry_run, points: Vec::new(), unreadable: Vec::new(), job_logs: Vec::new() };
    for vm in vms {
        let (points, bad) = vault.scan_points(Some(&vm))?;
        plan.unreadable.extend(bad.iter().map(ToString::to_string));
        let refs: Vec<PointRef> = points.iter().map(|p| PointRef::new(p.id.clone(), p.time)).collect();
        let mut kept = std::collections::HashSet::new();
        for r in retention.apply(&refs, now) {
            let bytes_added = points.iter().find(|p| p.id == r.id).map_or(0, |p| p.stats.bytes_added);
            if r.keep() {
                kept.insert(r.id.clone());
            }
            plan.points.push(PlannedPoint { vm: vm.clone(), id: r.id, time: r.time, reasons: r.reasons, bytes_added });
        }
        // A point whose manifest cannot be read is neither kept nor gone:
        // its job's log stays, since it may be what tells what was lost.
        let unreadable_vm = !bad.is_empty();
        plan.job_logs.extend(expired_job_logs(vault, &vm, &kept, unreadable_vm, retention.job_log_days, now)?);
    }
    Ok(plan)
}

/// The logs of `vm`'s finished jobs that ended more than `days` before
/// `now` and whose point is not among `kept` (a running job's log, and a
/// log that cannot be read, are never chosen).
fn expired_job_logs(
    vault: &Vault,
    vm: &str,
    kept: &std::collections::HashSet<String>,
    unreadable_points: bool,
    days: u32,
    now: Timestamp,
) -> Result<Vec<PlannedJobLog>> {
    let cutoff = now - jiff::SignedDuration::from_hours(24 * i64::from(days));
    let mut out = Vec::new();
    for job in crate::job::log::job_history(vault, Some(vm))? {
        let Some(time) = job.ended.or(job.started) else { continue };
        let finished = !matches!(job.result, crate::job::log::JobResult::Running);
        let point_gone = job.point.as_ref().is_none_or(|p| !kept.contains(p));
        if finished && time < cutoff && point_gone && !(unreadable_points && job.point.is_some()) {
            out.push(PlannedJobLog { vm: vm.to_string(), job: job.job, time, point: job.point });
        }
    }
    Ok(out)
}

/// Carries out a plan: removes the points it condemns, under the exclusive
/// lock (soft-deleted while the vault's soft delete is on: see
/// [`delete_point`](crate::delete_point)). A point that is by now its VM's newest, or
/// that is already gone, is spared and reported.
///
/// Prune: remove recovery points by retention rules, in two steps:
/// [`prune_plan`] judges every point (under a shared lock, changing
/// nothing), [`prune`] removes the manifests the plan condemns (under the
/// exclusive lock). Prune removes manifests, and the logs of finished jobs
/// whose point is gone (or that committed none) once they are older than
/// the retention's `job_log_days`; the data only the removed points used
/// is reclaimed by [`gc`](crate::gc) afterwards.
///
/// Guarantees: the newest point of every VM is kept (checked again when
/// the plan is carried out, so a stale plan cannot remove it); a point
/// being restored, verified or exported is never removed under its reader,
/// since those hold the shared lock that prune waits for; a damaged
/// manifest is never judged and never removed, only reported.
///
/// # Errors
/// The vault locked (a backup, restore or verify running past the lock
/// timeout); I/O errors removing a manifest (the points removed before it
/// stay removed).
pub fn prune(vault: &Vault, plan: &PrunePlan) -> Result<PruneReport> {
    let _lock = vault.lock(LockMode::Exclusive)?;
    let mut report = PruneReport { dry_run: plan.dry_run, ..PruneReport::default() };
    let mut newest: std::collections::HashMap<&str, Option<String>> = std::collections::HashMap::new();
    let mut doomed: Vec<&PlannedPoint> = Vec::new();
    let settings = vault.settings()?;
    let now = crate::model::now();
    for p in plan.to_remove() {
        if let Some(until) = settings.immutable_until(p.time, now) {
            report.spared.push(format!(
                "point {} of vm {}: refused: the vault keeps points immutable for {} days, this one until {until}",
                p.id, p.vm, settings.immutable_days
            ));
            continue;
        }
        if !newest.contains_key(p.vm.as_str()) {
            // Read again now: a backup may have committed since the plan.
            newest.insert(&p.vm, vault.latest_point(&p.vm)?.map(|n| n.id));
        }
        if newest.get(p.vm.as_str()).and_then(|n| n.as_deref()) == Some(p.id.as_str()) {
            report.spared.push(format!("point {} of vm {}: it is the vm's newest point", p.id, p.vm));
            continue;
        }
        let Some(len) = vault.manifest_len(&p.vm, &p.id)? else {
            report.spared.push(format!("point {} of vm {}: already gone", p.id, p.vm));
            continue;
        };
        report.manifest_bytes_removed += len;
        report.removed.push(p.clone());
        doomed.push(p);
    }
    report.job_logs_removed = plan.job_logs.iter().map(|j| format!("{}/{}", j.vm, j.job)).collect();
    if plan.dry_run {
        return Ok(report);
    }
    // Say which points prune removes before removing them, so that verify
    // can tell them from manifests lost otherwise.
    let mut by_vm: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for p in &doomed {
        by_vm.entry(p.vm.as_str()).or_default().push(p.id.as_str());
    }
    for (vm, ids) in by_vm {
        record_removed(vault, vm, &ids)?;
    }
    let points: Vec<(&str, &str)> = doomed.iter().map(|p| (p.vm.as_str(), p.id.as_str())).collect();
    crate::soft_delete::remove_points(vault, &points)?;
    remove_job_logs(vault, &plan.job_logs)?;
    Ok(report)
}

/// Removes the planned job logs, then drops from each VM's `pruned.log`
/// the points whose job log is gone: verify reads that file only to tell
/// a pruned point from a lost manifest named by a job log.
fn remove_job_logs(vault: &Vault, logs: &[PlannedJobLog]) -> Result<()> {
    let mut by_vm: std::collections::BTreeMap<&str, Vec<&PlannedJobLog>> = std::collections::BTreeMap::new();
    for j in logs {
        by_vm.entry(j.vm.as_str()).or_default().push(j);
    }
    for (vm, jobs) in by_vm {
        let ids: Vec<&str> = jobs.iter().map(|j| j.job.as_str()).collect();
        vault.remove_job_logs(vm, &ids)?;
        let gone: std::collections::HashSet<&str> = jobs.iter().filter_map(|j| j.point.as_deref()).collect();
        forget_removed(vault, vm, &gone.into_iter().collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Drops the records that these points of a VM were removed (in the store
/// and in `pruned.log`): their job logs are gone, or they were undeleted.
pub(crate) fn forget_removed(vault: &Vault, vm: &str, ids: &[&str]) -> Result<()> {
    vault.forget_pruned(vm, ids)?;
    let bytes = vault.read_pruned_log(vm)?;
    let lines = || bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let keep: Vec<&[u8]> = lines()
        .filter(|l| serde_json::from_slice::<PrunedLine>(l).map_or(true, |p| !ids.contains(&p.point.as_str())))
        .collect();
    if keep.len() < lines().count() {
        let mut out = keep.join(&b'\n');
        if !out.is_empty() {
            out.push(b'\n');
        }
        vault.rewrite_pruned_log(vm, &out)?;
    }
    Ok(())
}

/// The record where prune notes the points it removed from a VM, one JSON
/// object a line (`{"time":...,"point":...}`), appended and flushed before
/// the manifests go; it lives beside the VM's job logs. The same is
/// recorded in the store (`pruned/<vm>/<point>`), where every host of a
/// shared vault sees it.

#[derive(Serialize, serde::Deserialize)]
struct PrunedLine {
    time: Timestamp,
    point: String,
}

/// Records that these points of a VM are removed (by prune or delete),
/// before they go.
pub(crate) fn record_removed(vault: &Vault, vm: &str, ids: &[&str]) -> Result<()> {
    let time = Timestamp::now();
    let mut bytes = Vec::new();
    for id in ids {
        let line = serde_json::to_vec(&PrunedLine { time, point: (*id).to_string() })
            .map_err(|e| Error::invalid("prune", format!("cannot encode a pruned-point record: {e}")))?;
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    vault.append_pruned_log(vm, &bytes)?;
    let json = serde_json::to_vec(&serde_json::json!({ "time": time }))
        .map_err(|e| Error::invalid("prune", format!("cannot encode a pruned-point record: {e}")))?;
    vault.record_pruned(vm, ids, &json)
}

/// The ids of the points prune removed from a VM (empty when none, or when
/// the record cannot be read; a line cut short is skipped).
pub(crate) fn pruned_points(vault: &Vault, vm: &str) -> std::collections::HashSet<String> {
    let mut out: std::collections::HashSet<String> =
        vault.pruned_in_store(vm).unwrap_or_default().into_iter().collect();
    let Ok(bytes) = vault.read_pruned_log(vm) else { return out };
    out.extend(
        bytes.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<PrunedLine>(l).ok()).map(|l| l.point),
    );
    out
}
