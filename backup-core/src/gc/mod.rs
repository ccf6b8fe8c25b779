//! Garbage collection: [`gc`] (its doc is the algorithm and its guarantees).
//!
//! One live set (`live`), one way to sort and rewrite packs (`repack`),
//! and two ways to remove: at once on a vault this process alone may
//! change (here), in two phases across runs on a vault shared through an
//! object store (`shared`).

mod live;
mod repack;
mod shared;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::ContentId;
use crate::vault::{LockMode, Stored, Vault};

/// How a garbage collection runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GcOptions {
    /// Objects modified more recently than this are never removed
    /// (default 60 minutes).
    pub grace: Duration,
    /// The share (0 to 1) of a pack's chunk bytes that must be dead for it
    /// to be rewritten without them (default 0.5). 0 rewrites every pack
    /// with any dead chunk; 1 rewrites none (wholly dead packs are still
    /// removed).
    pub repack_threshold: f64,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// The time at which soft-deleted points' days are judged over (None:
    /// the clock). A later time rehearses what gc will do then.
    pub now: Option<SystemTime>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { grace: Duration::from_secs(60 * 60), repack_threshold: 0.5, dry_run: false, now: None }
    }
}

/// What a garbage collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Points whose objects were kept (soft-deleted ones included).
    pub points: u64,
    /// Soft-deleted points whose days are not over: their data was kept.
    pub deleted_points_kept: u64,
    /// Soft-deleted points whose days were over, removed for good.
    pub deleted_points_purged: u64,
    /// Distinct chunks those points reference.
    pub live_chunks: u64,
    /// Distinct segments those points reference.
    pub live_segments: u64,
    /// Unreferenced segments removed.
    pub segments_removed: u64,
    /// Their bytes.
    pub segment_bytes_removed: u64,
    /// Packs removed whole (no live chunk).
    pub packs_removed: u64,
    /// Packs rewritten without their dead chunks.
    pub packs_repacked: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Chunk copies no longer stored (dead chunks, and extra copies of live ones).
    pub chunks_removed: u64,
    /// Their frame bytes.
    pub chunk_bytes_removed: u64,
    /// Frame bytes of live chunks copied into new packs.
    pub chunk_bytes_copied: u64,
    /// Chunk index files removed whose pack was gone.
    pub orphan_index_files_removed: u64,
    /// Staging entries under `tmp/` removed.
    pub staging_removed: u64,
    /// Objects spared because they are newer than the grace period.
    pub protected: u64,
    /// On a remote vault: packs this run marked for removal by a later gc
    /// (see `vault::remote`).
    pub packs_marked: u64,
    /// On a remote vault: segments this run marked for removal by a later gc.
    pub segments_marked: u64,
    /// Bytes of files removed minus bytes of files written (in a dry run,
    /// estimated from the pack format).
    pub bytes_freed: i64,
    /// What could not be done (a damaged pack left as it was), with where.
    pub problems: Vec<String>,
}

/// Garbage collection: removes what no point references, under the
/// vault's exclusive lock.
///
/// 0. Soft-deleted points whose days are over (by [`GcOptions::now`]) are
///    removed for good; the others count as points below.
/// 1. Every manifest is read and every index segment it names is read and
///    hash-checked: together they give the live segments and live chunks.
///    gc refuses to run while a manifest or a live segment is unreadable,
///    since it could not know what that point still needs.
/// 2. Packs are sorted: a pack with no live chunk is removed whole; a pack
///    whose dead share of chunk bytes reaches `repack_threshold` is
///    rewritten: its live frames are read, crc-checked and re-hashed, then
///    copied byte for byte into new packs (same pack format, same chunk
///    index files) staged under `tmp/gc-<pid>-<rand>/`.
/// 3. The new packs are flushed and renamed into `packs/`, their index
///    files into `index/`, and both folders flushed. Only then are the old
///    packs and their index files removed. A crash at any step leaves a vault
///    that verifies: before the removal a chunk may be in two packs, never in
///    none.
/// 4. Unreferenced segments, index files without a pack, and staging folders
///    under `tmp/` are removed.
///
/// On a vault on object storage, gc runs in two phases across runs instead
/// (sweep the marks older than the grace period, then mark what is dead
/// now, rewriting partly dead packs as above before their old copies are
/// marked); the module doc of `vault::remote` is that protocol.
///
/// Immutability: in a vault with [`immutable_days`](crate::VaultSettings::immutable_days),
/// no pack, index file or segment younger than those days is removed or
/// rewritten, and no soft-deleted point younger than them is purged.
///
/// Grace period: nothing whose modification time is within
/// [`GcOptions::grace`] of now is removed or rewritten (for a staging folder,
/// its newest file counts). The lock already keeps backups out while gc
/// runs; the grace period also protects objects written by a writer that
/// does not take it, and staging folders of backups that may still be
/// running on another host.
///
/// # Errors
/// The vault locked (a backup, restore or verify running past the lock
/// timeout); a manifest or live segment unreadable (gc then changes
/// nothing); an option out of range; I/O errors (each step before it is
/// complete and durable, and the vault verifies).
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let mut options = GcOptions::default();
/// options.dry_run = true;
/// let report = gc(&vault, &options)?;
/// assert_eq!(report.packs_removed + report.segments_removed, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn gc(vault: &Vault, options: &GcOptions) -> Result<GcReport> {
    if !(0.0..=1.0).contains(&options.repack_threshold) {
        return Err(Error::invalid(
            "gc repack threshold",
            format!("{} is not between 0 and 1", options.repack_threshold),
        ));
    }
    // On a shared vault the lock only guards this host's cache; other
    // hosts are kept safe by the marks.
    let _lock = vault.lock(LockMode::Exclusive)?;
    // An immutable vault's objects are neither removed nor rewritten
    // while younger than its days: a longer grace period.
    let settings = vault.settings()?;
    let grace = options.grace.max(settings.immutable_span());
    let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };
    let swept =
        crate::soft_delete::sweep(vault, &settings, options.now.unwrap_or_else(SystemTime::now), options.dry_run)?;
    report.deleted_points_kept = swept.held.len() as u64;
    report.deleted_points_purged = swept.purged;
    match vault.remote() {
        Some(remote) => shared::collect(vault, remote, options, cutoff, &swept.held, &mut report)?,
        None => collect(vault, options, cutoff, &swept.held, &mut report)?,
    }
    // Staging is no vault data: only the grace period protects it.
    let staging_cutoff = SystemTime::now().checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    remove_staging(vault, None, staging_cutoff, options.dry_run, &mut report)?;
    if !options.dry_run {
        // Drops what this handle knew of removed packs.
        vault.forget_index();
        vault.refresh_index()?;
    }
    Ok(report)
}

