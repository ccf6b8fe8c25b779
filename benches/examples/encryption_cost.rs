//! The cost of encryption at rest, measured in pairs: full and incremental
//! backups (and a restore) of the same image into a plain and into an
//! encrypted vault, alternating which goes first, `VMB_PAIRS` times
//! (default 7). Prints the median wall time and the median CPU time (user
//! and system, all threads, from `getrusage`) of each, and the ratios.
//!
//! Criterion's wall times (`cargo bench -p benches --bench engine --
//! encryption`) move by 2x on this shared two-core machine; pairs taken
//! back to back, and CPU seconds, are steadier.
//!
//! ```sh
//! cargo run --release -p benches --example encryption_cost
//! ```

use std::path::Path;
use std::time::{Duration, Instant};

use backup_core::{
    BackupOptions, ImageFileProvider, KdfParams, KeySource, RestoreOptions, Vault, VaultOptions, Vm, backup,
    restore_disk_to_path,
};
use benches::{Rng, fill_block};

const BLOCK: usize = 64 << 10;

/// CPU seconds of this process so far (user + system, every thread).
fn cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(r.ru_utime) + t(r.ru_stime)
}

fn vault(dir: &Path, encrypted: bool) -> Vault {
    let mut o = VaultOptions::default();
    if encrypted {
        o = o.with_key(KeySource::passphrase("bench"));
        o.kdf = KdfParams::new(64, 1, 1);
    }
    Vault::init_with(dir, o).expect("init")
}

fn run(vault: &Vault, image: &Path) {
    let vm = Vm::from_images("bench", &[image]).expect("vm");
    backup(vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
}

/// Wall and CPU time of `f`.
fn measure(f: impl FnOnce()) -> (Duration, Duration) {
    let (w, c) = (Instant::now(), cpu());
    f();
    (w.elapsed(), cpu() - c)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mib: usize = std::env::var("VMB_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let pairs: usize = std::env::var("VMB_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(0x5eed);
    let mut data = vec![0u8; mib << 20];
    for b in data.chunks_mut(BLOCK) {
        fill_block(&mut rng, b);
    }
    let (base, churned) = (dir.path().join("base/disk.img"), dir.path().join("churned/disk.img"));
    for p in [&base, &churned] {
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    }
    std::fs::write(&base, &data).expect("write");
    let blocks = data.len() / BLOCK;
    for _ in 0..blocks * 3 / 100 {
        let b = (rng.next() as usize) % blocks;
        fill_block(&mut rng, &mut data[b * BLOCK..(b + 1) * BLOCK]);
    }
    std::fs::write(&churned, &data).expect("write");

    // [kind][operation] -> (wall, cpu) samples; kind 0 plain, 1 encrypted.
    let mut samples: [[(Vec<Duration>, Vec<Duration>); 3]; 2] = Default::default();
    for round in 0..pairs {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for kind in order {
            let vdir = tempfile::tempdir_in(dir.path()).expect("vault dir");
            let v = vault(&vdir.path().join("v"), kind == 1);
            let full = measure(|| run(&v, &base));
            let incr = measure(|| run(&v, &churned));
            let point = v.latest_point("bench").expect("points").expect("a point");
            let out = vdir.path().join("restored.img");
            let rest = measure(|| {
                restore_disk_to_path(&v, &point, "disk.img", &out, &RestoreOptions::default()).expect("restore");
            });
            for (i, (w, c)) in [full, incr, rest].into_iter().enumerate() {
                samples[kind][i].0.push(w);
                samples[kind][i].1.push(c);
            }
        }
    }
    println!("{mib} MiB image, {pairs} pairs; medians (wall / cpu) and the fastest wall, encrypted over plain");
    for (i, name) in ["backup_full", "backup_incremental", "restore"].into_iter().enumerate() {
        let [p, e] = [0, 1]
            .map(|k| (median(samples[k][i].0.clone()).as_secs_f64(), median(samples[k][i].1.clone()).as_secs_f64()));
        let [pmin, emin] = [0, 1].map(|k| samples[k][i].0.iter().min().map_or(0.0, Duration::as_secs_f64));
        println!(
            "{name:<19} plain {:6.1} ms / {:6.1} ms cpu (best {:6.1})  encrypted {:6.1} ms / {:6.1} ms cpu (best \
             {:6.1})  ratio wall {:.3} cpu {:.3} best {:.3}",
            p.0 * 1e3,
            p.1 * 1e3,
            pmin * 1e3,
            e.0 * 1e3,
            e.1 * 1e3,
            emin * 1e3,
            e.0 / p.0,
            e.1 / p.1,
            emin / pmin
        );
    }
}
