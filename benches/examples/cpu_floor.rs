//! The CPU floor of a full backup: the work every block of an image needs
//! when nothing waits for a disk, on one core.
//!
//! For each 64 KiB block of the image's data (its holes skipped, as the
//! engine skips them): the zero check, the keyed BLAKE3 of its id, and for
//! a block not seen before in this image, LZ4 compression (lz4_flex with a
//! reused table, as the engine) and the crc32 of the frame. The blocks are
//! read into memory 256 MiB at a time before each timed pass, so no I/O
//! is timed. Prints the median of `VMB_RUNS` (default 3) passes, and that
//! floor divided by the cores this machine offers: the wall time a full
//! backup would take if it did nothing but this work on every core.
//! BENCHMARKS.md states the full backup's wall time as a ratio to it.
//!
//! It also times the floor of an incremental backup in which nothing
//! changed: reading every data block (from the page cache, warmed first)
//! and hashing it, nothing else, on one core.
//!
//! ```sh
//! cargo run --release -p benches --example cpu_floor -- /var/tmp/e2e/images/v1.img
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use backup_core::{BlockDevice, RawImage};
use std::time::{Duration, Instant};

const BLOCK: usize = 64 << 10;
/// Bytes read into memory before each timed stretch.
const BATCH: usize = 256 << 20;

/// The block-aligned offsets of every block that overlaps a data extent.
fn data_blocks(extents: &[std::ops::Range<u64>], size: u64) -> Vec<u64> {
    let bs = BLOCK as u64;
    let mut blocks: Vec<u64> = Vec::new();
    for &std::ops::Range { start: s, end: e } in extents {
        let mut b = s / bs * bs;
        while b < e.min(size) {
            if blocks.last() != Some(&b) {
                blocks.push(b);
            }
            b += bs;
        }
    }
    blocks
}

/// What one pass did.
#[derive(Default)]
struct Pass {
    cpu: Duration,
    blocks: u64,
    zero: u64,
    compressed: u64,
    stored: u64,
}

/// One pass over the image's data blocks: reads a batch (not timed), then
/// does the engine's work on it (timed).
fn pass(f: &File, blocks: &[u64], size: u64, key: &[u8; 32]) -> Pass {
    let mut p = Pass::default();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut table = lz4_flex::block::CompressTable::default();
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(BLOCK)];
    let mut batch = vec![0u8; BATCH];
    for group in blocks.chunks(BATCH / BLOCK) {
        let mut lens = Vec::with_capacity(group.len());
        for (i, &b) in group.iter().enumerate() {
            let len = (BLOCK as u64).min(size - b) as usize;
            f.read_exact_at(&mut batch[i * BLOCK..i * BLOCK + len], b).expect("read the image");
            lens.push(len);
        }
        let t = Instant::now();
        for (i, &len) in lens.iter().enumerate() {
            let data = &batch[i * BLOCK..i * BLOCK + len];
            p.blocks += 1;
            if data.iter().all(|&x| x == 0) {
                p.zero += 1;
                continue;
            }
            let id = *blake3::keyed_hash(key, data).as_bytes();
            if !seen.insert(id) {
                continue;
            }
            let n = lz4_flex::block::compress_into_with_table(data, &mut out, &mut table).expect("lz4 room");
            let frame = if n > 0 && n < len { &out[..n] } else { data };
            p.compressed += 1;
            p.stored += frame.len() as u64;
            std::hint::black_box(crc32fast::hash(frame));
        }
        p.cpu += t.elapsed();
    }
    p
}

/// One pass of reading (`pread` of each data block, as the engine reads
/// an image file) and hashing every data block, all of it timed.
fn read_and_hash(f: &File, blocks: &[u64], size: u64, key: &[u8; 32]) -> Duration {
    let mut data = vec![0u8; BLOCK];
    let t = Instant::now();
    for &b in blocks {
        let len = (BLOCK as u64).min(size - b) as usize;
        f.read_exact_at(&mut data[..len], b).expect("read the image");
        std::hint::black_box(blake3::keyed_hash(key, &data[..len]));
    }
    t.elapsed()
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: cpu_floor IMAGE");
    let runs: usize = std::env::var("VMB_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let f = File::open(&path).expect("open the image");
    let size = f.metadata().expect("image metadata").len();
    // The engine's own allocation map of an image file (SEEK_DATA/SEEK_HOLE).
    let image = RawImage::open(&path).expect("open the image");
    // None: the file system keeps no map, and every block is data.
    let whole = std::ops::Range { start: 0, end: size };
    let extents = image.allocated(whole.clone()).expect("allocation map").unwrap_or_else(|| vec![whole]);
    let blocks = data_blocks(&extents, size);
    let key = *blake3::hash(b"cpu floor key").as_bytes();
    let mut passes: Vec<Pass> = (0..runs).map(|_| pass(&f, &blocks, size, &key)).collect();
    passes.sort_by_key(|p| p.cpu);
    let m = &passes[passes.len() / 2];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let secs = m.cpu.as_secs_f64();
    println!(
        "image {path}: {:.2} GiB, {} data blocks of 64 KiB ({} zero, {} compressed once, {:.1} MB stored)",
        size as f64 / f64::from(1 << 30),
        m.blocks,
        m.zero,
        m.compressed,
        m.stored as f64 / 1e6
    );
    let all: Vec<String> = passes.iter().map(|p| format!("{:.3}", p.cpu.as_secs_f64())).collect();
    println!(
        "CPU floor on one core: {secs:.3} s (median of {runs}: {}), {:.0} MB/s of image",
        all.join(", "),
        size as f64 / secs / 1e6
    );
    println!("floor / {cores} cores: {:.3} s", secs / cores as f64);
    read_and_hash(&f, &blocks, size, &key); // warms the page cache
    let mut rh: Vec<f64> = (0..runs).map(|_| read_and_hash(&f, &blocks, size, &key).as_secs_f64()).collect();
    rh.sort_by(f64::total_cmp);
    let m = rh[rh.len() / 2];
    println!(
        "read and hash alone on one core: {m:.3} s (median of {runs}); / {cores} cores: {:.3} s",
        m / cores as f64
    );
}
