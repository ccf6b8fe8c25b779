//! Real components: a real ext4 file system in an image file, loop-mounted
//! as root, filled with real files and churned the way a guest churns.
//! Skipped, with the reason printed, where mounting is impossible.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_core::*;
use testkit::Rng;

fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr))) }
}

/// A loop mount that is undone on drop, whatever happens.
struct Mount(PathBuf);
impl Mount {
    fn new(image: &Path, at: &Path) -> Result<Mount, String> {
        fs::create_dir_all(at).map_err(|e| e.to_string())?;
        sh("mount", &["-o", "loop", image.to_str().unwrap_or_default(), at.to_str().unwrap_or_default()])?;
        Ok(Mount(at.to_path_buf()))
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh("umount", &[self.0.to_str().unwrap_or_default()]);
    }
}

/// Why this machine cannot loop-mount, or None when it can.
fn cannot_mount(dir: &Path) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let img = dir.join("probe.img");
    if let Err(e) = fs::File::create(&img).and_then(|f| f.set_len(16 << 20)) {
        return Some(e.to_string());
    }
    if let Err(e) = sh("mkfs.ext4", &["-q", "-F", img.to_str().unwrap_or_default()]) {
        return Some(e);
    }
    Mount::new(&img, &dir.join("probe")).err()
}

/// 64 KiB blocks that differ between two images of one size.
fn changed_blocks(a: &Path, b: &Path) -> u64 {
    let (a, b) = (fs::read(a).expect("read a"), fs::read(b).expect("read b"));
    assert_eq!(a.len(), b.len());
    a.chunks(65536).zip(b.chunks(65536)).filter(|(x, y)| x != y).count() as u64
}

#[test]
fn real_ext4_churn_stores_at_most_one_and_a_half_times_the_changed_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    if let Some(why) = cannot_mount(d) {
        testkit::skip("real_ext4_churn", &format!("cannot loop-mount here: {why}"));
        return;
    }
    let img = d.join("guest.img");
    fs::File::create(&img).and_then(|f| f.set_len(512 << 20)).expect("image");
    sh("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img.to_str().expect("utf-8")])
        .expect("mkfs");
    let mnt = d.join("mnt");
    let mut rng = Rng(2026);
    {
        let _m = Mount::new(&img, &mnt).expect("mount");
        for i in 0..30 {
            fs::create_dir_all(mnt.join(format!("srv/app{i}"))).expect("dir");
            fs::write(mnt.join(format!("srv/app{i}/app.log")), rng.text(20_000)).expect("log");
            fs::write(mnt.join(format!("srv/app{i}/blob.bin")), rng.bytes(2 << 20)).expect("blob");
        }
        fs::create_dir_all(mnt.join("cache")).expect("cache");
        for i in 0..200 {
            fs::write(mnt.join(format!("cache/item{i}")), rng.bytes(50_000)).expect("cache item");
        }
    }
    let vault = Vault::init(d.join("vault")).expect("init");
    let vm = Vm::from_images("guest", &[&img]).expect("vm");
    let p1 = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("full").point;
    let before = d.join("before.img");
    fs::copy(&img, &before).expect("keep a copy");

    {
        let _m = Mount::new(&img, &mnt).expect("mount");
        // Rewrite some files, append to logs, delete a folder, write a new log.
        for i in 0..3 {
            fs::write(mnt.join(format!("srv/app{i}/blob.bin")), rng.bytes(2 << 20)).expect("rewrite");
        }
        for i in 0..10 {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(mnt.join(format!("srv/app{i}/app.log"))).expect("log");
            f.write_all(rng.text(500).as_bytes()).expect("append");
        }
        fs::remove_dir_all(mnt.join("cache")).expect("delete folder");
        fs::write(mnt.join("srv/new.log"), rng.text(5_000)).expect("new log");
    }
    let changed = changed_blocks(&before, &img);
    let p2 = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("incremental").point;
    let stored = p2.stats.bytes_added;
    let limit = changed * 65536 * 3 / 2;
    eprintln!(
        "real ext4 churn: {changed} changed 64 KiB blocks ({} MiB), incremental stored {} bytes ({:.2}x)",
        (changed * 65536) >> 20,
        stored,
        stored as f64 / (changed * 65536) as f64
    );
    assert!(changed > 50, "the churn changed only {changed} blocks");
    assert!(stored <= limit, "stored {stored} bytes for {changed} changed blocks (limit {limit})");

    for (point, source) in [(&p1, &before), (&p2, &img)] {
        let out = d.join(format!("restored-{}", point.id));
        restore_disk_to_path(&vault, point, "guest.img", &out, &RestoreOptions::default()).expect("restore");
        assert!(fs::read(&out).expect("restored") == fs::read(source).expect("source"), "point {} differs", point.id);
        sh("e2fsck", &["-fn", out.to_str().expect("utf-8")]).expect("restored file system is clean");
        fs::remove_file(out).expect("clean");
    }
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
}
