//! gc of a vault shared through an object store: sweep the marks older
//! than the grace period, then mark what is dead now (the protocol is in
//! the module doc of `vault::remote`). Partly dead packs are rewritten as
//! on a local vault; their old copies are then marked like dead ones, and
//! swept only once every live chunk in them is held by an unmarked pack.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use super::{GcOptions, GcReport, count_segments, live, protect, repack};
use crate::error::Result;
use crate::model::ContentId;
use crate::vault::lease;
use crate::vault::remote::Remote;
use crate::vault::{Mark, Vault};

/// gc of a shared vault; see the module doc.
pub(super) fn collect(
    vault: &Vault,
    remote: &Remote,
    options: &GcOptions,
    cutoff: SystemTime,
    held: &[crate::PointManifest],
    report: &mut GcReport,
) -> Result<()> {
    let marks = remote.marks(vault)?;
    let ripe: Vec<&(String, Mark)> = marks.iter().filter(|(_, m)| SystemTime::from(m.created) <= cutoff).collect();
    let live = live::live_set(vault, held)?;
    report.points = live.points as u64;
    report.live_segments = live.segments.len() as u64;
    report.live_chunks = live.chunks.len() as u64;
    let packs = vault.list_packs()?;
    let sizes: HashMap<&String, u64> = packs.iter().map(|p| (&p.name, p.size)).collect();
    let chunks_of = |pack: &str| -> Option<Vec<ContentId>> {
        vault.read_idx(pack).ok().map(|e| e.into_iter().map(|e| e.id).collect())
    };

    // Sweep: marks past the grace period, against a fresh look at the
    // manifests. A marked pack goes when every live chunk in it is also
    // in a pack no mark names (a rewritten copy, or a backup's own).
    let marked: HashSet<&String> = marks.iter().flat_map(|(_, m)| &m.packs).collect();
    let mut held: HashSet<ContentId> = HashSet::new();
    for p in packs.iter().filter(|p| !marked.contains(&p.name)) {
        held.extend(chunks_of(&p.name).unwrap_or_default().into_iter().filter(|c| live.chunks.contains(c)));
    }
    let mut swept: HashSet<&String> = HashSet::new();
    for (name, mark) in &ripe {
        let mut doomed = Vec::new();
        for pack in &mark.packs {
            let chunks = chunks_of(pack);
            if chunks.as_ref().is_some_and(|c| c.iter().any(|id| live.chunks.contains(id) && !held.contains(id))) {
                continue; // a backup that committed before the sweep uses it
            }
            report.packs_removed += 1;
            report.chunks_removed += chunks.map_or(0, |c| c.len() as u64);
            report.bytes_freed += sizes.get(pack).copied().unwrap_or(0) as i64;
            doomed.push(pack.clone());
            swept.insert(pack);
        }
        let segments: Vec<_> = mark
            .segments
            .iter()
            .filter_map(|s| ContentId::from_hex(s).ok())
            .filter(|id| !live.segments.contains(id))
            .collect();
        let stored = vault.stat_segments(&segments)?;
        count_segments(&stored, report);
        if !options.dry_run {
            vault.remove_packs(&doomed)?;
            vault.remove_segments(&segments)?;
            vault.remove_mark(name)?;
        }
    }

    // Mark: what no point needs now, written more than the grace period
    // ago; partly dead packs are rewritten first.
    let unripe: HashSet<&String> = marks
        .iter()
        .filter(|m| !ripe.iter().any(|r| r.0 == m.0))
        .flat_map(|(_, m)| m.packs.iter().chain(&m.segments))
        .collect();
    let idx: HashMap<String, SystemTime> =
        vault.list_chunk_index_files()?.into_iter().map(|i| (i.name, i.modified)).collect();
    // Packs of backups in flight: uploaded, not yet named by a manifest.
    let leases = lease::read(vault.store(), cutoff)?;
    let mut mark = Mark { created: jiff::Timestamp::now(), grace_secs: options.grace.as_secs(), ..Mark::default() };
    let mut placed: HashSet<ContentId> = HashSet::new();
    let mut candidates = Vec::new();
    for p in &packs {
        if unripe.contains(&p.name) || swept.contains(&p.name) {
            continue;
        }
        let recent = p.modified >= cutoff
            || idx.get(&p.name).is_some_and(|t| *t >= cutoff)
            || leases.spare_since.is_some_and(|since| p.modified >= since);
        let entries = vault.read_idx(&p.name).ok();
        if recent {
            report.protected += 1;
            placed.extend(entries.unwrap_or_default().iter().map(|e| e.id).filter(|id| live.chunks.contains(id)));
            continue;
        }
        match entries {
            Some(entries) => candidates.push(repack::Candidate { pack: p.name.clone(), entries, size: 0 }),
            // A pack without an index file was never published whole: no
            // manifest can reference it (a backup checks every chunk's pack).
            None => mark.packs.push(p.name.clone()),
        }
    }
    // Packs removed whole are counted when swept, not now: a mark only
    // condemns. The rewrite's counts are this run's.
    let mut judged = GcReport::default();
    let sorted = repack::sort(candidates, &live.chunks, &mut placed, options, &mut judged);
    let mut rewriting = GcReport::default();
    let rewritten = repack::rewrite(vault, &sorted.repack, options, &mut rewriting)?;
    report.packs_repacked += rewriting.packs_repacked;
    report.packs_written += rewriting.packs_written;
    report.chunk_bytes_copied += rewriting.chunk_bytes_copied;
    // What the rewrite wrote; what it frees is freed at the sweep.
    report.bytes_freed -= rewriting.chunk_bytes_copied as i64;
    report.problems.extend(rewriting.problems);
    mark.packs.extend(sorted.dead);
    mark.packs.extend(rewritten);
    for s in vault.list_segments()? {
        let hex = s.name.to_hex();
        if live.segments.contains(&s.name) || unripe.contains(&hex) {
            continue;
        }
        if protect(s.modified, cutoff, report) {
            mark.segments.push(hex);
        }
    }
    // Index files whose pack is gone (a sweep cut short between the two deletes).
    let names: HashSet<&String> = packs.iter().map(|p| &p.name).collect();
    let orphans: Vec<String> = idx
        .iter()
        .filter(|(pack, modified)| !names.contains(pack) && **modified < cutoff && !swept.contains(pack))
        .map(|(pack, _)| pack.clone())
        .collect();
    report.orphan_index_files_removed += orphans.len() as u64;
    if !options.dry_run {
        vault.remove_chunk_index_files(&orphans)?;
        vault.store().delete_many(&leases.stale)?;
    }
    report.packs_marked = mark.packs.len() as u64;
    report.segments_marked = mark.segments.len() as u64;
    let nothing_to_mark = mark.packs.is_empty() && mark.segments.is_empty();
    if !options.dry_run && !nothing_to_mark {
        vault.put_mark(&mark)?;
    }
    Ok(())
}
