//! `vmbackup policy check`, `prune` and `gc` as a user runs them.

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::s;

mod common;
use common::{BIN, json, run};

const POLICY: &str = r#"
timezone = "America/New_York"
[schedule]
frequency = "hourly"
every_hours = 6
window_start = "00:00"
[retention]
keep_last = 2
daily = { days = 7 }
"#;

#[test]
fn policy_check_prints_next_runs_and_refuses_bad_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("policy.toml");
    fs::write(&good, POLICY).expect("write");
    let out = json(&["policy", "check", s(&good), "--runs", "5", "--json"]);
    assert_eq!(out["next_runs"].as_array().map(Vec::len), Some(5));
    assert_eq!(out["time_zone"], "America/New_York");
    let text = run(&["policy", "check", s(&good)]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("every 6 hours"));

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, POLICY.replace("every_hours = 6", "every_hours = 5")).expect("write");
    let out = run(&["policy", "check", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schedule.every_hours") && err.contains("bad.toml"), "{err}");
}

#[test]
fn prune_then_gc_keep_a_vault_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image, policy) = (d.join("vault"), d.join("root.img"), d.join("policy.toml"));
    fs::write(&policy, POLICY).expect("write");
    assert!(run(&["init", s(&vault)]).status.success());
    let mut data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for round in 0..4u8 {
        data[(1 << 20)..(1 << 20) + 70_000].fill(round + 1);
        fs::write(&image, &data).expect("image");
        json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
    }
    let plan = json(&["prune", "--vault", s(&vault), "--policy", s(&policy), "--dry-run", "--json"]);
    assert_eq!(plan["removed"].as_array().map(Vec::len), Some(2), "{plan}");
    assert_eq!(plan["points"].as_array().map(Vec::len), Some(4));
    let list = json(&["list", "--vault", s(&vault), "--json"]);
    assert_eq!(list["points"].as_array().map(Vec::len), Some(4), "a dry run removed points");
    // A prune needs only the retention rules: a file without [schedule].
    let retention = d.join("retention.toml");
    fs::write(&retention, "timezone = \"UTC\"\n[retention]\nkeep_last = 2\n").expect("write");
    let same = json(&["prune", "--vault", s(&vault), "--policy", s(&retention), "--dry-run", "--json"]);
    assert_eq!(same["removed"], plan["removed"], "{same}");

    let done = json(&["prune", "--vault", s(&vault), "--policy", s(&policy), "--json"]);
    assert_eq!(done["removed"].as_array().map(Vec::len), Some(2));
    let kept_by_grace = json(&["gc", "--vault", s(&vault), "--json"]);
    assert_eq!(kept_by_grace["segments_removed"], 0, "the default grace period spares fresh objects");
    let held = json(&["gc", "--vault", s(&vault), "--grace", "0", "--json"]);
    assert_eq!(held["deleted_points_kept"], 2, "pruned points are soft-deleted for 14 days: {held}");
    assert_eq!(held["segments_removed"], 0, "{held}");
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(15 * 24)).to_string();
    let gc = json(&["gc", "--vault", s(&vault), "--grace", "0", "--now", &later, "--json"]);
    assert_eq!(gc["deleted_points_purged"], 2, "{gc}");
    assert!(gc["segments_removed"].as_u64().unwrap_or(0) > 0, "{gc}");
    assert!(gc["chunks_removed"].as_u64().unwrap_or(0) > 0, "{gc}");
    let verify = json(&["verify", "--vault", s(&vault), "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    let out = d.join("restored.img");
    assert!(run(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "0", "--to", s(&out)]).status.success());
    assert!(fs::read(&out).expect("restored") == data);
}

#[test]
fn schedule_catches_up_a_missed_run_once_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image, policy, vms) = (d.join("vault"), d.join("web.img"), d.join("policy.toml"), d.join("vms.json"));
    fs::write(&image, vec![5u8; 1 << 20]).expect("image");
    fs::write(
        &policy,
        "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 2\n",
    )
    .expect("policy");
    let vms_json = serde_json::json!({"vms": [{"name": "web", "disks": [format!("root={}", s(&image))]}]});
    fs::write(&vms, vms_json.to_string()).expect("vms");
    assert!(run(&["init", s(&vault)]).status.success());
    json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
    let points = |v: &Path| json(&["list", "--vault", s(v), "--json"])["points"].as_array().map_or(0, Vec::len);

    // Three days later: three runs were missed, one is made up.
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(72)).expect("time").to_string();
    let args = ["schedule", "--vault", s(&vault), "--policy", s(&policy), "--vms", s(&vms), "--once", "--now", &later];
    let out = run(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("backup started").count(), 1, "{text}");
    assert_eq!(points(&vault), 2);
    // The same instant again: that run is served.
    let out = run(&args);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("backup started"));
    assert_eq!(points(&vault), 2);

    // SIGTERM stops the daemon cleanly (sent once it says it started: its
    // handler is installed by then).
    let mut child = Command::new(BIN)
        .args(["schedule", "--vault", s(&vault), "--policy", s(&policy), "--vms", s(&vms)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("stdout")));
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(first.contains("schedule started"), "{first}");
    // SAFETY: kill with a pid of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.map(|l| l.expect("utf-8")).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status:?}");
    assert!(rest.last().is_some_and(|l| l.contains("schedule stopped")), "{rest:?}");
}
