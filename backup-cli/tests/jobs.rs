//! `vmbackup jobs`, `release-expired` and the tiers `list` shows, as a user
//! runs them.

use std::fs;
use std::process::Command;

use testkit::s;

mod common;
use common::{BIN, json, ok, run};

#[test]
fn jobs_shows_the_history_with_phases_results_points_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let img = dir.path().join("root.img");
    fs::write(&img, vec![5u8; 1 << 20]).expect("image");
    ok(&["init", s(&vault)]);
    let point = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img), "--json"]);
    let missing = dir.path().join("missing.img");
    let failed = run(&["backup", "--vault", s(&vault), "--vm", "db", "--disk", s(&missing)]);
    assert_eq!(failed.status.code(), Some(1));

    let all = json(&["jobs", "--vault", s(&vault), "--json"]);
    let jobs = all["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2);
    let web = jobs.iter().find(|j| j["vm"] == "web").expect("web");
    assert_eq!(web["result"], "succeeded");
    assert_eq!(web["point"], point["point"]);
    assert_eq!(web["job"], point["job"]);
    assert!(web["start"].is_string() && web["end"].is_string());
    let phases: Vec<&str> =
        web["phases"].as_array().expect("phases").iter().map(|p| p["phase"].as_str().expect("name")).collect();
    assert_eq!(phases, ["prepare", "snapshot", "transfer", "commit", "release"]);
    assert!(web["phases"].as_array().expect("phases").iter().all(|p| p["ok"] == true && p["seconds"].is_f64()));
    let db = jobs.iter().find(|j| j["vm"] == "db").expect("db");
    assert_eq!(db["result"], "failed");
    assert!(db["point"].is_null());
    assert!(db["error"].as_str().is_some_and(|e| e.contains("missing.img")), "{db}");

    // --vm filters; the table has one line per job, and the error under it.
    let only = json(&["jobs", "--vault", s(&vault), "--vm", "db", "--json"]);
    assert_eq!(only["jobs"].as_array().expect("jobs").len(), 1);
    let table = ok(&["jobs", "--vault", s(&vault)]);
    assert!(table.starts_with("JOB"), "{table}");
    assert!(table.lines().any(|l| l.contains("web") && l.contains("succeeded") && l.contains("transfer")), "{table}");
    assert!(
        table.lines().any(|l| l.contains("db") && l.contains("failed") && l.contains("snapshot FAILED")),
        "{table}"
    );
    assert!(table.contains("error: ") && table.contains("missing.img"), "{table}");

    // The log itself: JSON lines in the vault, the last one the end record.
    let log = vault.join("jobs").join("web").join(format!("{}.jsonl", point["job"].as_str().expect("job")));
    let text = fs::read_to_string(&log).expect("log");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(last["event"], "end");
}

#[test]
fn a_killed_job_shows_as_interrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let img = dir.path().join("root.img");
    fs::write(&img, vec![5u8; 1 << 20]).expect("image");
    ok(&["init", s(&vault)]);
    let point = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img), "--json"]);
    // What a kill in the transfer leaves: the log up to there.
    let log = vault.join("jobs").join("web").join(format!("{}.jsonl", point["job"].as_str().expect("job")));
    let text = fs::read_to_string(&log).expect("log");
    let kept: Vec<&str> = text.lines().take_while(|l| !l.contains("\"phase\":\"commit\"")).collect();
    fs::write(vault.join("jobs").join("web").join("20000101T000000Z-aaaaaa.jsonl"), kept.join("\n") + "\n{\"ev")
        .expect("write");
    let all = json(&["jobs", "--vault", s(&vault), "--json"]);
    let killed = &all["jobs"][0];
    assert_eq!(killed["result"], "interrupted");
    assert!(killed["end"].is_null());
    assert_eq!(killed["damaged_lines"], 1);
    let table = ok(&["jobs", "--vault", s(&vault)]);
    assert!(table.lines().any(|l| l.contains("interrupted")), "{table}");
}

