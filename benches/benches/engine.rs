//! Criterion benchmarks of the vmbackup engine.
//!
//! `engine`: whole operations on a 256 MiB image with a realistic mix of
//! 64 KiB blocks (a quarter zero, text-like compressible blocks, random
//! blocks): a full backup into a fresh vault, an incremental backup after
//! about 3% of the blocks changed, a restore of the latest point to a file,
//! and a verify of the whole vault. `block`: the pieces one block goes
//! through (zero check, keyed BLAKE3, LZ4 compress and decompress with
//! lz4_flex and with the C liblz4 side by side, crc32).
//! `encryption`: full and incremental backups into a plain and into an
//! encrypted vault, side by side in one run (and a restore of each), for
//! the cost of encryption at rest.
//!
//! Throughput is in bytes of disk image. Sample sizes are small so that
//! `cargo bench -p benches` finishes in a few minutes on two cores.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_core::{
    BackupOptions, ImageFileProvider, KdfParams, KeySource, PointManifest, RestoreOptions, Vault, VaultOptions,
    VerifyOptions, Vm, backup, restore_disk_to_path, verify,
};
use benches::{Rng, fill_block, fill_random, fill_text};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const BLOCK: usize = 64 << 10;
/// The image size; the bench variable `VMB_BENCH_MIB` changes it.
const DEFAULT_MIB: usize = 256;

/// The images and the vaults the engine group works on.
struct Fixture {
    dir: tempfile::TempDir,
    bytes: u64,
    /// `base/disk.img` and `churned/disk.img`: the same disk name, so the
    /// second backs up as an incremental of the first.
    base: PathBuf,
    churned: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let mib: usize = std::env::var("VMB_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MIB);
        let size = mib << 20;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut rng = Rng(0x5eed);
        let mut data = vec![0u8; size];
        for b in data.chunks_mut(BLOCK) {
            fill_block(&mut rng, b);
        }
        let base = dir.path().join("base").join("disk.img");
        std::fs::create_dir_all(base.parent().expect("parent")).expect("mkdir");
        std::fs::write(&base, &data).expect("write base image");
        // Churn: about 3% of the blocks get new content, some of them
        // formerly zero (new files), some become zero (deleted files).
        let blocks = size / BLOCK;
        for _ in 0..blocks * 3 / 100 {
            let b = rng.below(blocks as u64) as usize;
            let block = &mut data[b * BLOCK..(b + 1) * BLOCK];
            match rng.below(10) {
                0 => block.fill(0),
                1..6 => fill_text(&mut rng, block),
                _ => fill_random(&mut rng, block),
            }
        }
        let churned = dir.path().join("churned").join("disk.img");
        std::fs::create_dir_all(churned.parent().expect("parent")).expect("mkdir");
        std::fs::write(&churned, &data).expect("write churned image");
        Fixture { dir, bytes: size as u64, base, churned }
    }

    fn vault_dir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.dir.path()).expect("vault dir")
    }

    fn backup(&self, vault: &Vault, image: &Path) -> PointManifest {
        let vm = Vm::from_images("bench", &[image]).expect("vm");
        backup(vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point
    }

    /// A vault holding a full backup of the base image.
    fn vault_with_full(&self) -> (tempfile::TempDir, Vault) {
        self.vault_with_full_as(false)
    }

    /// A new, empty vault, encrypted or not.
    fn new_vault(&self, encrypted: bool) -> (tempfile::TempDir, Vault) {
        let dir = self.vault_dir();
        let mut options = VaultOptions::default();
        if encrypted {
            options = options.with_key(KeySource::passphrase("bench"));
            // Argon2id runs once, at init, outside the timed part; cheap
            // parameters only shorten the setup.
            options.kdf = KdfParams::new(64, 1, 1);
        }
        let vault = Vault::init_with(dir.path().join("v"), options).expect("init");
        (dir, vault)
    }

    /// A vault, encrypted or not, holding a full backup of the base image.
    fn vault_with_full_as(&self, encrypted: bool) -> (tempfile::TempDir, Vault) {
        let (dir, vault) = self.new_vault(encrypted);
        self.backup(&vault, &self.base);
        (dir, vault)
    }
}

fn encryption(c: &mut Criterion) {
    let fx = Fixture::new();
    let mut g = c.benchmark_group("encryption");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(fx.bytes));
    for (kind, encrypted) in [("plain", false), ("encrypted", true)] {
        g.bench_function(format!("backup_full_{kind}"), |b| {
            b.iter_batched(
                || fx.new_vault(encrypted),
                |(dir, vault)| {
                    fx.backup(&vault, &fx.base);
                    (dir, vault)
                },
                BatchSize::PerIteration,
            );
        });
    }
    for (kind, encrypted) in [("plain", false), ("encrypted", true)] {
        g.bench_function(format!("backup_incremental_{kind}"), |b| {
            b.iter_batched(
                || fx.vault_with_full_as(encrypted),
                |(dir, vault)| {
                    fx.backup(&vault, &fx.churned);
                    (dir, vault)
                },
                BatchSize::PerIteration,
            );
        });
    }
    for (kind, encrypted) in [("plain", false), ("encrypted", true)] {
        let (_keep, vault) = fx.vault_with_full_as(encrypted);
        let point = vault.latest_point("bench").expect("points").expect("a point");
        let out = fx.dir.path().join(format!("restored-{kind}.img"));
        g.bench_function(format!("restore_{kind}"), |b| {
            b.iter(|| {
                restore_disk_to_path(&vault, &point, "disk.img", &out, &RestoreOptions::default()).expect("restore")
            });
        });
    }
    g.finish();
}

