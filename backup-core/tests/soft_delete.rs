//! Soft delete through the library: in an encrypted vault, against a
//! tampered deleted manifest, and after a move a crash cut short.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use backup_core::*;
use testkit::Rng;

fn encrypted(path: &Path) -> Vault {
    let mut o = VaultOptions::default().with_key(KeySource::passphrase("soft delete"));
    o.kdf = KdfParams::new(64, 1, 1);
    Vault::init_with(path, o).expect("init")
}

/// Two points of VM "web" (the first one's data differs wholly from the
/// second's), and the bytes each restores to.
fn two_points(vault: &Vault, dir: &Path) -> [(PointManifest, Vec<u8>); 2] {
    let image = dir.join("root.img");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let mut out = Vec::new();
    for seed in [1, 2] {
        let data = Rng(seed).bytes(1 << 20);
        fs::write(&image, &data).expect("image");
        let p = backup(vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
        out.push((p, data));
    }
    out.try_into().expect("two")
}

fn restored(vault: &Vault, point: &PointManifest, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.img", point.id));
    restore_disk_to_path(vault, point, "root.img", &out, &RestoreOptions::default()).expect("restore");
    fs::read(out).expect("restored")
}

fn gc_at(vault: &Vault, days_from_now: u64) -> GcReport {
    let mut o = GcOptions::default();
    o.grace = Duration::ZERO;
    o.repack_threshold = 0.0;
    o.now = Some(SystemTime::now() + Duration::from_secs(days_from_now * 86_400));
    gc(vault, &o).expect("gc")
}

#[test]
fn an_encrypted_vault_undeletes_a_point_that_restores_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = encrypted(&dir.path().join("vault"));
    let [(p1, d1), (p2, d2)] = two_points(&vault, dir.path());
    let gone = delete_point(&vault, "web", &p1.id).expect("delete");
    assert_eq!(gone.point, p1);
    // Seven days on the point's data is still there; undeleted, it restores.
    let held = gc_at(&vault, 7);
    assert_eq!((held.deleted_points_kept, held.chunks_removed), (1, 0), "{held:?}");
    assert_eq!(undelete_point(&vault, "web", &p1.id).expect("undelete"), p1);
    assert!(restored(&vault, &p1, dir.path()) == d1);
    // Deleted again and fifteen days on, it is gone and only p2 remains.
    delete_point(&vault, "web", &p1.id).expect("delete");
    let purged = gc_at(&vault, 15);
    assert_eq!(purged.deleted_points_purged, 1, "{purged:?}");
    assert!(purged.chunks_removed >= 16, "{purged:?}");
    assert!(matches!(undelete_point(&vault, "web", &p1.id), Err(Error::NotFound { .. })));
    assert!(restored(&vault, &p2, dir.path()) == d2);
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
}

#[test]
fn a_tampered_deleted_manifest_is_refused_and_stops_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("vault");
    let vault = encrypted(&root);
    let [(p1, _), _] = two_points(&vault, dir.path());
    delete_point(&vault, "web", &p1.id).expect("delete");
    let copy = root.join("deleted/web").join(&p1.id);
    let mut bytes = fs::read(&copy).expect("deleted manifest");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&copy, bytes).expect("tamper");
    assert!(matches!(deleted_points(&vault, None), Err(Error::Tampered { .. })));
    assert!(matches!(undelete_point(&vault, "web", &p1.id), Err(Error::Tampered { .. })));
    assert!(copy.exists(), "a damaged manifest must stay where it is");
    let mut o = GcOptions::default();
    o.grace = Duration::ZERO;
    let refused = gc(&vault, &o).expect_err("gc must refuse");
    assert!(refused.to_string().contains("deleted point") && refused.to_string().contains(&p1.id), "{refused}");
}

#[test]
fn a_move_cut_short_leaves_the_point_live_and_gc_removes_the_stale_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("vault");
    let vault = Vault::init(&root).expect("init");
    let [(p1, d1), _] = two_points(&vault, dir.path());
    // A delete killed after its copy, before the removal: both places.
    fs::create_dir_all(root.join("deleted/web")).expect("mkdir");
    fs::copy(root.join("points/web").join(&p1.id), root.join("deleted/web").join(&p1.id)).expect("copy");
    assert!(deleted_points(&vault, None).expect("list").is_empty(), "a live point is listed as deleted");
    assert_eq!(vault.points(Some("web")).expect("points").len(), 2);
    let report = gc_at(&vault, 0);
    assert_eq!((report.deleted_points_kept, report.deleted_points_purged, report.chunks_removed), (0, 0, 0));
    assert!(!root.join("deleted/web").join(&p1.id).exists(), "gc left the stale copy");
    assert!(restored(&vault, &p1, dir.path()) == d1);
    // An old stale copy does not make a later delete expire early.
    fs::copy(root.join("points/web").join(&p1.id), root.join("deleted/web").join(&p1.id)).expect("copy");
    let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
    fs::File::options()
        .write(true)
        .open(root.join("deleted/web").join(&p1.id))
        .and_then(|f| f.set_modified(old))
        .expect("age");
    delete_point(&vault, "web", &p1.id).expect("delete");
    let held = gc_at(&vault, 1);
    assert_eq!(held.deleted_points_kept, 1, "{held:?}");
    assert_eq!(deleted_points(&vault, Some("web")).expect("list")[0].point, p1);
}
