//! The command line under faults: a damaged vault restored with and without
//! `--allow-damaged`, `repair`, names that could escape the vault, and
//! several processes on one vault at once (backups of different VMs, a
//! backup beside verify, prune and gc; "vault is locked" after
//! `--lock-timeout`), and a backup killed as it fills the vault's disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_core::{LockMode, Vault};
use testkit::{Rng, s, text};

mod common;
use common::{BIN, ok, run};

fn packs(vault: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(vault.join("packs")).expect("packs").map(|e| e.expect("e").path()).collect();
    v.sort();
    v
}

#[test]
fn allow_damaged_writes_zeros_and_lists_ranges_and_repair_rebuilds_index_files_and_says_what_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    let img = d.join("disk.img");
    let data = Rng(3).bytes(2 << 20);
    fs::write(&img, &data).expect("image");
    ok(&["init", s(&vault)]);
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)]);
    // Flip a byte in the middle of the only pack: one chunk is damaged.
    let pack = packs(&vault).remove(0);
    let mut bytes = fs::read(&pack).expect("pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&pack, &bytes).expect("write");

    let out = d.join("restored.img");
    let failed = run(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "disk.img", "--to", s(&out)]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let msg = text(&failed);
    assert!(msg.contains("cannot be restored") && msg.contains("disk.img") && msg.contains("bytes"), "{msg}");
    assert!(!out.exists(), "a failed restore left its file");

    let allowed = run(&[
        "restore",
        "--vault",
        s(&vault),
        "--vm",
        "web",
        "--disk",
        "disk.img",
        "--to",
        s(&out),
        "--allow-damaged",
        "--json",
    ]);
    assert_eq!(allowed.status.code(), Some(1), "damage is exit code 1: {}", text(&allowed));
    let j: serde_json::Value = serde_json::from_slice(&allowed.stdout).expect("json");
    let damaged = j["disks"][0]["damaged"].as_array().expect("damaged list").clone();
    assert_eq!(damaged.len(), 1, "{j}");
    let (start, end) = (
        damaged[0]["range"]["start"].as_u64().expect("start") as usize,
        damaged[0]["range"]["end"].as_u64().expect("end") as usize,
    );
    assert_eq!(end - start, 64 << 10, "one block");
    let mut want = data.clone();
    want[start..end].fill(0);
    assert!(fs::read(&out).expect("read") == want, "outside the damaged range the disk must be intact");

    // The index file is gone and a pack lost its trailer: repair rebuilds
    // both index files and names the damaged range as lost.
    ok(&["backup", "--vault", s(&vault), "--vm", "db", "--disk", s(&img)]);
    fs::write(&img, Rng(4).bytes(2 << 20)).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "db", "--disk", s(&img)]);
    let all = packs(&vault);
    assert!(all.len() >= 2, "{all:?}");
    let other = all.iter().find(|p| **p != pack).expect("a second pack").clone();
    let id = other.file_stem().and_then(|n| n.to_str()).expect("id").to_string();
    let b = fs::read(&other).expect("read");
    fs::write(&other, &b[..b.len() - 10]).expect("truncate trailer");
    fs::remove_file(vault.join("index").join(format!("{id}.idx"))).expect("rm idx");
    let dry = run(&["repair", "--vault", s(&vault), "--dry-run"]);
    assert!(text(&dry).contains("would rebuild chunk index of pack"), "{}", text(&dry));
    let rep = run(&["repair", "--vault", s(&vault), "--json"]);
    assert_eq!(rep.status.code(), Some(1), "data was lost: {}", text(&rep));
    let j: serde_json::Value = serde_json::from_slice(&rep.stdout).expect("json");
    let rebuilt = j["report"]["rebuilt"].as_array().expect("rebuilt");
    assert!(rebuilt.iter().any(|r| r["pack"] == id.as_str() && r["from_frame_walk"] == true), "{j}");
    let lost = j["report"]["lost"].as_array().expect("lost");
    assert!(lost.iter().any(|p| p["vm"] == "web" && p["disk"] == "disk.img" && p["range"]["start"] == start), "{j}");
    assert!(vault.join("index").join(format!("{id}.idx")).exists());
    // After the repair the truncated pack's chunks restore.
    let db_out = d.join("db");
    ok(&["restore", "--vault", s(&vault), "--vm", "db", "--to", s(&db_out)]);
    assert!(fs::read(db_out.join("disk.img")).expect("read") == fs::read(&img).expect("img"));
}

