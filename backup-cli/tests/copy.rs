//! `vmbackup copy` as a user runs it between two local vaults: plain into
//! encrypted and back, only what the target lacks moving, and a copy
//! killed with SIGKILL finished by a rerun.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{Rng, s};

mod common;
use common::{BIN, json, run};

const MIB: usize = 1 << 20;

/// The bytes of what a point needs in a local vault: packs, chunk index
/// files, segments, manifests.
fn stored(vault: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::read_dir(p) {
            Ok(entries) => entries.flatten().map(|e| walk(&e.path())).sum(),
            Err(_) => fs::metadata(p).map_or(0, |m| m.len()),
        }
    }
    ["packs", "index", "segments", "points"].iter().map(|d| walk(&vault.join(d))).sum()
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list["points"].as_array().expect("points").iter().map(|p| p["point"].as_str().expect("id").to_string()).collect()
}

/// `vmbackup ARGS` with a passphrase for the target in the environment.
fn keyed(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("VMBACKUP_PASSPHRASE", "second site").output().expect("run vmbackup")
}

fn keyed_json(args: &[&str]) -> serde_json::Value {
    let out = keyed(args);
    assert!(out.status.success(), "vmbackup {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn copy_into_an_encrypted_vault_and_back_moves_only_what_each_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (here, there, back, image) = (d.join("here"), d.join("there"), d.join("back"), d.join("root.img"));
    assert!(run(&["init", s(&here)]).status.success());
    assert!(keyed(&["init", "--encrypt", s(&there)]).status.success());
    let mut data = Rng(3).bytes(8 * MIB);
    let mut images = Vec::new();
    for round in 0..3u8 {
        data[usize::from(round) * MIB..usize::from(round) * MIB + 70_000].fill(round + 1);
        fs::write(&image, &data).expect("image");
        json(&["backup", "--vault", s(&here), "--vm", "web", "--disk", s(&image), "--json"]);
        images.push(data.clone());
    }
    let points = ids(&json(&["list", "--vault", s(&here), "--json"]));

    let before = stored(&there);
    let all = keyed_json(&["copy", "--from", s(&here), "--to", s(&there), "--points", "all", "--json"]);
    let copied = all["copied"].as_array().expect("copied");
    assert_eq!(copied.len(), 3, "{all}");
    assert_eq!(all["bytes_added"].as_u64(), Some(stored(&there) - before), "what moved is what the target grew by");
    assert_eq!(copied[0]["bytes_lacked"], 8 * MIB, "{all}");
    assert!(copied[1]["bytes_lacked"].as_u64().expect("lacked") <= 2 * (64 << 10), "{all}");
    let again = keyed_json(&["copy", "--from", s(&here), "--to", s(&there), "--points", "all", "--json"]);
    assert_eq!((again["copied"].as_array().map(Vec::len), again["bytes_added"].as_u64()), (Some(0), Some(0)));
    assert_eq!(again["already_there"].as_array().map(Vec::len), Some(3));
    // The VM's record came along the first time, and only then.
    assert_eq!(all["vm_records_copied"], serde_json::json!(["web"]), "{all}");
    assert_eq!(again["vm_records_copied"], serde_json::json!([]), "{again}");
    let verify = keyed_json(&["verify", "--vault", s(&there), "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");

    // Back into a plain vault: the source's key from a file, the newest
    // point only, then since a time that takes all.
    assert!(run(&["init", s(&back)]).status.success());
    let key = d.join("passphrase");
    fs::write(&key, "second site\n").expect("key");
    let latest = json(&["copy", "--from", s(&there), "--from-passphrase-file", s(&key), "--to", s(&back), "--json"]);
    assert_eq!(latest["copied"][0]["id"], points[2].as_str(), "{latest}");
    let since = json(&[
        "copy",
        "--from",
        s(&there),
        "--from-passphrase-file",
        s(&key),
        "--to",
        s(&back),
        "--points",
        "since=2000-01-01T00:00:00Z",
        "--vm",
        "web",
        "--json",
    ]);
    assert_eq!(since["copied"].as_array().map(Vec::len), Some(2), "{since}");
    for (id, want) in points.iter().zip(&images) {
        let out = d.join(format!("{id}.img"));
        let r = run(&["restore", "--vault", s(&back), "--vm", "web", "--point", id, "--disk", "0", "--to", s(&out)]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(fs::read(&out).expect("restored") == *want, "point {id} differs after two copies");
    }

    // Mistakes say what is wrong.
    let bad = run(&["copy", "--from", s(&here), "--to", s(&back), "--points", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    let locked = run(&["copy", "--from", s(&there), "--to", s(&back)]);
    assert_eq!(locked.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("encrypted"),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    let same = run(&["copy", "--from", s(&here), "--to", s(&here)]);
    assert!(String::from_utf8_lossy(&same.stderr).contains("same vault"), "{}", String::from_utf8_lossy(&same.stderr));
}

#[test]
fn a_copy_killed_midway_is_finished_by_a_rerun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (here, there, image) = (d.join("here"), d.join("there"), d.join("root.img"));
    assert!(run(&["init", s(&here)]).status.success());
    assert!(run(&["init", s(&there)]).status.success());
    let mut images = Vec::new();
    for seed in 0..3u64 {
        let data = Rng(seed + 10).bytes(48 * MIB);
        fs::write(&image, &data).expect("image");
        json(&["backup", "--vault", s(&here), "--vm", "web", "--disk", s(&image), "--json"]);
        images.push(data);
    }
    // Killed while the second point transfers: the first is committed, and
    // the second's staging folder exists.
    let mut child = Command::new(BIN)
        .args(["copy", "--from", s(&here), "--to", s(&there), "--points", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let count = |dir: &Path, prefix: &str| {
        fs::read_dir(dir)
            .map_or(0, |e| e.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count())
    };
    let started = std::time::Instant::now();
    while !(count(&there.join("points/web"), "") == 1 && count(&there.join("tmp"), "backup-") == 1) {
        assert!(child.try_wait().expect("wait").is_none(), "the copy ended before it could be killed midway");
        assert!(started.elapsed() < Duration::from_secs(60), "the copy never reached its second point");
        std::thread::sleep(Duration::from_micros(500));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert_eq!(count(&there.join("points/web"), ""), 1, "the killed copy committed its second point");
    let done = json(&["copy", "--from", s(&here), "--to", s(&there), "--points", "all", "--json"]);
    assert_eq!(done["copied"].as_array().map(Vec::len), Some(2), "{done}");
    assert_eq!(done["already_there"].as_array().map(Vec::len), Some(1), "{done}");
    let verify = json(&["verify", "--vault", s(&there), "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    let points = ids(&json(&["list", "--vault", s(&there), "--json"]));
    assert_eq!(points.len(), 3);
    for (id, want) in points.iter().zip(&images) {
        let out = d.join(format!("{id}.img"));
        assert!(
            run(&["restore", "--vault", s(&there), "--vm", "web", "--point", id, "--disk", "0", "--to", s(&out)])
                .status
                .success()
        );
        assert!(fs::read(&out).expect("restored") == *want, "point {id} differs after a killed copy");
    }
    // What the killed runs staged was adopted or is left for gc: nothing
    // the rerun needed is stored twice over.
    let gc = json(&["gc", "--vault", s(&there), "--grace", "0", "--json"]);
    assert_eq!(gc["problems"], serde_json::json!([]), "{gc}");
    assert!(stored(&there) < (3 * 48 * MIB + 3 * MIB) as u64, "the target holds more than three disks' worth");
}

/// A policy's `[copy]`: the scheduler copies each new point to the second
/// site (encrypted, unlocked by a passphrase file) after its backup, and a
/// policy whose target cannot be opened does not start.
#[test]
fn a_policy_copies_each_new_point_to_its_second_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, site, image) = (d.join("vault"), d.join("site"), d.join("web.img"));
    let (policy, vms, key) = (d.join("policy.toml"), d.join("vms.json"), d.join("site.pass"));
    fs::write(&image, Rng(4).bytes(MIB)).expect("image");
    fs::write(&key, "second site\n").expect("key");
    let rules =
        "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 2\n";
    fs::write(&policy, format!("{rules}[copy]\nto = {:?}\npassphrase_file = {:?}\n", s(&site), s(&key)))
        .expect("policy");
    let vms_json = serde_json::json!({"vms": [{"name": "web", "disks": [format!("root={}", s(&image))]}]});
    fs::write(&vms, vms_json.to_string()).expect("vms");
    assert!(run(&["init", s(&vault)]).status.success());
    json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
    let check = run(&["policy", "check", s(&policy)]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("copy: each new point to"), "{check:?}");

    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(72)).expect("time").to_string();
    let args = ["schedule", "--vault", s(&vault), "--policy", s(&policy), "--vms", s(&vms), "--once", "--now", &later];
    let refused = run(&args);
    assert_eq!(refused.status.code(), Some(1), "a missing second site must stop the scheduler");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("copy target"), "{refused:?}");

    assert!(keyed(&["init", "--encrypt", s(&site)]).status.success());
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied to"), "{}", String::from_utf8_lossy(&out.stdout));
    let made = ids(&json(&["list", "--vault", s(&vault), "--json"]));
    let copied = ids(&keyed_json(&["list", "--vault", s(&site), "--json"]));
    // The scheduled run's point; the one made by hand before is not copied.
    assert_eq!((made.len(), copied.len()), (2, 1));
    assert_eq!(copied[0], made[1]);
    let restored = d.join("restored.img");
    let r = keyed(&["restore", "--vault", s(&site), "--vm", "web", "--disk", "0", "--to", s(&restored)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(fs::read(&restored).expect("restored") == fs::read(&image).expect("image"));
}
