//! Pack files: where chunks live.
//!
//! A pack is written once, front to back, and never changed. All integers
//! are little-endian.
//!
//! ```text
//! pack   = header frame* trailer footer
//! header = magic "VMBPACK\0" (8) | version u32 = 1 | reserved u32 = 0       16 bytes
//! frame  = magic u32 "VMBc" | codec u8 | reserved [u8; 3] = 0
//!        | raw_len u32 | stored_len u32 | crc32 u32 | id [u8; 32]           52 bytes
//!        | payload [u8; stored_len]
//! trailer = entry*                                                          56 bytes each
//! entry  = id [u8; 32] | offset u64 | raw_len u32 | stored_len u32
//!        | codec u8 | reserved [u8; 7] = 0
//! footer = trailer_offset u64 | count u32 | crc32 u32 (of the trailer)
//!        | magic "VMBPEND\0" (8)                                            24 bytes
//! ```
//!
//! `codec` is 0 for raw bytes and 1 for an LZ4 block; bit 7 set (0x80,
//! 0x81) says the payload is sealed (encrypted vaults, see `crypto`): then
//! `payload` is `nonce [u8; 24] | ciphertext | tag [u8; 16]` of the encoded
//! bytes, so `stored_len` is 40 more than their length, and the associated
//! data is the chunk id, the codec byte and `raw_len` (a payload moved to
//! another frame does not open). A frame's `crc32`
//! covers every byte of the frame but itself: the header bytes before it,
//! the id and the payload. `id` is the keyed BLAKE3 of the raw (plaintext)
//! bytes, re-checked on every read for restore and verify. `offset` in an
//! entry is the frame's first byte.
//!
//! The chunk index file `index/<pack>.idx` is `magic "VMBIDX\0\0" (8)`
//! followed by the pack's trailer and footer, byte for byte: a cache of the
//! trailer, rebuilt from the pack whenever it is missing or damaged. Since
//! frames describe themselves, even a pack that lost its trailer can be
//! scanned front to back to recover its intact chunks.

use crate::error::{Error, Result};
use crate::model::ContentId;

/// The magic bytes that open a pack.
pub const PACK_MAGIC: [u8; 8] = *b"VMBPACK\0";
/// The magic bytes that end a pack.
pub const PACK_END_MAGIC: [u8; 8] = *b"VMBPEND\0";
/// The magic bytes that open a chunk index file.
pub const IDX_MAGIC: [u8; 8] = *b"VMBIDX\0\0";
/// The magic of a frame: the ASCII bytes "VMBc" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"VMBc");
/// The pack format version.
pub const PACK_VERSION: u32 = 1;
/// Bytes of the pack header.
pub const PACK_HEADER_LEN: usize = 16;
/// Bytes of a frame header, before its payload.
pub const FRAME_HEADER_LEN: usize = 4 + 1 + 3 + 4 + 4 + 4 + 32;
/// Bytes of one trailer entry.
pub const ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1 + 7;
/// Bytes of the footer.
pub const FOOTER_LEN: usize = 8 + 4 + 4 + 8;
/// The largest raw chunk a frame may hold (the largest block size).
pub const MAX_CHUNK_LEN: u32 = 4 << 20;
/// The bit of the codec byte that marks a sealed payload.
pub const SEALED_FLAG: u8 = 0x80;
/// The most chunks one pack may hold: a writer closes a pack at this count
/// even below its target size, and a reader refuses a footer that claims
/// more, so a trailer never costs more than 56 MiB of memory.
pub const MAX_PACK_ENTRIES: u32 = 1 << 20;
/// The largest stored payload a frame may have: an LZ4 block of the largest
/// chunk that did not compress, plus the seal.
pub const MAX_STORED_LEN: u32 = MAX_CHUNK_LEN + MAX_CHUNK_LEN / 128 + 64;
/// The largest pack a reader takes whole into memory (adoption of a dead
/// backup's staged packs); writers close packs far below it.
pub const MAX_PACK_LEN: u64 = 1 << 30;
/// The largest chunk index file: magic, the largest trailer, the footer.
pub const MAX_IDX_LEN: u64 = 8 + MAX_PACK_ENTRIES as u64 * ENTRY_LEN as u64 + FOOTER_LEN as u64;

