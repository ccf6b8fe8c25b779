//! Repair: rebuilds what can be rebuilt and says what is lost.
//!
//! The chunk index files (`index/<pack>.idx`) are a cache of the packs'
//! trailers, so repair rewrites every one that is missing, damaged or
//! different from its pack: from the pack's trailer, or, for a pack that
//! lost its trailer (truncated), from a walk over its frame headers. Only
//! frames that pass their crc and keyed-hash check are listed, so that the
//! next backup stores a damaged chunk again instead of deduplicating
//! against it (and the points that use it then restore again). Packs,
//! segments and manifests hold the only copy of their data and cannot be
//! rebuilt; repair then verifies the whole vault and lists the points that
//! lost data, by VM, point, disk and byte range, and the manifests that
//! cannot be read.
//!
//! Repair holds the vault's exclusive lock while it rewrites index files
//! (no backup may publish a pack meanwhile), then verifies under the shared
//! lock like any verify.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::vault::{LockMode, PackEntry, Vault};
use crate::verify::{Problem, VerifyOptions, verify};

/// How a repair runs.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairOptions {
    /// Only say what would be rebuilt and what is lost; write nothing.
    pub dry_run: bool,
}

/// A chunk index file that was (or would be) rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RebuiltIndex {
    /// The pack whose index file it is.
    pub pack: String,
    /// Chunks it lists.
    pub chunks: u64,
    /// Why it was rewritten ("missing", or the damage found).
    pub why: String,
    /// Whether it came from a walk over the frames because the pack's
    /// trailer is damaged (the pack was truncated or overwritten at its end).
    pub from_frame_walk: bool,
    /// Damaged frames (bad crc or hash) left out of it, so that the next
    /// backup of a disk holding their chunks stores them again.
    pub dropped: u64,
}

/// What a repair did and found.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Packs looked at.
    pub packs: u64,
    /// Chunk index files rewritten (or that would be).
    pub rebuilt: Vec<RebuiltIndex>,
    /// Packs that cannot be read at all (no pack header): their chunks are
    /// lost.
    pub unreadable_packs: Vec<String>,
    /// The byte ranges of points' disks that cannot be restored, by VM,
    /// point, disk and range (from a verify after the rebuild).
    pub lost: Vec<Problem>,
    /// Other damage verify found: unreadable manifests, damaged frames in
    /// packs.
    pub other: Vec<Problem>,
}

impl RepairReport {
    /// Whether no point lost data and no manifest is unreadable.
    pub fn nothing_lost(&self) -> bool {
        // A pack that is gone or unreadable loses data only if a point
        // needs its chunks, and then verify names that point's ranges in
        // `lost`: a renamed pack whose chunks are all still found is no loss,
        // and repair says so as verify does.
        self.lost.is_empty() && !self.other.iter().any(is_manifest_problem)
    }
}

fn is_manifest_problem(p: &Problem) -> bool {
    p.what.contains("manifest")
}

/// Rebuilds the chunk index files from the packs, then verifies the vault
/// and reports what is lost. Other open handles of the vault load the
/// rebuilt index files when they next see a pack they do not know; reopen
/// them to be sure.
///
/// # Errors
/// [`Error::Locked`] when another process holds the vault; I/O errors
/// writing an index file. Damage is reported, not returned.
pub fn repair(vault: &Vault, options: &RepairOptions) -> Result<RepairReport> {
    let mut report = RepairReport { dry_run: options.dry_run, ..RepairReport::default() };
    {
        let _lock = vault.lock(LockMode::Exclusive)?;
        let packs = vault.pack_ids()?;
        report.packs = packs.len() as u64;
        for pack in packs {
            let (entries, trailer_fault) = match vault.pack_frames(&pack) {
                Ok(x) => x,
                Err(e) => {
                    report.unreadable_packs.push(format!("{pack}: {e}"));
                    continue;
                }
            };
            // Only frames that pass their crc and keyed-hash check stay
            // listed: a damaged chunk left in the index would be
            // deduplicated against by every later backup, never stored again.
            let (entries, damaged) = good_frames(vault, &pack, entries)?;
            let why = match vault.read_idx_from_store(&pack) {
                Ok(idx) if idx == entries => continue,
                Ok(_) if damaged > 0 => format!("{damaged} damaged frames dropped so that backups store them again"),
                Ok(_) => "it differs from the pack".to_string(),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => "missing".into(),
                Err(e) => e.to_string(),
            };
            report.rebuilt.push(RebuiltIndex {
                pack: pack.clone(),
                chunks: entries.len() as u64,
                why,
                from_frame_walk: trailer_fault.is_some(),
                dropped: damaged,
            });
            if !options.dry_run {
                vault.write_idx(&pack, &entries)?;
            }
        }
        // An index file whose pack is gone: the pack was lost (gc removes
        // both, the pack first, so a crash between leaves one behind too).
        let packs: std::collections::HashSet<String> = vault.pack_ids()?.into_iter().collect();
        for idx in vault.list_chunk_index_files()? {
            if !packs.contains(&idx.name) {
                report.unreadable_packs.push(format!("{}: missing (its chunk index file remains)", idx.name));
            }
        }
        vault.forget_index();
    }
    let found = verify(vault, &VerifyOptions::default())?;
    for p in found.problems {
        if p.point.is_some() {
            report.lost.push(p);
        } else {
            report.other.push(p);
        }
    }
    Ok(report)
}

/// The entries whose frames read back intact, and how many did not.
pub(crate) fn good_frames(vault: &Vault, pack: &str, entries: Vec<PackEntry>) -> Result<(Vec<PackEntry>, u64)> {
    let total = entries.len() as u64;
    let mut good = Vec::with_capacity(entries.len());
    vault.check_frames(pack, &entries, |e, _, checked| {
        if checked.is_ok() {
            good.push(*e);
        }
        Ok(())
    })?;
    // In the pack's order, as a trailer lists them.
    good.sort_by_key(|e| e.offset);
    let dropped = total - good.len() as u64;
    Ok((good, dropped))
}
