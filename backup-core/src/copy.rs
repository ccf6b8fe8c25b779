//! Copy: points of one vault into another (a second site), moving only the
//! chunks the target lacks.
//!
//! A copy is a backup whose snapshot is a point of the source vault: the
//! engine reads each disk of the point through [`PointDisk`] (every chunk
//! checked as it is read, a block without data read as a hole), hashes it
//! with the target's key, and stores only what the target's index does not
//! hold, sealed with the target's key. So the two vaults may differ in
//! keys, in encryption and in store. The copied point keeps its id, time,
//! consistency, VM configuration and warnings; its disk records are the
//! target's own.
//!
//! Changes are known without reading everything: a copied disk's change
//! token names the source point it came from, and the next copy of that
//! VM compares the two source points' index entries, segment by segment,
//! and reads only the blocks whose entries differ (the engine's audit
//! re-reads a sample of the others).
//!
//! Each point is one backup session of the target: it takes the target's
//! shared lock, so it runs beside backups into it, and a copy killed
//! midway leaves staged packs that the next session adopts. A point the
//! target already holds (same VM and id) is skipped, so a rerun finishes
//! what a killed copy began.
//!
//! What the source knows about a VM beside its points comes along, resealed
//! with the target's key: the VM's record (what preparing it found and
//! changed) and the boot verdicts of the points taken, each where the
//! target's is missing or older.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use jiff::Timestamp;
use rayon::prelude::*;
use serde::Serialize;

use crate::device::BlockDevice;
use crate::engine::{self, DiskSource, EngineParams};
use crate::error::{Error, Result};
use crate::model::{CancelToken, ContentId, NoProgress, Progress};
use crate::vault::{
    DiskRecord, ENTRIES_PER_SEGMENT, Entries, LockMode, MANIFEST_FORMAT, PointManifest, PointStats, Vault, VaultSink,
    VaultSource,
};

/// Which points of each VM a copy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PointSelection {
    /// The newest point of each VM.
    #[default]
    Latest,
    /// Every point.
    All,
    /// The points taken at or after this time.
    Since(Timestamp),
}

impl std::str::FromStr for PointSelection {
    type Err = Error;

    /// `latest`, `all`, or `since=TIME` (RFC 3339).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "latest" => Ok(PointSelection::Latest),
            "all" => Ok(PointSelection::All),
            _ => match s.strip_prefix("since=") {
                Some(t) => t
                    .parse::<Timestamp>()
                    .map(PointSelection::Since)
                    .map_err(|e| Error::invalid("points", format!("{t:?} is not an RFC 3339 time: {e}"))),
                None => Err(Error::invalid("points", format!("{s:?}: say latest, all or since=TIME"))),
            },
        }
    }
}

/// How a copy runs.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct CopyOptions {
    /// Only these VMs (every VM of the source when empty).
    pub vms: Vec<String>,
    /// Which points of each VM.
    pub points: PointSelection,
    /// Stops the copy: the point being copied is not committed; those
    /// before it stay.
    pub cancel: CancelToken,
    /// Told of each point's bytes as they are read (`start` once per
    /// point), and of warnings.
    pub progress: Option<Arc<dyn Progress>>,
}

/// One point a copy committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CopiedPoint {
    /// The VM.
    pub vm: String,
    /// The point's id (the same in both vaults).
    pub id: String,
    /// Bytes of the source's disks read (blocks that changed since the
    /// point's copied parent, or every block with data).
    pub bytes_read: u64,
    /// Bytes of blocks the target lacked, before compression.
    pub bytes_lacked: u64,
    /// Bytes written to the target for them: chunk frames and index
    /// segments (what moved), plus the manifest.
    pub bytes_added: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct CopyReport {
    /// The points copied, oldest first within each VM.
    pub copied: Vec<CopiedPoint>,
    /// Points the target already held, as `vm/id`.
    pub already_there: Vec<String>,
    /// Boot verdicts of the points taken that the target lacked (or held
    /// older ones of), as `vm/id`.
    pub verdicts_copied: Vec<String>,
    /// VMs whose record (what preparing the VM found and changed) the
    /// target lacked or held an older one of.
    pub vm_records_copied: Vec<String>,
}