fn engine(c: &mut Criterion) {
    let fx = Fixture::new();
    let mut g = c.benchmark_group("engine");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(fx.bytes));

    g.bench_function("backup_full", |b| {
        b.iter_batched(
            || {
                let dir = fx.vault_dir();
                let vault = Vault::init(dir.path().join("v")).expect("init");
                (dir, vault)
            },
            |(dir, vault)| {
                fx.backup(&vault, &fx.base);
                (dir, vault)
            },
            BatchSize::PerIteration,
        );
    });

    g.bench_function("backup_incremental", |b| {
        b.iter_batched(
            || fx.vault_with_full(),
            |(dir, vault)| {
                fx.backup(&vault, &fx.churned);
                (dir, vault)
            },
            BatchSize::PerIteration,
        );
    });

    // One vault with a full and an incremental point serves restore and
    // verify: both only read it.
    let (_keep, vault) = fx.vault_with_full();
    let latest = fx.backup(&vault, &fx.churned);
    let out = fx.dir.path().join("restored.img");
    g.bench_function("restore_latest", |b| {
        b.iter(|| {
            restore_disk_to_path(&vault, &latest, "disk.img", &out, &RestoreOptions::default()).expect("restore")
        });
    });

    // Verify covers both points (2x the image) but reads each chunk once.
    g.bench_function("verify_vault", |b| {
        b.iter(|| {
            let r = verify(&vault, &VerifyOptions::default()).expect("verify");
            assert!(r.ok(), "{:?}", r.problems);
            r
        });
    });
    g.finish();
}

fn block(c: &mut Criterion) {
    let mut rng = Rng(7);
    let mut text = vec![0u8; BLOCK];
    fill_text(&mut rng, &mut text);
    let mut random = vec![0u8; BLOCK];
    fill_random(&mut rng, &mut random);
    let zero = vec![0u8; BLOCK];
    let key = [42u8; 32];

    let mut g = c.benchmark_group("block");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(BLOCK as u64));

    // The engine's zero check: OR of the block as u64 words.
    g.bench_function("zero_check", |b| {
        b.iter(|| {
            std::hint::black_box(&zero)
                .chunks_exact(8)
                .fold(0u64, |a, w| a | u64::from_ne_bytes(w.try_into().expect("8 bytes")))
                == 0
        });
    });
    g.bench_function("blake3_keyed", |b| {
        b.iter(|| blake3::keyed_hash(&key, std::hint::black_box(&random)));
    });
    g.bench_function("crc32", |b| {
        b.iter(|| crc32fast::hash(std::hint::black_box(&random)));
    });
    // lz4_flex (what the engine used before) and the C liblz4 (what it
    // uses now, acceleration 1) side by side on the same blocks.
    let mut table = lz4_flex::block::CompressTable::default();
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(BLOCK)];
    for (name, data) in [("text", &text), ("random", &random)] {
        g.bench_function(format!("lz4_flex_compress_{name}"), |b| {
            b.iter(|| {
                lz4_flex::block::compress_into_with_table(std::hint::black_box(data), &mut out, &mut table)
                    .expect("compress")
            });
        });
        // As the engine calls it: room for one byte less than the block,
        // so a block that will not shrink gives up early.
        g.bench_function(format!("lz4_c_compress_{name}"), |b| {
            b.iter(|| {
                lz4::block::compress_to_buffer(
                    std::hint::black_box(data),
                    Some(lz4::block::CompressionMode::FAST(1)),
                    false,
                    &mut out[..BLOCK - 1],
                )
                .ok()
            });
        });
    }
    let n = lz4_flex::block::compress_into_with_table(&text, &mut out, &mut table).expect("compress");
    let compressed = out[..n].to_vec();
    let mut plain = vec![0u8; BLOCK];
    g.bench_function("lz4_flex_decompress_text", |b| {
        b.iter(|| lz4_flex::block::decompress_into(std::hint::black_box(&compressed), &mut plain).expect("decompress"));
    });
    g.bench_function("lz4_c_decompress_text", |b| {
        b.iter(|| {
            lz4::block::decompress_to_buffer(std::hint::black_box(&compressed), Some(BLOCK as i32), &mut plain)
                .expect("decompress")
        });
    });
    g.finish();
}

criterion_group!(benches, block, engine, encryption);
criterion_main!(benches);