#[test]
fn names_that_could_escape_the_vault_are_refused_by_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let img = dir.path().join("d.img");
    fs::write(&img, vec![1u8; 1 << 20]).expect("image");
    ok(&["init", s(&vault)]);
    let named = format!("..={}", s(&img));
    for (vm, disk) in
        [("..", s(&img)), ("a/b", s(&img)), ("../../etc", s(&img)), (".hidden", s(&img)), ("ok", named.as_str())]
    {
        let out = run(&["backup", "--vault", s(&vault), "--vm", vm, "--disk", disk]);
        assert_eq!(out.status.code(), Some(2), "vm {vm:?} disk {disk:?}: {}", text(&out));
        assert!(text(&out).contains("invalid"), "{}", text(&out));
    }
    for vm in ["..", "a/b"] {
        let out = run(&["restore", "--vault", s(&vault), "--vm", vm, "--to", s(&dir.path().join("x"))]);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert!(fs::read_dir(vault.join("points")).expect("points").next().is_none(), "something was written");
}

#[test]
fn a_held_lock_gives_vault_is_locked_after_the_lock_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault_path = dir.path().join("vault");
    let img = dir.path().join("d.img");
    fs::write(&img, Rng(5).bytes(1 << 20)).expect("image");
    ok(&["init", s(&vault_path)]);
    let vault = Vault::open(&vault_path).expect("open");
    {
        // A backup (shared) is running: gc must wait, then say so.
        let _shared = vault.lock(LockMode::Shared).expect("lock");
        let started = Instant::now();
        let out = run(&["gc", "--vault", s(&vault_path), "--grace", "0", "--lock-timeout", "1"]);
        let waited = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("is locked"), "{}", text(&out));
        assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(10), "{waited:?}");
        // A second backup shares the lock.
        ok(&["backup", "--vault", s(&vault_path), "--vm", "a", "--disk", s(&img), "--lock-timeout", "1"]);
    }
    {
        // A gc or prune (exclusive) is running: backups wait, then say so.
        let _exclusive = vault.lock(LockMode::Exclusive).expect("lock");
        let out = run(&["backup", "--vault", s(&vault_path), "--vm", "a", "--disk", s(&img), "--lock-timeout", "0.3"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("is locked"), "{}", text(&out));
        let out = run(&["verify", "--vault", s(&vault_path), "--lock-timeout", "0.3"]);
        assert!(text(&out).contains("is locked"), "{}", text(&out));
    }
    ok(&["backup", "--vault", s(&vault_path), "--vm", "a", "--disk", s(&img), "--lock-timeout", "1"]);
    let bad = run(&["list", "--vault", s(&vault_path), "--lock-timeout", "-1"]);
    assert_ne!(bad.status.code(), Some(0), "{}", text(&bad));
}

