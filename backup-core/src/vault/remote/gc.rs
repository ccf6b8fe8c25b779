//! gc of a remote vault: sweep the marks older than the grace period, then
//! mark what is dead now (the protocol is in the module doc of
//! `vault::remote`).

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use super::{Mark, Remote, random_hex, segment_key};
use crate::error::{Error, Result};
use crate::gc::{GcOptions, GcReport};
use crate::model::ContentId;
use crate::vault::{LockMode, Vault, VaultSource};

/// What the manifests reference now: the segments they name and the
/// chunks in those.
fn live(vault: &Vault) -> Result<(usize, HashSet<ContentId>, HashSet<ContentId>)> {
    let (points, bad) = vault.scan_points(None)?;
    if let Some(first) = bad.first() {
        return Err(Error::corrupt(
            format!("vault {}", vault.location()),
            format!(
                "gc refuses to run while {} point manifest(s) cannot be read (first: {first}); \
                 it could not know what they still need",
                bad.len()
            ),
        ));
    }
    let segments: HashSet<ContentId> =
        points.iter().flat_map(|p| &p.disks).flat_map(|d| d.segments.iter().copied()).collect();
    let mut chunks = HashSet::new();
    for s in &segments {
        let entries = vault.segment(s).map_err(|e| {
            Error::corrupt(
                format!("vault {}", vault.location()),
                format!("gc refuses to run: a live index segment cannot be read: {e}"),
            )
        })?;
        chunks.extend(entries.into_iter().flatten());
    }
    Ok((points.len(), segments, chunks))
}

/// The chunk ids of a pack, from its index file in the store.
fn pack_chunks(remote: &Remote, pack: &str) -> Result<Option<Vec<ContentId>>> {
    let key = format!("index/{pack}.idx");
    let Some(bytes) = remote.store().get(&key)? else { return Ok(None) };
    let entries = crate::vault::pack::parse_idx(&bytes, &format!("chunk index file {}", remote.url_of(&key)))?;
    Ok(Some(entries.into_iter().map(|e| e.id).collect()))
}

/// gc of a remote vault (see the module doc of `vault::remote`).
pub(crate) fn gc(vault: &Vault, remote: &Remote, options: &GcOptions) -> Result<GcReport> {
    // Only guards this host's cache; other hosts are kept safe by the marks.
    let _lock = vault.lock(LockMode::Exclusive)?;
    let now = SystemTime::now();
    let cutoff = now.checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };
    let store = remote.store();

    // Sweep: marks past the grace period, against a fresh look at the manifests.
    let marks = remote.marks(vault)?;
    let ripe: Vec<&(String, Mark)> = marks.iter().filter(|(_, m)| SystemTime::from(m.created) <= cutoff).collect();
    let (points, live_segments, live_chunks) = live(vault)?;
    report.points = points as u64;
    report.live_segments = live_segments.len() as u64;
    report.live_chunks = live_chunks.len() as u64;
    for (name, mark) in &ripe {
        for pack in &mark.packs {
            let chunks = pack_chunks(remote, pack)?;
            if chunks.as_ref().is_some_and(|c| c.iter().any(|id| live_chunks.contains(id))) {
                continue; // a backup that committed before the sweep uses it
            }
            let key = format!("packs/{pack}.pack");
            let size = store.head_many(std::slice::from_ref(&key))?.pop().flatten().map_or(0, |o| o.size);
            if !options.dry_run {
                store.delete(&key)?;
                store.delete(&format!("index/{pack}.idx"))?;
            }
            report.packs_removed += 1;
            report.chunks_removed += chunks.map_or(0, |c| c.len() as u64);
            report.bytes_freed += size as i64;
        }
        for seg in &mark.segments {
            let Ok(id) = ContentId::from_hex(seg) else { continue };
            if live_segments.contains(&id) {
                continue;
            }
            let key = segment_key(&id);
            let size = store.head_many(std::slice::from_ref(&key))?.pop().flatten().map_or(0, |o| o.size);
            if !options.dry_run {
                store.delete(&key)?;
            }
            report.segments_removed += 1;
            report.segment_bytes_removed += size;
            report.bytes_freed += size as i64;
        }
        if !options.dry_run {
            store.delete(&format!("gc/{name}"))?;
        }
    }

    // Mark: what no point needs now, written more than the grace period ago.
    let marked: HashSet<&String> = marks
        .iter()
        .filter(|m| !ripe.iter().any(|r| r.0 == m.0))
        .flat_map(|(_, m)| m.packs.iter().chain(&m.segments))
        .collect();
    let idx: HashMap<String, SystemTime> = store
        .list("index/")?
        .into_iter()
        .filter_map(|o| o.key.strip_prefix("index/")?.strip_suffix(".idx").map(|p| (p.to_string(), o.modified)))
        .collect();
    let swept: HashSet<&String> = ripe.iter().flat_map(|(_, m)| m.packs.iter()).collect();
    let mut mark = Mark { created: jiff::Timestamp::now(), grace_secs: options.grace.as_secs(), ..Mark::default() };
    for o in store.list("packs/")? {
        let Some(pack) = o.key.strip_prefix("packs/").and_then(|k| k.strip_suffix(".pack")) else { continue };
        let pack = pack.to_string();
        if marked.contains(&pack) || swept.contains(&pack) {
            continue;
        }
        if o.modified > cutoff || idx.get(&pack).is_some_and(|t| *t > cutoff) {
            report.protected += 1;
            continue;
        }
        // A pack without an index file was never published whole: no
        // manifest can reference it (a backup checks every chunk's pack).
        let dead = match pack_chunks(remote, &pack)? {
            Some(chunks) => !chunks.iter().any(|id| live_chunks.contains(id)),
            None => true,
        };
        if dead {
            mark.packs.push(pack);
        }
    }
    for o in store.list("segments/")? {
        let Some(name) = o.key.rsplit('/').next() else { continue };
        let Ok(id) = ContentId::from_hex(name) else { continue };
        let name = name.to_string();
        if live_segments.contains(&id) || marked.contains(&name) {
            continue;
        }
        if o.modified > cutoff {
            report.protected += 1;
            continue;
        }
        mark.segments.push(name);
    }
    // Index files whose pack is gone (a sweep cut short between the two deletes).
    let packs: HashSet<String> = store
        .list("packs/")?
        .into_iter()
        .filter_map(|o| o.key.strip_prefix("packs/")?.strip_suffix(".pack").map(str::to_string))
        .collect();
    for (pack, modified) in &idx {
        if !packs.contains(pack) && *modified <= cutoff && !swept.contains(pack) {
            if !options.dry_run {
                store.delete(&format!("index/{pack}.idx"))?;
            }
            report.orphan_index_files_removed += 1;
        }
    }
    report.packs_marked = mark.packs.len() as u64;
    report.segments_marked = mark.segments.len() as u64;
    let empty = mark.packs.is_empty() && mark.segments.is_empty();
    if !options.dry_run && !empty {
        let name = format!("{}-{}.json", mark.created.strftime("%Y%m%dT%H%M%SZ"), random_hex(6)?);
        let bytes = serde_json::to_vec(&mark).map_err(|e| Error::invalid("gc mark", e.to_string()))?;
        if !store.put_new(&format!("gc/{name}"), bytes)? {
            return Err(Error::io(
                "create",
                remote.url_of(&format!("gc/{name}")),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
    }
    if !options.dry_run {
        // Drops index files of swept and newly marked packs from the cache.
        vault.forget_index();
        vault.refresh_index()?;
    }
    Ok(report)
}
