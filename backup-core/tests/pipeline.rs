//! The engine end to end on real image files in temporary folders: chains
//! of full and incremental points restored byte for byte, change tracking,
//! cancellation, locking, and every kind of bad input.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::*;
use testkit::Rng;

/// Writes `data` at `offset` of an image, creating it.
fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path).expect("open image");
    f.write_all_at(data, offset).expect("write image");
}

fn set_len(path: &Path, len: u64) {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path).expect("open image");
    f.set_len(len).expect("size image");
}

fn restore_equals(vault: &Vault, point: &PointManifest, expected: &BTreeMap<String, Vec<u8>>, dir: &Path) {
    let out = dir.join(format!("restore-{}", point.id));
    restore_vm(vault, point, &out, &RestoreOptions::default()).expect("restore");
    assert_eq!(point.disks.len(), expected.len(), "point {} disks", point.id);
    for (name, bytes) in expected {
        let got = fs::read(out.join(name)).expect("read restored");
        assert_eq!(got.len(), bytes.len(), "size of disk {name} in point {}", point.id);
        assert!(got == *bytes, "disk {name} of point {} differs from its source", point.id);
    }
    fs::remove_dir_all(out).expect("clean restore");
}

fn snapshot_of(paths: &[&PathBuf]) -> BTreeMap<String, Vec<u8>> {
    paths
        .iter()
        .map(|p| (p.file_name().and_then(|n| n.to_str()).expect("name").to_string(), fs::read(p).expect("read")))
        .collect()
}

#[test]
fn chains_of_full_and_incremental_points_restore_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = Vault::init(d.join("vault")).expect("init");
    let provider = ImageFileProvider::new();
    let mut rng = Rng(42);
    let a = d.join("a.img");
    let b = d.join("b.img");
    let c = d.join("c.img");
    // a: 5 MiB + 1000 bytes (not a multiple of the block size), data at
    // both ends, holes between.
    set_len(&a, (5 << 20) + 1000);
    write_at(&a, 0, &rng.bytes(300_000));
    write_at(&a, (5 << 20) - 5000, &rng.bytes(6000));
    write_at(&a, 2 << 20, &b"text text text ".repeat(10_000));
    // b: 3 MiB of random data with a hole in the middle.
    set_len(&b, 3 << 20);
    write_at(&b, 0, &rng.bytes(1 << 20));
    write_at(&b, 2 << 20, &rng.bytes(1 << 20));

    let mut history = Vec::new();
    let opts = BackupOptions::default();
    let vm = Vm::from_images("vm1", &[&a, &b]).expect("vm");
    let p1 = backup(&vault, &provider, &vm, &opts).expect("full").point;
    // A point's change detection is its disks', each once.
    assert_eq!(p1.stats.totals.change_detection, "none");
    assert_eq!(p1.disks[0].stats.change_detection, "none");
    history.push((p1.clone(), snapshot_of(&[&a, &b])));

    // Small change: one block of a.
    write_at(&a, 100, b"changed");
    let p2 = backup(&vault, &provider, &vm, &opts).expect("incremental").point;
    assert_eq!(p2.parent.as_deref(), Some(p1.id.as_str()));
    assert_eq!(p2.stats.totals.bytes_new, 64 << 10, "only the changed block is new");
    assert_eq!(p2.disks[1].stats.bytes_new, 0);
    history.push((p2, snapshot_of(&[&a, &b])));

    // b grows by 1.5 MiB; a new disk c is added.
    write_at(&b, 3 << 20, &rng.bytes(3 << 19));
    set_len(&c, 1 << 20);
    write_at(&c, 4096, &rng.bytes(10_000));
    let vm = Vm::from_images("vm1", &[&a, &b, &c]).expect("vm");
    let p3 = backup(&vault, &provider, &vm, &opts).expect("grown").point;
    assert_eq!(p3.disks.len(), 3);
    assert_eq!(p3.disks[1].stats.bytes_new, 3 << 19, "only the grown part of b is new");
    history.push((p3, snapshot_of(&[&a, &b, &c])));

    // b shrinks again, and a's tail block changes.
    set_len(&b, (2 << 20) + 777);
    write_at(&a, (5 << 20) + 999, b"!");
    let p4 = backup(&vault, &provider, &vm, &opts).expect("shrunk").point;
    history.push((p4, snapshot_of(&[&a, &b, &c])));

    // A second VM shares the vault: its copy of a's data deduplicates.
    let twin = d.join("twin.img");
    fs::copy(&a, &twin).expect("copy");
    let vm2 = Vm::from_images("vm2", &[&twin]).expect("vm2");
    let q1 = backup(&vault, &provider, &vm2, &opts).expect("second vm").point;
    assert_eq!(q1.stats.totals.bytes_deduplicated, q1.stats.totals.bytes_new, "vm2's blocks are all in the vault");
    assert!(q1.stats.bytes_added < 10_000, "vm2 added only metadata, not {}", q1.stats.bytes_added);

    for (point, expected) in &history {
        restore_equals(&vault, point, expected, d);
    }
    restore_equals(&vault, &q1, &snapshot_of(&[&twin]), d);
    assert_eq!(vault.points(Some("vm1")).expect("points").len(), 4);
    assert_eq!(vault.points(None).expect("points").len(), 5);
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.points, 5);
}

