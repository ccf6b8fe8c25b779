//! Faults from outside the vault: a disk whose reads fail (retried, then the
//! job fails naming the disk and offset, committing nothing) and a vault
//! file system that fills up mid-backup (ENOSPC named with the file, no
//! partial point, gc reclaims the attempt).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backup_core::*;
use testkit::random as pseudo_random;

const MIB: u64 = 1 << 20;

/// The vault's files and their sizes, without job logs (a failed job adds
/// its log by design).
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read dir") {
            let e = e.expect("entry");
            let m = e.metadata().expect("meta");
            if e.file_name() == "jobs" && d == dir {
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), m.len());
            }
        }
    }
    out
}

/// A disk in memory whose reads fail with EIO at chosen offsets: always,
/// or only for the first `fail_times` attempts at each.
struct FlakyDisk {
    data: Vec<u8>,
    bad: Vec<u64>,
    fail_times: u32,
    attempts: AtomicU32,
}

impl BlockDevice for FlakyDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        if self.bad.iter().any(|b| (offset..end).contains(b)) {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_times {
                return Err(io::Error::from_raw_os_error(libc_eio()));
            }
        }
        let o = offset as usize;
        buf.copy_from_slice(self.data.get(o..o + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?);
        Ok(())
    }
}

fn libc_eio() -> i32 {
    5 // EIO on Linux
}

struct OneDisk(Arc<FlakyDisk>);

impl SnapshotProvider for OneDisk {
    fn snapshot(&self, _vm: &Vm, _wanted: Consistency) -> Result<Snapshot> {
        Ok(Snapshot {
            disks: vec![SnapshotDisk {
                name: "disk0".into(),
                device: self.0.clone(),
                change_token: None,
                method: "memory".into(),
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

fn flaky_vm() -> Vm {
    Vm { name: "flaky".into(), os: OsType::Linux, disks: vec![VmDisk { name: "disk0".into(), location: "mem".into() }] }
}

#[test]
fn a_disk_failing_with_eio_fails_the_job_with_disk_and_offset_after_the_retries_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let data = pseudo_random(4 * MIB as usize, 7);
    let good = Arc::new(FlakyDisk { data: data.clone(), bad: vec![], fail_times: 0, attempts: 0.into() });
    let first = backup(&vault, &OneDisk(good), &flaky_vm(), &BackupOptions::default()).expect("first backup");
    let before = tree(vault.path());

    let bad_offset = 3 * MIB + 4096; // inside the block at 3 MiB
    let disk = Arc::new(FlakyDisk {
        data: pseudo_random(4 * MIB as usize, 8),
        bad: vec![bad_offset],
        fail_times: u32::MAX,
        attempts: 0.into(),
    });
    let mut opts = BackupOptions::default();
    opts.read_retries = 3;
    let err = backup(&vault, &OneDisk(disk.clone()), &flaky_vm(), &opts).expect_err("the read never succeeds");
    match &err {
        Error::DeviceRead { vm, disk, offset, attempts, .. } => {
            assert_eq!((vm.as_str(), disk.as_str(), *offset), ("flaky", "disk0", 3 * MIB), "{err}");
            assert_eq!(*attempts, 4, "{err}");
            assert!(err.to_string().contains("(after 4 attempts)"), "{err}");
        }
        other => panic!("expected a device read error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("disk0") && msg.contains(&(3 * MIB).to_string()), "{msg}");
    assert_eq!(disk.attempts.load(Ordering::SeqCst), 4, "one read and three retries");
    assert_eq!(tree(vault.path()), before, "the failed backup left files in the vault");
    let points = vault.points(None).expect("points");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].id, first.point.id);
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());

    // No retries: one attempt.
    let disk = Arc::new(FlakyDisk { data: data.clone(), bad: vec![0], fail_times: u32::MAX, attempts: 0.into() });
    opts.read_retries = 0;
    backup(&vault, &OneDisk(disk.clone()), &flaky_vm(), &opts).expect_err("fails");
    assert_eq!(disk.attempts.load(Ordering::SeqCst), 1);
}

#[test]
fn a_read_that_fails_once_then_succeeds_is_retried_and_the_point_restores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let data = pseudo_random(2 * MIB as usize, 9);
    let disk = Arc::new(FlakyDisk { data: data.clone(), bad: vec![MIB + 17, 100], fail_times: 1, attempts: 0.into() });
    let report = backup(&vault, &OneDisk(disk.clone()), &flaky_vm(), &BackupOptions::default()).expect("retried");
    assert_eq!(disk.attempts.load(Ordering::SeqCst), 3, "one failure, then a success at each of two blocks");
    let out = dir.path().join("restored");
    restore_disk_to_path(&vault, &report.point, "disk0", &out, &RestoreOptions::default()).expect("restore");
    assert!(fs::read(&out).expect("read") == data, "restored disk differs");
}

/// Runs a command, returning whether it succeeded.
fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// A small ext4 file system on a loop device, unmounted and detached on
/// drop. None (with the reason printed) where that cannot be made.
struct LoopFs {
    mount: PathBuf,
}

impl LoopFs {
    fn new(dir: &Path, size_mib: u64) -> Option<LoopFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            testkit::skip("the full-disk test", "a loop-mounted file system needs root");
            return None;
        }
        let image = dir.join("fs.img");
        fs::File::create(&image).and_then(|f| f.set_len(size_mib * MIB)).ok()?;
        let img = image.to_str()?;
        if !run("mkfs.ext4", &["-q", "-F", "-m", "0", img]) {
            testkit::skip("the full-disk test", "mkfs.ext4 failed or is missing");
            return None;
        }
        let mount = dir.join("mnt");
        fs::create_dir(&mount).ok()?;
        if !run("mount", &["-o", "loop", img, mount.to_str()?]) {
            testkit::skip("the full-disk test", "cannot loop-mount (no loop devices in this container?)");
            return None;
        }
        Some(LoopFs { mount })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let m = self.mount.to_string_lossy().to_string();
        if !run("umount", &[&m]) {
            let _ = run("umount", &["-l", &m]);
        }
    }
}

#[test]
fn a_full_vault_file_system_fails_the_backup_clearly_and_gc_reclaims_the_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(loopfs) = LoopFs::new(dir.path(), 24) else { return };
    let vault_path = loopfs.mount.join("vault");
    let vault = Vault::init(&vault_path).expect("init");
    let small = dir.path().join("small.img");
    let small_data = pseudo_random(4 * MIB as usize, 11);
    fs::write(&small, &small_data).expect("write");
    let vm = Vm::from_images("small", &[&small]).expect("vm");
    let first = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("fits");