const _: () = assert!(FRAME_HEADER_LEN == 52);
const _: () = assert!(ENTRY_LEN == 56);
const _: () = assert!(FOOTER_LEN == 24);

/// How a chunk's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The raw bytes.
    Raw = 0,
    /// An LZ4 block (the plain LZ4 block format, no frame or size prefix).
    Lz4 = 1,
}

impl Codec {
    fn from_u8(v: u8) -> Option<Codec> {
        match v {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Lz4),
            _ => None,
        }
    }
}

/// Where a chunk is inside its pack: one trailer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The chunk's id.
    pub id: ContentId,
    /// The frame's first byte in the pack.
    pub offset: u64,
    /// Bytes of plaintext.
    pub raw_len: u32,
    /// Bytes of payload.
    pub stored_len: u32,
    /// The payload's encoding.
    pub codec: Codec,
    /// Whether the payload is sealed (encrypted and authenticated).
    pub sealed: bool,
}

impl PackEntry {
    /// The frame's length, header included.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// The codec byte as stored: the codec, with [`SEALED_FLAG`] when sealed.
    pub fn codec_byte(&self) -> u8 {
        codec_byte(self.codec, self.sealed)
    }
}

fn codec_byte(codec: Codec, sealed: bool) -> u8 {
    codec as u8 | if sealed { SEALED_FLAG } else { 0 }
}

/// The associated data of a sealed chunk payload.
pub fn chunk_aad(id: &ContentId, codec: Codec, raw_len: u32) -> [u8; 16 + 32 + 1 + 4] {
    let mut a = [0u8; 16 + 32 + 1 + 4];
    a[..16].copy_from_slice(b"vmbackup chunk\0\0");
    a[16..48].copy_from_slice(&id.0);
    a[48] = codec_byte(codec, true);
    a[49..].copy_from_slice(&raw_len.to_le_bytes());
    a
}

/// The pack header bytes.
pub fn header() -> [u8; PACK_HEADER_LEN] {
    let mut h = [0u8; PACK_HEADER_LEN];
    h[..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    h
}

/// Checks a pack header.
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn check_header(bytes: &[u8], object: &str) -> Result<()> {
    if bytes.len() < PACK_HEADER_LEN || bytes[..8] != PACK_MAGIC {
        return Err(Error::corrupt(object, "no pack header (wrong magic or too short)"));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != PACK_VERSION {
        return Err(Error::corrupt(object, format!("pack version {version}, expected {PACK_VERSION}")));
    }
    if bytes[12..16] != [0; 4] {
        return Err(Error::corrupt(object, "pack header's reserved bytes are not zero"));
    }
    Ok(())
}

/// Encodes a frame header for a payload (sealed or not); the crc covers
/// header and payload.
pub fn frame_header(
    id: &ContentId,
    codec: Codec,
    sealed: bool,
    raw_len: u32,
    payload: &[u8],
) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4] = codec_byte(codec, sealed);
    h[8..12].copy_from_slice(&raw_len.to_le_bytes());
    h[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[20..52].copy_from_slice(&id.0);
    let crc = frame_crc(&h, payload);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn frame_crc(header: &[u8; FRAME_HEADER_LEN], payload: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&header[0..16]);
    c.update(&header[20..52]);
    c.update(payload);
    c.finalize()
}

/// Parses a frame header (without checking the crc, which needs the
/// payload).
///
/// # Errors
/// [`Error::Corrupt`] naming `object` for a wrong magic, codec or length.
pub fn parse_frame_header(h: &[u8], offset: u64, object: &str) -> Result<PackEntry> {
    let bad = |d: String| Error::corrupt(format!("{object} at byte {offset}"), d);
    if h.len() < FRAME_HEADER_LEN {
        return Err(bad("frame header cut short".into()));
    }
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if magic != FRAME_MAGIC {
        return Err(bad("no chunk frame here (wrong magic)".into()));
    }
    let sealed = h[4] & SEALED_FLAG != 0;
    let codec = Codec::from_u8(h[4] & !SEALED_FLAG).ok_or_else(|| bad(format!("unknown codec {}", h[4])))?;
    let raw_len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let stored_len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    check_lengths(codec, sealed, raw_len, stored_len).map_err(bad)?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&h[20..52]);
    Ok(PackEntry { id: ContentId(id), offset, raw_len, stored_len, codec, sealed })
}

