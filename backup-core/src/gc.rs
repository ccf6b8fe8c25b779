//! Garbage collection: [`gc`] (its doc is the algorithm and its guarantees).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{ContentId, hex};
use crate::vault::{LockMode, PackEntry, Vault, VaultSource, internals};

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
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { grace: Duration::from_secs(60 * 60), repack_threshold: 0.5, dry_run: false }
    }
}

/// What a garbage collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Points whose objects were kept.
    pub points: u64,
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

/// A pack being written by the repack.
struct NewPack {
    id: String,
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    entries: Vec<PackEntry>,
}

/// Garbage collection: removes what no point references, under the
/// vault's exclusive lock.
///
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
/// now) and removes only wholly dead packs; the module doc of
/// `vault::remote` is that protocol.
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
    if let Some(r) = vault.remote() {
        return crate::vault::remote::gc::gc(vault, r, options);
    }
    let _lock = vault.lock(LockMode::Exclusive)?;
    let cutoff = SystemTime::now().checked_sub(options.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };
    let root = vault.path().to_path_buf();

    // 1. What is live.
    let (points, bad) = vault.scan_points(None)?;
    if let Some(first) = bad.first() {
        return Err(Error::corrupt(
            format!("vault {}", root.display()),
            format!(
                "gc refuses to run while {} point manifest(s) cannot be read (first: {first}); \
                 it could not know what they still need",
                bad.len()
            ),
        ));
    }
    report.points = points.len() as u64;
    let live_segments: HashSet<ContentId> =
        points.iter().flat_map(|p| &p.disks).flat_map(|d| d.segments.iter().copied()).collect();
    let mut live_chunks: HashSet<ContentId> = HashSet::new();
    for s in &live_segments {
        let entries = vault.segment(s).map_err(|e| {
            Error::corrupt(
                format!("vault {}", root.display()),
                format!("gc refuses to run: a live index segment cannot be read: {e}"),
            )
        })?;
        live_chunks.extend(entries.into_iter().flatten());
    }
    report.live_segments = live_segments.len() as u64;
    report.live_chunks = live_chunks.len() as u64;

    // 2. Sort the packs. Recent packs are untouchable; their live chunks
    // count as placed first so that older copies of them may go.
    vault.refresh_index()?;
    let mut placed: HashSet<ContentId> = HashSet::new();
    let mut old: Vec<(String, Vec<PackEntry>, u64)> = Vec::new();
    for pack in vault.pack_ids()? {
        let path = vault.pack_path(&pack);
        let meta = vault.dir().stat(&path)?;
        let entries = match vault.read_idx(&pack).or_else(|_| vault.pack_frames(&pack).map(|(e, _)| e)) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(format!("pack {pack} left as it is: its chunks cannot be listed: {e}"));
                continue;
            }
        };
        if is_recent(&meta, cutoff) {
            report.protected += 1;
            placed.extend(entries.iter().map(|e| e.id).filter(|id| live_chunks.contains(id)));
        } else {
            old.push((pack, entries, meta.len));
        }
    }
    let idx_len = |pack: &str| vault.dir().stat(&vault.idx_path(pack)).map_or(0, |m| m.len);
    let mut remove: Vec<String> = Vec::new();
    let mut repack: Vec<(String, Vec<PackEntry>, Vec<PackEntry>)> = Vec::new();
    let mut removed_bytes: u64 = 0;
    for (pack, entries, len) in old {
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for e in entries {
            if live_chunks.contains(&e.id) && placed.insert(e.id) { live.push(e) } else { dead.push(e) }
        }
        let dead_bytes: u64 = dead.iter().map(PackEntry::frame_len).sum();
        let total: u64 = dead_bytes + live.iter().map(PackEntry::frame_len).sum::<u64>();
        if live.is_empty() {
            report.packs_removed += 1;
            report.chunks_removed += dead.len() as u64;
            report.chunk_bytes_removed += dead_bytes;
            removed_bytes += len + idx_len(&pack);
            remove.push(pack);
        } else if dead_bytes > 0 && dead_bytes as f64 >= options.repack_threshold * total as f64 {
            repack.push((pack, live, dead));
        } else {
            // Chunks of a kept pack stay placed; dead ones stay too.
        }
    }

    let missing = live_chunks.len() - placed.len();
    if missing > 0 {
        report.problems.push(format!(
            "{missing} chunk(s) that points reference are in no readable pack: run verify to see which points they hurt"
        ));
    }

    // Repack: read and check each candidate's live frames, copy them.
    let staging = root.join("tmp").join(format!("gc-{}-{}", std::process::id(), random_hex(8)?));
    let mut written: Vec<(String, u64)> = Vec::new();
    let mut current: Option<NewPack> = None;
    let target = vault.options().pack_target_size;
    for (pack, live, dead) in &repack {
        let frames = if options.dry_run {
            None
        } else {
            match read_live_frames(vault, pack, live) {
                Ok(f) => Some(f),
                Err(e) => {
                    report.problems.push(format!("pack {pack} left as it is: {e}"));
                    continue;
                }
            }
        };
        report.packs_repacked += 1;
        report.chunks_removed += dead.len() as u64;
        report.chunk_bytes_removed += dead.iter().map(PackEntry::frame_len).sum::<u64>();
        report.chunk_bytes_copied += live.iter().map(PackEntry::frame_len).sum::<u64>();
        removed_bytes += vault.dir().stat(&vault.pack_path(pack)).map_or(0, |m| m.len) + idx_len(pack);
        remove.push(pack.clone());
        let Some(frames) = frames else { continue };
        for (entry, frame) in live.iter().zip(frames) {
            if current.is_none() {
                vault.dir().mkdirs(&staging.join("packs"))?;
                vault.dir().mkdirs(&staging.join("index"))?;
                current = Some(new_pack(vault, &staging)?);
            }
            let Some(p) = current.as_mut() else { continue };
            p.out.write_all(&frame).map_err(|e| Error::io("write", &p.path, e))?;
            p.entries.push(PackEntry { offset: p.offset, ..*entry });
            p.offset += frame.len() as u64;
            if p.offset >= target
                && let Some(done) = current.take()
            {
                written.push(finish_pack(vault, done, &staging)?);
            }
        }
    }
    if let Some(done) = current.take() {
        written.push(finish_pack(vault, done, &staging)?);
    }
    let written_bytes: u64;
    if options.dry_run {
        // One new pack per target size of copied frames, with its overhead.
        let n = report.chunk_bytes_copied.div_ceil(target.max(1));
        let copied_entries: u64 = repack.iter().map(|(_, l, _)| l.len() as u64).sum();
        written_bytes = report.chunk_bytes_copied + n * (16 + 24 + 8 + 24) + copied_entries * 2 * 56;
        report.packs_written = n;
    } else {
        report.packs_written = written.len() as u64;
        written_bytes = written.iter().map(|(_, b)| b).sum::<u64>();
    }

    // 3. Publish the new packs, durably, before anything old goes.
    if !written.is_empty() {
        for (id, _) in &written {
            let from = staging.join("packs").join(format!("{id}.pack"));
            let to = vault.pack_path(id);
            vault.dir().rename(&from, &to)?;
        }
        vault.dir().sync_dir(&root.join("packs"))?;
        for (id, _) in &written {
            let from = staging.join("index").join(format!("{id}.idx"));
            let to = vault.idx_path(id);
            vault.dir().rename(&from, &to)?;
        }
        vault.dir().sync_dir(&root.join("index"))?;
    }
    if !options.dry_run {
        for pack in &remove {
            vault.dir().remove_file(&vault.pack_path(pack))?;
        }
        vault.dir().sync_dir(&root.join("packs"))?;
        for pack in &remove {
            vault.dir().remove_file_if_exists(&vault.idx_path(pack))?;
        }
        vault.dir().sync_dir(&root.join("index"))?;
    }

    // 4. Segments, orphan index files, staging.
    removed_bytes += remove_dead_segments(vault, &live_segments, cutoff, options.dry_run, &mut report)?;
    let packs: HashSet<String> = vault.pack_ids()?.into_iter().collect();
    let index_dir = root.join("index");
    for name in vault.dir().list(&index_dir)? {
        let Some(pack) = name.strip_suffix(".idx") else { continue };
        if packs.contains(pack) || remove.iter().any(|r| r == pack) {
            continue;
        }
        let path = index_dir.join(&name);
        let Ok(meta) = vault.dir().stat(&path) else { continue };
        if is_recent(&meta, cutoff) {
            report.protected += 1;
            continue;
        }
        if !options.dry_run {
            vault.dir().remove_file(&path)?;
        }
        report.orphan_index_files_removed += 1;
        removed_bytes += meta.len;
    }
    let tmp = root.join("tmp");
    for name in vault.dir().list(&tmp)? {
        let path = tmp.join(&name);
        if path == staging {
            continue;
        }
        let (newest, bytes) = newest_mtime(vault, &path);
        if newest.is_some_and(|t| t >= cutoff) {
            report.protected += 1;
            continue;
        }
        if !options.dry_run {
            vault.dir().remove_dir_all(&path)?;
        }
        report.staging_removed += 1;
        removed_bytes += bytes;
    }
    if vault.dir().exists(&staging) {
        vault.dir().remove_dir_all(&staging)?;
    }
    report.bytes_freed = removed_bytes as i64 - written_bytes as i64;
    if !options.dry_run {
        vault.reload_index()?;
    }
    Ok(report)
}

