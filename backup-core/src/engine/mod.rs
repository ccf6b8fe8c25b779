//! The changed-block engine: one disk of a snapshot into the vault.
//!
//! The disk is cut into fixed blocks, a segment of
//! [`ENTRIES_PER_SEGMENT`] blocks at a time. Within a segment, blocks run in
//! parallel on rayon; each is
//!
//! 1. skipped as zero when it lies in a hole the device reports;
//! 2. copied from the previous point when trusted change tracking says it is
//!    clean (a random sample of those is re-read to audit the tracking);
//! 3. otherwise read: all zeros is recorded as zero; its keyed BLAKE3 id
//!    equal to the previous point's at that index is unchanged; an id the
//!    vault already holds is deduplicated; anything else is compressed with
//!    LZ4 (liblz4, see `crate::lz4`; kept only when smaller) and stored.
//!
//! Memory holds one segment's ids and one block buffer per worker, never a
//! whole disk's index.

mod block;

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::device::{BlockDevice, overlaps};
use crate::error::{Error, Result};
use crate::model::{CancelToken, ContentId, Progress};
use crate::snapshot::SnapshotDisk;
use crate::vault::{DiskRecord, DiskStats, ENTRIES_PER_SEGMENT, Entries, VaultSink, VaultSource, disk_root};

use block::{BlockJob, Buffers, Outcome};

/// Blocks between two progress reports and cancellation checks.
const PROGRESS_BATCH: u64 = 256;

/// How the engine runs for one disk.
pub(crate) struct EngineParams<'a> {
    pub vm: &'a str,
    pub block_size: u32,
    pub audit_rate: f64,
    /// How many times a failed block read is tried again (see
    /// `BackupOptions::read_retries`).
    pub read_retries: u32,
    pub cancel: &'a CancelToken,
    pub progress: &'a dyn Progress,
}

/// Why a pass over a disk stopped early without an error to report.
enum PassEnd {
    Done(Box<DiskRecord>),
    /// The change-tracking audit found a block that changed although the
    /// tracking called it clean.
    Distrusted(String),
}

/// What the engine reads one disk from: a snapshot's disk, or (a copy) a
/// point's disk in another vault.
pub(crate) struct DiskSource<'a> {
    /// The disk's name.
    pub name: &'a str,
    /// A read-only view of the disk.
    pub device: &'a dyn BlockDevice,
    /// The token the next run passes to `changed_since`.
    pub change_token: Option<&'a str>,
    /// How the view was made ("reflink", "in-place", "copy", ...).
    pub method: &'a str,
}

impl<'a> From<&'a SnapshotDisk> for DiskSource<'a> {
    fn from(d: &'a SnapshotDisk) -> Self {
        DiskSource { name: &d.name, device: &*d.device, change_token: d.change_token.as_deref(), method: &d.method }
    }
}

/// Backs up one disk of a snapshot against its previous point (if any).
pub(crate) fn backup_disk(
    sink: &dyn VaultSink,
    source: &dyn VaultSource,
    disk: &DiskSource<'_>,
    prev: Option<&DiskRecord>,
    p: &EngineParams<'_>,
) -> Result<DiskRecord> {
    let started = Instant::now();
    let size = disk.device.size();
    let prev = prev.filter(|d| {
        let same_chain = d.block_size == p.block_size && d.entries_per_segment == ENTRIES_PER_SEGMENT;
        if !same_chain {
            p.progress.warn(&format!(
                "disk {} of vm {}: block size changed from {} to {}: a new chain starts (every block read)",
                disk.name, p.vm, d.block_size, p.block_size
            ));
        }
        same_chain
    });
    // Change tracking is trusted only when it chains from the previous
    // point of this disk and nothing about the disk's geometry changed.
    let token = prev.filter(|d| d.size == size).and_then(|d| d.change_token.clone());
    let mut record = match run_pass(sink, source, disk, prev, token.as_deref(), p)? {
        PassEnd::Done(r) => *r,
        PassEnd::Distrusted(why) => {
            p.progress.warn(&format!(
                "disk {} of vm {}: change tracking distrusted ({why}); reading every block",
                disk.name, p.vm
            ));
            match run_pass(sink, source, disk, prev, None, p)? {
                PassEnd::Done(mut r) => {
                    r.stats.change_detection = format!("cbt distrusted: {why}");
                    *r
                }
                PassEnd::Distrusted(why) => return Err(Error::invalid("change tracking", why)),
            }
        }
    };
    record.stats.seconds = started.elapsed().as_secs_f64();
    Ok(record)
}

