//! Verify: every chunk a point names is re-read, crc-checked and re-hashed;
//! every index segment re-hashed; every root digest recomputed. For the
//! whole vault, every pack is also read frame by frame. Problems come back
//! as VM, point, disk and byte range, never as an early error.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{CancelToken, ContentId, NoProgress, Progress};
use crate::vault::{DiskRecord, LockMode, PointManifest, Vault, VaultSource, disk_root};

/// What to verify.
#[derive(Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Only this VM's points (all VMs when None).
    pub vm: Option<String>,
    /// Only this point (id, unique prefix or `latest`; needs `vm`).
    pub point: Option<String>,
    /// Where progress goes (in bytes of disk checked).
    pub progress: Arc<dyn Progress>,
    /// Set it to stop.
    pub cancel: CancelToken,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { vm: None, point: None, progress: Arc::new(NoProgress), cancel: CancelToken::new() }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The VM it hurts, when known.
    pub vm: Option<String>,
    /// The point it hurts, when known.
    pub point: Option<String>,
    /// The disk it hurts, when known.
    pub disk: Option<String>,
    /// The disk's bytes that cannot be restored, when known.
    pub range: Option<Range<u64>>,
    /// What is wrong, naming the damaged object.
    pub what: String,
    /// Whether it is a sealed object of an encrypted vault that failed
    /// authentication ([`Error::Tampered`]): changed on purpose, swapped or
    /// forged, rather than damaged by chance.
    pub tampered: bool,
}

impl Problem {
    /// Whether the problem is a sealed object of an encrypted vault that
    /// failed authentication ([`Error::Tampered`]): changed on purpose,
    /// swapped or forged, rather than damaged by chance.
    pub fn is_tampered(&self) -> bool {
        self.tampered
    }

    /// A problem with no VM, point or disk to name.
    fn of_vault(finding: Finding) -> Problem {
        Problem { vm: None, point: None, disk: None, range: None, what: finding.what, tampered: finding.tampered }
    }
}

/// What is wrong with one object, kept per chunk while verify runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    what: String,
    tampered: bool,
}

impl From<&Error> for Finding {
    fn from(e: &Error) -> Finding {
        Finding { what: e.to_string(), tampered: matches!(e, Error::Tampered { .. }) }
    }
}

impl From<&str> for Finding {
    fn from(what: &str) -> Finding {
        Finding { what: what.to_string(), tampered: false }
    }
}

impl From<String> for Finding {
    fn from(what: String) -> Finding {
        Finding { what, tampered: false }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut place = Vec::new();
        if let Some(vm) = &self.vm {
            place.push(format!("vm {vm}"));
        }
        if let Some(p) = &self.point {
            place.push(format!("point {p}"));
        }
        if let Some(d) = &self.disk {
            place.push(format!("disk {d}"));
        }
        if let Some(r) = &self.range {
            place.push(format!("bytes {}..{}", r.start, r.end));
        }
        if place.is_empty() { f.write_str(&self.what) } else { write!(f, "{}: {}", place.join(" "), self.what) }
    }
}

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Points checked.
    pub points: u64,
    /// Distinct chunks checked.
    pub chunks: u64,
    /// Packs read whole (whole-vault verify only).
    pub packs: u64,
    /// Bytes of disk covered by the checked points.
    pub bytes: u64,
    /// Everything found wrong; empty when all is well.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies a point, a VM's points, or the whole vault.