#[test]
fn holes_are_never_read_and_zero_blocks_never_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("sparse.img");
    set_len(&img, 64 << 20);
    write_at(&img, 10 << 20, &[1u8; 100_000]);
    // Explicit zeros (allocated, read, but not stored).
    write_at(&img, 30 << 20, &vec![0u8; 1 << 20]);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("s", &[&img]).expect("vm");
    let p = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
    let s = &p.disks[0].stats;
    assert!(s.bytes_read <= (1 << 20) + (256 << 10), "read {} bytes of a 64 MiB sparse image", s.bytes_read);
    assert_eq!(s.bytes_new, 2 * 65536, "100000 bytes span two 64 KiB blocks");
    assert_eq!(s.bytes_zero, (64 << 20) - 2 * 65536);
}

/// An in-memory disk that tracks changes like a hypervisor's dirty bitmap:
/// each snapshot closes a generation; `changed_since(g)` is every block
/// written after generation `g`.
struct TrackedDisk {
    data: Mutex<Vec<u8>>,
    /// block -> generation of its last write
    written: Mutex<BTreeMap<u64, u64>>,
    generation: AtomicU64,
    reads: AtomicU64,
    /// When set, the tracking forgets writes (a lost bitmap).
    lie: std::sync::atomic::AtomicBool,
}

const TB: u64 = 64 << 10;

impl TrackedDisk {
    fn new(size: usize) -> Arc<Self> {
        Arc::new(TrackedDisk {
            data: Mutex::new(vec![0; size]),
            written: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(1),
            reads: AtomicU64::new(0),
            lie: false.into(),
        })
    }
    fn write(&self, offset: usize, bytes: &[u8]) {
        self.data.lock().expect("lock")[offset..offset + bytes.len()].copy_from_slice(bytes);
        if self.lie.load(Ordering::SeqCst) {
            return;
        }
        let g = self.generation.load(Ordering::SeqCst);
        let mut w = self.written.lock().expect("lock");
        for b in offset as u64 / TB..=(offset + bytes.len() - 1) as u64 / TB {
            w.insert(b, g);
        }
    }
}

/// A frozen copy of a tracked disk.
struct Frozen {
    data: Vec<u8>,
    written: BTreeMap<u64, u64>,
    generation: u64,
    reads: Arc<TrackedDisk>,
}

