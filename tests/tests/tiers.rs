//! Instant-restore tiers on a real reflink file system: an XFS image,
//! loop-mounted, holds the VM's disk image, whose snapshot is a reflink
//! clone. The clone is kept after the job for the instant-restore days (the
//! point's tiers are then "snapshot" and "vault"), restores are copies of
//! it, and once released the point has the vault tier only.
//!
//! Skips, with the reason printed, when not root or when mounting is
//! impossible.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc;

use backup_core::*;
use testkit::{s, sh};

/// One XFS mount at a time in this binary: loop devices and two cores.
static MOUNTS: Mutex<()> = Mutex::new(());

/// A loop-mounted XFS with reflinks (`testkit::reflink_xfs`), unmounted
/// on drop before its folder goes.
struct Xfs {
    at: PathBuf,
    _mount: testkit::LoopMount,
    _dir: tempfile::TempDir,
}

fn xfs(test: &str) -> Option<Xfs> {
    let dir = tempfile::tempdir().expect("tempdir");
    match testkit::reflink_xfs(dir.path(), 300 << 20) {
        Ok(mount) => Some(Xfs { at: mount.0.clone(), _mount: mount, _dir: dir }),
        Err(why) => {
            testkit::skip(test, &format!("cannot mount a reflink XFS: {why}"));
            None
        }
    }
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1).collect()
}

fn clones(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("vmbackup-snap"))
        .collect()
}

