//! A backup in flight: the staging area where new packs, chunk index files
//! and segments wait until the point is committed. On an object store a
//! pack is built in memory instead, as the list of its frames' buffers
//! (the payloads the engine compressed, shared, not copied), and uploaded
//! as soon as it closes, while the workers go on filling the next ones.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};

use super::beneath::VaultDir;
use super::pack_writer::{BufferPool, Handoff, PackWriter};
use super::store::Store;
use super::{Codec, LockMode, PackEntry, PointManifest, Vault, VaultLock, VaultSink, layout, pack};
use crate::error::{Error, Result};
use crate::model::{ContentId, random_hex};

/// The pack being filled.
struct OpenPack {
    id: String,
    out: PackBody,
    offset: u64,
    entries: Vec<PackEntry>,
}

/// Where a pack's bytes go while it is filled.
enum PackBody {
    /// A file in the staging folder, published at commit (a local vault).
    File(PackWriter),
    /// Memory, uploaded whole when the pack closes (an object store): the
    /// header, each frame's header and payload, then the trailer, as
    /// separate buffers handed to the store as they are. Frame headers
    /// are packed into `headers`, from which each is split off.
    Memory { parts: Vec<Bytes>, headers: BytesMut },
}

impl PackBody {
    fn append(&mut self, header: &[u8], payload: Bytes, handoff: &mut Handoff) -> Result<()> {
        match self {
            PackBody::File(out) => {
                out.append(header, handoff)?;
                out.append(&payload, handoff)
            }
            PackBody::Memory { parts, headers } => {
                if headers.capacity() < header.len() {
                    *headers = BytesMut::with_capacity(HEADER_ARENA);
                }
                headers.extend_from_slice(header);
                parts.push(headers.split().freeze());
                parts.push(payload);
                Ok(())
            }
        }
    }
}

/// Bytes of frame headers gathered in one allocation for a pack held in
/// memory (a thousand 52-byte headers).
const HEADER_ARENA: usize = 52 << 10;

/// A pack closed: its id, the bytes it added past its frames, and whether
/// it is already in the store.
struct Finished {
    id: String,
    added: u64,
    published: bool,
}

#[derive(Default)]
struct Staged {
    /// Segments staged in this session.
    segments: HashSet<ContentId>,
    /// Finished packs, by id, published or not.
    packs: Vec<String>,
    /// Those of them still staged, to publish at commit.
    unpublished: Vec<String>,
    /// Full packs being finished (trailer, flush, index file, upload) on
    /// threads of their own, oldest first: the workers keep hashing and
    /// compressing while the disk or the network catches up.
    finishing: std::collections::VecDeque<JoinHandle<Result<Finished>>>,
}

/// The packs being filled, one per worker thread: a worker's blocks are
/// neighbours on the disk (rayon hands each worker a run of them), so its
/// own pack keeps them together and a restore reads a run of blocks from
/// one stretch of one pack. It also spares workers from waiting for one
/// another's writes.
struct OpenPacks(Box<[Mutex<Option<OpenPack>>]>);

impl OpenPacks {
    fn new() -> OpenPacks {
        OpenPacks((0..rayon::current_num_threads().max(1)).map(|_| Mutex::new(None)).collect())
    }
    /// The calling worker's slot.
    fn mine(&self) -> std::sync::MutexGuard<'_, Option<OpenPack>> {
        let i = rayon::current_thread_index().unwrap_or(0) % self.0.len();
        self.0[i].lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Every open pack, taken out of its slot.
    fn take_all(&self) -> Vec<OpenPack> {
        self.0.iter().filter_map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).take()).collect()
    }
}

/// Full packs finished at once on a local folder, at most; one more waits
/// for the oldest, so memory and dirty pages stay bounded when the disk is
/// the bottleneck. (On an object store, as many as [`UPLOAD_BUDGET`] holds.)
///
/// [`UPLOAD_BUDGET`]: super::UPLOAD_BUDGET
const MAX_FINISHING: usize = 2;

/// Writes the trailer. A pack file is flushed and its index file staged,
/// both to be published at commit. A pack in memory goes to `store` now,
/// then its index file.
fn finish_pack(vdir: &VaultDir, dir: &std::path::Path, p: OpenPack, store: &dyn Store) -> Result<Finished> {
    let OpenPack { id, out, offset, entries } = p;
    let trailer = pack::encode_trailer(&entries, offset);
    let idx = pack::encode_idx(&trailer);
    let added = (trailer.len() + idx.len()) as u64;
    match out {
        PackBody::File(mut out) => {
            out.write_all(&trailer)?;
            out.finish(true)?;
            vdir.write_flushed(&dir.join(layout::chunk_index(&id)), &idx)?;
            Ok(Finished { id, added, published: false })
        }
        PackBody::Memory { mut parts, .. } => {
            parts.push(Bytes::from(trailer));
            // The pack, then its index file: an index file names a pack
            // that is there.
            store.put_parts(&layout::pack(&id), parts)?;
            store.put(&layout::chunk_index(&id), Bytes::from(idx))?;
            Ok(Finished { id, added, published: true })
        }
    }
}

