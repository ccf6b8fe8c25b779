//! Reading the chunks of a run of neighbouring blocks, as a restore does.
//!
//! A backup's worker writes the blocks it handles, which are neighbours on
//! the disk, into a pack of its own, so the frames a run of blocks needs
//! mostly lie one after another in one pack. They are read as stretches
//! ("spans") of up to [`MAX_SPAN`] bytes, one request each, instead of one
//! request per chunk: one `pread` in a local vault, one ranged GET in a
//! remote one (where a request's latency is what a restore waits for).
//!
//! With [`VaultOptions::direct_io`](super::VaultOptions::direct_io) a local
//! span is read with `O_DIRECT`, straight from the disk into the worker's
//! buffer. Without it, or where `O_DIRECT` is refused, the page cache
//! serves. Every chunk is still checked on its own (crc32, then its keyed
//! BLAKE3 against its id) and every error names its chunk, pack and byte.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{PackEntry, Vault, layout, pack};
use crate::error::{Error, Result};
use crate::model::ContentId;

/// The longest span read at once.
const MAX_SPAN: u64 = 4 << 20;

/// Bytes between two needed frames that a span reads through rather than
/// ending (another worker's frames, or chunks this run does not need).
const MAX_GAP: u64 = 64 << 10;

/// `O_DIRECT`'s alignment of offsets, lengths and addresses.
const ALIGN: u64 = 4096;

/// Where one chunk of a run is.
#[derive(Clone)]
pub(crate) struct Location {
    pack_no: u32,
    pack: Arc<str>,
    entry: PackEntry,
}

/// Where each chunk of a run is (`None` for a zero block), found once for
/// the whole run; a chunk no pack holds is an error of its own.
pub(crate) type RunPlan = Vec<Option<std::result::Result<Location, ContentId>>>;

/// A worker's buffer and the span of a pack it holds.
#[derive(Default)]
pub(crate) struct SpanBuffer {
    raw: Vec<u8>,
    /// Where the span's bytes start in `raw` (aligned for `O_DIRECT`).
    at: usize,
    len: usize,
    /// The pack and byte the span starts at.
    pack_no: Option<u32>,
    offset: u64,
}

impl SpanBuffer {
    /// The frame of `loc` when the span holds all of it.
    fn frame(&self, loc: &Location) -> Option<&[u8]> {
        if self.pack_no != Some(loc.pack_no) || loc.entry.offset < self.offset {
            return None;
        }
        let start = usize::try_from(loc.entry.offset - self.offset).ok()?;
        let end = start.checked_add(usize::try_from(loc.entry.frame_len()).ok()?)?;
        (end <= self.len).then(|| &self.raw[self.at + start..self.at + end])
    }

    /// Room for `len` bytes at an aligned address; returns it.
    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < len + ALIGN as usize {
            // Whole powers of two, so that a restore's growing spans take
            // a few allocations rather than one per larger span.
            self.raw = vec![0u8; len.next_power_of_two() + ALIGN as usize];
        }
        self.at = self.raw.as_ptr().align_offset(ALIGN as usize).min(ALIGN as usize);
        self.len = 0;
        self.pack_no = None;
        &mut self.raw[self.at..self.at + len]
    }
}

/// Where the span that starts at chunk `k`'s frame ends: it takes in the
/// run's later frames of the same pack, in their order in the pack, while
/// each starts within [`MAX_GAP`] of the span's end and the span stays
/// within [`MAX_SPAN`].
fn span_end(plan: &RunPlan, k: usize, loc: &Location) -> u64 {
    let start = loc.entry.offset;
    let mut end = start + loc.entry.frame_len();
    let mut next: Vec<&PackEntry> = plan[k + 1..]
        .iter()
        .filter_map(|l| match l {
            Some(Ok(l)) if l.pack_no == loc.pack_no && l.entry.offset >= start => Some(&l.entry),
            _ => None,
        })
        .collect();
    next.sort_by_key(|e| e.offset);
    for e in next {
        let e_end = e.offset + e.frame_len();
        if e.offset > end + MAX_GAP || e_end - start > MAX_SPAN {
            break;
        }
        end = end.max(e_end);
    }
    end
}