/// 25 rounds, each of separate processes at once: backups of two VMs, gc
/// (grace 0), a restore of each VM's point of the round before, and every
/// fifth round a verify and a prune (keep the last 10). Every point is
/// restored bit for bit at least once (beside the next round's backups and
/// gc), and every point left at the end again.
#[test]
fn backups_of_two_vms_beside_gc_restore_verify_and_prune_in_separate_processes_lose_nothing() {
    const ROUNDS: u64 = 25;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    let v = s(&vault).to_string();
    ok(&["init", &v]);
    let policy = d.join("policy.toml");
    fs::write(
        &policy,
        "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n\n[retention]\nkeep_last = 10\n",
    )
    .expect("policy");
    let check = run(&["policy", "check", s(&policy)]);
    assert!(check.status.success(), "policy: {}", text(&check));
    let vms = ["one", "two"];
    let imgs: Vec<PathBuf> = vms.iter().map(|n| d.join(format!("{n}.img"))).collect();
    // Each point's id, with the image it must restore to, per VM.
    let mut points: Vec<std::collections::BTreeMap<String, Vec<u8>>> = vec![Default::default(); 2];
    let mut restored = 0u64;
    // Each VM's point of the round before, restored beside this round.
    let mut previous: Vec<Option<String>> = vec![None, None];
    let mut rng = Rng(77);
    for round in 0..ROUNDS {
        let mut data = Vec::new();
        for p in &imgs {
            // The first round writes whole images; later ones change a few
            // blocks, as an incremental sees them.
            let mut image = if round == 0 { rng.bytes(2 << 20) } else { fs::read(p).expect("image") };
            for _ in 0..1 + rng.below(8) {
                let at = rng.index(32) * (64 << 10);
                image[at..at + (64 << 10)].copy_from_slice(&rng.bytes(64 << 10));
            }
            fs::write(p, &image).expect("image");
            data.push(image);
        }
        let spawn = |args: Vec<String>| {
            Command::new(BIN).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
        };
        let strs = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        let mut children = Vec::new();
        for (i, vm) in vms.iter().enumerate() {
            children.push((
                format!("backup {vm}"),
                spawn(strs(&["backup", "--vault", &v, "--vm", vm, "--disk", s(&imgs[i])])),
            ));
        }
        children.push(("gc".into(), spawn(strs(&["gc", "--vault", &v, "--grace", "0"]))));
        let outs: Vec<PathBuf> = vms.iter().map(|vm| d.join(format!("r-{round}-{vm}.img"))).collect();
        for (i, vm) in vms.iter().enumerate() {
            if let Some(id) = &previous[i] {
                children.push((format!("restore {vm} {id}"), spawn(restore_args(&v, vm, id, &outs[i]))));
            }
        }
        if round % 5 == 4 {
            children.push(("verify".into(), spawn(strs(&["verify", "--vault", &v]))));
            children.push(("prune".into(), spawn(strs(&["prune", "--vault", &v, "--policy", s(&policy)]))));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for (name, child) in &mut children {
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    let out = child.wait_with_output_ref();
                    assert!(status.success(), "round {round}: {name} failed: {out}");
                    break;
                }
                assert!(Instant::now() < deadline, "round {round}: {name} hangs (deadlock?)");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (i, vm) in vms.iter().enumerate() {
            if let Some(id) = previous[i].take() {
                assert!(
                    fs::read(&outs[i]).expect("restored") == points[i][&id],
                    "round {round}: vm {vm}'s point {id} differs"
                );
                fs::remove_file(&outs[i]).expect("clean");
                restored += 1;
            }
            let ids = Vault::open(&vault).and_then(|x| x.point_ids(vm)).expect("point ids");
            let new: Vec<&String> = ids.iter().filter(|id| !points[i].contains_key(*id)).collect();
            assert_eq!(new.len(), 1, "round {round}: vm {vm} has {} new points", new.len());
            points[i].insert(new[0].clone(), data[i].clone());
            previous[i] = Some(new[0].clone());
        }
    }
    ok(&["verify", "--vault", &v]);
    for (i, vm) in vms.iter().enumerate() {
        let ids = Vault::open(&vault).and_then(|x| x.point_ids(vm)).expect("point ids");
        assert!(ids.len() >= 10, "vm {vm} kept {} points", ids.len());
        for id in ids {
            let out = d.join("last.img");
            let args = restore_args(&v, vm, &id, &out);
            ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(fs::read(&out).expect("restored") == points[i][&id], "vm {vm}'s point {id} differs at the end");
            fs::remove_file(&out).expect("clean");
            restored += 1;
        }
    }
    eprintln!("{ROUNDS} rounds: {} points made, {restored} restores bit for bit", points[0].len() + points[1].len());
}

/// `vmbackup restore` of VM `vm`'s disk `VM.img` at `point` into `out`.
fn restore_args(vault: &str, vm: &str, point: &str, out: &Path) -> Vec<String> {
    let disk = format!("{vm}.img");
    ["restore", "--vault", vault, "--vm", vm, "--point", point, "--disk", &disk, "--to", s(out)]
        .map(String::from)
        .to_vec()
}

/// Reads what a finished child wrote.
trait OutputOf {
    fn wait_with_output_ref(&mut self) -> String;
}

impl OutputOf for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut out = String::new();
        if let Some(o) = self.stdout.as_mut() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(e) = self.stderr.as_mut() {
            let _ = e.read_to_string(&mut out);
        }
        out
    }
}