/// gc of a vault this process alone may change (under the exclusive lock):
/// removes and rewrites at once.
fn collect(
    vault: &Vault,
    options: &GcOptions,
    cutoff: SystemTime,
    held: &[crate::PointManifest],
    report: &mut GcReport,
) -> Result<()> {
    // 1. What is live.
    let live = live::live_set(vault, held)?;
    report.points = live.points as u64;
    report.live_segments = live.segments.len() as u64;
    report.live_chunks = live.chunks.len() as u64;

    // 2. Sort the packs. Recent packs are untouchable; their live chunks
    // count as placed first so that older copies of them may go.
    vault.refresh_index()?;
    let idx_sizes: HashMap<String, u64> =
        vault.list_chunk_index_files()?.into_iter().map(|s| (s.name, s.size)).collect();
    let mut placed: HashSet<ContentId> = HashSet::new();
    let mut candidates = Vec::new();
    let packs = vault.list_packs()?;
    for pack in &packs {
        let entries = match vault.read_idx(&pack.name).or_else(|_| vault.pack_frames(&pack.name).map(|(e, _)| e)) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(format!("pack {} left as it is: its chunks cannot be listed: {e}", pack.name));
                continue;
            }
        };
        if pack.modified >= cutoff {
            report.protected += 1;
            placed.extend(entries.iter().map(|e| e.id).filter(|id| live.chunks.contains(id)));
        } else {
            let size = pack.size + idx_sizes.get(&pack.name).copied().unwrap_or(0);
            candidates.push(repack::Candidate { pack: pack.name.clone(), entries, size });
        }
    }
    let sorted = repack::sort(candidates, &live.chunks, &mut placed, options, report);
    let missing = live.chunks.len().saturating_sub(placed.len());
    if missing > 0 {
        report.problems.push(format!(
            "{missing} chunk(s) that points reference are in no readable pack: run verify to see which points they hurt"
        ));
    }

    // 3. Rewrite, publish the new packs durably, and only then remove the
    // old ones: before the removal a chunk may be in two packs, never in none.
    let rewritten = repack::rewrite(vault, &sorted.repack, options, report)?;
    let mut gone: Vec<String> = sorted.dead;
    gone.extend(rewritten);
    if !options.dry_run {
        vault.remove_packs(&gone)?;
    }

    // 4. Segments and index files no pack needs.
    let dead_segments: Vec<_> = vault
        .list_segments()?
        .into_iter()
        .filter(|s| !live.segments.contains(&s.name))
        .filter(|s| protect(s.modified, cutoff, report))
        .collect();
    count_segments(&dead_segments, report);
    if !options.dry_run {
        vault.remove_segments(&dead_segments.iter().map(|s| s.name).collect::<Vec<_>>())?;
    }
    let packs: HashSet<&String> = packs.iter().map(|p| &p.name).collect();
    let orphans: Vec<_> = vault
        .list_chunk_index_files()?
        .into_iter()
        .filter(|i| !packs.contains(&i.name) && !gone.contains(&i.name))
        .filter(|i| protect(i.modified, cutoff, report))
        .collect();
    report.orphan_index_files_removed += orphans.len() as u64;
    report.bytes_freed += orphans.iter().map(|i| i.size as i64).sum::<i64>();
    if !options.dry_run {
        vault.remove_chunk_index_files(&orphans.into_iter().map(|i| i.name).collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Whether an object is old enough to remove; a recent one counts as protected.
fn protect(modified: SystemTime, cutoff: SystemTime, report: &mut GcReport) -> bool {
    if modified >= cutoff {
        report.protected += 1;
        false
    } else {
        true
    }
}

fn count_segments(dead: &[Stored<ContentId>], report: &mut GcReport) {
    report.segments_removed += dead.len() as u64;
    let bytes: u64 = dead.iter().map(|s| s.size).sum();
    report.segment_bytes_removed += bytes;
    report.bytes_freed += bytes as i64;
}

/// Removes the staging entries under `tmp/` older than the grace period
/// (for a folder, its newest file counts): what killed backups and gc runs
/// left, but `except`.
fn remove_staging(
    vault: &Vault,
    except: Option<&str>,
    cutoff: SystemTime,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<()> {
    for entry in vault.staging_entries(except)? {
        if !protect(entry.modified, cutoff, report) {
            continue;
        }
        if !dry_run {
            vault.remove_staging(&entry.name)?;
        }
        report.staging_removed += 1;
        report.bytes_freed += entry.size as i64;
    }
    Ok(())
}
