//! What the engine does with one block.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::device::{BlockDevice, overlaps};
use crate::error::{Error, Result};
use crate::model::ContentId;
use crate::vault::{Codec, DiskStats, VaultSink};

/// A worker's buffers: `data` is reused for every block read, and the
/// compressed blocks are packed one after another into `arena`, from which
/// the vault takes them as [`Bytes`] without a copy.
#[derive(Default)]
pub(super) struct Buffers {
    data: Vec<u8>,
    arena: BytesMut,
}

/// Everything a block needs to know about its segment.
pub(super) struct BlockJob<'a> {
    pub sink: &'a dyn VaultSink,
    pub device: &'a dyn BlockDevice,
    pub vm: &'a str,
    pub disk: &'a str,
    pub block_size: u32,
    pub size: u64,
    pub allocated: Option<&'a [Range<u64>]>,
    pub changed: Option<&'a [Range<u64>]>,
    pub prev: Option<&'a [Option<ContentId>]>,
    pub audit_rate: f64,
    pub read_retries: u32,
    pub cancel: &'a crate::model::CancelToken,
    pub seed: u64,
}

/// The wait before the first retry of a failed read; it doubles with each
/// retry, up to `MAX_READ_BACKOFF`. Short: a flaky path (a network disk, a
/// busy NBD server) recovers in milliseconds or not at all within a job.
const READ_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);
const MAX_READ_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// What happened to one block.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcome {
    pub offset: u64,
    pub len: u64,
    pub entry: Option<ContentId>,
    read: bool,
    zero: bool,
    unchanged: bool,
    new: bool,
    dedup: bool,
    stored: u64,
    audited: bool,
    pub audit_mismatch: bool,
}

impl Outcome {
    pub(super) fn add_to(&self, s: &mut DiskStats) {
        let len = self.len;
        if self.read {
            s.bytes_read += len;
        }
        if self.zero {
            s.bytes_zero += len;
        }
        if self.unchanged {
            s.bytes_unchanged += len;
        }
        if self.new {
            s.bytes_new += len;
        }
        if self.dedup {
            s.bytes_deduplicated += len;
        }
        s.bytes_stored += self.stored;
        s.audited_blocks += u64::from(self.audited);
    }
}

/// Whether every byte is zero; vectorizes to wide compares.
pub(super) fn is_zero(buf: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only splits
        // the slice at aligned boundaries.
        unsafe { buf.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) && body.iter().fold(0u64, |a, &w| a | w) == 0
}

/// SplitMix64: a cheap, well-mixed hash of a block number for sampling.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BlockJob<'_> {
    /// Processes block `n` of the disk, which is entry `i` of its segment.
    pub(super) fn run(&self, buf: &mut Buffers, n: u64, i: usize) -> Result<Outcome> {
        let bs = u64::from(self.block_size);
        let offset = n * bs;
        let len = bs.min(self.size - offset);
        let range = offset..offset + len;
        let mut o = Outcome { offset, len, ..Outcome::default() };
        if super::is_hole(self.allocated, &range) {
            o.zero = true;
            return Ok(o);
        }
        let prev = self.prev.and_then(|p| p.get(i)).copied();
        let mut audit = false;
        if let (Some(changed), Some(prev)) = (self.changed, prev)
            && !overlaps(changed, &range)
        {
            audit = self.audit_rate > 0.0 && (mix(self.seed ^ n) as f64 / u64::MAX as f64) < self.audit_rate;
            // A clean block whose chunk the vault lost (a pack deleted or
            // dropped by repair) is read and stored again.
            let lost = prev.is_some_and(|id| !self.sink.has_chunk(&id));
            if !audit && !lost {
                o.entry = prev;
                if prev.is_some() {
                    o.unchanged = true;
                } else {
                    o.zero = true;
                }
                return Ok(o);
            }
        }
        let data = &mut buf.data;
        data.resize(len as usize, 0);
        self.read_block(offset, data)?;
        o.read = true;
        let id = if is_zero(data) { None } else { Some(self.sink.chunk_id(data)) };
        if audit {
            o.audited = true;
            if Some(id) != prev {
                o.audit_mismatch = true;
                return Ok(o);
            }
        }
        o.entry = id;
        let Some(id) = id else {
            o.zero = true;
            return Ok(o);
        };
        // Unchanged only while the vault still holds it: a lost chunk is
        // stored again, so a later point heals what an earlier one lost.
        if prev == Some(Some(id)) && self.sink.has_chunk(&id) {
            o.unchanged = true;
            return Ok(o);
        }
        o.new = true;
        if self.sink.has_chunk(&id) {
            o.dedup = true;
            return Ok(o);
        }
        let (codec, payload) = match crate::lz4::compress_to_bytes(data, &mut buf.arena) {
            Some(compressed) => (Codec::Lz4, compressed),
            // Stored as read: the buffer itself goes, and the next block
            // gets a new one.
            None => (Codec::Raw, Bytes::from(std::mem::take(data))),
        };
        let added = self.sink.put_chunk(&id, codec, len as u32, payload)?;
        if added == 0 {
            o.dedup = true;
        }
        o.stored = added;
        Ok(o)
    }
}

impl BlockJob<'_> {
    /// Reads a block, trying a failed read again `read_retries` times with
    /// a doubling backoff; the last error names the disk and offset.
    fn read_block(&self, offset: u64, data: &mut [u8]) -> Result<()> {
        let mut attempt = 0u32;
        loop {
            match self.device.read_at(offset, data) {
                Ok(()) => return Ok(()),
                Err(source) if attempt >= self.read_retries || self.cancel.is_cancelled() => {
                    return Err(Error::DeviceRead {
                        vm: self.vm.to_string(),
                        disk: self.disk.to_string(),
                        offset,
                        attempts: attempt + 1,
                        source,
                    });
                }
                Err(_) => {
                    let wait = READ_BACKOFF.saturating_mul(1 << attempt.min(16)).min(MAX_READ_BACKOFF);
                    std::thread::sleep(wait);
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_check_sees_every_byte() {
        let mut b = vec![0u8; 65536 + 3];
        assert!(is_zero(&b[1..]));
        for i in [0, 1, 7, 8, 4095, 65535, 65538] {
            b[i] = 1;
            assert!(!is_zero(&b), "byte {i}");
            b[i] = 0;
        }
    }
}