fn is_recent(meta: &internals::Stat, cutoff: SystemTime) -> bool {
    meta.modified >= cutoff
}

fn random_hex(n: usize) -> Result<String> {
    let mut r = vec![0u8; n];
    getrandom::fill(&mut r).map_err(|e| Error::io("get random bytes for", "gc", std::io::Error::other(e)))?;
    Ok(hex(&r))
}

/// The frames of a pack's live chunks, each checked (crc, decode, hash).
fn read_live_frames(vault: &Vault, pack: &str, live: &[PackEntry]) -> Result<Vec<Vec<u8>>> {
    let path = vault.pack_path(pack);
    let f = vault.dir().open(&path)?;
    let mut out = Vec::with_capacity(live.len());
    for e in live {
        vault.read_frame(&f, pack, e)?;
        let mut frame = vec![0u8; e.frame_len() as usize];
        f.read_exact_at(&mut frame, e.offset).map_err(|err| Error::io("read", &path, err))?;
        out.push(frame);
    }
    Ok(out)
}

fn new_pack(vault: &Vault, staging: &Path) -> Result<NewPack> {
    let id = random_hex(16)?;
    let path = staging.join("packs").join(format!("{id}.pack"));
    let file = vault.dir().create_new(&path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header = internals::pack_header();
    out.write_all(&header).map_err(|e| Error::io("write", &path, e))?;
    Ok(NewPack { id, path, out, offset: header.len() as u64, entries: Vec::new() })
}

/// Writes the trailer, flushes the pack and stages its index file; returns
/// the pack's id and the bytes of both files.
fn finish_pack(vault: &Vault, p: NewPack, staging: &Path) -> Result<(String, u64)> {
    let NewPack { id, path, mut out, offset, entries } = p;
    let trailer = internals::encode_trailer(&entries, offset);
    out.write_all(&trailer).map_err(|e| Error::io("write", &path, e))?;
    let file = out.into_inner().map_err(|e| Error::io("write", &path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("flush", &path, e))?;
    let idx = internals::encode_idx(&trailer);
    vault.dir().write_flushed(&staging.join("index").join(format!("{id}.idx")), &idx)?;
    Ok((id, offset + trailer.len() as u64 + idx.len() as u64))
}

/// Removes segments no point references; returns the bytes removed.
fn remove_dead_segments(
    vault: &Vault,
    live: &HashSet<ContentId>,
    cutoff: SystemTime,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<u64> {
    let dir = vault.path().join("segments");
    let mut bytes = 0;
    for sub in vault.dir().list(&dir)? {
        let subdir = dir.join(&sub);
        if !vault.dir().stat(&subdir).is_ok_and(|s| s.kind == internals::Kind::Dir) {
            continue;
        }
        let mut changed = false;
        for name in vault.dir().list(&subdir)? {
            // Names that are not segment ids are not ours to judge.
            let Ok(id) = ContentId::from_hex(&name) else { continue };
            if live.contains(&id) {
                continue;
            }
            let path = subdir.join(&name);
            let Ok(meta) = vault.dir().stat(&path) else { continue };
            if is_recent(&meta, cutoff) {
                report.protected += 1;
                continue;
            }
            if !dry_run {
                vault.dir().remove_file(&path)?;
                changed = true;
            }
            report.segments_removed += 1;
            report.segment_bytes_removed += meta.len;
            bytes += meta.len;
        }
        if changed {
            vault.dir().sync_dir(&subdir)?;
        }
    }
    Ok(bytes)
}

/// The newest modification time of a file or of anything in a folder tree,
/// and the bytes of its files.
/// A link (never followed) counts as old and empty.
fn newest_mtime(vault: &Vault, path: &Path) -> (Option<SystemTime>, u64) {
    let Ok(meta) = vault.dir().stat(path) else { return (None, 0) };
    let mut newest = Some(meta.modified);
    let mut bytes = if meta.kind == internals::Kind::File { meta.len } else { 0 };
    if meta.kind == internals::Kind::Dir
        && let Ok(names) = vault.dir().list(path)
    {
        for name in names {
            let (t, b) = newest_mtime(vault, &path.join(name));
            newest = newest.max(t);
            bytes += b;
        }
    }
    (newest, bytes)
}