///
/// # Errors
/// Only what stops verify itself (the vault locked, an unknown VM or point,
/// cancellation); damage is reported in the [`VerifyReport`].
pub fn verify(vault: &Vault, options: &VerifyOptions) -> Result<VerifyReport> {
    let _lock = vault.lock(LockMode::Shared)?;
    vault.refresh_index()?;
    let mut report = VerifyReport::default();
    let (points, bad) = match (&options.vm, &options.point) {
        (Some(vm), Some(p)) => (vec![vault.find_point(vm, p)?], Vec::new()),
        (None, Some(_)) => return Err(Error::invalid("verify", "a point needs its vm")),
        (vm, None) => vault.scan_points(vm.as_deref())?,
    };
    let nothing_of_the_vm = points.is_empty() && bad.is_empty();
    for e in bad {
        report.problems.push(Problem::of_vault(Finding::from(&e)));
    }
    // Job logs are this host's (in a remote vault's cache); prune records
    // are in the store too, so another host's prune is told apart.
    if options.point.is_none() {
        check_lost_manifests(vault, options.vm.as_deref(), &points, &mut report)?;
    }
    // A VM named that the vault holds nothing of (a typo) must not pass as
    // "verified, ok"; one whose manifests are lost has problems by now.
    if let Some(vm) = &options.vm
        && nothing_of_the_vm
        && report.problems.is_empty()
    {
        return Err(Error::NotFound { what: format!("points of vm {vm}") });
    }
    // id -> None when good, Some(why) when bad.
    let memo: Mutex<HashMap<ContentId, Option<Finding>>> = Mutex::new(HashMap::new());
    let whole_vault = options.vm.is_none() && options.point.is_none();
    // Every pack, frame by frame (on a remote vault, in ranged GETs of
    // large windows: the whole store is downloaded once).
    if whole_vault {
        check_packs(vault, &memo, &mut report, options)?;
    }
    options.progress.start(points.iter().flat_map(|p| &p.disks).map(|d| d.size).sum());
    for point in &points {
        report.points += 1;
        for disk in &point.disks {
            report.bytes += disk.size;
            check_disk(vault, point, disk, &memo, &mut report, options)?;
        }
    }
    options.progress.finish();
    report.chunks = memo.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    Ok(report)
}

/// A manifest that is gone although a job log says its point was committed,
/// and prune did not remove it. (A point whose parent is gone is no
/// evidence by itself: prune removes parents; it is named as a hint.)
fn check_lost_manifests(
    vault: &Vault,
    vm: Option<&str>,
    points: &[PointManifest],
    report: &mut VerifyReport,
) -> Result<()> {
    let vms = match vm {
        Some(v) => vec![v.to_string()],
        None => vault.job_log_vms()?,
    };
    for vm in vms {
        if crate::model::validate_name("vm name", &vm).is_err() {
            continue;
        }
        let mut pruned = None;
        for job in vault.job_log_ids(&vm)? {
            let Ok(job) = crate::job::log::read_vault_job(vault, &vm, &job) else { continue };
            let Some(id) = job.point.filter(|_| job.result == crate::job::log::JobResult::Succeeded) else {
                continue;
            };
            if crate::model::validate_name("point id", &id).is_err() || vault.has_point(&vm, &id)? {
                continue;
            }
            if pruned.get_or_insert_with(|| crate::prune::pruned_points(vault, &vm)).contains(&id) {
                continue;
            }
            let children: Vec<&str> = points
                .iter()
                .filter(|p| p.vm == vm && p.parent.as_deref() == Some(id.as_str()))
                .map(|p| p.id.as_str())
                .collect();
            let mut what = format!(
                "manifest missing: the job log says it was committed (job {}), and prune did not remove it; \
                 the point cannot be restored (manifest {} is gone)",
                job.job,
                vault.describe_manifest(&vm, &id)
            );
            if !children.is_empty() {
                what.push_str(&format!("; point {} names it as its parent", children.join(", ")));
            }
            report.problems.push(Problem {
                vm: Some(vm.clone()),
                point: Some(id),
                disk: None,
                range: None,
                what,
                tampered: false,
            });
        }
    }
    Ok(())
}

fn problem(point: &PointManifest, disk: &DiskRecord, range: Range<u64>, finding: impl Into<Finding>) -> Problem {
    let Finding { what, tampered } = finding.into();
    Problem {
        vm: Some(point.vm.clone()),
        point: Some(point.id.clone()),
        disk: Some(disk.name.clone()),
        range: Some(range),
        what,
        tampered,
    }
}