impl CopyReport {
    /// Bytes written to the target in all.
    pub fn bytes_added(&self) -> u64 {
        self.copied.iter().map(|c| c.bytes_added).sum()
    }
}

/// Copies points of `from` into `to`: for each VM (of `options.vms`, or
/// all), the points `options.points` selects, oldest first. Only the
/// chunks `to` lacks move; a point `to` already holds is skipped.
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, vec![5u8; 1 << 20])?;
/// let here = Vault::init(dir.path().join("here"))?;
/// let there = Vault::init(dir.path().join("there"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// let point = backup(&here, &ImageFileProvider::new(), &vm, &BackupOptions::default())?.point;
///
/// let report = copy(&here, &there, &CopyOptions::default())?;
/// assert_eq!(report.copied[0].id, point.id);
/// let again = copy(&here, &there, &CopyOptions::default())?;
/// assert!(again.copied.is_empty() && again.already_there.len() == 1);
/// assert!(verify(&there, &VerifyOptions::default())?.ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// A VM asked for that the source does not hold; a damaged chunk or
/// manifest in the source (nothing of that point is committed); either
/// vault locked; I/O errors; [`Error::Cancelled`].
pub fn copy(from: &Vault, to: &Vault, options: &CopyOptions) -> Result<CopyReport> {
    if from.id() == to.id() {
        return Err(Error::invalid("copy", format!("{} and {} are the same vault", from.location(), to.location())));
    }
    let _reading = from.lock(LockMode::Shared)?;
    let vms = if options.vms.is_empty() { from.vms()? } else { options.vms.clone() };
    let mut report = CopyReport::default();
    for vm in vms {
        let points = from.vm_points(&vm)?;
        let chosen: Vec<&PointManifest> = match options.points {
            PointSelection::Latest => points.last().into_iter().collect(),
            PointSelection::All => points.iter().collect(),
            PointSelection::Since(t) => points.iter().filter(|p| p.time >= t).collect(),
        };
        for point in &chosen {
            options.cancel.check(&format!("copy of vm {vm}"))?;
            if to.has_point(&vm, &point.id)? {
                report.already_there.push(format!("{vm}/{}", point.id));
            } else {
                report.copied.push(copy_point(from, to, point, options)?);
            }
            if copy_verdict(from, to, &vm, &point.id)? {
                report.verdicts_copied.push(format!("{vm}/{}", point.id));
            }
        }
        if !chosen.is_empty() && copy_vm_record(from, to, &vm)? {
            report.vm_records_copied.push(vm);
        }
    }
    Ok(report)
}

/// Copies a point's boot verdict when the target has none or an older
/// one; whether it did.
fn copy_verdict(from: &Vault, to: &Vault, vm: &str, id: &str) -> Result<bool> {
    let Some(verdict) = from.boot_verdict(vm, id)? else { return Ok(false) };
    if to.boot_verdict(vm, id)?.is_some_and(|there| there.checked_at >= verdict.checked_at) {
        return Ok(false);
    }
    to.write_boot_verdict(&verdict)?;
    Ok(true)
}

/// Copies a VM's record when the target has none or an older one; whether
/// it did.
fn copy_vm_record(from: &Vault, to: &Vault, vm: &str) -> Result<bool> {
    let Some(record) = from.vm_record(vm)? else { return Ok(false) };
    if to.vm_record(vm)?.is_some_and(|there| there.prepared_at >= record.prepared_at) {
        return Ok(false);
    }
    to.write_vm_record(&record)?;
    Ok(true)
}

