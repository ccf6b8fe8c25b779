//! `vmbackup delete`, `undelete`, `list --deleted` and `config` as a user
//! runs them: removed points stay recoverable, and their data stays, for
//! the vault's soft-delete days.

use std::fs;
use std::path::Path;

use testkit::s;

mod common;
use common::{json, run};

/// A 2 MiB image whose middle 70,000 bytes say which round wrote them.
fn round_image(image: &Path, round: u8) -> Vec<u8> {
    let mut data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    data[(1 << 20)..(1 << 20) + 70_000].fill(round + 1);
    fs::write(image, &data).expect("image");
    data
}

fn ids(list: &serde_json::Value, field: &str) -> Vec<String> {
    list[field].as_array().expect("array").iter().map(|p| p["point"].as_str().expect("point").to_string()).collect()
}

#[test]
fn deleted_points_are_listed_undeleted_restored_bit_for_bit_and_purged_only_after_their_days() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image) = (d.join("vault"), d.join("root.img"));
    assert!(run(&["init", s(&vault)]).status.success());
    let mut rounds = Vec::new();
    for round in 0..3u8 {
        let data = round_image(&image, round);
        let made = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
        rounds.push((made["point"].as_str().expect("id").to_string(), data));
    }
    let settings = json(&["config", "--vault", s(&vault), "--json"]);
    assert_eq!(settings["soft_delete_days"], 14, "{settings}");
    assert_eq!(settings["soft_delete_always_on"], false, "{settings}");

    // The middle point by hand, the oldest by prune: both soft-deleted.
    let gone = json(&["delete", "--vault", s(&vault), "--vm", "web", "--point", &rounds[1].0, "--json"]);
    assert_eq!(gone["point"], rounds[1].0.as_str());
    assert!(gone["recoverable_until"].is_string(), "{gone}");
    let retention = d.join("retention.toml");
    fs::write(&retention, "timezone = \"UTC\"\n[retention]\nkeep_last = 1\n").expect("write");
    let pruned = json(&["prune", "--vault", s(&vault), "--policy", s(&retention), "--json"]);
    assert_eq!(pruned["removed"].as_array().map(Vec::len), Some(1), "{pruned}");
    assert_eq!(ids(&json(&["list", "--vault", s(&vault), "--json"]), "points"), [rounds[2].0.clone()]);
    let deleted = json(&["list", "--vault", s(&vault), "--deleted", "--json"]);
    let mut listed = ids(&deleted, "deleted");
    listed.sort();
    let mut expected = [rounds[0].0.clone(), rounds[1].0.clone()];
    expected.sort();
    assert_eq!(listed, expected, "{deleted}");
    let purge_after: jiff::Timestamp =
        deleted["deleted"][0]["purge_after"].as_str().expect("time").parse().expect("ts");
    let days = (purge_after - jiff::Timestamp::now()).get_seconds() as f64 / 86_400.0;
    assert!((13.9..=14.0).contains(&days), "purge after {purge_after}: {days} days from now");
    let text = run(&["list", "--vault", s(&vault), "--deleted"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&rounds[1].0));

    // gc keeps their data while their days last, even with no grace.
    let kept = json(&["gc", "--vault", s(&vault), "--grace", "0", "--repack-threshold", "0", "--json"]);
    assert_eq!(kept["deleted_points_kept"], 2, "{kept}");
    assert_eq!(kept["deleted_points_purged"], 0, "{kept}");
    assert_eq!(kept["chunks_removed"], 0, "{kept}");
    assert_eq!(kept["segments_removed"], 0, "{kept}");

    // Undeleted, the middle point restores bit for bit.
    let back = json(&["undelete", "--vault", s(&vault), "--vm", "web", "--point", &rounds[1].0[..18], "--json"]);
    assert_eq!(back["point"], rounds[1].0.as_str(), "{back}");
    let out = d.join("middle.img");
    let restored =
        run(&["restore", "--vault", s(&vault), "--vm", "web", "--point", &rounds[1].0, "--disk", "0", "--to", s(&out)]);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert!(fs::read(&out).expect("restored") == rounds[1].1, "the undeleted point restores other bytes");
    let again = run(&["undelete", "--vault", s(&vault), "--vm", "web", "--point", &rounds[1].0]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not found"));

    // Fifteen days on (a fake clock), gc removes the pruned point for good
    // and reclaims what only it used.
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(15 * 24)).to_string();
    let dry = json(&["gc", "--vault", s(&vault), "--grace", "0", "--now", &later, "--dry-run", "--json"]);
    assert_eq!(dry["deleted_points_purged"], 1, "{dry}");
    assert_eq!(
        json(&["list", "--vault", s(&vault), "--deleted", "--json"])["deleted"].as_array().map(Vec::len),
        Some(1)
    );
    let purged =
        json(&["gc", "--vault", s(&vault), "--grace", "0", "--repack-threshold", "0", "--now", &later, "--json"]);
    assert_eq!(purged["deleted_points_purged"], 1, "{purged}");
    assert!(purged["chunks_removed"].as_u64().unwrap_or(0) > 0, "{purged}");
    assert_eq!(json(&["list", "--vault", s(&vault), "--deleted", "--json"])["deleted"], serde_json::json!([]));
    let verify = json(&["verify", "--vault", s(&vault), "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
    for (id, data) in &rounds[1..] {
        let out = d.join(format!("{id}.img"));
        assert!(
            run(&["restore", "--vault", s(&vault), "--vm", "web", "--point", id, "--disk", "0", "--to", s(&out)])
                .status
                .success()
        );
        assert!(fs::read(&out).expect("restored") == *data, "point {id} after gc");
    }
    let undelete_purged = run(&["undelete", "--vault", s(&vault), "--vm", "web", "--point", &rounds[0].0]);
    assert_eq!(undelete_purged.status.code(), Some(1), "a purged point came back");
}

#[test]
fn soft_delete_off_removes_at_once_and_always_on_cannot_be_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image) = (d.join("vault"), d.join("root.img"));
    assert!(run(&["init", s(&vault)]).status.success());
    let mut points = Vec::new();
    for round in 0..2u8 {
        round_image(&image, round);
        let made = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
        points.push(made["point"].as_str().expect("id").to_string());
    }
    let off = json(&["config", "--vault", s(&vault), "--soft-delete-days", "0", "--json"]);
    assert_eq!(off["soft_delete_days"], 0, "{off}");
    let gone = json(&["delete", "--vault", s(&vault), "--vm", "web", "--point", &points[0], "--json"]);
    assert!(gone["recoverable_until"].is_null(), "{gone}");
    assert_eq!(json(&["list", "--vault", s(&vault), "--deleted", "--json"])["deleted"], serde_json::json!([]));
    let gc = json(&["gc", "--vault", s(&vault), "--grace", "0", "--repack-threshold", "0", "--json"]);
    assert!(gc["chunks_removed"].as_u64().unwrap_or(0) > 0, "{gc}");

    let on = json(&["config", "--vault", s(&vault), "--soft-delete-days", "7", "--soft-delete-always-on", "--json"]);
    assert_eq!((on["soft_delete_days"].as_u64(), on["soft_delete_always_on"].as_bool()), (Some(7), Some(true)));
    for days in ["0", "6"] {
        let refused = run(&["config", "--vault", s(&vault), "--soft-delete-days", days]);
        assert_eq!(refused.status.code(), Some(1), "--soft-delete-days {days} was not refused");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("refused to") && err.contains("always on") && err.contains(s(&vault)), "{err}");
    }
    let longer = json(&["config", "--vault", s(&vault), "--soft-delete-days", "30", "--json"]);
    assert_eq!(
        (longer["soft_delete_days"].as_u64(), longer["soft_delete_always_on"].as_bool()),
        (Some(30), Some(true))
    );
    let shown = run(&["config", "--vault", s(&vault)]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("30 days") && text.contains("yes"), "{text}");
    let soft = json(&["delete", "--vault", s(&vault), "--vm", "web", "--point", "latest", "--json"]);
    assert!(soft["recoverable_until"].is_string(), "{soft}");
    assert!(json(&["list", "--vault", s(&vault), "--json"])["points"].as_array().is_some_and(Vec::is_empty));
}

