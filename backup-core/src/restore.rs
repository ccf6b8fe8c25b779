//! Restore: a disk of a point to a sparse file, a block device or a host's
//! writer; a whole VM to a folder, disks in parallel.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::ContentId;
use crate::model::{CancelToken, NoProgress, Progress};
use crate::vault::{DiskRecord, LockMode, PointManifest, SpanBuffer, Vault, VaultSource};

/// Where a restored disk is written. Called from several threads at once.
pub trait RestoreTarget: Send + Sync {
    /// Writes `data` at `offset`.
    ///
    /// # Errors
    /// Whatever the target reports.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zeros. A fresh sparse file
    /// needs nothing; a device gets zeros written.
    ///
    /// # Errors
    /// Whatever the target reports.
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Whether [`write_at`](Self::write_at) may get several adjacent blocks
    /// in one call (up to 2 MiB) instead of one call per block. Default
    /// false, so that a host's target sees the writes it always saw;
    /// [`FileTarget`] says yes, to send large aligned writes to the disk.
    fn coalesce_writes(&self) -> bool {
        false
    }
    /// Makes everything written durable; called once at the end.
    ///
    /// # Errors
    /// Whatever the target reports.
    fn finish(&self) -> io::Result<()> {
        Ok(())
    }
    /// What the target is, for error messages.
    fn describe(&self) -> String;
}

/// A file or block device as a restore target.
///
/// Whole aligned writes go through a second descriptor opened with
/// `O_DIRECT`: straight from the restore's buffer to the disk, without the
/// copy into the page cache (the largest cost of a restore when this was
/// measured) and without a mass of dirty pages for the final flush to
/// wait on. Unaligned writes (a partial last block, a host's own writes),
/// and every write on a file system that refuses `O_DIRECT` (at open or at
/// the first write), go through the page cache.
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    direct: Option<File>,
    /// Set when a direct write was refused: from then on every write goes
    /// through the page cache.
    direct_refused: AtomicBool,
    path: PathBuf,
    sparse: bool,
}

/// Allocates (as unwritten extents, which read as zeros) the blocks a
/// direct write is about to fill. ext4 serializes direct writes that
/// allocate blocks under the file's lock, for the whole write; writes into
/// allocated blocks share it, so the restore's writers reach the disk
/// together instead of one at a time. Failure (a file system without
/// `fallocate`) only loses that: the write allocates as before.
fn preallocate(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else { return };
    // SAFETY: a plain system call on a descriptor `file` owns and keeps
    // open for the call; no memory is passed.
    let _ = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
}

/// The alignment `O_DIRECT` asks of offsets, lengths and buffer addresses:
/// 4 KiB covers the logical block size of every common device.
const DIRECT_ALIGN: usize = 4096;