/// A backup's staging area; implements [`VaultSink`]. Dropping it without
/// [`commit_point`](VaultSink::commit_point) removes everything it staged.
/// Packs it already uploaded to an object store stay there, with their
/// index files, like packs a killed backup leaves and the next one adopts:
/// a rerun deduplicates against them, and gc removes them if none comes.
pub struct BackupSession<'v> {
    vault: &'v Vault,
    dir: PathBuf,
    staged: Mutex<Staged>,
    open: OpenPacks,
    /// Chunks put in this session (in open or finished packs). Apart from
    /// `staged`: a worker writing its own pack holds neither.
    chunks: Mutex<HashSet<ContentId>>,
    /// Spare write buffers for the next packs.
    buffers: Arc<BufferPool>,
    bytes_added: AtomicU64,
    committed: std::sync::atomic::AtomicBool,
    /// Packs finishing at once, at most (see [`MAX_FINISHING`]).
    max_finishing: usize,
    /// On a shared vault: tells gc that the packs uploaded before the
    /// manifest are not dead (see `vault/lease.rs`). Dropped after the
    /// threads finishing packs are joined.
    _lease: Option<super::lease::HeldLease>,
    /// Held while the session lives: a staging folder whose lock is free
    /// belongs to a dead session (see `adopt`).
    _session_lock: File,
    _lock: VaultLock,
}

impl<'v> BackupSession<'v> {
    pub(super) fn new(vault: &'v Vault) -> Result<Self> {
        let lock = vault.lock(LockMode::Shared)?;
        // Before anything is uploaded, adopted packs included.
        let lease = match vault.remote() {
            Some(_) => Some(super::lease::HeldLease::take(vault.store_handle())?),
            None => None,
        };
        // Before the index is loaded, so that this backup deduplicates
        // against what a killed one had already stored.
        super::adopt::adopt_abandoned(vault, None);
        vault.refresh_index()?;
        let name = format!("backup-{}-{}", std::process::id(), random_hex(8, "a backup's staging folder")?);
        let dir = vault.path().join(layout::staging(&name));
        for sub in [layout::PACKS, layout::INDEX, layout::SEGMENTS] {
            vault.dir().mkdirs(&dir.join(sub))?;
        }
        let session_lock = super::adopt::lock_session(vault, &dir)?;
        Ok(BackupSession {
            vault,
            dir,
            staged: Mutex::new(Staged::default()),
            open: OpenPacks::new(),
            chunks: Mutex::new(HashSet::new()),
            buffers: Arc::new(BufferPool::default()),
            bytes_added: AtomicU64::new(0),
            committed: std::sync::atomic::AtomicBool::new(false),
            max_finishing: match vault.remote() {
                Some(_) => upload_concurrency(vault),
                None => MAX_FINISHING,
            },
            _lease: lease,
            _session_lock: session_lock,
            _lock: lock,
        })
    }

    /// The vault this session writes to.
    pub fn vault(&self) -> &Vault {
        self.vault
    }

