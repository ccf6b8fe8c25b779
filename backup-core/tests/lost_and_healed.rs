//! Issue 8's last two corruption gaps: a deleted manifest is reported by
//! verify (from the job log that committed it) unless prune removed it; and
//! repair drops damaged frames from the chunk index, so that the next backup
//! stores their chunks again (and the points made before restore again).

use std::fs;
use std::path::Path;

use backup_core::*;
use testkit::random as pseudo_random;

const MIB: usize = 1 << 20;

fn small_packs() -> VaultOptions {
    let mut o = VaultOptions::default();
    o.pack_target_size = 256 << 10;
    o
}

fn back_up(vault: &Vault, vm: &Vm) -> PointManifest {
    backup(vault, &ImageFileProvider::new(), vm, &BackupOptions::default()).expect("backup").point
}

fn write_image(img: &Path, seed: u64) -> Vec<u8> {
    let data = pseudo_random(MIB, seed);
    fs::write(img, &data).expect("write image");
    data
}

#[test]
fn a_deleted_manifest_is_reported_from_the_job_log_and_a_pruned_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init_with(dir.path().join("vault"), small_packs()).expect("init");
    let img = dir.path().join("d.img");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let mut points = Vec::new();
    for seed in 1..=4 {
        write_image(&img, seed);
        points.push(back_up(&vault, &vm));
    }
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());

    // Prune removes the oldest: legitimately gone, nothing to report,
    // although the next point names it as its parent.
    let policy = Policy::from_toml_str(
        "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 3\n",
    )
    .expect("policy");
    let plan = prune_plan(&vault, &policy.retention, jiff::Timestamp::now(), &PruneOptions::default()).expect("plan");
    let pruned = prune(&vault, &plan).expect("prune");
    assert_eq!(pruned.removed.len(), 1);
    assert_eq!(pruned.removed[0].id, points[0].id);
    assert_eq!(points[1].parent.as_deref(), Some(points[0].id.as_str()));
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "a pruned point is reported: {:?}", report.problems);

    // A manifest deleted by anything else is reported, by VM and point.
    let lost = &points[1];
    fs::remove_file(vault.path().join("points").join("web").join(&lost.id)).expect("delete manifest");
    for options in [VerifyOptions::default(), {
        let mut o = VerifyOptions::default();
        o.vm = Some("web".into());
        o
    }] {
        let report = verify(&vault, &options).expect("verify");
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!(p.vm.as_deref(), Some("web"));
        assert_eq!(p.point.as_deref(), Some(lost.id.as_str()));
        assert!(p.what.starts_with("manifest missing: the job log says it was committed"), "{}", p.what);
        assert!(p.what.contains(&points[2].id), "the child is not named as a hint: {}", p.what);
    }
    // Repair counts it as lost.
    let repaired = repair(&vault, &RepairOptions::default()).expect("repair");
    assert!(!repaired.nothing_lost(), "{repaired:?}");
    assert!(repaired.lost.iter().any(|p| p.point.as_deref() == Some(lost.id.as_str())), "{repaired:?}");
}

#[test]
fn repair_drops_a_damaged_chunk_from_the_index_and_the_next_backup_stores_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init_with(dir.path().join("vault"), small_packs()).expect("init");
    let img = dir.path().join("d.img");
    let data = write_image(&img, 77);
    let vm = Vm::from_images("heal", &[&img]).expect("vm");
    let first = back_up(&vault, &vm);

    // Flip a byte inside one chunk's payload.
    let seg = first.disks[0].segments[0];
    let id = vault.segment(&seg).expect("segment").into_iter().flatten().nth(3).expect("a chunk");
    let (pack, entry) = vault.chunk_location(&id).expect("location");
    let pack_path = vault.path().join("packs").join(format!("{pack}.pack"));
    let mut bytes = fs::read(&pack_path).expect("read pack");
    let at = (entry.offset + entry.frame_len() - 10) as usize;
    bytes[at] ^= 0x40;
    fs::write(&pack_path, &bytes).expect("write pack");
    let before = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(before.problems.iter().any(|p| p.point.as_deref() == Some(first.id.as_str())), "{before:?}");

    let repaired = repair(&vault, &RepairOptions::default()).expect("repair");
    let rebuilt = repaired.rebuilt.iter().find(|r| r.pack == pack).unwrap_or_else(|| panic!("{repaired:?}"));
    assert_eq!(rebuilt.dropped, 1, "{repaired:?}");
    assert!(repaired.lost.iter().any(|p| p.point.as_deref() == Some(first.id.as_str())), "{repaired:?}");
    // A second repair finds nothing more to rewrite.
    let again = repair(&vault, &RepairOptions::default()).expect("repair again");
    assert!(again.rebuilt.is_empty(), "{again:?}");

    // The same, unchanged disk again: the damaged block is stored anew.
    let second = back_up(&vault, &vm);
    assert!(second.stats.totals.bytes_new > 0, "the damaged chunk was not stored again: {:?}", second.stats);
    let out = dir.path().join("r.img");
    restore_disk_to_path(&vault, &second, "d.img", &out, &RestoreOptions::default()).expect("restore new point");
    assert!(fs::read(&out).expect("read") == data, "the new point does not restore bit for bit");
    // Through a fresh handle too (it loads the rewritten index files).
    let reopened = Vault::open_with(vault.path(), small_packs()).expect("open");
    restore_disk_to_path(&reopened, &second, "d.img", &out, &RestoreOptions::default()).expect("restore reopened");
    assert!(fs::read(&out).expect("read") == data);

    // The old point refers to the same chunk id, which the vault holds
    // again: it restores bit for bit too, and verify reports no point; the
    // damaged frame is still named, as a problem of its pack (gc reclaims it).
    restore_disk_to_path(&reopened, &first, "d.img", &out, &RestoreOptions::default()).expect("restore old point");
    assert!(fs::read(&out).expect("read") == data, "the old point does not restore bit for bit");
    let report = verify(&reopened, &VerifyOptions::default()).expect("verify");
    assert!(report.problems.iter().all(|p| p.point.is_none()), "{report:?}");
    assert!(report.problems.iter().any(|p| p.what.contains(&pack) && p.what.contains("crc32")), "{report:?}");
    assert!(!report.problems.iter().any(|p| p.what.contains("differs from the pack")), "{report:?}");
}