/// A backup killed while it fills the vault's file system leaves its
/// staging behind, real packs and all: `gc` reclaims exactly that, the
/// space comes back, and the vault is as before.
#[test]
fn a_backup_killed_as_it_fills_the_vault_disk_leaves_only_what_gc_reclaims() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        testkit::skip("the killed-on-a-full-disk test", "a loop-mounted file system needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fs_img = d.join("fs.img");
    fs::File::create(&fs_img).and_then(|f| f.set_len(24 << 20)).expect("fs image");
    testkit::run("mkfs.ext4", &["-q", "-F", "-m", "0", s(&fs_img)]);
    let mount = testkit::LoopMount::new(&fs_img, &d.join("mnt")).expect("loop mount");
    let vault = mount.0.join("vault");
    ok(&["init", s(&vault)]);
    let small = d.join("small.img");
    let small_data = Rng(21).bytes(4 << 20);
    fs::write(&small, &small_data).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "small", "--disk", s(&small)]);
    let free_before = testkit::free_bytes(&mount.0);

    // Incompressible and larger than the space left: kill it once less
    // than 2 MiB is free, before it fails by itself.
    let big = d.join("big.img");
    fs::write(&big, Rng(22).bytes(40 << 20)).expect("image");
    let mut child = Command::new(BIN)
        .args(["backup", "--vault", s(&vault), "--vm", "big", "--disk", s(&big), "--pack-target-size", "1M"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while testkit::free_bytes(&mount.0) >= 2 << 20 {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the backup ended ({status}) before the disk was nearly full: {}", child.wait_with_output_ref());
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the disk never filled");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    // What it really left: a staging folder holding packs.
    let staged: u64 = walk_sizes(&vault.join("tmp"));
    assert!(staged >= 8 << 20, "the killed backup left only {staged} B in tmp/");
    let points = Vault::open(&vault).and_then(|v| v.point_ids("big")).expect("point ids");
    assert!(points.is_empty(), "a point of the killed backup: {points:?}");
    ok(&["gc", "--vault", s(&vault), "--grace", "0"]);
    assert_eq!(walk_sizes(&vault.join("tmp")), 0, "gc left files in tmp/");
    let free_after = testkit::free_bytes(&mount.0);
    assert!(free_after + (64 << 10) >= free_before, "free {free_before} B before the backup, {free_after} B after gc");
    ok(&["verify", "--vault", s(&vault)]);
    let out = d.join("restored.img");
    ok(&["restore", "--vault", s(&vault), "--vm", "small", "--disk", "small.img", "--to", s(&out)]);
    assert!(fs::read(&out).expect("restored") == small_data, "the earlier point differs");
    ok(&["backup", "--vault", s(&vault), "--vm", "small", "--disk", s(&small)]);
}

/// The bytes of every file beneath `dir` (0 when it does not exist).
fn walk_sizes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_sizes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
