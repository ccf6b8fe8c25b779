//! `vmbackup policy check`, `prune` and `gc` as a user runs them.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run vmbackup")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "vmbackup {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

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

    let done = json(&["prune", "--vault", s(&vault), "--policy", s(&policy), "--json"]);
    assert_eq!(done["removed"].as_array().map(Vec::len), Some(2));
    let kept_by_grace = json(&["gc", "--vault", s(&vault), "--json"]);
    assert_eq!(kept_by_grace["segments_removed"], 0, "the default grace period spares fresh objects");
    let gc = json(&["gc", "--vault", s(&vault), "--grace", "0", "--json"]);
    assert!(gc["segments_removed"].as_u64().unwrap_or(0) > 0, "{gc}");
    assert!(gc["chunks_removed"].as_u64().unwrap_or(0) > 0, "{gc}");
    let verify = json(&["verify", "--vault", s(&vault), "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    let out = d.join("restored.img");
    assert!(run(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "0", "--to", s(&out)]).status.success());
    assert!(fs::read(&out).expect("restored") == data);
}