    /// Where a segment is staged: flat under `segments/`, not in the
    /// vault's two-level layout.
    fn staged_segment(&self, id: &ContentId) -> PathBuf {
        self.dir.join(layout::SEGMENTS).join(id.to_hex())
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Staged> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, HashSet<ContentId>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_pack(&self) -> Result<OpenPack> {
        let id = random_hex(16, "a pack id")?;
        let header = pack::header();
        let out = if self.vault.remote().is_some() {
            PackBody::Memory { parts: vec![Bytes::copy_from_slice(&header)], headers: BytesMut::new() }
        } else {
            let path = self.dir.join(layout::pack(&id));
            let direct = !self.vault.options().buffered_io;
            let mut out = PackWriter::create(self.vault.dir(), &path, self.buffers.clone(), direct)?;
            out.write_all(&header)?;
            PackBody::File(out)
        };
        self.bytes_added.fetch_add(header.len() as u64, Ordering::Relaxed);
        Ok(OpenPack { id, out, offset: header.len() as u64, entries: Vec::new() })
    }

    /// Waits for a pack finishing on its own thread and records it.
    fn join_finishing(&self, h: JoinHandle<Result<Finished>>) -> Result<()> {
        let done = h.join().map_err(|_| Error::invalid("pack", "the thread finishing a pack panicked"))??;
        self.record(done);
        Ok(())
    }

    fn record(&self, done: Finished) {
        self.bytes_added.fetch_add(done.added, Ordering::Relaxed);
        let mut st = self.staged();
        if !done.published {
            st.unpublished.push(done.id.clone());
        }
        st.packs.push(done.id);
    }

    fn publish(&self) -> Result<()> {
        let finishing = std::mem::take(&mut self.staged().finishing);
        for h in finishing {
            self.join_finishing(h)?;
        }
        // The last packs: files published below with the segments; packs
        // in memory uploaded now, in parallel.
        let store = self.vault.store();
        let finished: Vec<Result<Finished>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .open
                .take_all()
                .into_iter()
                .map(|open| s.spawn(move || finish_pack(self.vault.dir(), &self.dir, open, store)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err(Error::invalid("pack", "the thread finishing a pack panicked")))
                })
                .collect()
        });
        for done in finished {
            self.record(done?);
        }
        let (packs, segments) = {
            let st = self.staged();
            (st.unpublished.clone(), st.segments.iter().copied().collect::<Vec<_>>())
        };
        let vault = self.vault;
        for id in &segments {
            let path = self.staged_segment(id);
            vault.dir().open(&path)?.sync_all().map_err(|e| Error::io("flush", &path, e))?;
        }
        // Packs and segments first, then the packs' index files: an index
        // file always names a pack that is there.
        let staged = |key: String| {
            let from = self.dir.join(&key);
            (key, from)
        };
        let mut first: Vec<(String, PathBuf)> = packs.iter().map(|id| staged(layout::pack(id))).collect();
        first.extend(segments.iter().map(|id| (layout::segment(id), self.staged_segment(id))));
        let concurrency = upload_concurrency(vault);
        vault.store().publish(&first, concurrency)?;
        let idx: Vec<(String, PathBuf)> = packs.iter().map(|id| staged(layout::chunk_index(id))).collect();
        vault.store().publish(&idx, concurrency.max(8))
    }
}

/// Packs uploaded at once: as many as [`UPLOAD_BUDGET`](super::UPLOAD_BUDGET)
/// holds (each is held whole in memory), 1 to 16.
fn upload_concurrency(vault: &Vault) -> usize {
    usize::try_from(super::UPLOAD_BUDGET / vault.options().pack_target_size.max(1)).unwrap_or(1).clamp(1, 16)
}

