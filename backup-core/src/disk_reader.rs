//! Random access to one disk of a recovery point, without restoring it:
//! what the NBD export, `vmbackup cat`, the FUSE mount, Python's
//! `Vault.open_disk` and C's `vmb_disk_reader_*` read through.
//!
//! Every block is re-hashed against its id as it is read (as restore does):
//! damaged data is an error naming the disk and byte range, never returned
//! as data. Zero blocks are holes and cost nothing to read.

use std::collections::HashMap;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::ContentId;
use crate::vault::{DiskRecord, Entries, LockMode, PointManifest, Vault, VaultLock, VaultSource};

/// Index segments a reader keeps decoded.
const SEGMENT_CACHE: usize = 4;

/// Part of a read: offset, length, and the bytes (None for zeros).
pub(crate) type Piece = (u64, u64, Option<Vec<u8>>);

/// A read-only, random-access view of one disk of a point.
///
/// It holds the vault's shared lock for as long as it lives, so prune and gc
/// cannot remove what it reads. `V` is how it holds the vault: `&Vault`,
/// `Arc<Vault>`, or anything else that derefs to one. It also implements
/// [`std::io::Read`] and [`std::io::Seek`], so any code that reads a disk
/// image reads a point.
///
/// ```
/// use backup_core::*;
/// use std::io::{Read, Seek, SeekFrom};
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// let mut data = vec![0u8; 1 << 20];
/// data[300_000..300_005].copy_from_slice(b"hello");
/// std::fs::write(&image, &data)?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default())?;
///
/// let point = vault.find_point("web", "latest")?;
/// let mut disk = DiskReader::open(&vault, &point, "root.img")?;
/// assert_eq!(disk.size(), 1 << 20);
/// let mut word = [0u8; 5];
/// disk.read_exact_at(300_000, &mut word)?;
/// assert_eq!(&word, b"hello");
/// disk.seek(SeekFrom::Start(299_999))?;
/// let mut around = [0u8; 7];
/// disk.read_exact(&mut around)?;
/// assert_eq!(&around, b"\0hello\0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DiskReader<V: Deref<Target = Vault>> {
    vault: V,
    _lock: Option<VaultLock>,
    point_id: String,
    vm: String,
    disk: DiskRecord,
    segments: HashMap<usize, Arc<Entries>>,
    last_chunk: Option<(ContentId, Vec<u8>)>,
    position: u64,
}

impl<V: Deref<Target = Vault>> std::fmt::Debug for DiskReader<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReader")
            .field("vm", &self.vm)
            .field("point", &self.point_id)
            .field("disk", &self.disk.name)
            .field("size", &self.disk.size)
            .finish_non_exhaustive()
    }
}

impl<V: Deref<Target = Vault>> DiskReader<V> {
    /// Takes the vault's shared lock and opens `disk` (a name or an index)
    /// of `point`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown disk; [`Error::Locked`];
    /// [`Error::Corrupt`] when the point's index does not fit the disk's
    /// size; errors listing the vault's packs.
    pub fn open(vault: V, point: &PointManifest, disk: &str) -> Result<Self> {
        let lock = vault.lock(LockMode::Shared)?;
        let mut reader = Self::unlocked(vault, point, disk)?;
        reader._lock = Some(lock);
        Ok(reader)
    }

    /// As [`DiskReader::open`], for a caller that already holds the
    /// vault's lock for the reader's whole life.
    pub(crate) fn unlocked(vault: V, point: &PointManifest, disk: &str) -> Result<Self> {
        let record = point.disk(disk)?.clone();
        let expected = record.blocks().div_ceil(u64::from(record.entries_per_segment));
        if record.segments.len() as u64 != expected {
            return Err(Error::corrupt(
                format!("point {} of vm {}", point.id, point.vm),
                format!("disk {} lists {} index segments, {expected} expected", record.name, record.segments.len()),
            ));
        }
        vault.refresh_index()?;
        Ok(DiskReader {
            vault,
            _lock: None,
            point_id: point.id.clone(),
            vm: point.vm.clone(),
            disk: record,
            segments: HashMap::new(),
            last_chunk: None,
            position: 0,
        })
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.disk.size
    }

    /// The disk's name in the point.
    pub fn name(&self) -> &str {
        &self.disk.name
    }

    /// The id of the point it reads.
    pub fn point_id(&self) -> &str {
        &self.point_id
    }

    /// The size of the blocks the disk was stored in.
    pub fn block_size(&self) -> u32 {
        self.disk.block_size
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of
    /// the disk (0 at or past it).
    ///
    /// # Errors
    /// [`Error::Corrupt`] (or an I/O error) naming the disk, the point and
    /// the byte range that cannot be read.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = (buf.len() as u64).min(self.disk.size.saturating_sub(offset));
        if n == 0 {
            return Ok(0);
        }
        let mut at = 0usize;
        for (_, len, data) in self.pieces(offset, n)? {
            let len = len as usize;
            match data {
                Some(d) => buf[at..at + len].copy_from_slice(&d),
                None => buf[at..at + len].fill(0),
            }
            at += len;
        }
        Ok(n as usize)
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// As [`DiskReader::read_at`]; [`Error::InvalidArgument`] when the range
    /// ends past the disk.
    pub fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let n = self.read_at(offset, buf)?;
        if n < buf.len() {
            return Err(Error::invalid(
                format!("disk {} of point {}", self.disk.name, self.point_id),
                format!("bytes {offset}..{} end past the disk's {} bytes", offset + buf.len() as u64, self.disk.size),
            ));
        }
        Ok(())
    }