/// Refuses lengths no writer makes: they would make a reader allocate
/// gigabytes for one chunk (a trailer entry is checked as a frame header).
fn check_lengths(codec: Codec, sealed: bool, raw_len: u32, stored_len: u32) -> std::result::Result<(), String> {
    if raw_len == 0 || raw_len > MAX_CHUNK_LEN || stored_len > MAX_STORED_LEN {
        return Err(format!("impossible lengths raw {raw_len}, stored {stored_len}"));
    }
    let overhead = if sealed { crate::vault::crypto::SEAL_OVERHEAD as u32 } else { 0 };
    if codec == Codec::Raw && raw_len.checked_add(overhead) != Some(stored_len) {
        return Err(format!("raw chunk with raw length {raw_len} but stored length {stored_len}"));
    }
    if stored_len < overhead {
        return Err(format!("sealed chunk of {stored_len} bytes, shorter than nonce and tag"));
    }
    Ok(())
}

/// Checks a footer against the pack's length before its trailer is read:
/// at most [`MAX_PACK_ENTRIES`] entries, ending where the footer starts.
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn check_trailer_bounds(trailer_offset: u64, count: u32, pack_len: u64, object: &str) -> Result<()> {
    if count > MAX_PACK_ENTRIES {
        return Err(Error::corrupt(object, format!("footer claims {count} chunks, more than a pack may hold")));
    }
    let tlen = u64::from(count) * ENTRY_LEN as u64;
    if trailer_offset < PACK_HEADER_LEN as u64
        || trailer_offset.checked_add(tlen) != pack_len.checked_sub(FOOTER_LEN as u64)
    {
        return Err(Error::corrupt(object, "footer's trailer offset does not match the pack's length"));
    }
    Ok(())
}

/// Checks that every entry's frame lies between the pack header and the
/// trailer.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` and the entry.
pub fn check_entries_within(entries: &[PackEntry], trailer_offset: u64, object: &str) -> Result<()> {
    for e in entries {
        if e.offset < PACK_HEADER_LEN as u64
            || e.offset.checked_add(e.frame_len()).is_none_or(|end| end > trailer_offset)
        {
            return Err(Error::corrupt(
                object,
                format!("trailer entry of chunk {} at byte {} lies outside the pack's frames", e.id, e.offset),
            ));
        }
    }
    Ok(())
}

/// Checks a whole frame (header and payload) against `expected`, opens a
/// sealed payload with `sealer` (an encrypted vault's; `None` for a vault
/// without encryption) and decodes it into plaintext. The caller still
/// re-hashes the plaintext against the id.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` and the frame's offset;
/// [`Error::Tampered`] for a sealed payload that does not authenticate, or
/// an unsealed one in an encrypted vault.
pub(crate) fn decode_frame(
    frame: &[u8],
    expected: &PackEntry,
    object: &str,
    sealer: Option<&crate::vault::crypto::Sealer>,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; expected.raw_len as usize];
    decode_frame_into(frame, expected, object, sealer, &mut out)?;
    Ok(out)
}

