//! Writing a new pack file: appended bytes gather in 1 MiB buffers, each
//! written at its offset when full.
//!
//! By default the writes go around the page cache with `O_DIRECT`, from
//! aligned buffers, by a thread of the pack's own, while the workers go on
//! compressing. Why: a backup writes gigabytes that nobody reads soon;
//! copying them into fresh page-cache pages was the largest system cost
//! of a full backup when measured (12% of its CPU time, more than copying
//! twice as many bytes out of the image, and far more when the host had to
//! hand the guest's memory back first); it also evicts what the host keeps
//! cached, and leaves dirty pages for the pack's fsync to wait on. With
//! [`VaultOptions::buffered_io`](super::VaultOptions::buffered_io) they go
//! through the page cache, from the worker that fills the buffer, and a
//! restore right after the backup then reads from memory.
//!
//! Where `O_DIRECT` is refused (tmpfs before Linux 6.6, some FUSE file
//! systems), at open or at the first write, the same code writes through
//! the page cache. The file's last bytes are written as a whole aligned
//! block padded with zeros and the file is then cut to its real length;
//! `finish` flushes the file before anything names it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// The alignment `O_DIRECT` asks of offsets, lengths and buffer addresses:
/// 4 KiB covers the logical block size of every common device.
const ALIGN: usize = 4096;

/// Bytes gathered before one write.
const BUFFER_BYTES: usize = 1 << 20;

/// Full buffers queued for the writing thread, at most; a worker that
/// fills one more waits, so memory stays bounded when the disk is slow.
const QUEUED: usize = 2;

/// Spare buffers a session keeps for its next packs, at most.
const POOL_MAX: usize = 8;

/// A buffer whose bytes start at an address aligned for `O_DIRECT`, found
/// inside a slightly longer vector (no unsafe allocation needed).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        let raw = vec![0u8; BUFFER_BYTES + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }
    fn room(&self) -> usize {
        BUFFER_BYTES - self.len
    }
    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    /// The bytes padded with zeros to a whole number of aligned blocks.
    fn padded(&mut self) -> &[u8] {
        let padded = self.len.div_ceil(ALIGN) * ALIGN;
        self.raw[self.start + self.len..self.start + padded].fill(0);
        &self.raw[self.start..self.start + padded]
    }
}

/// Buffers handed back by the writing threads for the next packs: fresh
/// memory costs a page fault per page on first touch.
#[derive(Default)]
pub(super) struct BufferPool(Mutex<Vec<AlignedBuf>>);

impl BufferPool {
    fn take(&self) -> AlignedBuf {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(AlignedBuf::new)
    }
    fn give(&self, mut b: AlignedBuf) {
        b.len = 0;
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOL_MAX {
            free.push(b);
        }
    }
}

/// One full buffer and where it goes in the file.
struct Chunk {
    offset: u64,
    buf: AlignedBuf,
}

/// The error a pack's writing thread stopped on, kept for the workers
/// whose buffers it no longer takes.
type Stopped = Arc<Mutex<Option<io::Error>>>;

/// A copy of an I/O error that keeps its errno (`io::Error` is not
/// `Clone`).
fn copy_of(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Where a [`Handoff`] sends: the pack's writing thread, its path and
/// what the thread stopped on.
struct Destination {
    tx: SyncSender<Chunk>,
    path: PathBuf,
    stopped: Stopped,
}

/// Full buffers of a pack on their way to its writing thread. The pack
/// cannot finish before they are sent: its thread runs until every sender,
/// this one's included, is gone.
#[derive(Default)]
pub(super) struct Handoff {
    chunks: Vec<Chunk>,
    to: Option<Destination>,
}

impl Handoff {
    /// Sends the buffers, waiting while the thread's queue is full.
    pub(super) fn send(self) -> Result<()> {
        let Some(to) = self.to else { return Ok(()) };
        for c in self.chunks {
            // A send fails only when the thread stopped on a write error
            // (a full disk), which it kept before it stopped.
            if to.tx.send(c).is_err() {
                let stopped = to.stopped.lock().unwrap_or_else(|p| p.into_inner());
                let cause =
                    stopped.as_ref().map_or_else(|| io::Error::other("the pack's writing thread stopped"), copy_of);
                return Err(Error::io("write", &to.path, cause));
            }
        }
        Ok(())
    }
}

/// A pack file being written.
pub(super) struct PackWriter {
    path: PathBuf,
    file: Arc<File>,
    /// The bytes not yet handed to the writing thread; they go at `offset`.
    buf: AlignedBuf,
    offset: u64,
    tx: Option<SyncSender<Chunk>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// What the writing thread stopped on, if it did.
    stopped: Stopped,
    pool: Arc<BufferPool>,
    /// Without `O_DIRECT`: full buffers are written by the caller, at once.
    inline: bool,
}

/// Writes `bytes` at `offset`; when the descriptor has `O_DIRECT` and the
/// kernel refuses the write as unaligned or unsupported (EINVAL), it
/// clears `O_DIRECT` and writes through the page cache.
fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    match file.write_all_at(bytes, offset) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let fd = file.as_raw_fd();
            // SAFETY: fcntl on a descriptor `file` owns and keeps open for
            // the call; F_GETFL/F_SETFL take and return plain integers.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 || flags & libc::O_DIRECT == 0 {
                return Err(e);
            }
            // SAFETY: as above.
            if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
                return Err(io::Error::last_os_error());
            }
            file.write_all_at(bytes, offset)
        }
        other => other,
    }
}

