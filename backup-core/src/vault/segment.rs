//! Index segments: a disk's block map, a fixed number of blocks at a time.
//!
//! A disk's index (block number -> chunk id, or zero) is cut into segments
//! of `entries_per_segment` blocks (the last may be shorter). Each segment
//! is stored once under its content id, so regions that did not change
//! between two points share their segments.
//!
//! ```text
//! segment = magic "VMBSEG\0\0" (8) | count u32 | present u32
//!         | bitmap [u8; ceil(count / 8)]      bit i (LSB first) set: block i has a chunk
//!         | ids [[u8; 32]; present]           the chunks of the set bits, in block order
//! ```
//!
//! Integers are little-endian; `present` is the number of set bits. A clear
//! bit is an all-zero block, never stored. A segment's id is the keyed
//! BLAKE3 of its bytes under the vault's segment key, checked on every read.
//! In an encrypted vault the file holds these bytes sealed (`crypto`), with
//! the id as associated data; the id is still that of the plaintext.

use crate::error::{Error, Result};
use crate::model::ContentId;

/// The magic bytes that open a segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"VMBSEG\0\0";
/// Blocks per segment: 2048 blocks are 128 MiB of disk at 64 KiB blocks,
/// and at most 64 KiB of ids.
pub const ENTRIES_PER_SEGMENT: u32 = 2048;
/// The most entries a segment may hold in any vault: readers refuse more,
/// so that one segment never costs more than a few MiB of memory.
pub const MAX_ENTRIES_PER_SEGMENT: u32 = 1 << 16;
/// The largest segment file read: a full segment, sealed.
pub(crate) const MAX_SEGMENT_FILE_LEN: u64 =
    16 + (MAX_ENTRIES_PER_SEGMENT as u64).div_ceil(8) + MAX_ENTRIES_PER_SEGMENT as u64 * 32 + 256;

/// The entries of one segment: `Some(id)` for a stored block, `None` for a
/// zero block.
pub type Entries = Vec<Option<ContentId>>;

/// Encodes entries as segment bytes.
pub fn encode(entries: &[Option<ContentId>]) -> Vec<u8> {
    let count = entries.len();
    let present = entries.iter().filter(|e| e.is_some()).count();
    let mut out = Vec::with_capacity(16 + count.div_ceil(8) + present * 32);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&(present as u32).to_le_bytes());
    let mut bitmap = vec![0u8; count.div_ceil(8)];
    for (i, e) in entries.iter().enumerate() {
        if e.is_some() {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    out.extend_from_slice(&bitmap);
    for id in entries.iter().flatten() {
        out.extend_from_slice(&id.0);
    }
    out
}

/// Decodes segment bytes.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` when the bytes are not a segment.
pub fn decode(bytes: &[u8], object: &str) -> Result<Entries> {
    let bad = |d: &str| Error::corrupt(object, d.to_string());
    if bytes.len() < 16 || bytes[..8] != SEGMENT_MAGIC {
        return Err(bad("not an index segment (wrong magic or too short)"));
    }
    let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let present = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if count > MAX_ENTRIES_PER_SEGMENT as usize {
        return Err(bad("impossible entry count"));
    }
    let bitmap_len = count.div_ceil(8);
    if bytes.len() != 16 + bitmap_len + present.saturating_mul(32) {
        return Err(bad("length does not match its counts"));
    }
    let bitmap = &bytes[16..16 + bitmap_len];
    let mut ids = bytes[16 + bitmap_len..].chunks_exact(32);
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            let chunk = ids.next().ok_or_else(|| bad("more set bits than ids"))?;
            let mut id = [0u8; 32];
            id.copy_from_slice(chunk);
            entries.push(Some(ContentId(id)));
        } else {
            entries.push(None);
        }
    }
    if ids.next().is_some() {
        return Err(bad("more ids than set bits"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_round_trip() {
        let entries: Entries = (0..19u8).map(|i| (i % 3 == 0).then_some(ContentId([i; 32]))).collect();
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes, "s").expect("decodes"), entries);
        assert!(decode(&bytes[..bytes.len() - 1], "s").is_err());
        let mut flipped = bytes.clone();
        flipped[16] ^= 0x02; // one more set bit than ids
        assert!(decode(&flipped, "s").is_err());
    }

    #[test]
    fn a_segment_of_two_to_the_24_entries_is_refused_before_it_is_allocated() {
        // 2^24 entries, none present: 16 + 2 MiB bytes that decode to a
        // 550 MB vector if the count is believed.
        let count: u32 = 1 << 24;
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.resize(16 + (count as usize).div_ceil(8), 0);
        let e = decode(&bytes, "s").expect_err("too many entries");
        assert!(e.to_string().contains("impossible entry count"), "{e}");
        // The largest segment the format allows still decodes.
        let full: Entries = vec![None; MAX_ENTRIES_PER_SEGMENT as usize];
        assert_eq!(decode(&encode(&full), "s").expect("decodes").len(), full.len());
    }
}