impl FileTarget {
    /// Opens `path` for a disk of `size` bytes: a regular file is created
    /// (or truncated) and sized, with zeros left as holes; a block device
    /// must be at least `size` bytes and gets zeros written.
    ///
    /// # Errors
    /// I/O errors; a device that is too small.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<FileTarget> {
        let path = path.as_ref();
        let meta = fs::metadata(path).ok();
        let is_device = meta.as_ref().is_some_and(|m| m.file_type().is_block_device());
        if let Some(m) = &meta
            && !is_device
            && !m.is_file()
        {
            return Err(Error::invalid(
                "restore target",
                format!(
                    "{}: not a regular file or block device (a folder, FIFO, socket or character device)",
                    path.display()
                ),
            ));
        }
        let file = OpenOptions::new()
            .write(true)
            .create(!is_device)
            .truncate(!is_device)
            .open(path)
            .map_err(|e| Error::io("create restore target", path, e))?;
        Self::from_file(file, path, size, is_device)
    }

    /// A target over an open file or block device, sized for `size` bytes.
    pub(crate) fn from_file(file: File, path: &Path, size: u64, is_device: bool) -> Result<FileTarget> {
        if is_device {
            use std::io::Seek;
            let dev_size = (&file).seek(io::SeekFrom::End(0)).map_err(|e| Error::io("find the size of", path, e))?;
            if dev_size < size {
                return Err(Error::invalid(
                    "restore target",
                    format!("{} holds {dev_size} bytes; the disk needs {size}", path.display()),
                ));
            }
        } else {
            file.set_len(size).map_err(|e| Error::io("size restore target", path, e))?;
        }
        // Not every file system takes O_DIRECT (tmpfs before Linux 6.6,
        // some FUSE ones): then the page cache does all the writing.
        // The same file again with O_DIRECT, through the process's own view
        // of the descriptor: never another file that took its name since.
        let direct = {
            use std::os::fd::AsRawFd;
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .ok()
        };
        Ok(FileTarget {
            file,
            direct,
            direct_refused: AtomicBool::new(false),
            path: path.to_path_buf(),
            sparse: !is_device,
        })
    }

    /// Writes the aligned head of `data` with `O_DIRECT` when it can;
    /// returns how many bytes it wrote (0 when it did not).
    fn write_direct(&self, offset: u64, data: &[u8]) -> io::Result<usize> {
        let Some(direct) = self.direct.as_ref() else { return Ok(0) };
        let head = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if head == 0
            || !offset.is_multiple_of(DIRECT_ALIGN as u64)
            || data.as_ptr().align_offset(DIRECT_ALIGN) != 0
            || self.direct_refused.load(Ordering::Relaxed)
        {
            return Ok(0);
        }
        preallocate(direct, offset, head);
        match direct.write_all_at(&data[..head], offset) {
            Ok(()) => Ok(head),
            // EINVAL: the file system does not take direct writes after
            // all (or not with this alignment). The page cache writes these
            // bytes again in full, so a partly done direct write is covered.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct_refused.store(true, Ordering::Relaxed);
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

impl RestoreTarget for FileTarget {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let done = self.write_direct(offset, data)?;
        if done == data.len() {
            return Ok(());
        }
        self.file.write_all_at(&data[done..], offset + done as u64)
    }
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.sparse {
            return Ok(());
        }
        let zeros = vec![0u8; len as usize];
        self.file.write_all_at(&zeros, offset)
    }
    fn coalesce_writes(&self) -> bool {
        true
    }
    fn finish(&self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// How a restore runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Set it to stop the restore.
    pub cancel: CancelToken,
    /// Write zeros where stored data is damaged or missing, and list those
    /// byte ranges in [`RestoreStats::damaged`], instead of failing with
    /// [`Error::DamagedRange`] (default false).
    pub allow_damaged: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions { progress: Arc::new(NoProgress), cancel: CancelToken::new(), allow_damaged: false }
    }
}

/// What a restore of one disk did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RestoreStats {
    /// The disk's name.
    pub disk: String,
    /// Its size.
    pub size: u64,
    /// Bytes of data written.
    pub bytes_written: u64,
    /// Bytes of zeros (holes in a sparse file).
    pub bytes_zero: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The disk's byte ranges that could not be restored and were written
    /// as zeros, with why, in disk order (only with
    /// [`RestoreOptions::allow_damaged`]; empty otherwise).
    pub damaged: Vec<DamagedRange>,
}

/// A byte range of a disk that a restore could not read from the vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DamagedRange {
    /// The disk's bytes, written as zeros.
    pub range: std::ops::Range<u64>,
    /// Why they could not be restored (the damaged object).
    pub detail: String,
}

/// Restores one disk of a point (by name, or index as a number) to a
/// target.
///
/// # Errors
/// [`Error::NotFound`] for an unknown disk; [`Error::DamagedRange`] naming
/// the disk's byte range when stored data is damaged; the target's errors.
pub fn restore_disk(
    vault: &Vault,
    point: &PointManifest,
    disk: &str,
    target: &dyn RestoreTarget,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    let record = point.disk(disk)?;
    locked_with_progress(vault, options, record.size, || restore_record(vault, point, record, target, options))
}

/// Runs a restore of `total` bytes under the vault's shared lock, with a
/// fresh chunk index and the progress bracketed.
fn locked_with_progress<T: Send>(
    vault: &Vault,
    options: &RestoreOptions,
    total: u64,
    restore: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let _lock = vault.lock(LockMode::Shared)?;
    // Forgets packs that a gc (in any process) removed since the last read.
    vault.refresh_index()?;
    options.progress.start(total);
    let r = match restore_pool() {
        Some(pool) => pool.install(restore),
        None => restore(),
    };
    options.progress.finish();
    r
}