impl PackWriter {
    /// Creates `path`, which must not exist; `direct` asks for `O_DIRECT`.
    pub(super) fn create(
        vdir: &super::beneath::VaultDir,
        path: &Path,
        pool: Arc<BufferPool>,
        direct: bool,
    ) -> Result<PackWriter> {
        let file = match vdir.create_new_with(path, if direct { libc::O_DIRECT } else { 0 }) {
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => vdir.create_new(path),
            other => other,
        }?;
        let file = Arc::new(file);
        let buf = pool.take();
        if !direct {
            // Through the page cache a write is a copy that does not wait
            // for the disk: the worker makes it, no thread needed.
            let path = path.to_path_buf();
            let stopped = Stopped::default();
            return Ok(PackWriter { path, file, buf, offset: 0, tx: None, thread: None, stopped, pool, inline: true });
        }
        let (tx, rx) = sync_channel::<Chunk>(QUEUED);
        let stopped = Stopped::default();
        let (f, p, s) = (file.clone(), pool.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name("vmbackup-pack-write".into())
            .spawn(move || {
                for c in rx {
                    if let Err(e) = write_at(&f, c.buf.bytes(), c.offset) {
                        *s.lock().unwrap_or_else(|p| p.into_inner()) = Some(copy_of(&e));
                        return Err(e);
                    }
                    p.give(c.buf);
                }
                Ok(())
            })
            .map_err(|e| Error::io("start a thread to write", path, e))?;
        Ok(PackWriter {
            path: path.to_path_buf(),
            file,
            buf,
            offset: 0,
            tx: Some(tx),
            thread: Some(thread),
            stopped,
            pool,
            inline: false,
        })
    }

    /// Appends `bytes`. Buffers it fills are returned in a [`Handoff`]
    /// for the caller to send once it has let go of any lock it holds:
    /// sending waits when the disk is behind.
    pub(super) fn append(&mut self, mut bytes: &[u8], handoff: &mut Handoff) -> Result<()> {
        if self.inline {
            return self.append_inline(bytes);
        }
        while !bytes.is_empty() {
            let n = self.buf.room().min(bytes.len());
            self.buf.push(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.room() == 0 {
                let Some(tx) = self.tx.as_ref() else {
                    return Err(Error::io("write", &self.path, io::Error::other("the pack is finished")));
                };
                let full = std::mem::replace(&mut self.buf, self.pool.take());
                handoff.chunks.push(Chunk { offset: self.offset, buf: full });
                handoff.to.get_or_insert_with(|| Destination {
                    tx: tx.clone(),
                    path: self.path.clone(),
                    stopped: self.stopped.clone(),
                });
                self.offset += BUFFER_BYTES as u64;
            }
        }
        Ok(())
    }

    /// Through the page cache: as `std::io::BufWriter` does, the buffer
    /// is written when the next bytes do not fit, so writes are not cut at
    /// aligned 1 MiB boundaries. On the machine of BENCHMARKS.md a full
    /// backup writing whole aligned MiB took 2.0 to 5.0 s of system time
    /// against 1.4 to 1.7 s this way, alternating the two builds; the
    /// likely cause is that the kernel fills such writes with large
    /// page-cache folios, taken from the large free blocks whose memory the
    /// host has reclaimed from the guest.
    fn append_inline(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.buf.room() && self.buf.len > 0 {
            write_at(&self.file, self.buf.bytes(), self.offset).map_err(|e| Error::io("write", &self.path, e))?;
            self.offset += self.buf.len as u64;
            self.buf.len = 0;
        }
        if bytes.len() > self.buf.room() {
            write_at(&self.file, bytes, self.offset).map_err(|e| Error::io("write", &self.path, e))?;
            self.offset += bytes.len() as u64;
        } else {
            self.buf.push(bytes);
        }
        Ok(())
    }

    /// Appends `bytes` and sends what it fills at once.
    pub(super) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let mut h = Handoff::default();
        self.append(bytes, &mut h)?;
        h.send()
    }

    /// Waits for the writing thread; its error, if any.
    fn join(&mut self) -> Result<()> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(Error::io("write", &self.path, e)),
            Some(Err(_)) => Err(Error::io("write", &self.path, io::Error::other("the pack's writing thread panicked"))),
        }
    }

    /// Writes what is left and cuts the file to its length; with `flush`,
    /// flushes it to the disk.
    pub(super) fn finish(mut self, flush: bool) -> Result<()> {
        self.join()?;
        let len = self.offset + self.buf.len as u64;
        write_at(&self.file, self.buf.padded(), self.offset).map_err(|e| Error::io("write", &self.path, e))?;
        self.file.set_len(len).map_err(|e| Error::io("write", &self.path, e))?;
        if flush {
            self.file.sync_all().map_err(|e| Error::io("flush", &self.path, e))?;
        }
        let buf = std::mem::replace(&mut self.buf, AlignedBuf { raw: Vec::new(), start: 0, len: 0 });
        self.pool.give(buf);
        Ok(())
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // An abandoned pack: stop the thread (the file is removed with
        // its staging folder).
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::beneath::VaultDir;

    #[test]
    fn writes_every_byte_in_order_and_cuts_to_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vdir = VaultDir::open_root(dir.path()).expect("vault dir");
        let pool = Arc::new(BufferPool::default());
        for (len, direct) in [0usize, 1, 4095, 4097, BUFFER_BYTES, BUFFER_BYTES * 3 + 17]
            .into_iter()
            .flat_map(|l| [(l, true), (l, false)])
        {
            let path = dir.path().join(format!("p{len}-{direct}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
            let mut w = PackWriter::create(&vdir, &path, pool.clone(), direct).expect("pack writer");
            for piece in data.chunks(33_333) {
                w.write_all(piece).expect("pack writer");
            }
            w.finish(true).expect("pack writer");
            assert_eq!(std::fs::read(&path).expect("read back"), data, "length {len}, direct {direct}");
            // All at once: longer than a buffer.
            let path = dir.path().join(format!("q{len}-{direct}"));
            let mut w = PackWriter::create(&vdir, &path, pool.clone(), direct).expect("pack writer");
            w.write_all(&data).expect("pack writer");
            w.finish(true).expect("pack writer");
            assert_eq!(std::fs::read(&path).expect("read back"), data, "length {len}, direct {direct}, one write");
        }
    }

    #[test]
    fn refuses_an_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vdir = VaultDir::open_root(dir.path()).expect("vault dir");
        let path = dir.path().join("p");
        std::fs::write(&path, b"x").expect("pack writer");
        let e = PackWriter::create(&vdir, &path, Arc::new(BufferPool::default()), true).err().expect("pack writer");
        assert!(e.to_string().contains("create"), "{e}");
    }

    /// tmpfs before Linux 6.6 refuses O_DIRECT at open; /dev/shm is tmpfs.
    #[test]
    fn writes_where_direct_io_is_refused() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else { return };
        let vdir = VaultDir::open_root(dir.path()).expect("vault dir");
        let path = dir.path().join("p");
        let mut w = PackWriter::create(&vdir, &path, Arc::new(BufferPool::default()), true).expect("pack writer");
        w.write_all(&[5u8; BUFFER_BYTES + 10]).expect("pack writer");
        w.finish(true).expect("pack writer");
        assert_eq!(std::fs::read(&path).expect("read back"), vec![5u8; BUFFER_BYTES + 10]);
    }
}