fn run_pass(
    sink: &dyn VaultSink,
    source: &dyn VaultSource,
    disk: &DiskSource<'_>,
    prev: Option<&DiskRecord>,
    token: Option<&str>,
    p: &EngineParams<'_>,
) -> Result<PassEnd> {
    let device: &dyn BlockDevice = disk.device;
    let size = device.size();
    let bs = u64::from(p.block_size);
    let seg_bytes = bs * u64::from(ENTRIES_PER_SEGMENT);
    let segments = size.div_ceil(seg_bytes);
    let mut stats = DiskStats {
        bytes_scanned: size,
        change_detection: match (prev, token) {
            (None, _) => "none".into(),
            (Some(_), None) => "compare".into(),
            (Some(_), Some(_)) => "cbt".into(),
        },
        ..DiskStats::default()
    };
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let seed = u64::from_le_bytes(seed);
    let mut segment_ids = Vec::with_capacity(segments as usize);
    let mut prev_cache: Option<(ContentId, Arc<Entries>)> = None;
    let read_err = |offset: u64, source: std::io::Error| Error::DeviceRead {
        vm: p.vm.to_string(),
        disk: disk.name.to_string(),
        offset,
        attempts: 1,
        source,
    };

    for s in 0..segments {
        p.cancel.check(&format!("backup of vm {}", p.vm))?;
        let window: Range<u64> = s * seg_bytes..((s + 1) * seg_bytes).min(size);
        let allocated = device.allocated(window.clone()).map_err(|e| read_err(window.start, e))?;
        let prev_entries = match prev.and_then(|d| d.segments.get(s as usize)) {
            Some(id) => match &prev_cache {
                Some((cid, e)) if cid == id => Some(e.clone()),
                _ => {
                    let e = Arc::new(source.segment(id)?);
                    prev_cache = Some((*id, e.clone()));
                    Some(e)
                }
            },
            None => None,
        };
        let changed = match token {
            Some(t) => device.changed_since(t, window.clone()).map_err(|e| read_err(window.start, e))?,
            None => None,
        };
        if let Some(ranges) = &changed {
            stats.bytes_dirty +=
                ranges.iter().map(|r| r.end.min(window.end).saturating_sub(r.start.max(window.start))).sum::<u64>();
        }
        if token.is_some() && changed.is_none() && stats.change_detection == "cbt" {
            stats.change_detection = "compare (cbt unavailable for this token)".into();
        }
        let job = BlockJob {
            sink,
            device,
            disk: disk.name,
            vm: p.vm,
            block_size: p.block_size,
            size,
            allocated: allocated.as_deref(),
            changed: changed.as_deref(),
            prev: prev_entries.as_deref().map(Vec::as_slice),
            audit_rate: p.audit_rate,
            read_retries: p.read_retries,
            cancel: p.cancel,
            seed,
        };
        let first = window.start / bs;
        let count = (window.end - window.start).div_ceil(bs);
        // Batches keep progress and cancellation responsive (a segment is
        // 128 MiB at the default block size) at no cost to parallelism.
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(count as usize);
        for batch in (0..count).step_by(PROGRESS_BATCH as usize) {
            let end = (batch + PROGRESS_BATCH).min(count);
            let done = (0..end - batch)
                .into_par_iter()
                .map_init(Buffers::default, |buf, k| {
                    if p.cancel.is_cancelled() {
                        return Err(Error::Cancelled { what: format!("backup of vm {}", p.vm) });
                    }
                    job.run(buf, first + batch + k, (batch + k) as usize)
                })
                .collect::<Result<Vec<_>>>()?;
            p.progress.advance(done.iter().map(|o| o.len).sum());
            outcomes.extend(done);
        }
        let mut entries: Entries = Vec::with_capacity(outcomes.len());
        for o in &outcomes {
            if o.audit_mismatch {
                return Ok(PassEnd::Distrusted(format!(
                    "block at byte {} changed although change tracking called it clean",
                    o.offset
                )));
            }
            o.add_to(&mut stats);
            entries.push(o.entry);
        }
        let (id, added) = sink.put_segment(&crate::vault::encode_segment(&entries))?;
        stats.bytes_stored += added;
        segment_ids.push(id);
    }
    Ok(PassEnd::Done(Box::new(DiskRecord {
        name: disk.name.to_string(),
        size,
        block_size: p.block_size,
        entries_per_segment: ENTRIES_PER_SEGMENT,
        root: disk_root(size, p.block_size, &segment_ids),
        segments: segment_ids,
        change_token: disk.change_token.map(str::to_string),
        snapshot_method: disk.method.to_string(),
        stats,
    })))
}

/// Whether a block lies wholly outside the allocated ranges (a hole).
fn is_hole(allocated: Option<&[Range<u64>]>, block: &Range<u64>) -> bool {
    allocated.is_some_and(|a| !overlaps(a, block))
}
