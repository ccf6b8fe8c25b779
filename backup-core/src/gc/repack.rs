//! Which packs gc removes whole and which it rewrites without their dead
//! chunks, and the rewrite itself: live frames are read, checked (crc,
//! decode, keyed hash) and copied byte for byte into new packs, published
//! before anything old goes.

use std::collections::HashSet;

use super::{GcOptions, GcReport};
use crate::error::Result;
use crate::model::ContentId;
use crate::vault::{PackEntry, Vault};

/// A pack old enough to judge, with its chunks.
pub(super) struct Candidate {
    pub pack: String,
    pub entries: Vec<PackEntry>,
    /// The pack's bytes.
    pub size: u64,
}

/// A pack to rewrite without its dead chunks.
pub(super) struct Rewrite {
    pub pack: String,
    /// The chunks copied into new packs.
    pub live: Vec<PackEntry>,
    /// The chunks dropped.
    pub dead: Vec<PackEntry>,
    /// The pack's bytes, freed once it is rewritten.
    pub size: u64,
}

/// What to do with the packs judged.
#[derive(Default)]
pub(super) struct Sorted {
    /// Packs with no chunk still needed: removed whole.
    pub dead: Vec<String>,
    /// Packs whose dead share reached the threshold.
    pub repack: Vec<Rewrite>,
}

/// Sorts `candidates` by how much of each is dead. `placed` holds the live
/// chunks already kept elsewhere (in packs too recent to judge, or judged
/// earlier); a live chunk's extra copies count as dead. Packs removed whole
/// are counted in the report.
pub(super) fn sort(
    candidates: Vec<Candidate>,
    live: &HashSet<ContentId>,
    placed: &mut HashSet<ContentId>,
    options: &GcOptions,
    report: &mut GcReport,
) -> Sorted {
    let mut out = Sorted::default();
    for Candidate { pack, entries, size } in candidates {
        let mut keep = Vec::new();
        let mut dead = Vec::new();
        for e in entries {
            if live.contains(&e.id) && placed.insert(e.id) { keep.push(e) } else { dead.push(e) }
        }
        let dead_bytes: u64 = dead.iter().map(PackEntry::frame_len).sum();
        let total: u64 = dead_bytes + keep.iter().map(PackEntry::frame_len).sum::<u64>();
        if keep.is_empty() {
            report.packs_removed += 1;
            report.chunks_removed += dead.len() as u64;
            report.chunk_bytes_removed += dead_bytes;
            report.bytes_freed += size as i64;
            out.dead.push(pack);
        } else if dead_bytes > 0 && dead_bytes as f64 >= options.repack_threshold * total as f64 {
            out.repack.push(Rewrite { pack, live: keep, dead, size });
        }
    }
    out
}

/// Copies the live frames of the packs to rewrite into new packs and
/// publishes them. Returns the packs rewritten (now free to go); a pack
/// whose live frames do not all read back intact is left as it is, and
/// said in the report's problems. In a dry run nothing is read or
/// written, and the new packs' bytes are estimated from the pack format.
pub(super) fn rewrite(
    vault: &Vault,
    repack: &[Rewrite],
    options: &GcOptions,
    report: &mut GcReport,
) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let target = vault.options().pack_target_size;
    if options.dry_run {
        for r in repack {
            count(report, r);
            done.push(r.pack.clone());
        }
        // One new pack per target size of copied frames, with its overhead.
        let n = report.chunk_bytes_copied.div_ceil(target.max(1));
        let copied: u64 = repack.iter().map(|r| r.live.len() as u64).sum();
        report.packs_written = n;
        report.bytes_freed -= (report.chunk_bytes_copied + n * (16 + 24 + 8 + 24) + copied * 2 * 56) as i64;
        return Ok(done);
    }
    let mut copier = vault.copy_frames("gc")?;
    for r in repack {
        // Checked whole before any is copied: a damaged pack is left alone.
        let mut frames: Vec<(PackEntry, Vec<u8>)> = Vec::with_capacity(r.live.len());
        let read = vault.check_frames(&r.pack, &r.live, |e, frame, checked| {
            checked?;
            frames.push((*e, frame.to_vec()));
            Ok(())
        });
        if let Err(e) = read {
            report.problems.push(format!("pack {} left as it is: {e}", r.pack));
            continue;
        }
        for (e, frame) in &frames {
            copier.copy(e, frame)?;
        }
        count(report, r);
        done.push(r.pack.clone());
    }
    let written = copier.publish()?;
    report.packs_written = written.len() as u64;
    report.bytes_freed -= written.iter().map(|(_, b)| *b as i64).sum::<i64>();
    Ok(done)
}

fn count(report: &mut GcReport, r: &Rewrite) {
    report.packs_repacked += 1;
    report.chunks_removed += r.dead.len() as u64;
    report.chunk_bytes_removed += r.dead.iter().map(PackEntry::frame_len).sum::<u64>();
    report.chunk_bytes_copied += r.live.iter().map(PackEntry::frame_len).sum::<u64>();
    report.bytes_freed += r.size as i64;
}
