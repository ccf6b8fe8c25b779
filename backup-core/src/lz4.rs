//! LZ4 block compression through the C liblz4 (the `lz4` crate builds it
//! from source with the C compiler the build already needs).
//!
//! Why the C library rather than `lz4_flex`: on the 8 GiB ext4 image of
//! BENCHMARKS.md it stores 0.54% fewer bytes after the full backup and
//! 0.26% fewer on the incremental (the target with a thin margin against
//! borg, which uses liblz4 too); it gives up on a block that will not
//! shrink as soon as its output would pass the block's length; and it runs
//! about 37% fewer instructions both ways. Its compression takes the same
//! time on the machine measured; its decoding took 0.056 s against 0.10 s
//! over the same sample of that image's blocks. How much it stores depends
//! on the data: on a 1 GiB image of C headers it stored 0.4% more after
//! the full backup (and still less on the incremental).
//!
//! Both write and read the plain LZ4 block format, so a vault's frames
//! decode whichever of the two wrote them.

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};

/// The size of a fresh arena for [`compress_to_bytes`] (or four blocks'
/// room, if larger): compressed blocks are packed into it one after
/// another, so a pack held in memory pins about its own size, not a whole
/// block's room per compressed block.
const ARENA_BYTES: usize = 1 << 20;

/// Compresses `src` into the free room of `arena` and splits the result
/// off it, or returns `None` when the result would not be shorter than
/// `src` (the caller then stores the bytes raw). The result is shares the arena's allocation, so it goes on to a pack or an
/// upload without being copied.
pub(crate) fn compress_to_bytes(src: &[u8], arena: &mut BytesMut) -> Option<Bytes> {
    if src.len() < 2 {
        return None;
    }
    // A destination one byte shorter than the input: liblz4 stops as soon
    // as its output would not fit, so a block that does not shrink costs
    // only the part of the work done before it knew.
    let room = src.len() - 1;
    // The arena's length is its free room, zeroed once when it is made
    // (calloc'd), so no block pays for clearing its destination.
    if arena.len() < room {
        // The old allocation lives on in the bytes split off it, and is
        // freed with the last of them.
        *arena = BytesMut::zeroed(ARENA_BYTES.max(room * 4));
    }
    let n = compress_into(src, &mut arena[..room])?;
    Some(arena.split_to(n).freeze())
}

/// Compresses `src` into `dst`, which holds `src.len() - 1` bytes.
fn compress_into(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    // Acceleration 1, liblz4's default: a faster setting loses 2% or more
    // of stored bytes on that image, more than the margin the incremental
    // target has against borg (which uses acceleration 1 too).
    lz4::block::compress_to_buffer(src, Some(lz4::block::CompressionMode::FAST(1)), false, dst)
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
    let want = i32::try_from(dst.len())
        .map_err(|_| Error::corrupt(object, format!("lz4: {} bytes is too long a block", dst.len())))?;
    let n = lz4::block::decompress_to_buffer(src, Some(want), dst)
        .map_err(|e| Error::corrupt(object, format!("lz4: {e}")))?;
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

    /// Vaults written before the switch hold lz4_flex blocks, and older
    /// binaries read what this one writes: both directions must decode.
    #[test]
    fn lz4_flex_blocks_decode_and_the_other_way_round() {
        let plain = text(65536 + 123);
        let flex = lz4_flex::block::compress(&plain);
        let mut out = vec![0u8; plain.len()];
        decompress_into(&flex, &mut out, "flex").expect("a lz4_flex block decodes");
        assert_eq!(out, plain);
        let c = compress_to_bytes(&plain, &mut BytesMut::new()).expect("compresses");
        assert_eq!(lz4_flex::block::decompress(&c, plain.len()).expect("lz4_flex decodes it"), plain);
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