    /// Whether block `i` (of [`DiskReader::block_size`] bytes) is stored as
    /// zeros (a hole).
    ///
    /// # Errors
    /// As [`DiskReader::read_at`].
    pub fn is_zero_block(&mut self, i: u64) -> Result<bool> {
        self.entry(i).map(|e| e.is_none()).map_err(|e| self.damaged(i * u64::from(self.disk.block_size), 1, e))
    }

    /// The entry of block `i`: None for a zero block.
    fn entry(&mut self, i: u64) -> Result<Option<ContentId>> {
        let d = &self.disk;
        let eps = u64::from(d.entries_per_segment);
        let s = (i / eps) as usize;
        let entries = match self.segments.get(&s) {
            Some(e) => e.clone(),
            None => {
                let id = d.segments.get(s).ok_or_else(|| Error::corrupt("point", "block beyond the index"))?;
                let e = Arc::new(self.vault.segment(id)?);
                let window = d.segment_range(s);
                let count = (window.end - window.start).div_ceil(u64::from(d.block_size));
                if e.len() as u64 != count {
                    return Err(Error::corrupt(format!("index segment {id}"), "wrong number of blocks"));
                }
                if self.segments.len() >= SEGMENT_CACHE {
                    self.segments.clear();
                }
                self.segments.insert(s, e.clone());
                e
            }
        };
        entries.get((i % eps) as usize).copied().ok_or_else(|| Error::corrupt("index segment", "short"))
    }

    fn chunk(&mut self, id: &ContentId) -> Result<&[u8]> {
        if self.last_chunk.as_ref().is_none_or(|(c, _)| c != id) {
            let data = self.vault.chunk(id)?;
            self.last_chunk = Some((*id, data));
        }
        Ok(self.last_chunk.as_ref().map(|(_, d)| d.as_slice()).unwrap_or_default())
    }

    /// The bytes of `offset..offset+len` (within the disk) as pieces:
    /// (offset, len, Some(data)) or (offset, len, None) for zeros,
    /// neighbours merged.
    ///
    /// # Errors
    /// As [`DiskReader::read_at`].
    pub(crate) fn pieces(&mut self, offset: u64, len: u64) -> Result<Vec<Piece>> {
        self.try_pieces(offset, len).map_err(|e| self.damaged(offset, len, e))
    }

    fn try_pieces(&mut self, offset: u64, len: u64) -> Result<Vec<Piece>> {
        let bs = u64::from(self.disk.block_size);
        let size = self.disk.size;
        let mut out: Vec<Piece> = Vec::new();
        let end = offset.saturating_add(len).min(size);
        let mut at = offset;
        while at < end {
            let i = at / bs;
            let block_start = i * bs;
            let block_len = bs.min(size - block_start);
            let n = (block_start + block_len).min(end) - at;
            let from = (at - block_start) as usize;
            match self.entry(i)? {
                None => match out.last_mut() {
                    Some((_, l, None)) => *l += n,
                    _ => out.push((at, n, None)),
                },
                Some(id) => {
                    let data = self.chunk(&id)?;
                    if data.len() as u64 != block_len {
                        return Err(Error::corrupt(format!("chunk {id}"), "wrong length for its block"));
                    }
                    let bytes = &data[from..from + n as usize];
                    match out.last_mut() {
                        Some((_, l, Some(v))) => {
                            v.extend_from_slice(bytes);
                            *l += n;
                        }
                        _ => out.push((at, n, Some(bytes.to_vec()))),
                    }
                }
            }
            at += n;
        }
        Ok(out)
    }

    /// Names the disk, the point and the byte range in an error from
    /// reading them.
    fn damaged(&self, offset: u64, len: u64, e: Error) -> Error {
        let what = format!(
            "disk {} of point {} of vm {}, bytes {offset}..{}",
            self.disk.name,
            self.point_id,
            self.vm,
            offset.saturating_add(len)
        );
        match e {
            Error::Io { source, path, .. } => Error::io("read", format!("{what} ({})", path.display()), source),
            Error::Corrupt { object, detail } => Error::corrupt(what, format!("{object}: {detail}")),
            Error::Tampered { object, detail } => {
                Error::Tampered { object: what, detail: format!("{object}: {detail}") }
            }
            other => other,
        }
    }
}

impl<V: Deref<Target = Vault>> io::Read for DiskReader<V> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.position, buf).map_err(io::Error::other)?;
        self.position += n as u64;
        Ok(n)
    }
}

impl<V: Deref<Target = Vault>> io::Seek for DiskReader<V> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let base = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.disk.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        let at =
            base.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the disk"))?;
        self.position = at;
        Ok(at)
    }
}