/// The threads a restore runs on: twice as many as the engine's pool has,
/// at most 4 more, so that while some wait for their direct writes to
/// reach the disk the others decode, and the disk always has a write or
/// two queued. On the two-core machine of BENCHMARKS.md this took the
/// restore of the 8 GiB image from 7.0 to 4.3 s. The cap keeps a machine
/// of many cores from holding a run buffer for each of as many idle
/// writers. `None` (run on the caller's pool) when no threads can be had.
fn restore_pool() -> Option<rayon::ThreadPool> {
    let n = rayon::current_num_threads();
    rayon::ThreadPoolBuilder::new()
        .num_threads(n + n.min(4))
        .thread_name(|i| format!("vmbackup-restore-{i}"))
        .build()
        .ok()
}

/// Restores one disk of a point to a file (sparse) or block device. A file
/// is written under a temporary name and renamed when complete.
///
/// # Errors
/// As [`restore_disk`].
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, b"hello disk".repeat(10_000))?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// let point = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default())?.point;
/// let out = dir.path().join("restored.img");
/// restore_disk_to_path(&vault, &point, "root.img", &out, &RestoreOptions::default())?;
/// assert_eq!(std::fs::read(&out)?, std::fs::read(&image)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn restore_disk_to_path(
    vault: &Vault,
    point: &PointManifest,
    disk: &str,
    to: &Path,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    let record = point.disk(disk)?;
    locked_with_progress(vault, options, record.size, || restore_record_to_path(vault, point, record, to, options))
}

fn restore_record_to_path(
    vault: &Vault,
    point: &PointManifest,
    record: &DiskRecord,
    to: &Path,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    let out = crate::restore_output::Output::open(to)?;
    let file = out.file.try_clone().map_err(|e| Error::io("open restore target", &out.path, e))?;
    let target = FileTarget::from_file(file, &out.path, record.size, out.device)?;
    let stats = restore_record(vault, point, record, &target, options)?;
    drop(target);
    // A failure or cancel above drops `out`, which removes its file.
    out.commit()?;
    Ok(stats)
}

/// Restores every disk of a point into a folder (created if needed), one
/// file per disk named after it, disks in parallel.
///
/// # Errors
/// As [`restore_disk`], for the first disk that fails.
pub fn restore_vm(
    vault: &Vault,
    point: &PointManifest,
    dir: &Path,
    options: &RestoreOptions,
) -> Result<Vec<RestoreStats>> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
    let paths: Vec<(String, PathBuf)> = point.disks.iter().map(|d| (d.name.clone(), dir.join(&d.name))).collect();
    restore_disks_to_paths(vault, point, &paths, options)
}

/// Restores disks of a point, each to its file (sparse) or device, in
/// parallel: what [`restore_vm`] and a restore as a libvirt domain share.
pub(crate) fn restore_disks_to_paths(
    vault: &Vault,
    point: &PointManifest,
    paths: &[(String, PathBuf)],
    options: &RestoreOptions,
) -> Result<Vec<RestoreStats>> {
    let records = paths.iter().map(|(d, _)| point.disk(d)).collect::<Result<Vec<_>>>()?;
    locked_with_progress(vault, options, records.iter().map(|d| d.size).sum(), || {
        records.par_iter().zip(paths).map(|(d, (_, to))| restore_record_to_path(vault, point, d, to, options)).collect()
    })
}