/// A vault on `fs_` with one point of an 8 MiB image whose reflink clone
/// is kept for 2 days: the vault, the image, its data, the report.
fn kept_point(fs_: &Xfs, seed: u8) -> (Vault, PathBuf, Vec<u8>, BackupReport) {
    let img = fs_.at.join("root.img");
    let data = data(seed, 8 << 20);
    fs::write(&img, &data).expect("image");
    let vault = Vault::init(fs_.at.join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let mut options = BackupOptions::default();
    options.instant_restore_days = 2;
    let report = backup(&vault, &ImageFileProvider::new(), &vm, &options).expect("backup");
    (vault, img, data, report)
}

#[test]
fn a_reflink_snapshot_is_kept_restored_from_and_released_after_its_days() {
    let _serial = MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(fs_) = xfs("a_reflink_snapshot_is_kept_restored_from_and_released_after_its_days") else { return };
    let (vault, img, first, report) = kept_point(&fs_, 1);
    assert_eq!(report.point.disks[0].snapshot_method, "reflink");
    let until = report.snapshot_kept_until.expect("the clone is kept");
    assert_eq!(point_tiers(&vault, &report.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
    assert_eq!(clones(&fs_.at).len(), 1, "the clone stays beside the image");
    let kept = kept_snapshot(&vault, "web", &report.point.id).expect("record").expect("usable");
    assert_eq!(kept.expires, until);

    // The VM goes on writing; the snapshot tier still restores the point.
    fs::write(&img, data(2, 8 << 20)).expect("write");
    let out = fs_.at.join("from-snapshot.img");
    let stats = restore_disk_from_snapshot(&vault, &report.point, "root.img", &out, &RestoreOptions::default())
        .expect("restore")
        .expect("tier");
    assert_eq!(stats.size, 8 << 20);
    assert_eq!(fs::read(&out).expect("read"), first);
    let from_vault = fs_.at.join("from-vault.img");
    restore_disk_to_path(&vault, &report.point, "root.img", &from_vault, &RestoreOptions::default()).expect("vault");
    assert_eq!(fs::read(&from_vault).expect("read"), first);

    // Not yet expired: a later job keeps it; at its expiry it is released.
    assert!(release_expired(&vault, None, report.point.time).expect("release").released.is_empty());
    let r = release_expired(&vault, None, until).expect("release");
    assert_eq!(r.released.len(), 1);
    assert!(clones(&fs_.at).is_empty());
    assert_eq!(point_tiers(&vault, &report.point).expect("tiers"), [Tier::Vault]);
    assert!(
        restore_disk_from_snapshot(&vault, &report.point, "root.img", &out, &RestoreOptions::default())
            .expect("restore")
            .is_none()
    );
}

/// A device that waits for a signal before its first read.
struct Gated {
    inner: Arc<dyn BlockDevice>,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<Option<mpsc::Receiver<()>>>,
}

impl BlockDevice for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if let Some(tx) = self.entered.lock().expect("lock").take() {
            let _ = tx.send(());
        }
        if let Some(rx) = self.go.lock().expect("lock").take() {
            let _ = rx.recv();
        }
        self.inner.read_at(offset, buf)
    }
}

/// The image-file provider with its devices gated (and cancelling when told).
struct GatedProvider {
    inner: ImageFileProvider,
    entered: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<Option<mpsc::Receiver<()>>>,
}

impl SnapshotProvider for GatedProvider {
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        let mut s = self.inner.snapshot(vm, wanted)?;
        let d = &mut s.disks[0];
        d.device = Arc::new(Gated {
            inner: d.device.clone(),
            entered: Mutex::new(self.entered.lock().expect("lock").take()),
            go: Mutex::new(self.go.lock().expect("lock").take()),
        });
        Ok(s)
    }
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
        self.inner.keepable(snapshot)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn the_snapshot_tier_exists_from_the_snapshot_phase_and_a_cancel_releases_it() {
    let _serial = MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(fs_) = xfs("the_snapshot_tier_exists_from_the_snapshot_phase_and_a_cancel_releases_it") else { return };
    let img = fs_.at.join("root.img");
    fs::write(&img, data(3, 4 << 20)).expect("image");
    let vault = Vault::init(fs_.at.join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    for cancel in [false, true] {
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let provider = GatedProvider {
            inner: ImageFileProvider::new(),
            entered: Mutex::new(Some(entered_tx)),
            go: Mutex::new(Some(go_rx)),
        };
        let mut options = BackupOptions::default();
        options.instant_restore_days = 1;
        let token = options.cancel.clone();
        let before = vault.points(Some("web")).expect("points").len();
        std::thread::scope(|s| {
            let h = s.spawn(|| backup(&vault, &provider, &vm, &options));
            entered.recv().expect("the transfer started");
            // In the transfer: the snapshot is recorded and usable, the
            // point not yet committed (its tiers: snapshot only).
            let (kept, bad) = kept_snapshots(&vault, Some("web")).expect("kept");
            assert!(bad.is_empty());
            let pending: Vec<_> = kept.iter().filter(|k| vault.read_point("web", &k.point).is_err()).collect();
            assert_eq!(pending.len(), 1);
            assert!(kept_snapshot(&vault, "web", &pending[0].point).expect("read").is_some());
            // A release run meanwhile leaves a running job's snapshot alone.
            let r = release_expired(&vault, None, pending[0].taken).expect("release");
            assert!(r.released.is_empty());
            if cancel {
                token.cancel();
            }
            go.send(()).expect("go");
            let result = h.join().expect("join");
            if cancel {
                assert_eq!(result.expect_err("cancelled").kind(), ErrorKind::Cancelled);
            } else {
                let report = result.expect("backup");
                assert_eq!(report.point.id, pending[0].point);
                assert_eq!(point_tiers(&vault, &report.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
            }
        });
        let after = vault.points(Some("web")).expect("points").len();
        assert_eq!(after, before + usize::from(!cancel));
    }
    // The cancelled job's clone and record are gone; the committed one's stay.
    assert_eq!(clones(&fs_.at).len(), 1);
    assert_eq!(kept_snapshots(&vault, None).expect("kept").0.len(), 1);
}

/// The snapshot tier restores through the same safe target as the vault:
/// a link at the target is replaced, never written through; a full disk
/// or a cancel leaves nothing under the final name and no temporary file.
#[test]
fn snapshot_tier_restores_never_follow_a_link_and_leave_nothing_half_written() {
    let _serial = MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(fs_) = xfs("snapshot_tier_restores_never_follow_a_link_and_leave_nothing_half_written") else { return };
    let (vault, _, first, report) = kept_point(&fs_, 5);
    assert!(kept_snapshot(&vault, "web", &report.point.id).expect("record").is_some());

    // A link planted at the target (a folder another user owns).
    let victim = fs_.at.join("victim");
    fs::write(&victim, b"not a disk").expect("victim");
    let out = fs_.at.join("out.img");
    std::os::unix::fs::symlink(&victim, &out).expect("symlink");
    restore_disk_from_snapshot(&vault, &report.point, "root.img", &out, &RestoreOptions::default())
        .expect("restore")
        .expect("tier");
    assert_eq!(fs::read(&victim).expect("victim"), b"not a disk");
    assert!(fs::read(&out).expect("restored") == first);

    // A full disk: a 1 MiB tmpfs cannot take an 8 MiB disk.
    let small = fs_._dir.path().join("small");
    fs::create_dir_all(&small).expect("mkdir");
    sh("mount", &["-t", "tmpfs", "-o", "size=1m", "tmpfs", s(&small)]).expect("mount tmpfs");
    let full = small.join("full.img");
    let e = restore_disk_from_snapshot(&vault, &report.point, "root.img", &full, &RestoreOptions::default())
        .expect_err("no space");
    let left: Vec<_> = fs::read_dir(&small).expect("list").flatten().map(|e| e.file_name()).collect();
    let _ = sh("umount", &[s(&small)]);
    assert!(left.is_empty(), "a full disk left {left:?} ({e})");

    // A cancel before the copy: nothing made.
    let options = RestoreOptions::default();
    options.cancel.cancel();
    let cancelled = fs_.at.join("cancelled.img");
    let e = restore_disk_from_snapshot(&vault, &report.point, "root.img", &cancelled, &options).expect_err("cancel");
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert!(clones(&fs_.at).len() == 1, "only the kept clone");
    let stray: Vec<_> = fs::read_dir(&fs_.at)
        .expect("list")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.contains("cancelled") || n.contains("restoring"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