/// Copies one point: one backup session of the target.
fn copy_point(from: &Vault, to: &Vault, point: &PointManifest, options: &CopyOptions) -> Result<CopiedPoint> {
    let vm = &point.vm;
    // The copy of its parent, if the target has it (then only changed
    // blocks are read); else the target's newest point of the VM (every
    // block is read, and only what the target lacks is stored).
    let parent = match &point.parent {
        Some(p) if to.has_point(vm, p)? => Some(p.clone()),
        _ => None,
    };
    let base = match &parent {
        Some(p) => Some(to.read_point(vm, p)?),
        None => to.latest_point(vm)?,
    };
    let session = to.begin_backup()?;
    let progress: Arc<dyn Progress> = options.progress.clone().unwrap_or_else(|| Arc::new(NoProgress));
    let devices: Vec<PointDisk<'_>> = point.disks.iter().map(|d| PointDisk::new(from, point, d)).collect();
    let tokens: Vec<String> = point.disks.iter().map(|d| change_token(from, point, &d.name)).collect();
    progress.start(point.disks.iter().map(|d| d.size).sum());
    let disks = point
        .disks
        .par_iter()
        .zip(&devices)
        .zip(&tokens)
        .map(|((d, device), token)| {
            let prev = base.as_ref().and_then(|b| b.disks.iter().find(|p| p.name == d.name));
            let params = EngineParams {
                vm,
                block_size: d.block_size,
                audit_rate: 0.01,
                read_retries: 0,
                cancel: &options.cancel,
                progress: &*progress,
            };
            let source = DiskSource { name: &d.name, device, change_token: Some(token), method: "copy" };
            engine::backup_disk(&session, to, &source, prev, &params)
        })
        .collect::<Result<Vec<DiskRecord>>>();
    progress.finish();
    let disks = disks?;
    let bytes_read = disks.iter().map(|d| d.stats.bytes_read).sum();
    let bytes_lacked = disks.iter().map(|d| d.stats.bytes_new.saturating_sub(d.stats.bytes_deduplicated)).sum();
    let totals = PointStats::totals_of(&disks);
    let manifest = PointManifest {
        format: MANIFEST_FORMAT,
        id: point.id.clone(),
        vm: vm.clone(),
        os: point.os,
        time: point.time,
        wanted_consistency: point.wanted_consistency,
        consistency: point.consistency,
        parent,
        tiers: vec!["vault".into()],
        disks,
        stats: PointStats { totals, bytes_added: 0 },
        policy_rule: point.policy_rule.clone(),
        warnings: point.warnings.clone(),
        configuration: point.configuration.clone(),
    };
    options.cancel.check(&format!("copy of point {} of vm {vm}", point.id))?;
    let committed = session.commit_point(manifest)?;
    Ok(CopiedPoint {
        vm: vm.clone(),
        id: point.id.clone(),
        bytes_read,
        bytes_lacked,
        bytes_added: committed.stats.bytes_added,
    })
}

/// The change token of a copied disk: which source vault, point and disk
/// it came from.
fn change_token(from: &Vault, point: &PointManifest, disk: &str) -> String {
    format!("vmbackup-copy:{}:{}:{}:{disk}", from.id(), point.vm, point.id)
}

/// Segments a [`PointDisk`] keeps decoded: the engine walks a disk one
/// segment-sized window at a time, so a few suffice, and memory stays
/// bounded whatever the disk's size.
const SEGMENTS_KEPT: usize = 4;

/// A disk of a point in a vault, as a [`BlockDevice`]: what a copy reads.
struct PointDisk<'v> {
    vault: &'v Vault,
    vm: String,
    point: String,
    disk: DiskRecord,
    /// Recently used segments, newest last.
    segments: Mutex<Vec<(usize, Arc<Entries>)>>,
    /// The source disk a change token names, read once (None: not one
    /// this disk can compare with).
    base: OnceLock<Option<DiskRecord>>,
}

impl<'v> PointDisk<'v> {
    fn new(vault: &'v Vault, point: &PointManifest, disk: &DiskRecord) -> Self {
        PointDisk {
            vault,
            vm: point.vm.clone(),
            point: point.id.clone(),
            disk: disk.clone(),
            segments: Mutex::new(Vec::new()),
            base: OnceLock::new(),
        }
    }

    fn block_size(&self) -> u64 {
        u64::from(self.disk.block_size)
    }

    fn io_error(&self, e: Error) -> std::io::Error {
        std::io::Error::other(format!("point {} of vm {} in vault {}: {e}", self.point, self.vm, self.vault.location()))
    }