fn restore_record(
    vault: &Vault,
    point: &PointManifest,
    record: &DiskRecord,
    target: &dyn RestoreTarget,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    let started = Instant::now();
    let bs = u64::from(record.block_size);
    let mut stats = RestoreStats { disk: record.name.clone(), size: record.size, ..RestoreStats::default() };
    let expected_segments = record.blocks().div_ceil(u64::from(record.entries_per_segment));
    if record.segments.len() as u64 != expected_segments {
        return Err(damaged(point, record, 0..record.size, "the point lists the wrong number of index segments"));
    }
    let write_err = |offset: u64, source: io::Error| write_error(point, record, target, offset, source);
    // Blocks are decoded into one buffer per run of adjacent blocks and,
    // for a target that takes them, written with one call per run of
    // data: large aligned writes, which FileTarget sends to the disk
    // directly.
    let blocks_per_run = (RUN_BYTES / bs).max(1) as usize;
    let pool = BufferPool { run_len: blocks_per_run * bs as usize, free: Mutex::new(Vec::new()) };
    let coalesce_writes = target.coalesce_writes();
    for (s, seg_id) in record.segments.iter().enumerate() {
        options.cancel.check(&format!("restore of disk {} of vm {}", record.name, point.vm))?;
        let window = record.segment_range(s);
        let count = (window.end - window.start).div_ceil(bs) as usize;
        let entries = vault.segment(seg_id).map_err(|e| e.to_string()).and_then(|e| {
            if e.len() == count { Ok(e) } else { Err("index segment has the wrong number of blocks".to_string()) }
        });
        let entries = match entries {
            Ok(e) => e,
            Err(why) if options.allow_damaged => {
                target.write_zeros(window.start, window.end - window.start).map_err(|e| write_err(window.start, e))?;
                stats.bytes_zero += window.end - window.start;
                stats.damaged.push(DamagedRange { range: window.clone(), detail: why });
                options.progress.advance(window.end - window.start);
                continue;
            }
            Err(why) => return Err(damaged(point, record, window, &why)),
        };
        let lost: Mutex<Vec<DamagedRange>> = Mutex::new(Vec::new());
        let run = Run { vault, point, record, target, options, lost: &lost, pool: &pool, coalesce: coalesce_writes };
        let written: u64 = entries
            .par_chunks(blocks_per_run)
            .enumerate()
            .map(|(r, run_entries)| run.restore(window.start + (r * blocks_per_run) as u64 * bs, run_entries))
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        let mut lost = lost.into_inner().unwrap_or_else(|p| p.into_inner());
        lost.sort_by_key(|d| d.range.start);
        stats.damaged.extend(lost);
        stats.bytes_written += written;
        stats.bytes_zero += (window.end - window.start) - written;
        options.progress.advance(window.end - window.start);
    }
    target.finish().map_err(|e| write_err(record.size, e))?;
    stats.damaged = coalesce(std::mem::take(&mut stats.damaged));
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Bytes of disk one worker decodes before it writes them, at most.
const RUN_BYTES: u64 = 2 << 20;

/// A worker's buffers: the decoded run and a pack frame as read.
struct RunBuffers {
    /// `run_len` bytes from an address aligned for `O_DIRECT`, found
    /// inside a slightly longer vector (no unsafe allocation needed).
    data: Vec<u8>,
    span: SpanBuffer,
}

impl RunBuffers {
    fn aligned(&mut self, len: usize) -> &mut [u8] {
        let skip = self.data.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        &mut self.data[skip..skip + len]
    }
}

/// The buffers of one disk's restore, handed from run to run, so that
/// each worker allocates its run buffer once rather than once per rayon split;
/// they are freed when the disk is done.
struct BufferPool {
    run_len: usize,
    free: Mutex<Vec<RunBuffers>>,
}

impl BufferPool {
    fn take(&self) -> RunBuffers {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| RunBuffers { data: vec![0u8; self.run_len + DIRECT_ALIGN], span: SpanBuffer::default() })
    }
    fn give(&self, b: RunBuffers) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }
}

/// What a run of adjacent blocks of one segment needs.
struct Run<'a> {
    vault: &'a Vault,
    point: &'a PointManifest,
    record: &'a DiskRecord,
    target: &'a dyn RestoreTarget,
    options: &'a RestoreOptions,
    lost: &'a Mutex<Vec<DamagedRange>>,
    pool: &'a BufferPool,
    /// The target's [`RestoreTarget::coalesce_writes`].
    coalesce: bool,
}

