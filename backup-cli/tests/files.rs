//! Files out of a point without restoring it: `vmbackup mount` (a
//! read-only FUSE file system of the vault's points).

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::{Rng, s};

mod common;
use common::{BIN, Mount, ok};

/// Whether FUSE mounts work here; prints why not (a skip, or a failure in
/// CI).
fn fuse(test: &str) -> bool {
    if !Path::new("/dev/fuse").exists() {
        testkit::skip(test, "no /dev/fuse");
        return false;
    }
    if !testkit::have("fusermount3") {
        testkit::skip(test, "no fusermount3 (Debian package fuse3)");
        return false;
    }
    true
}

/// A disk image of `len` bytes: random data with holes, and text.
fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = rng.bytes(len);
    data[len / 4..len / 2].fill(0);
    let text = rng.text(200);
    data[..text.len().min(len / 8)].copy_from_slice(&text.as_bytes()[..text.len().min(len / 8)]);
    data
}

#[test]
fn a_mounted_vault_shows_every_point_read_only_and_equal_to_its_restore() {
    if !fuse("mount") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let (root, data) = (d.join("root.img"), d.join("data"));
    let first = image(1, 3 << 20);
    fs::write(&root, &first).expect("image");
    fs::write(&data, image(2, 1 << 20)).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&root), "--disk", s(&data)]);
    let mut second = first.clone();
    second[(2 << 20) + 17] ^= 0x5a;
    fs::write(&root, &second).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&root), "--disk", s(&data)]);
    ok(&["backup", "--vault", s(&vault), "--vm", "db", "--disk", s(&data)]);

    let at = d.join("mnt");
    let mut cmd = Command::new(BIN);
    cmd.args(["mount", "--vault", s(&vault), s(&at)]);
    let mount = Mount::start(cmd, &at, "db");
    let mut points: Vec<_> =
        fs::read_dir(at.join("web")).expect("vm folder").map(|e| e.expect("entry").path()).collect();
    points.sort();
    assert_eq!(points.len(), 2, "{points:?}");
    for point in &points {
        let id = point.file_name().expect("point id").to_string_lossy().to_string();
        let mut names: Vec<_> =
            fs::read_dir(point).expect("point folder").map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        assert_eq!(names, ["data.img", "root.img"], "point {id}");
        for (disk, file) in [("root.img", "root.img"), ("data", "data.img")] {
            let restored = d.join(format!("{id}-{disk}"));
            ok(&["restore", "--vault", s(&vault), "--vm", "web", "--point", &id, "--disk", disk, "--to", s(&restored)]);
            let cmp = testkit::output("cmp", &[s(&point.join(file)), s(&restored)]);
            assert!(
                cmp.status.success(),
                "point {id} disk {disk}: the mount differs from restore: {}",
                testkit::text(&cmp)
            );
        }
    }
    // Point ids made in the same second do not sort by time: find the newer.
    let seen: Vec<_> = points.iter().map(|p| fs::read(p.join("root.img")).expect("read")).collect();
    let newer = seen.iter().position(|b| *b == second).expect("the second point's disk is in the mount");
    assert!(seen[1 - newer] == first, "the first point's disk is in the mount");

    // Nothing in it can be written, made or removed.
    let disk = points[newer].join("root.img");
    let write = fs::OpenOptions::new().write(true).open(&disk);
    assert!(write.is_err(), "opening a mounted disk for writing must fail");
    let made = fs::File::create(points[newer].join("new"));
    assert_eq!(made.err().and_then(|e| e.raw_os_error()), Some(libc::EROFS));
    assert!(fs::remove_file(&disk).is_err(), "removing a mounted disk must fail");
    assert!(fs::read(&disk).expect("read") == second, "the disk changed");

    // The mount holds the shared lock: gc (exclusive) waits, then gives up.
    let gc = testkit::output(BIN, &["--lock-timeout", "1", "gc", "--vault", s(&vault)]);
    assert!(!gc.status.success() && testkit::text(&gc).contains("locked"), "{}", testkit::text(&gc));

    // SIGTERM unmounts it and exits cleanly.
    let (status, err) = mount.stop();
    assert!(status.success(), "vmbackup mount: {status}: {err}");
    assert!(err.contains("unmounted"), "{err}");
    assert!(!Mount::is_mounted(&at), "still mounted after SIGTERM");
    assert_eq!(fs::read_dir(&at).expect("mountpoint").count(), 0, "the mountpoint is not empty");
    ok(&["gc", "--vault", s(&vault)]);
}

#[test]
fn a_mount_of_one_point_fails_its_damaged_reads_and_says_where() {
    if !fuse("mount damage") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let root = d.join("root.img");
    fs::write(&root, image(3, 2 << 20)).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&root)]);
    // Flip a byte in the middle of every pack.
    for pack in common_walk(&vault.join("packs")) {
        let mut bytes = fs::read(&pack).expect("pack");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&pack, bytes).expect("pack");
    }
    let at = d.join("mnt");
    let mut cmd = Command::new(BIN);
    cmd.args(["mount", "--vault", s(&vault), "--vm", "web", "--point", "latest", s(&at)]);
    let mount = Mount::start(cmd, &at, "web");
    let point = fs::read_dir(at.join("web")).expect("vm").next().expect("one point").expect("entry").path();
    let read = fs::read(point.join("root.img"));
    assert_eq!(read.err().and_then(|e| e.raw_os_error()), Some(libc::EIO), "a damaged read must fail");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, err) = mount.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains("a read failed") && err.contains("disk root.img") && err.contains("bytes"), "{err}");
}

/// Every file under `dir`.
fn common_walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() { files.extend(common_walk(&p)) } else { files.push(p) }
    }
    files
}