/// Reads at `offset` until `buf` is full or the file ends; the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Vault {
    /// Finds every chunk of a run (reloading the index once when one is
    /// missing, as another process may have added packs).
    pub(crate) fn plan_run(&self, ids: &[Option<ContentId>]) -> Result<RunPlan> {
        let find = |v: &Vault| -> RunPlan {
            let idx = v.index.read().unwrap_or_else(|p| p.into_inner());
            ids.iter()
                .map(|id| {
                    id.map(|id| {
                        idx.map
                            .get(&id)
                            .map(|(n, e)| Location { pack_no: *n, pack: idx.packs[*n as usize].clone(), entry: *e })
                            .ok_or(id)
                    })
                })
                .collect()
        };
        let plan = find(self);
        if plan.iter().any(|l| matches!(l, Some(Err(_)))) {
            self.refresh_index()?;
            return Ok(find(self));
        }
        Ok(plan)
    }

    /// Decodes chunk `k` of a planned run into `out` (exactly its length),
    /// reading the span that holds it, and the run's next frames, when
    /// `span` does not hold it already.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the chunk, or its pack and byte: missing,
    /// truncated, failing its crc or hash, another length than `out`;
    /// [`Error::Tampered`] from an encrypted vault; I/O errors.
    pub(crate) fn run_chunk_into(&self, plan: &RunPlan, k: usize, span: &mut SpanBuffer, out: &mut [u8]) -> Result<()> {
        let loc = match plan.get(k) {
            Some(Some(Ok(loc))) => loc,
            Some(Some(Err(id))) => return Err(Error::corrupt(format!("chunk {id}"), "missing: no pack holds it")),
            _ => return Err(Error::invalid("restore", format!("block {k} of the run has no chunk"))),
        };
        if loc.entry.raw_len as usize != out.len() {
            return Err(Error::corrupt(
                format!("chunk {}", loc.entry.id),
                format!("holds {} bytes, expected {}", loc.entry.raw_len, out.len()),
            ));
        }
        if span.frame(loc).is_none() {
            self.fill_span(plan, k, loc, span)?;
        }
        let object = self.pack_object(&loc.pack);
        let Some(frame) = span.frame(loc) else {
            return Err(Error::corrupt(
                format!("{object} at byte {}", loc.entry.offset),
                "pack ends inside this chunk (truncated)",
            ));
        };
        self.open_frame(frame, &object, &loc.entry, out)
    }

    /// Reads and checks every chunk of `ids`, as verify does: in the order
    /// of their packs, in groups read as spans, `threads` groups at a time
    /// on the caller's rayon pool. Returns each id with its error, if any.
    pub(crate) fn check_chunks(&self, ids: &[ContentId]) -> Result<Vec<(ContentId, Option<Error>)>> {
        use rayon::prelude::*;
        /// Chunks read by one worker with one span buffer.
        const GROUP: usize = 32;
        let mut plan: Vec<(ContentId, Option<std::result::Result<Location, ContentId>>)> = ids
            .iter()
            .zip(self.plan_run(&ids.iter().map(|id| Some(*id)).collect::<Vec<_>>())?)
            .map(|(id, l)| (*id, l))
            .collect();
        plan.sort_by_key(|(_, l)| match l {
            Some(Ok(l)) => (1, l.pack_no, l.entry.offset),
            _ => (0, 0, 0),
        });
        let checked = plan
            .par_chunks(GROUP)
            .map(|group| {
                let (ids, run): (Vec<ContentId>, RunPlan) = group.iter().cloned().unzip();
                let mut span = SpanBuffer::default();
                let mut out = Vec::new();
                ids.into_iter()
                    .enumerate()
                    .map(|(k, id)| {
                        let len = match &run[k] {
                            Some(Ok(l)) => l.entry.raw_len as usize,
                            _ => 0,
                        };
                        out.resize(len, 0);
                        (id, self.run_chunk_into(&run, k, &mut span, &mut out).err())
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        Ok(checked.into_iter().flatten().collect())
    }

    /// Decodes a frame read from a pack and re-hashes the plaintext
    /// against the chunk's id.
    pub(super) fn open_frame(&self, frame: &[u8], object: &str, entry: &PackEntry, out: &mut [u8]) -> Result<()> {
        pack::decode_frame_into(frame, entry, object, self.keys.sealer.as_ref(), out)?;
        if ContentId(*blake3::keyed_hash(&self.keys.chunk, out).as_bytes()) != entry.id {
            return Err(Error::corrupt(
                format!("{object} at byte {}", entry.offset),
                format!("chunk {} does not hash to its id", entry.id),
            ));
        }
        Ok(())
    }

    /// Reads the span that starts at chunk `k`'s frame and takes in the
    /// run's later frames of the same pack while they follow closely.
    fn fill_span(&self, plan: &RunPlan, k: usize, loc: &Location, span: &mut SpanBuffer) -> Result<()> {
        let start = loc.entry.offset;
        let end = span_end(plan, k, loc);
        let Some(opened) = self.pack_file_for_span(loc.pack_no, &loc.pack) else {
            // A remote vault: one ranged GET.
            let bytes = self.read_pack_range(&loc.pack, start..end)?;
            span.room(bytes.len()).copy_from_slice(&bytes);
            span.len = bytes.len();
            span.pack_no = Some(loc.pack_no);
            span.offset = start;
            return Ok(());
        };
        let (file, direct) = opened?;
        let path = self.describe(&layout::pack(&loc.pack));
        let (from, to) = if direct { (start / ALIGN * ALIGN, end.div_ceil(ALIGN) * ALIGN) } else { (start, end) };
        let buf = span.room((to - from) as usize);
        let n = match read_full(&file, buf, from) {
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The file system took O_DIRECT at open but not this read:
                // read this pack through the page cache from now on.
                self.direct_packs.lock().unwrap_or_else(|p| p.into_inner()).insert(loc.pack_no, None);
                return self.fill_span(plan, k, loc, span);
            }
            r => r.map_err(|e| Error::io("read", &path, e))?,
        };
        span.len = n;
        span.pack_no = Some(loc.pack_no);
        span.offset = from;
        Ok(())
    }

    /// A pack opened with `O_DIRECT` (true), or through the page cache
    /// where the file system refuses it (false).
    /// None for a store that is not a folder (a remote vault).
    fn pack_file_for_span(&self, n: u32, pack: &str) -> Option<Result<(Arc<File>, bool)>> {
        let cached = |n, pack| self.pack_file(n, pack).map(|r| r.map(|f| (f, false)));
        if !self.options.direct_io {
            return cached(n, pack);
        }
        let known = self.direct_packs.lock().unwrap_or_else(|p| p.into_inner()).get(&n).cloned();
        match known {
            Some(Some(f)) => return Some(Ok((f, true))),
            Some(None) => return cached(n, pack),
            None => {}
        }
        let direct = match self.store.open_file(&layout::pack(pack), libc::O_DIRECT)? {
            Ok(f) => Some(Arc::new(f)),
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => None,
            Err(e) => return Some(Err(e)),
        };
        self.direct_packs.lock().unwrap_or_else(|p| p.into_inner()).insert(n, direct.clone());
        match direct {
            Some(f) => Some(Ok((f, true))),
            None => cached(n, pack),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Codec;

    fn at(pack_no: u32, offset: u64, stored_len: u32) -> Option<std::result::Result<Location, ContentId>> {
        let entry = PackEntry {
            id: ContentId([pack_no as u8; 32]),
            offset,
            raw_len: 65536,
            stored_len,
            codec: Codec::Lz4,
            sealed: false,
        };
        Some(Ok(Location { pack_no, pack: Arc::from("p"), entry }))
    }

    fn end_of(plan: &RunPlan, k: usize) -> u64 {
        let Some(Some(Ok(loc))) = plan.get(k) else { panic!("no location at {k}") };
        span_end(plan, k, loc)
    }

    #[test]
    fn a_span_takes_in_the_runs_neighbouring_frames_and_stops_at_a_gap() {
        let f = |len: u32| u64::from(len) + crate::vault::pack::FRAME_HEADER_LEN as u64;
        // Frames 0..3 back to back, a zero block, then one far away.
        let plan: RunPlan = vec![
            at(1, 100, 1000),
            at(1, 100 + f(1000), 2000),
            None,
            at(1, 100 + f(1000) + f(2000), 3000),
            at(1, 10 << 20, 500),
        ];
        assert_eq!(end_of(&plan, 0), 100 + f(1000) + f(2000) + f(3000));
        assert_eq!(end_of(&plan, 4), (10 << 20) + f(500));
    }

    #[test]
    fn a_span_skips_other_packs_earlier_frames_and_stays_bounded() {
        let f = |len: u32| u64::from(len) + crate::vault::pack::FRAME_HEADER_LEN as u64;
        // Another pack's frame between two of this pack's; a frame earlier
        // in the pack (read by a span of its own).
        let plan: RunPlan = vec![at(1, 5000, 100), at(2, 5000 + f(100), 100), at(1, 5000 + f(100), 100), at(1, 0, 100)];
        assert_eq!(end_of(&plan, 0), 5000 + 2 * f(100));
        // Within a gap of MAX_GAP the span reads through; never past MAX_SPAN.
        let far = 5000 + f(100) + MAX_GAP;
        let plan: RunPlan = vec![at(1, 5000, 100), at(1, far, 100), at(1, 5000 + MAX_SPAN, 100)];
        assert_eq!(end_of(&plan, 0), far + f(100));
    }
}