impl Run<'_> {
    /// Restores the blocks `entries` starting at byte `start`; returns the
    /// bytes of data written.
    fn restore(&self, start: u64, entries: &[Option<ContentId>]) -> Result<u64> {
        let mut bufs = self.pool.take();
        let r = self.restore_with(start, entries, &mut bufs);
        self.pool.give(bufs);
        r
    }

    fn restore_with(&self, start: u64, entries: &[Option<ContentId>], bufs: &mut RunBuffers) -> Result<u64> {
        let bs = u64::from(self.record.block_size);
        let size = self.record.size;
        let run_len = self.pool.run_len;
        let plan = self.vault.plan_run(entries)?;
        let mut span = std::mem::take(&mut bufs.span);
        let data = bufs.aligned(run_len);
        // The decoded blocks not yet written: bytes [pending.start,
        // pending.end) of `data`.
        let mut pending = 0..0;
        let mut written = 0;
        let mut result = Ok(());
        for (k, entry) in entries.iter().enumerate() {
            let offset = start + k as u64 * bs;
            let len = bs.min(size - offset) as usize;
            let at = k * bs as usize;
            let decoded = match entry {
                None => Ok(false),
                Some(_) => match self.vault.run_chunk_into(&plan, k, &mut span, &mut data[at..at + len]) {
                    Ok(()) => Ok(true),
                    Err(e) if self.options.allow_damaged => {
                        self.lost
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(DamagedRange { range: offset..offset + len as u64, detail: e.to_string() });
                        Ok(false)
                    }
                    Err(e) => Err(damaged(self.point, self.record, offset..offset + len as u64, &e.to_string())),
                },
            };
            match decoded {
                Ok(true) => {
                    if pending.is_empty() {
                        pending = at..at;
                    }
                    pending.end = at + len;
                    written += len as u64;
                    if !self.coalesce {
                        result = self.flush(start, data, &mut pending);
                    }
                }
                Ok(false) => {
                    result = self.flush(start, data, &mut pending).and_then(|()| {
                        self.target
                            .write_zeros(offset, len as u64)
                            .map_err(|e| write_error(self.point, self.record, self.target, offset, e))
                    });
                }
                Err(e) => result = Err(e),
            }
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| self.flush(start, data, &mut pending));
        bufs.span = span;
        result.map(|()| written)
    }

    /// Writes the pending decoded bytes, if any.
    fn flush(&self, start: u64, data: &[u8], pending: &mut std::ops::Range<usize>) -> Result<()> {
        if pending.start == pending.end {
            return Ok(());
        }
        let offset = start + pending.start as u64;
        let r = self.target.write_at(offset, &data[pending.clone()]);
        *pending = 0..0;
        r.map_err(|e| write_error(self.point, self.record, self.target, offset, e))
    }
}

fn write_error(
    point: &PointManifest,
    record: &DiskRecord,
    target: &dyn RestoreTarget,
    offset: u64,
    source: io::Error,
) -> Error {
    Error::RestoreWrite { vm: point.vm.clone(), disk: record.name.clone(), target: target.describe(), offset, source }
}

fn damaged(point: &PointManifest, record: &DiskRecord, range: std::ops::Range<u64>, detail: &str) -> Error {
    Error::DamagedRange {
        vm: point.vm.clone(),
        point: point.id.clone(),
        disk: record.name.clone(),
        range,
        detail: detail.to_string(),
    }
}