impl VaultSink for BackupSession<'_> {
    fn chunk_id(&self, data: &[u8]) -> ContentId {
        ContentId(*blake3::keyed_hash(self.vault.keys_chunk(), data).as_bytes())
    }

    fn has_chunk(&self, id: &ContentId) -> bool {
        self.vault.has_chunk(id) || self.chunks().contains(id)
    }

    fn put_chunk(&self, id: &ContentId, codec: Codec, raw_len: u32, payload: Bytes) -> Result<u64> {
        let (payload, sealed) = self.vault.seal_chunk(id, codec, raw_len, payload)?;
        let header = pack::frame_header(id, codec, sealed, raw_len, &payload);
        if self.vault.has_chunk(id) || !self.chunks().insert(*id) {
            return Ok(0);
        }
        let mut handoff = Handoff::default();
        let mut slot = self.open.mine();
        if slot.is_none() {
            *slot = Some(self.new_pack()?);
        }
        let Some(p) = slot.as_mut() else {
            return Err(Error::invalid("pack", "no open pack"));
        };
        let stored_len = payload.len() as u32;
        p.out.append(&header, payload, &mut handoff)?;
        let entry = PackEntry { id: *id, offset: p.offset, raw_len, stored_len, codec, sealed };
        p.entries.push(entry);
        p.offset += entry.frame_len();
        let full =
            p.offset >= self.vault.options().pack_target_size || p.entries.len() >= pack::MAX_PACK_ENTRIES as usize;
        let added = entry.frame_len();
        self.bytes_added.fetch_add(added, Ordering::Relaxed);
        if full && let Some(done) = slot.take() {
            drop(slot);
            // The fsync or upload of a full pack runs on a thread of its
            // own, outside this lock: under it, every worker would wait.
            let (vdir, dir, store) = (self.vault.dir().clone(), self.dir.clone(), self.vault.store_handle());
            let h = std::thread::Builder::new()
                .name("vmbackup-pack".into())
                .spawn(move || finish_pack(&vdir, &dir, done, store.as_ref()))
                .map_err(|e| Error::io("start a thread to finish a pack in", &self.dir, e))?;
            let oldest = {
                let mut st = self.staged();
                st.finishing.push_back(h);
                if st.finishing.len() > self.max_finishing { st.finishing.pop_front() } else { None }
            };
            handoff.send()?;
            if let Some(h) = oldest {
                self.join_finishing(h)?;
            }
            return Ok(added);
        }
        drop(slot);
        handoff.send()?;
        Ok(added)
    }

    fn put_segment(&self, bytes: &[u8]) -> Result<(ContentId, u64)> {
        let id = ContentId(*blake3::keyed_hash(self.vault.segment_key(), bytes).as_bytes());
        if self.staged().segments.contains(&id) || self.vault.has_segment(&id)? {
            return Ok((id, 0));
        }
        let bytes = &*self.vault.seal_segment(&id, bytes)?;
        let path = self.staged_segment(&id);
        // Another thread of this session may stage the same segment at once.
        // It is flushed in `publish`: an fsync here would stall every
        // worker between two segments of a disk.
        match self.vault.dir().write_new(&path, bytes) {
            Ok(_) => {}
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok((id, 0));
            }
            Err(e) => return Err(e),
        }
        self.staged().segments.insert(id);
        self.bytes_added.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((id, bytes.len() as u64))
    }

    fn commit_point(&self, mut m: PointManifest) -> Result<PointManifest> {
        self.publish()?;
        crate::model::validate_name("vm name", &m.vm)?;
        crate::model::validate_name("point id", &m.id)?;
        // The manifest's own length counts as added; it is known only once
        // encoded, and its digits change its length: settle in two passes.
        let base = self.bytes_added.load(Ordering::Relaxed);
        m.stats.bytes_added = base;
        let mut bytes = self.vault.encode_manifest(&m)?;
        for _ in 0..3 {
            m.stats.bytes_added = base + bytes.len() as u64;
            bytes = self.vault.encode_manifest(&m)?;
        }
        if let Some(r) = self.vault.remote() {
            let (packs, segments, chunks) = {
                let st = self.staged();
                (st.packs.clone(), st.segments.iter().copied().collect::<Vec<_>>(), self.chunks().clone())
            };
            r.check_commit(self.vault, &m, &packs, &segments, &chunks)?;
        }
        let key = layout::manifest(&m.vm, &m.id);
        // Create-only: two points can never share an id.
        if !self.vault.store().put_new(&key, bytes.into())? {
            return Err(Error::io(
                "publish manifest",
                self.vault.describe(&key),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        self.committed.store(true, Ordering::SeqCst);
        self.vault.refresh_index()?;
        Ok(m)
    }
}

impl Drop for BackupSession<'_> {
    fn drop(&mut self) {
        // Committed or not, the staging folder goes: after a commit it only
        // holds the manifest's temporary link; without one, everything
        // staged is abandoned and the vault stays as it was.
        let finishing = std::mem::take(&mut self.staged().finishing);
        drop(self.open.take_all());
        for h in finishing {
            let _ = h.join();
        }
        let _ = self.vault.dir().remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack bound for an object store keeps each payload as the buffer
    /// it was given: the frames reach `put_parts` without a copy.
    #[test]
    fn a_pack_in_memory_holds_the_payloads_it_was_given() {
        let mut body = PackBody::Memory { parts: vec![Bytes::from_static(b"header")], headers: BytesMut::new() };
        let payloads: Vec<Bytes> = (0..3000u32).map(|i| Bytes::from(vec![i as u8; 100 + i as usize % 7])).collect();
        let mut handoff = Handoff::default();
        for (i, p) in payloads.iter().enumerate() {
            let header = [i as u8; pack::FRAME_HEADER_LEN];
            body.append(&header, p.clone(), &mut handoff).expect("append");
        }
        let PackBody::Memory { parts, .. } = body else { panic!("a memory pack") };
        assert_eq!(parts.len(), 1 + 2 * payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let (header, payload) = (&parts[1 + 2 * i], &parts[2 + 2 * i]);
            assert_eq!(payload.as_ptr(), p.as_ptr(), "payload {i} was copied");
            assert_eq!(&header[..], &[i as u8; pack::FRAME_HEADER_LEN][..], "header {i}");
        }
        // Headers share a few allocations, not one each.
        let distinct: HashSet<usize> =
            parts[1..].iter().step_by(2).map(|h| h.as_ptr() as usize / HEADER_ARENA).collect();
        assert!(distinct.len() < 10, "{} header allocations for 3000 frames", distinct.len());
    }
}