impl BlockDevice for Frozen {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads.reads.fetch_add(buf.len() as u64, Ordering::SeqCst);
        let o = offset as usize;
        buf.copy_from_slice(self.data.get(o..o + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
    fn changed_since(&self, token: &str, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        let Ok(since) = token.parse::<u64>() else { return Ok(None) };
        if since >= self.generation {
            return Ok(None);
        }
        Ok(Some(
            self.written
                .range(window.start / TB..window.end.div_ceil(TB))
                .filter(|(_, g)| **g >= since)
                .map(|(b, _)| b * TB..(b + 1) * TB)
                .collect(),
        ))
    }
}

struct TrackedProvider(Arc<TrackedDisk>);

impl SnapshotProvider for TrackedProvider {
    fn snapshot(&self, _vm: &Vm, _wanted: Consistency) -> Result<Snapshot> {
        let g = self.0.generation.fetch_add(1, Ordering::SeqCst);
        let frozen = Frozen {
            data: self.0.data.lock().expect("lock").clone(),
            written: self.0.written.lock().expect("lock").clone(),
            generation: g + 1,
            reads: self.0.clone(),
        };
        Ok(Snapshot {
            disks: vec![SnapshotDisk {
                name: "disk0".into(),
                device: Arc::new(frozen),
                change_token: Some((g + 1).to_string()),
                method: "host".into(),
            }],
            consistency: Consistency::Crash,
            warnings: vec![],
            provider_data: None,
        })
    }
    fn release(&self, _vm: &Vm, _snapshot: Snapshot) -> Result<()> {
        Ok(())
    }
}

fn tracked_vm() -> Vm {
    Vm {
        name: "tracked".into(),
        os: OsType::Linux,
        disks: vec![VmDisk { name: "disk0".into(), location: "mem".into() }],
    }
}

#[test]
fn change_tracking_reads_only_changed_blocks_and_an_audit_catches_a_lie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let disk = TrackedDisk::new(16 << 20);
    let mut rng = Rng(7);
    disk.write(0, &rng.bytes(16 << 20));
    let provider = TrackedProvider(disk.clone());
    let vm = tracked_vm();
    let mut opts = BackupOptions::default();
    opts.cbt_audit_rate = 0.0;
    let p1 = backup(&vault, &provider, &vm, &opts).expect("full").point;
    assert_eq!(p1.disks[0].stats.bytes_read, 16 << 20);

    disk.write(5 << 20, b"hello");
    disk.write((9 << 20) + 65530, b"across two blocks");
    disk.reads.store(0, Ordering::SeqCst);
    let p2 = backup(&vault, &provider, &vm, &opts).expect("incremental").point;
    assert_eq!(p2.disks[0].stats.change_detection, "cbt");
    assert_eq!(disk.reads.load(Ordering::SeqCst), 3 * TB, "only the three dirty blocks are read");
    assert_eq!(p2.disks[0].stats.bytes_new, 3 * TB);

    // The tracking now forgets a write: an audit of every clean block finds it.
    disk.lie.store(true, Ordering::SeqCst);
    disk.write(12 << 20, b"unseen");
    disk.lie.store(false, Ordering::SeqCst);
    opts.cbt_audit_rate = 1.0;
    let p3 = backup(&vault, &provider, &vm, &opts).expect("audited").point;
    assert!(p3.disks[0].stats.change_detection.starts_with("cbt distrusted"), "{:?}", p3.disks[0].stats);
    assert_eq!(p3.disks[0].stats.bytes_new, TB, "the unseen write is stored");
    assert!(p3.warnings.iter().any(|w| w.contains("distrusted")), "{:?}", p3.warnings);

    let expected: BTreeMap<String, Vec<u8>> =
        [("disk0".to_string(), disk.data.lock().expect("lock").clone())].into_iter().collect();
    restore_equals(&vault, &p3, &expected, dir.path());
}

/// Every file below a folder with its length, to prove a vault unchanged.
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read dir") {
            let e = e.expect("entry");
            let m = e.metadata().expect("meta");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), m.len());
            }
        }
    }
    out
}

struct CancelAfter(CancelToken, AtomicU64, u64);
impl Progress for CancelAfter {
    fn advance(&self, bytes: u64) {
        if self.1.fetch_add(bytes, Ordering::SeqCst) + bytes >= self.2 {
            self.0.cancel();
        }
    }
}

#[test]
fn a_cancelled_backup_leaves_the_vault_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("big.img");
    let mut rng = Rng(9);
    write_at(&img, 0, &rng.bytes(20 << 20));
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("c", &[&img]).expect("vm");
    backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("first");
    let before = tree(vault.path());
    write_at(&img, 0, &rng.bytes(20 << 20));
    let mut opts = BackupOptions::default();
    let cancel = CancelToken::new();
    opts.cancel = cancel.clone();
    opts.progress = Arc::new(CancelAfter(cancel, AtomicU64::new(0), 1));
    let err = backup(&vault, &ImageFileProvider::new(), &vm, &opts).expect_err("cancelled");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    // Only the job's log is added: it says the job was cancelled.
    let logs = vault.path().join("jobs");
    let without_logs =
        |t: BTreeMap<PathBuf, u64>| t.into_iter().filter(|(p, _)| !p.starts_with(&logs)).collect::<BTreeMap<_, _>>();
    assert_eq!(without_logs(tree(vault.path())), without_logs(before), "the cancelled backup left files behind");
    assert_eq!(vault.points(None).expect("points").len(), 1);
}