    // Incompressible and larger than the space left.
    let before = tree(&vault_path);
    let free_before = testkit::free_bytes(&loopfs.mount);
    let big = dir.path().join("big.img");
    fs::write(&big, pseudo_random(40 * MIB as usize, 12)).expect("write");
    let big_vm = Vm::from_images("big", &[&big]).expect("vm");
    let err = backup(&vault, &ImageFileProvider::new(), &big_vm, &BackupOptions::default()).expect_err("no space");
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(28)),
        "expected ENOSPC, got {msg}"
    );
    assert!(msg.contains(&vault_path.display().to_string()), "the error names no file: {msg}");
    assert!(vault.points(Some("big")).expect("points").is_empty(), "a partial point exists");
    let report = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(report.ok(), "{:?}", report.problems);
    let out = dir.path().join("restored");
    restore_disk_to_path(&vault, &first.point, "small.img", &out, &RestoreOptions::default()).expect("restore");
    assert!(fs::read(&out).expect("read") == small_data);

    // gc runs on what the failed backup really left (its job log aside):
    // afterwards the vault holds exactly what it held before the attempt,
    // and the file system has its space back.
    let left: Vec<_> = tree(&vault_path).into_iter().filter(|(p, n)| before.get(p) != Some(n)).collect();
    eprintln!("the failed backup left {left:?}");
    let mut gc_opts = GcOptions::default();
    gc_opts.grace = std::time::Duration::ZERO;
    gc(&vault, &gc_opts).expect("gc");
    assert_eq!(tree(&vault_path), before, "the vault differs from before the failed backup");
    let left: Vec<_> = fs::read_dir(vault_path.join("tmp")).expect("tmp").collect();
    assert!(left.is_empty(), "gc left {left:?} in tmp/");
    let free_after = testkit::free_bytes(&loopfs.mount);
    assert!(
        free_after + 64 * 1024 >= free_before,
        "free space {free_before} B before the attempt, {free_after} B after gc"
    );
    // The space is back: a small backup succeeds again.
    fs::write(&small, pseudo_random(4 * MIB as usize, 13)).expect("write");
    backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup after gc");
    drop(vault);
    drop(loopfs);
}