    /// The entries of this disk's segment `s`, kept among the last few.
    fn entries(&self, s: usize) -> Result<Arc<Entries>> {
        let mut kept = self.segments.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, e)) = kept.iter().find(|(n, _)| *n == s) {
            return Ok(e.clone());
        }
        let entries = Arc::new(self.read_entries(&self.disk, s)?);
        if kept.len() >= SEGMENTS_KEPT {
            kept.remove(0);
        }
        kept.push((s, entries.clone()));
        Ok(entries)
    }

    /// The entries of segment `s` of `disk` (this one or a base), read.
    fn read_entries(&self, disk: &DiskRecord, s: usize) -> Result<Entries> {
        let Some(id) = disk.segments.get(s) else {
            return Err(Error::corrupt(
                format!("disk {} of point {} of vm {}", disk.name, self.point, self.vm),
                format!("segment {s} is past its {} segments", disk.segments.len()),
            ));
        };
        self.vault.segment(id)
    }

    /// The chunk id of block `b` (None: a block of zeros).
    fn block(&self, b: u64) -> Result<Option<ContentId>> {
        let per = u64::from(ENTRIES_PER_SEGMENT);
        let entries = self.entries((b / per) as usize)?;
        Ok(entries.get((b % per) as usize).copied().flatten())
    }

    /// The base disk a token names, if it is a copy token of this vault
    /// with the same geometry.
    fn base(&self, token: &str) -> Option<&DiskRecord> {
        self.base
            .get_or_init(|| {
                let rest = token.strip_prefix("vmbackup-copy:")?;
                let mut parts = rest.splitn(4, ':');
                let (vault, vm, point, disk) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                if vault != self.vault.id() || vm != self.vm || disk != self.disk.name {
                    return None;
                }
                let base = self.vault.read_point(vm, point).ok()?;
                base.disks.into_iter().find(|d| {
                    d.name == self.disk.name
                        && d.block_size == self.disk.block_size
                        && d.entries_per_segment == self.disk.entries_per_segment
                        && d.size == self.disk.size
                })
            })
            .as_ref()
    }
}

impl BlockDevice for PointDisk<'_> {
    fn size(&self) -> u64 {
        self.disk.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.disk.size)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the disk"))?;
        let bs = self.block_size();
        let mut at = offset;
        while at < end {
            let b = at / bs;
            let block_start = b * bs;
            let in_block = (at - block_start) as usize;
            let n = ((block_start + bs).min(end) - at) as usize;
            let out = &mut buf[(at - offset) as usize..(at - offset) as usize + n];
            match self.block(b).map_err(|e| self.io_error(e))? {
                None => out.fill(0),
                Some(id) => {
                    let chunk = self.vault.chunk(&id).map_err(|e| self.io_error(e))?;
                    let Some(part) = chunk.get(in_block..in_block + n) else {
                        return Err(self.io_error(Error::corrupt(
                            format!("chunk {id}"),
                            format!("it holds {} bytes, block {b} needs {}", chunk.len(), in_block + n),
                        )));
                    };
                    out.copy_from_slice(part);
                }
            }
            at += n as u64;
        }
        Ok(())
    }

    fn allocated(&self, window: Range<u64>) -> std::io::Result<Option<Vec<Range<u64>>>> {
        let bs = self.block_size();
        let mut out: Vec<Range<u64>> = Vec::new();
        for b in window.start / bs..window.end.div_ceil(bs) {
            if self.block(b).map_err(|e| self.io_error(e))?.is_some() {
                let r = (b * bs).max(window.start)..((b + 1) * bs).min(window.end);
                match out.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => out.push(r),
                }
            }
        }
        Ok(Some(out))
    }

    fn changed_since(&self, token: &str, window: Range<u64>) -> std::io::Result<Option<Vec<Range<u64>>>> {
        let Some(base) = self.base(token) else { return Ok(None) };
        let bs = self.block_size();
        let per = u64::from(ENTRIES_PER_SEGMENT);
        let mut out: Vec<Range<u64>> = Vec::new();
        let mut push = |r: Range<u64>| match out.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => out.push(r),
        };
        let first = window.start / bs;
        let last = window.end.div_ceil(bs);
        let mut b = first;
        while b < last {
            let s = (b / per) as usize;
            let seg_end = ((s as u64 + 1) * per).min(last);
            // A segment both points share holds no change.
            if base.segments.get(s) != self.disk.segments.get(s) {
                let now = self.entries(s).map_err(|e| self.io_error(e))?;
                let then = self.read_entries(base, s).map_err(|e| self.io_error(e))?;
                for blk in b..seg_end {
                    let i = (blk % per) as usize;
                    if now.get(i) != then.get(i) {
                        push((blk * bs).max(window.start)..((blk + 1) * bs).min(window.end));
                    }
                }
            }
            b = seg_end;
        }
        Ok(Some(out))
    }
}