#[test]
fn list_shows_tiers_and_release_expired_keeps_what_is_not_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let img = dir.path().join("root.img");
    fs::write(&img, vec![5u8; 1 << 20]).expect("image");
    ok(&["init", s(&vault)]);
    // Without reflinks (the usual temp folder) the snapshot cannot be kept:
    // the point says so, and has the vault tier only.
    let out = run(&[
        "backup",
        "--vault",
        s(&vault),
        "--vm",
        "web",
        "--disk",
        s(&img),
        "--instant-restore-days",
        "2",
        "--json",
    ]);
    assert!(out.status.success());
    let point: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tiers = point["tiers"].as_array().expect("tiers").clone();
    if point["snapshot_kept_until"].is_null() {
        assert_eq!(tiers, ["vault"]);
        assert!(point["warnings"].to_string().contains("cannot be kept for instant restore"), "{point}");
    } else {
        assert_eq!(tiers, ["snapshot", "vault"]);
    }
    let list = json(&["list", "--vault", s(&vault), "--json"]);
    assert_eq!(list["points"][0]["tiers"].as_array().expect("tiers"), &tiers);
    let table = ok(&["list", "--vault", s(&vault)]);
    assert!(table.lines().next().is_some_and(|l| l.contains(" TIERS ") && l.ends_with("BOOT")), "{table}");
    assert!(table.lines().nth(1).is_some_and(|l| l.ends_with(" -")), "never booted: {table}");
    let released = json(&["release-expired", "--vault", s(&vault), "--json"]);
    assert!(released["released"].as_array().expect("released").is_empty());
    assert!(released["problems"].as_array().expect("problems").is_empty());
    let bad = run(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img), "--instant-restore-days", "31"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn a_backup_killed_in_its_transfer_shows_as_interrupted_with_the_phase_it_died_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let img = dir.path().join("root.img");
    // Incompressible data, so that the transfer lasts long enough to be killed in.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..(384usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    fs::write(&img, &data).expect("image");
    drop(data);
    ok(&["init", s(&vault)]);
    let mut child = Command::new(BIN)
        .args(["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_transfer(&vault);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    let all = json(&["jobs", "--vault", s(&vault), "--json"]);
    let job = &all["jobs"][0];
    assert_eq!(job["result"], "interrupted", "{job}");
    assert!(job["end"].is_null() && job["point"].is_null());
    let last = job["phases"].as_array().expect("phases").last().expect("a phase").clone();
    assert_eq!(last["phase"], "transfer");
    assert!(last["ok"].is_null() && last["end"].is_null(), "{last}");
    // The killed job left no point.
    let list = json(&["list", "--vault", s(&vault), "--json"]);
    assert!(list["points"].as_array().expect("points").is_empty());
}

/// Waits until the only job of VM "web" logs its transfer phase (60 s at most).
fn wait_for_transfer(vault: &std::path::Path) {
    let logs = vault.join("jobs").join("web");
    let started = std::time::Instant::now();
    loop {
        let in_transfer = fs::read_dir(&logs).ok().and_then(|mut d| d.next()).and_then(|e| {
            let text = fs::read_to_string(e.ok()?.path()).ok()?;
            Some(text.contains("\"phase\":\"transfer\""))
        });
        if in_transfer == Some(true) {
            return;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the transfer never started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_point_whose_job_still_transfers_lists_as_snapshot_and_restores_from_it() {
    // A real job, on a reflink XFS, stopped in its transfer: its clone is
    // kept and recorded, its manifest not written yet. (A record written
    // by hand is what the hostile-vault tests show to be refused.)
    let name = "a_point_whose_job_still_transfers_lists_as_snapshot_and_restores_from_it";
    let dir = tempfile::tempdir().expect("tempdir");
    let xfs = match testkit::reflink_xfs(dir.path(), 300 << 20) {
        Ok(m) => m,
        Err(why) => return testkit::skip(name, &why),
    };
    let vault = dir.path().join("vault");
    ok(&["init", s(&vault)]);
    let image = xfs.0.join("root.img");
    let data = testkit::random(64 << 20, 5);
    fs::write(&image, &data).expect("image");
    let mut child = Command::new(BIN)
        .args(["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--instant-restore-days", "1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_transfer(&vault);
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };

    let list = json(&["list", "--vault", s(&vault), "--json"]);
    assert!(list["points"].as_array().expect("points").is_empty());
    let in_flight = &list["in_flight"][0];
    let point = in_flight["id"].as_str().expect("an in-flight point").to_string();
    assert_eq!(in_flight["tiers"], serde_json::json!(["snapshot"]));
    let table = ok(&["list", "--vault", s(&vault)]);
    assert!(table.lines().any(|l| l.starts_with(&point) && l.ends_with("snapshot")), "{table}");

    let out = dir.path().join("out.img");
    let restored = run(&[
        "restore",
        "--vault",
        s(&vault),
        "--vm",
        "web",
        "--point",
        &point[..13],
        "--disk",
        "root.img",
        "--to",
        s(&out),
    ]);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert!(String::from_utf8_lossy(&restored.stderr).contains("restored from the snapshot tier"));
    assert!(fs::read(&out).expect("read") == data);
    let folder = dir.path().join("all");
    let all = json(&["restore", "--vault", s(&vault), "--vm", "web", "--point", &point, "--to", s(&folder), "--json"]);
    assert_eq!((all["point"].as_str(), all["tier"].as_str()), (Some(point.as_str()), Some("snapshot")));
    assert!(fs::read(folder.join("root.img")).expect("read") == data);

    // A changed clone is no tier: nothing to restore, and list drops it.
    let clone = fs::read_dir(&xfs.0)
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("vmbackup-snap"))
        .expect("the kept clone");
    fs::OpenOptions::new()
        .append(true)
        .open(&clone)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"scribbled"))
        .expect("scribble");
    let gone =
        run(&["restore", "--vault", s(&vault), "--vm", "web", "--point", &point, "--disk", "0", "--to", s(&out)]);
    assert!(!gone.status.success());
    let list = json(&["list", "--vault", s(&vault), "--json"]);
    assert!(list["in_flight"].as_array().expect("in flight").is_empty());
    child.kill().expect("kill");
    child.wait().expect("wait");
}
