//! Copy between vaults through the library: plain to encrypted and back,
//! only what the target lacks moving, changes found from the source's
//! index, and a rerun that finds everything there.

use std::fs;
use std::path::Path;

use backup_core::*;
use testkit::Rng;

const BLOCK: usize = 64 << 10;

fn encrypted(path: &Path) -> Vault {
    let mut o = VaultOptions::default().with_key(KeySource::passphrase("second site"));
    o.kdf = KdfParams::new(64, 1, 1);
    Vault::init_with(path, o).expect("init")
}

/// The bytes of every object a point needs (packs, chunk index files,
/// segments, manifests).
fn stored(vault: &Vault) -> u64 {
    let objects = testing::objects(vault);
    ["packs/", "index/", "segments/", "points/"]
        .iter()
        .flat_map(|prefix| objects.list(prefix).expect("list"))
        .map(|k| objects.get(&k).expect("get").map_or(0, |b| b.len() as u64))
        .sum()
}

fn restored(vault: &Vault, vm: &str, id: &str, dir: &Path) -> Vec<u8> {
    let point = vault.find_point(vm, id).expect("point");
    let out = dir.join(format!("{vm}-{id}.img"));
    restore_disk_to_path(vault, &point, "root.img", &out, &RestoreOptions::default()).expect("restore");
    fs::read(out).expect("restored")
}

/// Three points of VM "web": 4 MiB of random data, then 3 and 5 blocks
/// changed.
fn three_points(vault: &Vault, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let image = dir.join("root.img");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let mut data = Rng(7).bytes(64 * BLOCK);
    let mut out = Vec::new();
    for (round, changed) in [0usize, 3, 5].into_iter().enumerate() {
        for i in 0..changed {
            let at = (i * 11 + round) % 64 * BLOCK;
            data[at..at + BLOCK].copy_from_slice(&Rng((round * 100 + i) as u64).bytes(BLOCK));
        }
        fs::write(&image, &data).expect("image");
        let p = backup(vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
        out.push((p.id, data.clone()));
    }
    out
}

#[test]
fn points_copy_plain_to_encrypted_and_back_moving_only_what_the_target_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let here = Vault::init(d.join("here")).expect("init");
    let points = three_points(&here, d);
    let there = encrypted(&d.join("there"));

    // The newest point booted once, the oldest twice (the later verdict
    // counts).
    testing::record_boot_verdict(&here, "web", &points[2].0, true, 1_000).expect("verdict");
    testing::record_boot_verdict(&here, "web", &points[0].0, false, 1_000).expect("verdict");

    // The newest point alone first: every block with data is read.
    let before = stored(&there);
    let first = copy(&here, &there, &CopyOptions::default()).expect("copy latest");
    assert_eq!(first.copied.len(), 1);
    // Its verdict and the VM's record come along, resealed with the
    // target's key.
    assert_eq!(first.verdicts_copied, [format!("web/{}", points[2].0)]);
    assert_eq!(first.vm_records_copied, ["web"]);
    assert_eq!(
        there.boot_verdict("web", &points[2].0).expect("read"),
        here.boot_verdict("web", &points[2].0).expect("read")
    );
    assert_eq!(there.vm_record("web").expect("read"), here.vm_record("web").expect("read"));
    assert_eq!(first.copied[0].id, points[2].0);
    assert_eq!(first.copied[0].bytes_read, (64 * BLOCK) as u64);
    assert_eq!(first.copied[0].bytes_lacked, (64 * BLOCK) as u64);
    assert_eq!(stored(&there) - before, first.bytes_added(), "what moved is what the target grew by");

    // Then all: the two older points hold blocks the target lacks (the
    // ones changed after them) and share the rest, which do not move.
    let mut all = CopyOptions::default();
    all.points = PointSelection::All;
    let before = stored(&there);
    testing::record_boot_verdict(&here, "web", &points[0].0, true, 2_000).expect("verdict");
    let rest = copy(&here, &there, &all).expect("copy all");
    assert_eq!(rest.verdicts_copied, [format!("web/{}", points[0].0)], "only the verdict the target lacked");
    assert!(rest.vm_records_copied.is_empty(), "the target's record is as new");
    assert!(there.boot_verdict("web", &points[0].0).expect("read").is_some_and(|v| v.passed && v.checked_at == 2_000));
    let ids: Vec<&str> = rest.copied.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, [points[0].0.as_str(), points[1].0.as_str()]);
    assert_eq!(rest.already_there, [format!("web/{}", points[2].0)]);
    assert_eq!(stored(&there) - before, rest.bytes_added());
    assert_eq!(rest.copied[0].bytes_lacked, (8 * BLOCK) as u64, "the oldest point: 8 blocks changed after it");
    // The second point's parent is in the target by now: only the 3 blocks
    // whose entries differ from it are read (and the audit's sample of the
    // 61 others, 1%), and the newest point already holds them.
    let read = rest.copied[1].bytes_read;
    assert!((3 * BLOCK as u64..=6 * BLOCK as u64).contains(&read), "{:?}", rest.copied[1]);
    assert_eq!(rest.copied[1].bytes_lacked, 0, "those blocks are the newest point's, already there");

    for (id, data) in &points {
        assert!(restored(&there, "web", id, d) == *data, "point {id} restores differently from the copy");
        let copied = there.find_point("web", id).expect("point");
        let original = here.find_point("web", id).expect("point");
        assert_eq!((copied.time, copied.consistency), (original.time, original.consistency));
    }
    assert!(verify(&there, &VerifyOptions::default()).expect("verify").ok());

    // Nothing more to move; and back into a new plain vault, whole.
    let again = copy(&here, &there, &all).expect("copy again");
    assert!(again.copied.is_empty() && again.already_there.len() == 3);
    assert!(again.verdicts_copied.is_empty() && again.vm_records_copied.is_empty());
    let back = Vault::init(d.join("back")).expect("init");
    let report = copy(&there, &back, &all).expect("copy back");
    assert_eq!(report.copied.len(), 3);
    for (id, data) in &points {
        assert!(restored(&back, "web", id, d) == *data, "point {id} restores differently after two copies");
    }
    assert!(verify(&back, &VerifyOptions::default()).expect("verify").ok());
}

#[test]
fn a_copy_names_what_it_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = Vault::init(dir.path().join("here")).expect("init");
    three_points(&here, dir.path());
    let same = Vault::open(here.path()).expect("open");
    assert!(matches!(copy(&here, &same, &CopyOptions::default()), Err(Error::InvalidArgument { .. })));
    let there = Vault::init(dir.path().join("there")).expect("init");
    let mut o = CopyOptions::default();
    o.vms = vec!["nope".into()];
    let e = copy(&here, &there, &o).expect_err("unknown vm");
    assert!(e.to_string().contains("nope"), "{e}");
    assert!("since=2026-12-01T00:00:00Z".parse::<PointSelection>().is_ok());
    assert!("yesterday".parse::<PointSelection>().is_err());
    // A damaged chunk in the source: nothing of that point is committed.
    let pack = fs::read_dir(here.path().join("packs")).expect("packs").next().expect("a pack").expect("entry").path();
    let mut bytes = fs::read(&pack).expect("pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&pack, bytes).expect("damage");
    o.vms.clear();
    o.points = PointSelection::All;
    let damaged = copy(&here, &there, &o).expect_err("damaged").to_string();
    assert!(damaged.contains("corrupt") && damaged.contains("of vm web"), "{damaged}");
    assert!(there.points(None).expect("points").len() < 3, "a point with damaged data was copied");
}