/// As [`decode_frame`], into `out`, which must be exactly the chunk's raw
/// length: the restore decodes straight into its write buffer.
///
/// # Errors
/// As [`decode_frame`]; [`Error::Corrupt`] also when `out` is not the
/// chunk's length.
pub(crate) fn decode_frame_into(
    frame: &[u8],
    expected: &PackEntry,
    object: &str,
    sealer: Option<&crate::vault::crypto::Sealer>,
    out: &mut [u8],
) -> Result<()> {
    let at = format!("{object} at byte {}", expected.offset);
    let found = parse_frame_header(frame, expected.offset, object)?;
    if found != *expected {
        return Err(Error::corrupt(at, "frame header differs from the pack index entry"));
    }
    if out.len() != expected.raw_len as usize {
        return Err(Error::corrupt(at, format!("chunk holds {} bytes, expected {}", expected.raw_len, out.len())));
    }
    let (h, payload) = frame.split_at(FRAME_HEADER_LEN);
    if payload.len() != expected.stored_len as usize {
        return Err(Error::corrupt(at, "frame cut short"));
    }
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    hdr.copy_from_slice(h);
    let stored_crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if frame_crc(&hdr, payload) != stored_crc {
        return Err(Error::corrupt(at, "crc32 mismatch"));
    }
    let opened;
    let payload = match (expected.sealed, sealer) {
        (false, None) => payload,
        (true, Some(s)) => {
            let aad = chunk_aad(&expected.id, expected.codec, expected.raw_len);
            opened = crate::vault::crypto::open(s, &aad, payload).map_err(|()| {
                Error::tampered(
                    at.clone(),
                    format!("chunk {} fails authentication: changed, swapped or forged", expected.id),
                )
            })?;
            &opened[..]
        }
        (false, Some(_)) => {
            return Err(Error::tampered(at, format!("chunk {} is not sealed, in an encrypted vault", expected.id)));
        }
        (true, None) => {
            return Err(Error::corrupt(at, format!("chunk {} is sealed, in a vault without encryption", expected.id)));
        }
    };
    match expected.codec {
        // parse_frame_header checked that a raw frame's lengths agree.
        Codec::Raw => out.copy_from_slice(payload),
        Codec::Lz4 => crate::lz4::decompress_into(payload, out, &at)?,
    }
    Ok(())
}

/// Encodes trailer entries followed by the footer.
pub fn encode_trailer(entries: &[PackEntry], trailer_offset: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(entries.len() * ENTRY_LEN + FOOTER_LEN);
    for e in entries {
        t.extend_from_slice(&e.id.0);
        t.extend_from_slice(&e.offset.to_le_bytes());
        t.extend_from_slice(&e.raw_len.to_le_bytes());
        t.extend_from_slice(&e.stored_len.to_le_bytes());
        t.push(e.codec_byte());
        t.extend_from_slice(&[0u8; 7]);
    }
    let crc = crc32fast::hash(&t);
    t.extend_from_slice(&trailer_offset.to_le_bytes());
    t.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    t.extend_from_slice(&crc.to_le_bytes());
    t.extend_from_slice(&PACK_END_MAGIC);
    t
}

/// Parses a footer: (trailer offset, entry count).
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn parse_footer(footer: &[u8], object: &str) -> Result<(u64, u32, u32)> {
    if footer.len() != FOOTER_LEN || footer[16..24] != PACK_END_MAGIC {
        return Err(Error::corrupt(object, "no pack footer (truncated, or not a pack)"));
    }
    let mut o = [0u8; 8];
    o.copy_from_slice(&footer[0..8]);
    let count = u32::from_le_bytes([footer[8], footer[9], footer[10], footer[11]]);
    let crc = u32::from_le_bytes([footer[12], footer[13], footer[14], footer[15]]);
    Ok((u64::from_le_bytes(o), count, crc))
}

/// Parses trailer entries (`count` of them, with their crc from the footer).
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn parse_entries(bytes: &[u8], count: u32, crc: u32, object: &str) -> Result<Vec<PackEntry>> {
    if count > MAX_PACK_ENTRIES {
        return Err(Error::corrupt(object, format!("footer claims {count} chunks, more than a pack may hold")));
    }
    if bytes.len() != count as usize * ENTRY_LEN {
        return Err(Error::corrupt(object, "trailer length does not match its entry count"));
    }
    if crc32fast::hash(bytes) != crc {
        return Err(Error::corrupt(object, "trailer crc32 mismatch"));
    }
    bytes
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[0..32]);
            let mut o = [0u8; 8];
            o.copy_from_slice(&e[32..40]);
            let codec = Codec::from_u8(e[48] & !SEALED_FLAG)
                .ok_or_else(|| Error::corrupt(object, format!("unknown codec {}", e[48])))?;
            let entry = PackEntry {
                id: ContentId(id),
                offset: u64::from_le_bytes(o),
                raw_len: u32::from_le_bytes([e[40], e[41], e[42], e[43]]),
                stored_len: u32::from_le_bytes([e[44], e[45], e[46], e[47]]),
                codec,
                sealed: e[48] & SEALED_FLAG != 0,
            };
            check_lengths(codec, entry.sealed, entry.raw_len, entry.stored_len)
                .map_err(|d| Error::corrupt(object, format!("trailer entry of chunk {}: {d}", entry.id)))?;
            Ok(entry)
        })
        .collect()
}