/// Joins adjacent damaged ranges with the same cause, so that a lost pack
/// reads as a few ranges rather than one per block.
fn coalesce(ranges: Vec<DamagedRange>) -> Vec<DamagedRange> {
    let mut out: Vec<DamagedRange> = Vec::with_capacity(ranges.len());
    for d in ranges {
        match out.last_mut() {
            Some(last) if last.range.end == d.range.start && last.detail == d.detail => last.range.end = d.range.end,
            _ => out.push(d),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a mix of aligned, unaligned and tail writes through `t` and
    /// checks the file reads back as written.
    fn write_and_check(t: &FileTarget, path: &Path, size: usize) {
        let mut bufs = RunBuffers { data: vec![0u8; 3 * 65536 + DIRECT_ALIGN], span: SpanBuffer::default() };
        let aligned = bufs.aligned(3 * 65536);
        for (i, b) in aligned.iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        let mut want = vec![0u8; size];
        t.write_at(0, &aligned[..65536]).expect("aligned write");
        want[..65536].copy_from_slice(&aligned[..65536]);
        // An address off the alignment, and an offset off it.
        t.write_at(65536, &aligned[1..65536 + 1]).expect("unaligned address");
        want[65536..2 * 65536].copy_from_slice(&aligned[1..65536 + 1]);
        t.write_at(2 * 65536 + 7, &aligned[..100]).expect("unaligned offset");
        want[2 * 65536 + 7..2 * 65536 + 107].copy_from_slice(&aligned[..100]);
        // The disk's last, partial block: an aligned head and a tail.
        let tail_at = size - (size % 65536);
        t.write_at(tail_at as u64, &aligned[..size - tail_at]).expect("tail");
        want[tail_at..].copy_from_slice(&aligned[..size - tail_at]);
        t.finish().expect("finish");
        assert_eq!(fs::read(path).expect("read back"), want);
    }

    #[test]
    fn file_target_writes_read_back_direct_or_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 5 * 65536 + 12345;
        let path = dir.path().join("direct.img");
        let t = FileTarget::create(&path, size as u64).expect("create");
        write_and_check(&t, &path, size);
    }

    /// Records the writes it gets.
    struct Recorder {
        writes: Mutex<Vec<(u64, usize)>>,
        coalesce: bool,
    }

    impl RestoreTarget for Recorder {
        fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.writes.lock().unwrap_or_else(|p| p.into_inner()).push((offset, data.len()));
            Ok(())
        }
        fn write_zeros(&self, _offset: u64, _len: u64) -> io::Result<()> {
            Ok(())
        }
        fn coalesce_writes(&self) -> bool {
            self.coalesce
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    /// A host's target (the C and Python ABIs) keeps getting one write per
    /// block, as it always did; one that asks for runs gets adjacent blocks
    /// together, split at zero blocks.
    #[test]
    fn host_targets_get_one_write_per_block_and_runs_only_when_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bs = 65536usize;
        // Blocks 0..3 data, 3 zero, 4..6 data, and a partial last block.
        let mut image = vec![0u8; 6 * bs + 1000];
        for (i, b) in image.iter_mut().enumerate() {
            if i / bs != 3 {
                *b = (i % 253) as u8 | 1;
            }
        }
        let path = dir.path().join("d.img");
        fs::write(&path, &image).expect("write image");
        let vault = Vault::init(dir.path().join("v")).expect("init");
        let vm = crate::Vm::from_images("vm", &[&path]).expect("vm");
        let point = crate::backup(&vault, &crate::ImageFileProvider::new(), &vm, &crate::BackupOptions::default())
            .expect("backup")
            .point;
        for coalesce in [false, true] {
            let t = Recorder { writes: Mutex::new(Vec::new()), coalesce };
            restore_disk(&vault, &point, "d.img", &t, &RestoreOptions::default()).expect("restore");
            let mut w = t.writes.into_inner().expect("writes");
            w.sort_unstable();
            let want: Vec<(u64, usize)> = if coalesce {
                vec![(0, 3 * bs), (4 * bs as u64, 2 * bs + 1000)]
            } else {
                vec![
                    (0, bs),
                    (bs as u64, bs),
                    (2 * bs as u64, bs),
                    (4 * bs as u64, bs),
                    (5 * bs as u64, bs),
                    (6 * bs as u64, 1000),
                ]
            };
            assert_eq!(w, want, "coalesce {coalesce}");
        }
    }

    /// A file system that refuses O_DIRECT at open (no direct descriptor)
    /// or at the first write (the refusal flag) still gets every byte.
    #[test]
    fn file_target_falls_back_when_direct_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 4 * 65536 + 4096 + 17;
        let path = dir.path().join("no-direct.img");
        let mut t = FileTarget::create(&path, size as u64).expect("create");
        t.direct = None;
        write_and_check(&t, &path, size);
        let path = dir.path().join("refused.img");
        let t = FileTarget::create(&path, size as u64).expect("create");
        t.direct_refused.store(true, Ordering::Relaxed);
        write_and_check(&t, &path, size);
    }
}