#[test]
fn a_locked_vault_says_so_after_its_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = VaultOptions::default();
    o.lock_timeout = Duration::from_millis(200);
    let vault = Vault::init_with(dir.path().join("vault"), o).expect("init");
    let _held = vault.lock(LockMode::Exclusive).expect("lock");
    let img = dir.path().join("x.img");
    write_at(&img, 0, b"data");
    let vm = Vm::from_images("l", &[&img]).expect("vm");
    let err = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect_err("locked");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert!(err.to_string().contains("locked"), "{err}");
}

#[test]
fn an_image_changed_while_read_in_place_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("live.img");
    write_at(&img, 0, &[5u8; 200_000]);
    let vm = Vm::from_images("live", &[&img]).expect("vm");
    let provider = ImageFileProvider { in_place_only: true };
    let snap = provider.snapshot(&vm, Consistency::Crash).expect("snapshot");
    assert_eq!(snap.disks[0].method, "in-place");
    std::thread::sleep(Duration::from_millis(20));
    write_at(&img, 300_000, b"the disk grew");
    let err = provider.check_intact(&vm, &snap).expect_err("changed");
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
    assert!(err.to_string().contains("live.img"), "{err}");
    provider.release(&vm, snap).expect("release");
}

// ---- bad input -------------------------------------------------------------

/// A point and the bytes of each of its disks when it was taken.
type PointAndSource = (PointManifest, BTreeMap<String, Vec<u8>>);

fn vault_with_two_points(dir: &Path) -> (Vault, Vm, PathBuf, Vec<PointAndSource>) {
    let img = dir.join("d.img");
    let mut rng = Rng(11);
    write_at(&img, 0, &rng.bytes(2 << 20));
    let vault = Vault::init(dir.join("vault")).expect("init");
    let vm = Vm::from_images("bad", &[&img]).expect("vm");
    let p1 = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("b1").point;
    let s1 = snapshot_of(&[&img]);
    write_at(&img, 1 << 20, &rng.bytes(1 << 20));
    let p2 = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("b2").point;
    let s2 = snapshot_of(&[&img]);
    (vault, vm, img, vec![(p1, s1), (p2, s2)])
}

fn only_file(dir: &Path, ext: &str) -> Vec<PathBuf> {
    tree(dir).into_keys().filter(|p| p.extension().is_some_and(|e| e == ext)).collect()
}

#[test]
fn a_missing_image_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("m", &[dir.path().join("nope.img")]).expect("vm");
    let err = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("nope.img"), "{err}");
    assert!(vault.points(None).expect("points").is_empty());
}

#[test]
fn a_folder_that_is_not_a_vault_and_another_versions_vault_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Vault::open(dir.path()).expect_err("not a vault");
    assert!(matches!(err, Error::NotAVault { .. }), "{err}");
    let err = Vault::open(dir.path().join("missing")).expect_err("not a vault");
    assert!(matches!(err, Error::NotAVault { .. }), "{err}");
    let v = Vault::init(dir.path().join("v")).expect("init");
    let config = v.path().join("config");
    let text = fs::read_to_string(&config).expect("config");
    fs::write(&config, text.replace("\"format_version\": 1", "\"format_version\": 99")).expect("write");
    let err = Vault::open(v.path()).expect_err("other version");
    assert!(matches!(err, Error::UnsupportedVersion { found: 99, .. }), "{err}");
    assert!(Vault::init(v.path()).is_err(), "init over an existing vault");
}