#[test]
fn an_immutable_vault_refuses_to_delete_young_points_or_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image) = (d.join("vault"), d.join("root.img"));
    assert!(run(&["init", s(&vault)]).status.success());
    let mut points = Vec::new();
    for round in 0..4u8 {
        round_image(&image, round);
        let made = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
        points.push(made["point"].as_str().expect("id").to_string());
    }
    // Before the vault is immutable: one point soft-deleted, one deleted
    // for good (the blocks only it held are dead), then the vault becomes
    // immutable.
    json(&["delete", "--vault", s(&vault), "--vm", "web", "--point", &points[0], "--json"]);
    json(&["config", "--vault", s(&vault), "--soft-delete-days", "0", "--json"]);
    json(&["delete", "--vault", s(&vault), "--vm", "web", "--point", &points[1], "--json"]);
    json(&["config", "--vault", s(&vault), "--soft-delete-days", "14", "--json"]);
    let locked = json(&["config", "--vault", s(&vault), "--immutable-days", "30", "--json"]);
    assert_eq!(locked["immutable_days"], 30, "{locked}");
    let shown = String::from_utf8_lossy(&run(&["config", "--vault", s(&vault)]).stdout).to_string();
    assert!(shown.contains("immutable:") && shown.contains("30 days"), "{shown}");

    // delete is refused; prune spares; the setting cannot be weakened.
    let refused = run(&["delete", "--vault", s(&vault), "--vm", "web", "--point", &points[2]]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("refused to delete point") && err.contains("immutable for 30 days"), "{err}");
    let retention = d.join("retention.toml");
    fs::write(&retention, "timezone = \"UTC\"\n[retention]\nkeep_last = 1\n").expect("write");
    let pruned = json(&["prune", "--vault", s(&vault), "--policy", s(&retention), "--json"]);
    assert_eq!(pruned["removed"], serde_json::json!([]), "{pruned}");
    assert!(pruned["spared"][0].as_str().is_some_and(|m| m.contains("immutable")), "{pruned}");
    for days in ["29", "0"] {
        let weaker = run(&["config", "--vault", s(&vault), "--immutable-days", days]);
        assert_eq!(weaker.status.code(), Some(1), "--immutable-days {days} was not refused");
        assert!(String::from_utf8_lossy(&weaker.stderr).contains("can only grow"));
    }

    // gc, even fifteen days on by the soft-delete clock and with no grace,
    // neither purges the young deleted point nor removes the dead blocks
    // of the one deleted for good: they were written less than 30 days ago.
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(15 * 24)).to_string();
    let gc = json(&["gc", "--vault", s(&vault), "--grace", "0", "--repack-threshold", "0", "--now", &later, "--json"]);
    assert_eq!((gc["deleted_points_purged"].as_u64(), gc["deleted_points_kept"].as_u64()), (Some(0), Some(1)), "{gc}");
    assert_eq!((gc["chunks_removed"].as_u64(), gc["segments_removed"].as_u64()), (Some(0), Some(0)), "{gc}");
    assert!(gc["protected"].as_u64().unwrap_or(0) > 0, "{gc}");
    assert_eq!(json(&["list", "--vault", s(&vault), "--json"])["points"].as_array().map(Vec::len), Some(2));
    let verify = json(&["verify", "--vault", s(&vault), "--json"]);
    assert_eq!(verify["ok"], true, "{verify}");
}
