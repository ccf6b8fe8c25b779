//! `vmbackup backup` killed with SIGKILL at random moments, nearly all of
//! them inside the transfer: the harness watches the backup's job log for
//! the start of its transfer and kills it at a random moment of the
//! transfer's measured length (one trial in twenty at a random moment of
//! the whole run instead, startup included). It counts the kills that
//! landed in the transfer, by the job log's last phase, and requires at
//! least 80% of them to. After every kill: verify passes, every earlier point restores bit for bit (verify
//! re-hashes every chunk each time; the newest point and a random earlier
//! one are restored each trial, every point at the end), and the next
//! backup succeeds.
//!
//! The short form runs 50 trials; the long form (ignored; `KILL_TRIALS`,
//! default 500) is run by `benches/reliability/kill.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::{Phase, RestoreOptions, Vault, VerifyOptions, read_job, restore_disk_to_path, verify};
use testkit::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");
const SIZE: usize = 32 << 20;
const BLOCK: usize = 64 << 10;

fn backup_cmd(vault: &Path, image: &Path) -> Command {
    let mut c = Command::new(BIN);
    // Small packs, so that a killed backup leaves finished packs to adopt.
    c.args([
        "backup",
        "--vault",
        path(vault),
        "--vm",
        "kv",
        "--disk",
        path(image),
        "--json",
        "--pack-target-size",
        "256K",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Changes a few random blocks of the image (some to zeros).
fn churn(image: &Path, data: &mut [u8], rng: &mut Rng) {
    let f = fs::OpenOptions::new().write(true).open(image).expect("open image");
    for _ in 0..1 + rng.below(40) {
        let b = rng.below((SIZE / BLOCK) as u64) as usize;
        let block = &mut data[b * BLOCK..(b + 1) * BLOCK];
        if rng.below(5) == 0 {
            block.fill(0);
        } else {
            for w in block.chunks_mut(8) {
                w.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
        f.write_all_at(block, (b * BLOCK) as u64).expect("write image");
    }
}

fn restore_equals(vault: &Vault, id: &str, want: &[u8], out: &Path) {
    let point = vault.read_point("kv", id).expect("point");
    restore_disk_to_path(vault, &point, "disk.img", out, &RestoreOptions::default()).expect("restore");
    assert!(fs::read(out).expect("read") == want, "point {id} does not restore bit for bit");
    fs::remove_file(out).expect("clean");
}

/// The ids of the finished packs (those with an index file) in staging
/// folders of backups.
fn finished_staged_packs(vault: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(vault.join("tmp")).expect("tmp").flatten() {
        if let Ok(idx) = fs::read_dir(e.path().join("index")) {
            out.extend(idx.flatten().filter_map(|f| f.file_name().to_str()?.strip_suffix(".idx").map(str::to_string)));
        }
    }
    out
}

/// The job logs of the backups of vm `kv` in the vault.
fn job_logs(vault: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(vault.join("jobs").join("kv")).into_iter().flatten().flatten().map(|e| e.path()).collect()
}

/// Whether a job log says its job is inside its transfer: the transfer
/// is the last phase it started, and the job has not ended.
fn in_transfer(log: &Path) -> bool {
    read_job(log).is_ok_and(|j| j.ended.is_none() && j.phases.last().is_some_and(|p| p.phase == Phase::Transfer))
}

/// The job log that a backup started after `before` was listed writes.
fn new_job_log(vault: &Path, before: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    job_logs(vault).into_iter().find(|p| !before.contains(p))
}

/// How long the transfer of the backup that wrote the first job log not in
/// `before` took.
fn transfer_length(vault: &Path, before: &BTreeSet<PathBuf>) -> Option<Duration> {
    let job = read_job(&new_job_log(vault, before)?).ok()?;
    let seconds = job.phases.iter().find(|p| p.phase == Phase::Transfer).and_then(|p| p.seconds)?;
    Some(Duration::from_secs_f64(seconds))
}

fn trials(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault_path = dir.path().join("vault");
    let image = dir.path().join("disk.img");
    let out = dir.path().join("restored.img");
    let mut rng = Rng(0x9e37_79b9 ^ n);
    let mut data: Vec<u8> = (0..SIZE / 8).flat_map(|_| rng.next().to_le_bytes()).collect();
    fs::write(&image, &data).expect("image");
    assert!(Command::new(BIN).args(["init", path(&vault_path)]).status().expect("init").success());
    // Learn how long a backup takes, so that kills land all over it.
    let started = Instant::now();
    assert!(backup_cmd(&vault_path, &image).status().expect("run").success());
    let full = started.elapsed().max(Duration::from_millis(5));
    let vault = Vault::open(&vault_path).expect("open");
    let mut expected: BTreeMap<String, Vec<u8>> =
        vault.point_ids("kv").expect("ids").into_iter().map(|id| (id, data.clone())).collect();
    // Learn how long an incremental's transfer takes, the phase the kills
    // aim at: the shortest of three (one run slowed by a busy host would
    // make the kills overshoot), and shorter still if a later backup is.
    let mut transfer = Duration::MAX;
    for _ in 0..3 {
        churn(&image, &mut data, &mut rng);
        let before = job_logs(&vault_path);
        assert!(backup_cmd(&vault_path, &image).status().expect("run").success());
        for id in vault.point_ids("kv").expect("ids") {
            expected.entry(id).or_insert_with(|| data.clone());
        }
        transfer = transfer.min(transfer_length(&vault_path, &before).expect("the transfer's length"));
    }
    let (mut killed, mut finished, mut kills_in_transfer) = (0u64, 0u64, 0u64);
    // Packs that killed backups had finished: the next backup adopts them.
    let mut staged = std::collections::BTreeSet::new();
    for trial in 0..n {
        churn(&image, &mut data, &mut rng);
        let before = job_logs(&vault_path);
        let mut child = backup_cmd(&vault_path, &image).spawn().expect("spawn");
        let spawned = Instant::now();
        if rng.below(20) == 0 {
            std::thread::sleep(full.mul_f64(rng.below(1000) as f64 / 1000.0));
        } else {
            // Wait for the transfer to start (or the backup to end), then
            // kill within the first 60% of its usual length.
            while !new_job_log(&vault_path, &before).is_some_and(|l| in_transfer(&l))
                && child.try_wait().expect("wait").is_none()
                && spawned.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_micros(500));
            }
            std::thread::sleep(transfer.mul_f64(rng.below(600) as f64 / 1000.0));
        }
        let delay = spawned.elapsed();
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        if new_job_log(&vault_path, &before).is_some_and(|l| in_transfer(&l)) {
            kills_in_transfer += 1;
        }
        let ids = vault.point_ids("kv").expect("ids");
        let new: Vec<&String> = ids.iter().filter(|id| !expected.contains_key(*id)).collect();
        assert!(new.len() <= 1, "trial {trial}: {} new points", new.len());
        if let Some(id) = new.first() {
            expected.insert((*id).clone(), data.clone());
            finished += 1;
        } else {
            killed += 1;
            assert!(!status.success(), "trial {trial}: a backup that succeeded left no point");
        }
        assert_eq!(ids.len(), expected.len(), "trial {trial}: a point disappeared");
        staged.extend(finished_staged_packs(&vault_path));
        let report = verify(&vault, &VerifyOptions::default()).expect("verify");
        assert!(report.ok(), "trial {trial} (killed after {delay:?}): {:?}", report.problems);
        let newest = expected.keys().next_back().expect("a point").clone();
        restore_equals(&vault, &newest, &expected[&newest], &out);
        let other = expected.keys().nth(rng.below(expected.len() as u64) as usize).expect("a point").clone();
        restore_equals(&vault, &other, &expected[&other], &out);
        // The next backup succeeds (every third trial; the others are the
        // next trial's killed backup, which must not be harmed either).
        if trial % 3 == 2 {
            let before = job_logs(&vault_path);
            assert!(backup_cmd(&vault_path, &image).status().expect("run").success(), "trial {trial}: next backup");
            if let Some(t) = transfer_length(&vault_path, &before) {
                transfer = transfer.min(t);
            }
            let ids = vault.point_ids("kv").expect("ids");
            let new: Vec<String> = ids.into_iter().filter(|id| !expected.contains_key(id)).collect();
            for id in new {
                expected.insert(id, data.clone());
            }
        }
    }
    // A last backup adopts what the last killed one staged.
    assert!(backup_cmd(&vault_path, &image).status().expect("run").success(), "last backup");
    let new: Vec<String> =
        vault.point_ids("kv").expect("ids").into_iter().filter(|id| !expected.contains_key(id)).collect();
    for id in new {
        expected.insert(id, data.clone());
    }
    let published: std::collections::BTreeSet<String> = fs::read_dir(vault_path.join("packs"))
        .expect("packs")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".pack").map(str::to_string))
        .collect();
    let adopted = staged.iter().filter(|p| published.contains(*p)).count();
    assert_eq!(adopted, staged.len(), "finished packs of killed backups were not adopted");
    for (id, want) in &expected {
        restore_equals(&vault, id, want, &out);
    }
    // What the killed backups staged is reclaimed by gc once past its grace.
    let gc = Command::new(BIN).args(["gc", "--vault", path(&vault_path), "--grace", "0"]).output().expect("gc");
    assert!(gc.status.success(), "gc: {}", String::from_utf8_lossy(&gc.stderr));
    let left = fs::read_dir(vault_path.join("tmp")).expect("tmp").count();
    assert_eq!(left, 0, "gc left staging folders of killed backups");
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
    for (id, want) in &expected {
        restore_equals(&vault, id, want, &out);
    }
    eprintln!(
        "kill: {n} trials, {killed} backups killed mid-flight ({kills_in_transfer} in their transfer), {finished} finished \
         before the kill, {} points restored bit for bit, {adopted} finished packs of killed backups adopted by the \
         next backup, data lost: 0",
        expected.len()
    );
    assert!(
        kills_in_transfer * 10 >= n * 8,
        "only {kills_in_transfer} of {n} kills landed in the transfer: the harness no longer aims where the data moves"
    );
}

#[test]
fn a_backup_killed_at_random_moments_leaves_the_vault_whole() {
    trials(50);
}

#[test]
#[ignore = "long form: benches/reliability/kill.sh"]
fn a_backup_killed_at_random_moments_leaves_the_vault_whole_long() {
    trials(std::env::var("KILL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(500));
}
