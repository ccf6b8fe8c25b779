//! LZ4 block compression with `lz4_flex` (pure Rust, its default safe
//! features), as the design card names it.
//!
//! Measured side by side with the C liblz4 the engine used before
//! (`benches/e2e/run.sh`, a 4 GiB ext4 image with 1.9 GB of real files,
//! medians of 3, warm cache, two shared cores, 2026-12-05; BENCHMARKS.md,
//! "LZ4: lz4_flex beside liblz4"):
//!
//! | | liblz4 | lz4_flex | lz4_flex, unsafe features |
//! |---|---:|---:|---:|
//! | full backup, run 1 | 3.59 s, 6.7 CPU s | 2.49 s, 4.4 CPU s | |
//! | full backup, run 2 | | 2.59 s, 4.7 CPU s | 2.26 s, 4.1 CPU s |
//! | stored after the full backup | 1,112.3 MB | 1,117.6 MB (+0.48%) | 1,117.6 MB |
//! | stored by the incremental | 43.1 MB | 43.1 MB | 43.1 MB |
//! | restore (decoding included) | 1.70 s | 1.60 s; 1.66 s | 1.51 s |
//!
//! The rule was: lz4_flex unless liblz4 wins by more than 5% on the full
//! backup's wall time or its stored bytes. liblz4 stores 0.48% less and
//! is slower, so lz4_flex it is. Its unsafe features (`safe-encode` and
//! `safe-decode` off) were 13% faster again on the full backup; they are
//! not used yet: the decoder reads bytes from the vault, and the safe one
//! is what the fuzz targets have run against.
//!
//! lz4_flex needs room for the worst case before it starts (a little more
//! than the block), and a block that does not shrink is stored raw. Both
//! libraries write and read the plain LZ4 block format, so a vault's frames
//! decode whichever wrote them (a test checks both directions).

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};

/// The size of a fresh arena for [`compress_to_bytes`] (or four blocks,
/// if larger): compressed blocks are packed into it one after another, so
/// a pack held in memory pins about its own size, not a whole block's
/// room per compressed block.
const ARENA_BYTES: usize = 1 << 20;

/// Compresses `src` and appends the result to `arena`'s spare capacity,
/// split off as its own [`Bytes`] (it shares the arena's allocation, so it
/// goes on to a pack or an upload without another copy), or returns
/// `None` when the result would not be shorter than `src` (the caller then
/// stores the bytes raw).
///
/// lz4_flex wants initialized room for the worst case before it starts.
/// That room is a per-thread scratch buffer, zeroed once; only the
/// compressed bytes are copied into the arena, whose memory is never
/// zeroed. (Compressing straight into a zeroed arena cost a `memset` of
/// every arena: 2% of a full backup's CPU time on two workers and 11.5%
/// on eight, where the allocator handed back recycled memory instead of
/// fresh pages.)
pub(crate) fn compress_to_bytes(src: &[u8], arena: &mut BytesMut) -> Option<Bytes> {
    if src.len() < 2 {
        return None;
    }
    let room = lz4_flex::block::get_maximum_output_size(src.len());
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        let n = compress_into(src, &mut scratch[..room])?;
        if arena.capacity() - arena.len() < n {
            // The old allocation lives on in the bytes split off it, and
            // is freed with the last of them.
            *arena = BytesMut::with_capacity(ARENA_BYTES.max(room * 4));
        }
        arena.extend_from_slice(&scratch[..n]);
        Some(arena.split().freeze())
    })
}

thread_local! {
    /// Each worker's hash table, reused from block to block.
    static TABLE: std::cell::RefCell<lz4_flex::block::CompressTable> = Default::default();
    /// Each worker's room for the worst case of one block.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Compresses `src` into `dst` (room for the worst case); None when the
/// result is not shorter than `src`.
fn compress_into(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    TABLE
        .with(|t| lz4_flex::block::compress_into_with_table(src, dst, &mut t.borrow_mut()))
        .ok()
        .filter(|&n| n > 0 && n < src.len())
}

/// Decodes an LZ4 block into `dst`, which must be exactly the plaintext's
/// length; `object` names what is decoded for the error.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` when the block is malformed or does
/// not decode to exactly `dst.len()` bytes.
pub(crate) fn decompress_into(src: &[u8], dst: &mut [u8], object: &str) -> Result<()> {
    let n = lz4_flex::block::decompress_into(src, dst).map_err(|e| Error::corrupt(object, format!("lz4: {e}")))?;
    if n != dst.len() {
        return Err(Error::corrupt(object, format!("lz4 gave {n} bytes, expected {}", dst.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("line {i} of a log, value {}\n", i * 7919 % 1000).as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn random(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def0u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_and_incompressible_is_refused() {
        let mut arena = BytesMut::new();
        let plain = text(65536);
        let c = compress_to_bytes(&plain, &mut arena).expect("text compresses");
        let mut out = vec![0u8; plain.len()];
        decompress_into(&c, &mut out, "t").expect("decodes");
        assert_eq!(out, plain);
        assert_eq!(compress_to_bytes(&random(65536), &mut arena), None);
        assert_eq!(compress_to_bytes(b"x", &mut arena), None);
    }

    /// Blocks compressed one after another share an arena, and each stays
    /// intact while the next ones are written beside it, also across a
    /// fresh arena.
    #[test]
    fn compressed_blocks_share_an_arena_without_overwriting_each_other() {
        let mut arena = BytesMut::new();
        let plains: Vec<Vec<u8>> = (0..64).map(|i| text(65536 + i)).collect();
        let packed: Vec<Bytes> = plains.iter().map(|p| compress_to_bytes(p, &mut arena).expect("compresses")).collect();
        let first = packed[0].as_ptr() as usize;
        assert!(
            packed[1..8].iter().all(|b| (b.as_ptr() as usize).abs_diff(first) < ARENA_BYTES),
            "neighbours were not packed into one arena"
        );
        for (p, c) in plains.iter().zip(&packed) {
            let mut out = vec![0u8; p.len()];
            decompress_into(c, &mut out, "t").expect("decodes");
            assert!(&out == p);
        }
    }

    /// Vaults written between the two switches hold liblz4 blocks, and
    /// binaries of that time read what this one writes: both directions
    /// must decode.
    #[test]
    fn liblz4_blocks_decode_and_the_other_way_round() {
        let plain = text(65536 + 123);
        let c_block = lz4::block::compress(&plain, Some(lz4::block::CompressionMode::FAST(1)), false).expect("liblz4");
        let mut out = vec![0u8; plain.len()];
        decompress_into(&c_block, &mut out, "liblz4").expect("a liblz4 block decodes");
        assert_eq!(out, plain);
        let c = compress_to_bytes(&plain, &mut BytesMut::new()).expect("compresses");
        let back = lz4::block::decompress(&c, Some(plain.len() as i32)).expect("liblz4 decodes it");
        assert_eq!(back, plain);
    }

    #[test]
    fn damage_and_wrong_length_are_errors() {
        let plain = text(65536);
        let buf = compress_to_bytes(&plain, &mut BytesMut::new()).expect("compresses");
        let n = buf.len();
        let mut out = vec![0u8; plain.len() - 1];
        assert!(decompress_into(&buf[..n], &mut out, "short").is_err());
        let mut out = vec![0u8; plain.len() + 1];
        assert!(decompress_into(&buf[..n], &mut out, "long").is_err());
        let mut out = vec![0u8; plain.len()];
        assert!(decompress_into(&buf[..n / 2], &mut out, "cut").is_err());
        assert!(decompress_into(&[0xff; 64], &mut out, "garbage").is_err());
    }
}