fn check_disk(
    vault: &Vault,
    point: &PointManifest,
    disk: &DiskRecord,
    memo: &Mutex<HashMap<ContentId, Option<Finding>>>,
    report: &mut VerifyReport,
    options: &VerifyOptions,
) -> Result<()> {
    if disk_root(disk.size, disk.block_size, &disk.segments) != disk.root {
        report.problems.push(problem(point, disk, 0..disk.size, "root digest does not match the segment list"));
    }
    let expected = disk.blocks().div_ceil(u64::from(disk.entries_per_segment.max(1)));
    if disk.segments.len() as u64 != expected || disk.entries_per_segment == 0 {
        report.problems.push(problem(
            point,
            disk,
            0..disk.size,
            format!("the point lists {} index segments; its size needs {expected}", disk.segments.len()),
        ));
        return Ok(());
    }
    let bs = u64::from(disk.block_size);
    for (s, seg) in disk.segments.iter().enumerate() {
        options.cancel.check("verify")?;
        let window = disk.segment_range(s);
        let entries = match vault.segment(seg) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(problem(point, disk, window, &e));
                continue;
            }
        };
        let count = (window.end - window.start).div_ceil(bs) as usize;
        if entries.len() != count {
            report.problems.push(problem(
                point,
                disk,
                window,
                format!("index segment {seg} holds {} blocks, expected {count}", entries.len()),
            ));
            continue;
        }
        let todo: Vec<ContentId> = {
            let m = memo.lock().unwrap_or_else(|p| p.into_inner());
            let mut ids: Vec<ContentId> = entries.iter().flatten().filter(|id| !m.contains_key(id)).copied().collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let results: Vec<(ContentId, Option<Finding>)> =
            vault.check_chunks(&todo)?.into_iter().map(|(id, e)| (id, e.as_ref().map(Finding::from))).collect();
        let m = {
            let mut m = memo.lock().unwrap_or_else(|p| p.into_inner());
            m.extend(results);
            entries.iter().map(|e| e.and_then(|id| m.get(&id).cloned().flatten())).collect::<Vec<_>>()
        };
        // Coalesce consecutive bad blocks with the same cause.
        let mut run: Option<(Range<u64>, Finding)> = None;
        for (i, bad) in m.into_iter().enumerate() {
            let off = window.start + i as u64 * bs;
            let block = off..(off + bs).min(disk.size);
            match (bad, run.take()) {
                (Some(why), Some((r, w))) if r.end == block.start && w == why => run = Some((r.start..block.end, w)),
                (Some(why), prev) => {
                    if let Some((r, w)) = prev {
                        report.problems.push(problem(point, disk, r, w));
                    }
                    run = Some((block, why));
                }
                (None, prev) => {
                    if let Some((r, w)) = prev {
                        report.problems.push(problem(point, disk, r, w));
                    }
                }
            }
        }
        if let Some((r, w)) = run {
            report.problems.push(problem(point, disk, r, w));
        }
        options.progress.advance(window.end - window.start);
    }
    Ok(())
}

/// Reads every pack whole; records the result of each frame the chunk index
/// points at, so points' checks need not read it again.
fn check_packs(
    vault: &Vault,
    memo: &Mutex<HashMap<ContentId, Option<Finding>>>,
    report: &mut VerifyReport,
    options: &VerifyOptions,
) -> Result<()> {
    let packs = vault.pack_ids()?;
    report.packs = packs.len() as u64;
    let found: Vec<Vec<Finding>> = packs
        .par_iter()
        .map(|pack| {
            let mut problems = Vec::new();
            if options.cancel.is_cancelled() {
                return problems;
            }
            let (entries, fault) = match vault.pack_frames(pack) {
                Ok(x) => x,
                Err(e) => return vec![Finding::from(&e)],
            };
            if let Some(f) = fault {
                problems.push(Finding::from(&f));
            }
            // repair leaves damaged frames out of the index file.
            let mut bad: HashMap<u64, Finding> = HashMap::new();
            let checked = vault.check_frames(pack, &entries, |e, _, r| {
                if let Err(why) = r {
                    bad.insert(e.offset, Finding::from(&why));
                }
                Ok(())
            });
            if let Err(e) = checked {
                return vec![Finding::from(&e)];
            }
            let read: Vec<Option<Finding>> = entries.iter().map(|e| bad.get(&e.offset).cloned()).collect();
            let good: Vec<_> = entries.iter().zip(&read).filter(|(_, r)| r.is_none()).map(|(e, _)| *e).collect();
            match vault.read_idx_from_store(pack) {
                Ok(idx) if idx == entries || idx == good => {}
                Ok(_) => problems
                    .push(format!("chunk index file of pack {pack} differs from the pack (repair rebuilds it)").into()),
                // A backup in flight publishes a pack's index file right
                // after the pack: not yet there is not missing.
                Err(Error::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && crate::vault::adopt::backup_in_flight(vault) => {}
                Err(e) => problems.push(Finding { what: format!("{e} (repair rebuilds it)"), ..Finding::from(&e) }),
            }
            for (e, r) in entries.iter().zip(read) {
                if let Some(why) = &r {
                    problems.push(why.clone());
                }
                if vault.index_location(&e.id).is_some_and(|(p, off)| *p == **pack && off == e.offset) {
                    memo.lock().unwrap_or_else(|p| p.into_inner()).insert(e.id, r);
                }
            }
            problems
        })
        .collect();
    options.cancel.check("verify")?;
    for finding in found.into_iter().flatten() {
        report.problems.push(Problem::of_vault(finding));
    }
    Ok(())
}