#[test]
fn a_flipped_bit_in_a_chunk_is_found_with_its_disk_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _vm, _img, points) = vault_with_two_points(dir.path());
    // Flip a bit in the first pack (the first point's chunks).
    let mut packs = only_file(&vault.path().join("packs"), "pack");
    packs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).expect("mtime"));
    let pack = &packs[0];
    let mut bytes = fs::read(pack).expect("read pack");
    let at = 16 + 52 + 1000; // inside the first chunk's payload
    bytes[at] ^= 0x10;
    fs::write(pack, &bytes).expect("write pack");
    let vault = Vault::open(vault.path()).expect("reopen");
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(!report.ok());
    let ranged: Vec<&Problem> = report.problems.iter().filter(|p| p.range.is_some()).collect();
    assert!(!ranged.is_empty(), "{:?}", report.problems);
    for p in &ranged {
        assert_eq!(p.vm.as_deref(), Some("bad"));
        assert_eq!(p.disk.as_deref(), Some("d.img"));
        assert!(p.what.contains("crc32"), "{p}");
    }
    // The first block is damaged in both points (the second shares it).
    let first = &points[0].0;
    let err = restore_vm(&vault, first, &dir.path().join("r"), &RestoreOptions::default()).expect_err("damaged");
    assert!(matches!(err, Error::DamagedRange { .. }), "{err}");
    assert!(err.is_corruption());
    assert!(!dir.path().join("r").join("d.img").exists(), "no half-restored disk under the final name");
}

#[test]
fn a_truncated_pack_is_reported_and_other_points_still_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _vm, _img, points) = vault_with_two_points(dir.path());
    // The newest pack holds only the second point's new chunks.
    let mut packs = only_file(&vault.path().join("packs"), "pack");
    packs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).expect("mtime"));
    let newest = packs.last().expect("a pack");
    let len = fs::metadata(newest).expect("meta").len();
    OpenOptions::new().write(true).open(newest).expect("open").set_len(len / 2).expect("truncate");
    let vault = Vault::open(vault.path()).expect("reopen");
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(!report.ok());
    assert!(
        report.problems.iter().any(|p| p.what.contains("truncated") || p.what.contains("footer")),
        "{:?}",
        report.problems
    );
    let second_bad = report.problems.iter().any(|p| p.point.as_deref() == Some(points[1].0.id.as_str()));
    assert!(second_bad, "{:?}", report.problems);
    assert!(!report.problems.iter().any(|p| p.point.as_deref() == Some(points[0].0.id.as_str())));
    // The first point does not use the pack and restores.
    restore_equals(&vault, &points[0].0, &points[0].1, dir.path());
    let err = restore_vm(&vault, &points[1].0, &dir.path().join("r2"), &RestoreOptions::default()).expect_err("bad");
    assert!(err.to_string().contains("d.img"), "{err}");
}

#[test]
fn a_manifest_naming_a_missing_segment_and_a_forged_manifest_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (vault, _vm, _img, points) = vault_with_two_points(dir.path());
    // Remove a segment that only the second point uses.
    let p2 = &points[1].0;
    let seg = p2.disks[0].segments[0];
    assert_ne!(seg, points[0].0.disks[0].segments[0]);
    let h = seg.to_string();
    fs::remove_file(vault.path().join("segments").join(&h[..2]).join(&h)).expect("remove segment");
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    let p = report.problems.iter().find(|p| p.point.as_deref() == Some(p2.id.as_str())).expect("problem");
    assert_eq!(p.range, Some(0..2 << 20));
    assert!(p.what.contains("missing"), "{p}");
    restore_equals(&vault, &points[0].0, &points[0].1, dir.path());

    // Change a byte of the first point's manifest: its mac no longer holds.
    let path = vault.path().join("points/bad").join(&points[0].0.id);
    let text = fs::read_to_string(&path).expect("manifest");
    fs::write(&path, text.replacen("\"crash\"", "\"application\"", 1)).expect("write");
    let err = vault.read_point("bad", &points[0].0.id).expect_err("forged");
    assert!(err.to_string().contains("mac"), "{err}");
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.problems.iter().any(|p| p.what.contains("mac mismatch")), "{:?}", report.problems);
}

#[test]
fn names_that_could_escape_the_vault_are_refused() {
    for bad in ["..", "../x", "a/b", "", ".hidden", "nul\0byte", "back\\slash"] {
        assert!(validate_name("vm name", bad).is_err(), "{bad:?} accepted");
        let vm =
            Vm { name: bad.into(), os: OsType::Other, disks: vec![VmDisk { name: "d".into(), location: "x".into() }] };
        assert!(vm.validate().is_err());
    }
}