#[test]
fn a_dead_backups_finished_packs_are_adopted_after_a_full_check_and_damaged_ones_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vo = VaultOptions::default();
    vo.pack_target_size = 128 << 10;
    let vault = Vault::init_with(dir.path().join("vault"), vo.clone()).expect("init");
    let img = dir.path().join("d.img");
    let data = pseudo_random(2 * MIB as usize, 21);
    fs::write(&img, &data).expect("write");
    let vm = Vm::from_images("d", &[&img]).expect("vm");
    let point = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
    // Stage two of its packs as a dead backup would have left them: one
    // intact, one with a flipped byte; both leave the published set.
    let packs_dir = vault.path().join("packs");
    let mut packs: Vec<PathBuf> = fs::read_dir(&packs_dir).expect("packs").map(|e| e.expect("e").path()).collect();
    packs.sort();
    let staging = vault.path().join("tmp").join("backup-4194303-0011223344556677");
    fs::create_dir_all(staging.join("packs")).expect("mkdir");
    fs::write(staging.join("lock"), b"").expect("lock file, held by no one");
    let (good, bad) = (&packs[0], &packs[1]);
    let stem = |p: &PathBuf| p.file_stem().and_then(|s| s.to_str()).expect("id").to_string();
    for p in [good, bad] {
        fs::rename(p, staging.join("packs").join(p.file_name().expect("name"))).expect("move");
        fs::remove_file(vault.path().join("index").join(format!("{}.idx", stem(p)))).expect("rm idx");
    }
    let bad_staged = staging.join("packs").join(bad.file_name().expect("name"));
    let mut b = fs::read(&bad_staged).expect("read");
    b[100] ^= 1;
    fs::write(&bad_staged, b).expect("write");
    // A live session's folder (its lock held) is left alone.
    let live = vault.begin_backup().expect("session");
    drop(live);
    let vault = Vault::open_with(vault.path(), vo).expect("reopen");
    // Another VM with the same disk: no parent, so every block is looked
    // up in the vault (the damaged pack's chunks are stored again).
    let vm2 = Vm::from_images("e", &[&img]).expect("vm");
    let report = backup(&vault, &ImageFileProvider::new(), &vm2, &BackupOptions::default()).expect("next backup");
    assert!(good.exists(), "the intact staged pack was not adopted");
    assert!(vault.path().join("index").join(format!("{}.idx", stem(good))).exists());
    assert!(!bad.exists(), "a damaged staged pack was published");
    assert!(!staging.exists(), "the dead session's folder remains");
    // The intact pack's chunks were reused, not stored again.
    assert!(report.point.stats.totals.bytes_deduplicated >= 64 << 10, "{:?}", report.point.stats);
    let out = dir.path().join("r.img");
    restore_disk_to_path(&vault, &report.point, "d.img", &out, &RestoreOptions::default()).expect("restore");
    assert!(fs::read(&out).expect("read") == data);
    let _ = point;
}

#[test]
fn a_chunk_the_vault_lost_is_stored_again_by_the_next_incremental_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vo = VaultOptions::default();
    vo.pack_target_size = 256 << 10;
    let vault = Vault::init_with(dir.path().join("vault"), vo).expect("init");
    let img = dir.path().join("d.img");
    let data = pseudo_random(2 * MIB as usize, 31);
    fs::write(&img, &data).expect("write");
    let vm = Vm::from_images("heal", &[&img]).expect("vm");
    let first = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
    let pack = fs::read_dir(vault.path().join("packs")).expect("packs").next().expect("a pack").expect("e").path();
    fs::remove_file(&pack).expect("lose a pack");
    let second = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    assert!(second.stats.totals.bytes_new > 0, "the lost chunks were not stored again: {:?}", second.stats);
    let out = dir.path().join("r.img");
    restore_disk_to_path(&vault, &second, "d.img", &out, &RestoreOptions::default()).expect("restore");
    assert!(fs::read(&out).expect("read") == data);
    // Both points share the healed chunks: the first restores too.
    restore_disk_to_path(&vault, &first, "d.img", &out, &RestoreOptions::default()).expect("restore first");
    assert!(fs::read(&out).expect("read") == data);
}
