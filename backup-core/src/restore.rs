//! Restore: a disk of a point to a sparse file, a block device or a host's
//! writer; a whole VM to a folder, disks in parallel.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{CancelToken, NoProgress, Progress};
use crate::vault::{DiskRecord, LockMode, PointManifest, Vault, VaultSource};

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
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    path: PathBuf,
    sparse: bool,
}

impl FileTarget {
    /// Opens `path` for a disk of `size` bytes: a regular file is created
    /// (or truncated) and sized, with zeros left as holes; a block device
    /// must be at least `size` bytes and gets zeros written.
    ///
    /// # Errors
    /// I/O errors; a device that is too small.
    pub fn create(path: impl AsRef<Path>, size: u64) -> Result<FileTarget> {
        let path = path.as_ref();
        let is_device = fs::metadata(path).map(|m| m.file_type().is_block_device()).unwrap_or(false);
        let file = OpenOptions::new()
            .write(true)
            .create(!is_device)
            .truncate(!is_device)
            .open(path)
            .map_err(|e| Error::io("create restore target", path, e))?;
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
        Ok(FileTarget { file, path: path.to_path_buf(), sparse: !is_device })
    }
}

impl RestoreTarget for FileTarget {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.sparse {
            return Ok(());
        }
        let zeros = vec![0u8; len as usize];
        self.file.write_all_at(&zeros, offset)
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
fn locked_with_progress<T>(
    vault: &Vault,
    options: &RestoreOptions,
    total: u64,
    restore: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let _lock = vault.lock(LockMode::Shared)?;
    // Forgets packs that a gc (in any process) removed since the last read.
    vault.refresh_index()?;
    options.progress.start(total);
    let r = restore();
    options.progress.finish();
    r
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
    let is_device = fs::metadata(to).map(|m| m.file_type().is_block_device()).unwrap_or(false);
    if is_device {
        let target = FileTarget::create(to, record.size)?;
        return restore_record(vault, point, record, &target, options);
    }
    let name = to.file_name().and_then(|n| n.to_str()).unwrap_or("disk");
    let tmp = to.with_file_name(format!(".{name}.restoring"));
    let target = FileTarget::create(&tmp, record.size)?;
    match restore_record(vault, point, record, &target, options) {
        Ok(stats) => {
            fs::rename(&tmp, to).map_err(|e| Error::io("rename restored disk into place", to, e))?;
            Ok(stats)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
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
    locked_with_progress(vault, options, point.disks.iter().map(|d| d.size).sum(), || {
        fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
        point.disks.par_iter().map(|d| restore_record_to_path(vault, point, d, &dir.join(&d.name), options)).collect()
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
    let write_err = |offset: u64, source: io::Error| Error::RestoreWrite {
        vm: point.vm.clone(),
        disk: record.name.clone(),
        target: target.describe(),
        offset,
        source,
    };
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
        let lost: std::sync::Mutex<Vec<DamagedRange>> = std::sync::Mutex::new(Vec::new());
        let written: u64 = entries
            .par_iter()
            .enumerate()
            .map(|(i, entry)| -> Result<u64> {
                let offset = window.start + i as u64 * bs;
                let len = bs.min(record.size - offset);
                match entry {
                    None => {
                        target.write_zeros(offset, len).map_err(|e| write_err(offset, e))?;
                        Ok(0)
                    }
                    Some(id) => {
                        let data = vault.chunk(id).map_err(|e| e.to_string()).and_then(|d| {
                            if d.len() as u64 == len { Ok(d) } else { Err("chunk has the wrong length".to_string()) }
                        });
                        let data = match data {
                            Ok(d) => d,
                            Err(why) if options.allow_damaged => {
                                target.write_zeros(offset, len).map_err(|e| write_err(offset, e))?;
                                lost.lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(DamagedRange { range: offset..offset + len, detail: why });
                                return Ok(0);
                            }
                            Err(why) => return Err(damaged(point, record, offset..offset + len, &why)),
                        };
                        target.write_at(offset, &data).map_err(|e| write_err(offset, e))?;
                        Ok(len)
                    }
                }
            })
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