#[test]
fn block_sizes_outside_the_range_are_refused_and_a_chain_keeps_its_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("b.img");
    write_at(&img, 0, &Rng(3).bytes(3 << 20));
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("bs", &[&img]).expect("vm");
    let mut opts = BackupOptions::default();
    for bad in [0, 4096, 65537, 8 << 20] {
        opts.block_size = bad;
        assert!(matches!(backup(&vault, &ImageFileProvider::new(), &vm, &opts), Err(Error::InvalidArgument { .. })));
    }
    opts.block_size = 1 << 20;
    let p1 = backup(&vault, &ImageFileProvider::new(), &vm, &opts).expect("1 MiB").point;
    assert_eq!(p1.disks[0].block_size, 1 << 20);
    opts.block_size = 64 << 10;
    let p2 = backup(&vault, &ImageFileProvider::new(), &vm, &opts).expect("again").point;
    assert_eq!(p2.disks[0].block_size, 1 << 20, "the chain keeps its block size");
    assert_eq!(p2.stats.totals.bytes_new, 0);
}

#[test]
fn the_latest_point_is_the_newest_readable_one_even_within_one_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("l.img");
    write_at(&img, 0, &Rng(5).bytes(200_000));
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("late", &[&img]).expect("vm");
    assert!(vault.latest_point("late").expect("latest").is_none());
    for i in 0..4u8 {
        write_at(&img, 0, &[i; 10]);
        backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
    }
    let all = vault.points(Some("late")).expect("points");
    assert_eq!(vault.latest_point("late").expect("latest").as_ref(), all.last());
    assert_eq!(all[3].parent.as_deref(), Some(all[2].id.as_str()), "a backup's parent is the newest point");
    // The newest manifest damaged: the one before it is the latest readable.
    let path = vault.path().join("points/late").join(&all[3].id);
    fs::write(&path, b"not a manifest").expect("damage");
    assert_eq!(vault.latest_point("late").expect("latest").as_ref(), Some(&all[2]));
    assert_eq!(vault.find_point("late", "latest").expect("latest"), all[2]);
}

/// Packs written around the page cache (the default) or through it
/// (`buffered_io`), and read through it (the default) or around it
/// (`direct_io`): the same bytes come back, a pack's tail that is not a
/// whole number of blocks is cut to its length, and a truncated pack is
/// still named.
#[test]
fn every_page_cache_choice_round_trips_and_still_finds_a_truncated_pack() {
    for (buffered_io, direct_io) in [(false, false), (true, false), (false, true)] {
        let mut options = VaultOptions::default();
        options.buffered_io = buffered_io;
        options.direct_io = direct_io;
        round_trips_and_finds_a_truncated_pack(options);
    }
}

fn round_trips_and_finds_a_truncated_pack(mut options: VaultOptions) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    options.pack_target_size = 1 << 20;
    let vault = Vault::init_with(d.join("vault"), options.clone()).expect("init");
    let img = d.join("d.img");
    let mut rng = Rng(5);
    set_len(&img, (6 << 20) + 12_345);
    write_at(&img, 0, &rng.bytes(3 << 20));
    write_at(&img, 4 << 20, &b"log line 17: all is well\n".repeat(50_000));
    let vm = Vm::from_images("direct", &[&img]).expect("vm");
    let p1 = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("full").point;
    let s1 = snapshot_of(&[&img]);
    write_at(&img, 1 << 20, &rng.bytes(100_000));
    let p2 = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("incremental").point;
    let s2 = snapshot_of(&[&img]);
    for p in only_file(&vault.path().join("packs"), "pack") {
        let len = fs::metadata(&p).expect("meta").len();
        let tail = fs::read(&p).expect("read pack");
        assert_eq!(&tail[tail.len() - 8..], b"VMBPEND\0", "pack {} of {len} bytes ends in its footer", p.display());
    }
    let vault = Vault::open_with(vault.path(), options.clone()).expect("reopen");
    restore_equals(&vault, &p1, &s1, d);
    restore_equals(&vault, &p2, &s2, d);
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);

    let mut packs = only_file(&vault.path().join("packs"), "pack");
    packs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).expect("mtime"));
    let first = &packs[0];
    let len = fs::metadata(first).expect("meta").len();
    OpenOptions::new().write(true).open(first).expect("open").set_len(len / 3).expect("truncate");
    let vault = Vault::open_with(vault.path(), options).expect("reopen");
    let err = restore_vm(&vault, &p1, &d.join("r"), &RestoreOptions::default()).expect_err("truncated");
    let msg = err.to_string();
    assert!(msg.contains("d.img") && msg.contains("truncated"), "{msg}");
}