/// Parses a whole trailer+footer blob (as stored after the idx magic).
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn parse_trailer(blob: &[u8], object: &str) -> Result<Vec<PackEntry>> {
    if blob.len() < FOOTER_LEN {
        return Err(Error::corrupt(object, "too short for a trailer"));
    }
    let (entries, footer) = blob.split_at(blob.len() - FOOTER_LEN);
    let (_, count, crc) = parse_footer(footer, object)?;
    parse_entries(entries, count, crc, object)
}

/// Encodes a chunk index file from a pack's trailer blob.
pub fn encode_idx(trailer_blob: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + trailer_blob.len());
    v.extend_from_slice(&IDX_MAGIC);
    v.extend_from_slice(trailer_blob);
    v
}

/// Parses a chunk index file.
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn parse_idx(bytes: &[u8], object: &str) -> Result<Vec<PackEntry>> {
    if bytes.len() < 8 || bytes[..8] != IDX_MAGIC {
        return Err(Error::corrupt(object, "not a chunk index file (wrong magic)"));
    }
    parse_trailer(&bytes[8..], object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_bit_flip_detected() {
        let id = ContentId([7; 32]);
        let payload = b"hello frame".to_vec();
        let h = frame_header(&id, Codec::Raw, false, payload.len() as u32, &payload);
        let mut frame = h.to_vec();
        frame.extend_from_slice(&payload);
        let e = parse_frame_header(&frame, 16, "p").expect("header parses");
        assert_eq!(decode_frame(&frame, &e, "p", None).expect("decodes"), payload);
        for bit in [0usize, 5 * 8, 20 * 8 + 3, frame.len() * 8 - 1] {
            let mut f = frame.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&f, &e, "p", None).is_err(), "flip at bit {bit} went unnoticed");
        }
    }

    #[test]
    fn trailer_round_trip_and_truncation() {
        let entries: Vec<PackEntry> = (0..3)
            .map(|i| PackEntry {
                id: ContentId([i; 32]),
                offset: 16 + u64::from(i) * 100,
                raw_len: 50,
                stored_len: 48,
                codec: Codec::Lz4,
                sealed: i == 1,
            })
            .collect();
        let blob = encode_trailer(&entries, 316);
        assert_eq!(parse_trailer(&blob, "p").expect("parses"), entries);
        assert!(parse_trailer(&blob[..blob.len() - 1], "p").is_err());
        assert!(parse_idx(&encode_idx(&blob), "i").is_ok());
    }

    #[test]
    fn trailer_counts_and_lengths_are_bounded_before_anything_is_allocated() {
        let e = check_trailer_bounds(16, u32::MAX, 16 + u64::from(u32::MAX) * 56 + 24, "p").expect_err("count");
        assert!(e.to_string().contains("more than a pack may hold"), "{e}");
        let mut entry = PackEntry {
            id: ContentId([1; 32]),
            offset: 16,
            raw_len: 100,
            stored_len: 0xFFFF_FFF0,
            codec: Codec::Lz4,
            sealed: false,
        };
        let blob = encode_trailer(&[entry], 16 + 52 + 100);
        let e = parse_trailer(&blob, "p").expect_err("stored length");
        assert!(e.to_string().contains("impossible lengths"), "{e}");
        entry.stored_len = 90;
        let e = check_entries_within(&[entry], 100, "p").expect_err("frame past the trailer");
        assert!(e.to_string().contains("outside"), "{e}");
    }
}
