//! Backup jobs: phases and their log, cancel in every phase, retries with
//! backoff, and instant-restore tiers (with a provider whose snapshots are
//! full copies, so that no reflink file system is needed; tests/tests/
//! holds the same on a real XFS).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::*;

fn image(dir: &Path, name: &str, seed: u8, len: usize) -> PathBuf {
    let p = dir.join(name);
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect();
    fs::write(&p, data).expect("write image");
    p
}

/// Every file under `dir` but the job logs, with a hash of its bytes.
fn tree_without_logs(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read dir") {
            let e = e.expect("entry");
            if e.path() == dir.join("jobs") {
                continue;
            }
            if e.metadata().expect("meta").is_dir() {
                stack.push(e.path());
            } else {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                fs::read(e.path()).expect("read").hash(&mut h);
                out.insert(e.path(), h.finish());
            }
        }
    }
    out
}

/// Snapshot files the image-file provider left beside the images.
fn leftover_clones(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("vmbackup-snap") || n.contains(".copy-"))
        .collect()
}

/// A device that cancels a token on its first read.
struct CancelOnRead(Arc<dyn BlockDevice>, CancelToken);
impl BlockDevice for CancelOnRead {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.1.cancel();
        self.0.read_at(offset, buf)
    }
}

/// An image-file provider that cancels the job inside one phase and counts
/// the snapshots it took and released.
struct Canceller {
    inner: ImageFileProvider,
    at: Phase,
    token: CancelToken,
    taken: AtomicU32,
    released: AtomicU32,
}

impl Canceller {
    fn new(at: Phase, token: CancelToken) -> Canceller {
        Canceller { inner: ImageFileProvider::new(), at, token, taken: AtomicU32::new(0), released: AtomicU32::new(0) }
    }
    fn cancel_if(&self, phase: Phase) {
        if self.at == phase {
            self.token.cancel();
        }
    }
}

impl SnapshotProvider for Canceller {
    fn version(&self) -> String {
        // Unlike the plain provider's: the VM is prepared again.
        "canceller 1".into()
    }
    fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
        self.cancel_if(Phase::Prepare);
        let mut r = self.inner.prepare(vm)?;
        r.provider_version = self.version();
        Ok(r)
    }
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        let mut s = self.inner.snapshot(vm, wanted)?;
        self.taken.fetch_add(1, Ordering::SeqCst);
        self.cancel_if(Phase::Snapshot);
        if self.at == Phase::Transfer {
            for d in &mut s.disks {
                d.device = Arc::new(CancelOnRead(d.device.clone(), self.token.clone()));
            }
        }
        Ok(s)
    }
    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        self.cancel_if(Phase::Commit);
        self.inner.check_intact(vm, snapshot)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.cancel_if(Phase::Release);
        self.released.fetch_add(1, Ordering::SeqCst);
        self.inner.release(vm, snapshot)
    }
}

fn the_only_job(vault: &Vault, vm: &str, result: JobResult) -> JobRecord {
    let jobs = job_history(vault, Some(vm)).expect("history");
    let job = jobs.into_iter().rfind(|j| j.result == result).expect("a job with that result");
    assert_eq!(job.vm, vm);
    job
}

fn phases(job: &JobRecord) -> Vec<(Phase, Option<bool>)> {
    job.phases.iter().map(|p| (p.phase, p.ok)).collect()
}

#[test]
fn a_cancel_in_each_phase_before_the_manifest_leaves_the_vault_as_it_was_and_the_snapshot_released() {
    for at in [Phase::Prepare, Phase::Snapshot, Phase::Transfer, Phase::Commit] {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = image(dir.path(), "root.img", 1, 3 << 20);
        let vault = Vault::init(dir.path().join("vault")).expect("init");
        let vm = Vm::from_images("web", &[&img]).expect("vm");
        backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("first backup");
        image(dir.path(), "root.img", 2, 3 << 20);
        let before = tree_without_logs(vault.path());

        let token = CancelToken::new();
        let provider = Canceller::new(at, token.clone());
        let mut options = BackupOptions::default();
        options.cancel = token;
        let err = backup(&vault, &provider, &vm, &options).expect_err("cancelled");
        assert_eq!(err.kind(), ErrorKind::Cancelled, "cancel in {at}: {err}");
        assert_eq!(tree_without_logs(vault.path()), before, "cancel in {at} changed the vault");
        assert_eq!(vault.points(Some("web")).expect("points").len(), 1);
        assert_eq!(
            provider.taken.load(Ordering::SeqCst),
            provider.released.load(Ordering::SeqCst),
            "cancel in {at}: every snapshot taken is released"
        );
        assert!(leftover_clones(dir.path()).is_empty(), "cancel in {at}: {:?}", leftover_clones(dir.path()));

        let job = the_only_job(&vault, "web", JobResult::Cancelled);
        let mut want: Vec<(Phase, Option<bool>)> = [Phase::Prepare, Phase::Snapshot, Phase::Transfer, Phase::Commit]
            .into_iter()
            .take_while(|p| *p <= at)
            .map(|p| (p, Some(p != at)))
            .collect();
        if at != Phase::Prepare {
            want.push((Phase::Release, Some(true)));
        }
        assert_eq!(phases(&job), want, "cancel in {at}");
        assert!(job.error.as_deref().is_some_and(|e| e.contains("cancelled")), "{:?}", job.error);
        assert!(job.ended.is_some() && job.point.is_none());
    }
}

#[test]
fn a_cancel_in_the_release_phase_keeps_the_committed_point_and_releases_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 3, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let token = CancelToken::new();
    let provider = Canceller::new(Phase::Release, token.clone());
    let mut options = BackupOptions::default();
    options.cancel = token;
    options.instant_restore_days = 2;
    let report = backup(&vault, &provider, &vm, &options).expect("the point was committed before the cancel");
    assert_eq!(provider.released.load(Ordering::SeqCst), 1);
    assert!(report.snapshot_kept_until.is_none());
    assert!(report.warnings.iter().any(|w| w.contains("cancelled after the point was committed")), "{report:?}");
    assert!(leftover_clones(dir.path()).is_empty());
    let out = dir.path().join("out.img");
    restore_disk_to_path(&vault, &report.point, "root.img", &out, &RestoreOptions::default()).expect("restore");
    assert_eq!(fs::read(&out).expect("read"), fs::read(&img).expect("read"));
    let job = the_only_job(&vault, "web", JobResult::Succeeded);
    assert_eq!(job.phases.len(), 5);
    assert_eq!(job.point.as_deref(), Some(report.point.id.as_str()));
}

/// A provider whose snapshot step fails with a retryable error a few times.
struct Flaky {
    inner: ImageFileProvider,
    failures: u32,
    calls: AtomicU32,
    retryable: bool,
}

impl SnapshotProvider for Flaky {
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(Error::Provider {
                vm: vm.name.clone(),
                step: "snapshot",
                message: "the hypervisor is busy".into(),
                retryable: self.retryable,
            });
        }
        self.inner.snapshot(vm, wanted)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn a_transient_snapshot_error_is_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 4, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let mut options = BackupOptions::default();
    options.retries = 3;
    options.retry_delay = Duration::from_millis(20);

    let flaky = Flaky { inner: ImageFileProvider::new(), failures: 2, calls: AtomicU32::new(0), retryable: true };
    let started = std::time::Instant::now();
    let report = backup(&vault, &flaky, &vm, &options).expect("third try works");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_millis(60), "waits 20 then 40 ms");
    let job = the_only_job(&vault, "web", JobResult::Succeeded);
    assert_eq!(job.retries, 2);
    let delays: Vec<f64> = job
        .events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Retry { delay_seconds, phase, .. } => {
                assert_eq!(*phase, Phase::Snapshot);
                Some(*delay_seconds)
            }
            _ => None,
        })
        .collect();
    assert_eq!(delays, [0.02, 0.04], "the delay doubles");
    assert_eq!(job.point.as_deref(), Some(report.point.id.as_str()));

    // Out of retries: the job fails with the provider's error.
    let flaky = Flaky { inner: ImageFileProvider::new(), failures: 5, calls: AtomicU32::new(0), retryable: true };
    options.retries = 1;
    let err = backup(&vault, &flaky, &vm, &options).expect_err("still busy");
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    let job = the_only_job(&vault, "web", JobResult::Failed);
    assert_eq!(job.retries, 1);
    assert!(job.error.as_deref().is_some_and(|e| e.contains("the hypervisor is busy")));
    assert_eq!(phases(&job), [(Phase::Prepare, Some(true)), (Phase::Snapshot, Some(false))]);

    // A permanent error is not retried.
    let flaky = Flaky { inner: ImageFileProvider::new(), failures: 1, calls: AtomicU32::new(0), retryable: false };
    options.retries = 3;
    backup(&vault, &flaky, &vm, &options).expect_err("permanent");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_cancel_cuts_a_retry_wait_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 5, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let flaky = Flaky { inner: ImageFileProvider::new(), failures: 9, calls: AtomicU32::new(0), retryable: true };
    let mut options = BackupOptions::default();
    options.retries = 3;
    options.retry_delay = Duration::from_secs(60);
    let token = options.cancel.clone();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            token.cancel();
        });
        let err = backup(&vault, &flaky, &vm, &options).expect_err("cancelled");
        assert_eq!(err.kind(), ErrorKind::Cancelled);
    });
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn the_job_log_has_every_phase_progress_and_the_end_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 6, 2 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let report = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
    let path = vault.path().join("jobs").join("web").join(format!("{}.jsonl", report.job));
    let text = fs::read_to_string(&path).expect("the log is in the vault");
    // One JSON object a line; the first is the start, the last the end.
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(lines[0]["event"], "start");
    assert_eq!(lines[0]["vm"], "web");
    assert_eq!(lines.last().expect("end")["event"], "end");
    assert_eq!(lines.last().expect("end")["result"], "succeeded");
    assert_eq!(lines.last().expect("end")["point"], report.point.id.as_str());

    let job = read_job(&path).expect("read");
    assert_eq!(job.result, JobResult::Succeeded);
    assert_eq!(job.job, report.job);
    assert_eq!(
        phases(&job),
        [Phase::Prepare, Phase::Snapshot, Phase::Transfer, Phase::Commit, Phase::Release].map(|p| (p, Some(true)))
    );
    assert!(job.phases.iter().all(|p| p.seconds.is_some_and(|s| s >= 0.0)));
    let progress: Vec<(u64, u64)> = job
        .events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Progress { done, total, .. } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(progress.first(), Some(&(0, 2 << 20)));
    assert_eq!(progress.last(), Some(&(2 << 20, 2 << 20)));
    // The first backup prepared the VM, and says so; the in-place read warns.
    assert!(job.events.iter().any(|e| matches!(e, JobEvent::Prepared { .. })));
    assert_eq!(job.warnings, report.warnings);

    // Two more jobs, one failing: the history is in order.
    let missing = Vm::from_images("web", &[dir.path().join("gone.img")]).expect("vm");
    backup(&vault, &ImageFileProvider::new(), &missing, &BackupOptions::default()).expect_err("no image");
    backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
    let jobs = job_history(&vault, None).expect("history");
    assert_eq!(
        jobs.iter().map(|j| j.result).collect::<Vec<_>>(),
        [JobResult::Succeeded, JobResult::Failed, JobResult::Succeeded]
    );
    assert!(jobs[1].error.as_deref().is_some_and(|e| e.contains("gone.img")), "{:?}", jobs[1].error);
    assert!(job_history(&vault, Some("other")).expect("none").is_empty());
}

#[test]
fn a_killed_jobs_log_is_readable_and_shows_it_never_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 7, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let report = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup");
    let path = vault.path().join("jobs").join("web").join(format!("{}.jsonl", report.job));
    // What a kill in the transfer leaves: the lines so far, the last one cut.
    let text = fs::read_to_string(&path).expect("log");
    let cut = text.find("\"phase\":\"transfer\"").expect("transfer");
    let killed = vault.path().join("jobs").join("web").join("20000101T000000Z-000000.jsonl");
    fs::write(&killed, &text[..cut + 10]).expect("write");
    let job = read_job(&killed).expect("readable");
    assert_eq!(job.result, JobResult::Interrupted);
    assert_eq!(job.damaged_lines, 1);
    assert!(job.ended.is_none());
    assert_eq!(phases(&job), [(Phase::Prepare, Some(true)), (Phase::Snapshot, Some(true))]);
}

/// A provider whose snapshot blocks until told to go on.
struct Gate {
    inner: ImageFileProvider,
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl SnapshotProvider for Gate {
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        if let Some(tx) = self.entered.lock().expect("lock").take() {
            let _ = tx.send(());
        }
        let _ = self.go.lock().expect("lock").recv();
        self.inner.snapshot(vm, wanted)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn a_running_job_shows_as_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 8, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let gate = Gate { inner: ImageFileProvider::new(), entered: Mutex::new(Some(entered_tx)), go: Mutex::new(go_rx) };
    std::thread::scope(|s| {
        let h = s.spawn(|| backup(&vault, &gate, &vm, &BackupOptions::default()));
        entered.recv().expect("in the snapshot phase");
        let jobs = job_history(&vault, Some("web")).expect("history");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].result, JobResult::Running);
        assert_eq!(jobs[0].phases.last().map(|p| (p.phase, p.ok)), Some((Phase::Snapshot, None)));
        go.send(()).expect("go");
        h.join().expect("join").expect("backup");
    });
    assert_eq!(job_history(&vault, Some("web")).expect("history")[0].result, JobResult::Succeeded);
}

/// Image files "snapshotted" by a full copy: a snapshot that outlives its
/// job, like a reflink clone, on any file system.
struct CopyProvider {
    fail_transfer: bool,
    taken: AtomicU32,
}

struct Copies(Vec<PathBuf>);

struct FailingRead(u64);
impl BlockDevice for FailingRead {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("the disk went away"))
    }
}

impl SnapshotProvider for CopyProvider {
    fn version(&self) -> String {
        "copies 1".into()
    }
    fn snapshot(&self, vm: &Vm, _wanted: Consistency) -> Result<Snapshot> {
        let mut disks = Vec::new();
        let mut copies = Vec::new();
        for (i, d) in vm.disks.iter().enumerate() {
            let src = PathBuf::from(&d.location);
            let n = self.taken.fetch_add(1, Ordering::SeqCst);
            let copy = src.with_file_name(format!(".{}.copy-{i}-{n}", d.name));
            fs::copy(&src, &copy).expect("copy");
            let device: Arc<dyn BlockDevice> = if self.fail_transfer {
                Arc::new(FailingRead(fs::metadata(&copy).expect("meta").len()))
            } else {
                Arc::new(RawImage::open(&copy)?)
            };
            disks.push(SnapshotDisk { name: d.name.clone(), device, change_token: None, method: "copy".into() });
            copies.push(copy);
        }
        Ok(Snapshot {
            disks,
            consistency: Consistency::Crash,
            warnings: Vec::new(),
            provider_data: Some(Box::new(Copies(copies))),
        })
    }
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
        let c = snapshot.provider_data.as_ref()?.downcast_ref::<Copies>()?;
        Some(snapshot.disks.iter().zip(&c.0).map(|(d, p)| KeptDisk { name: d.name.clone(), path: p.clone() }).collect())
    }
    fn release(&self, _vm: &Vm, snapshot: Snapshot) -> Result<()> {
        if let Some(c) = snapshot.provider_data.and_then(|d| d.downcast::<Copies>().ok()) {
            for p in c.0 {
                let _ = fs::remove_file(p);
            }
        }
        Ok(())
    }
}

#[test]
fn a_kept_snapshot_gives_the_snapshot_tier_until_it_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 9, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let provider = CopyProvider { fail_transfer: false, taken: AtomicU32::new(0) };
    let mut options = BackupOptions::default();
    options.instant_restore_days = 2;
    let first = backup(&vault, &provider, &vm, &options).expect("backup");
    let until = first.snapshot_kept_until.expect("kept");
    assert_eq!(until, first.point.time.checked_add(jiff::SignedDuration::from_hours(48)).expect("ts"));
    assert_eq!(point_tiers(&vault, &first.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
    assert_eq!(leftover_clones(dir.path()).len(), 1, "the copy is kept");
    let job = the_only_job(&vault, "web", JobResult::Succeeded);
    assert!(job.events.iter().any(|e| matches!(e, JobEvent::SnapshotKept { .. })));

    // Restore from the snapshot tier: the snapshot's bytes.
    let original = fs::read(&img).expect("read");
    image(dir.path(), "root.img", 10, 1 << 20);
    let out = dir.path().join("out.img");
    let stats = restore_disk_from_snapshot(&vault, &first.point, "root.img", &out, &RestoreOptions::default())
        .expect("restore")
        .expect("tier");
    assert_eq!(stats.size, 1 << 20);
    assert_eq!(fs::read(&out).expect("read"), original);

    // A second job keeps its own; the first is not expired yet.
    let second = backup(&vault, &provider, &vm, &options).expect("backup");
    assert_eq!(point_tiers(&vault, &second.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
    assert_eq!(point_tiers(&vault, &first.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
    assert_eq!(kept_snapshots(&vault, Some("web")).expect("kept").0.len(), 2);

    // Past the first's expiry: it is released, the second stays.
    assert!(second.snapshot_kept_until.expect("kept") > until);
    let report = release_expired(&vault, None, until).expect("release");
    assert_eq!(report.released.len(), 1);
    assert_eq!(report.released[0].0.point, first.point.id);
    assert_eq!(report.released[0].1, "expired");
    assert_eq!(point_tiers(&vault, &first.point).expect("tiers"), [Tier::Vault]);
    assert_eq!(point_tiers(&vault, &second.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
    assert!(
        restore_disk_from_snapshot(&vault, &first.point, "root.img", &out, &RestoreOptions::default())
            .expect("restore")
            .is_none()
    );
    assert_eq!(leftover_clones(dir.path()).len(), 1);

    // A changed snapshot file is no tier: the listing stays true.
    let kept = kept_snapshot(&vault, "web", &second.point.id).expect("read").expect("kept");
    fs::write(&kept.disks[0].path, b"scribbled").expect("write");
    assert_eq!(point_tiers(&vault, &second.point).expect("tiers"), [Tier::Vault]);
}

/// A device whose first read blocks until the test says go: the job holds
/// in its transfer phase, after its snapshot phase kept the snapshot.
struct HeldRead {
    inner: Arc<dyn BlockDevice>,
    gate: Arc<TransferGate>,
}

struct TransferGate {
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl BlockDevice for HeldRead {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let first = self.gate.entered.lock().expect("lock").take();
        if let Some(tx) = first {
            let _ = tx.send(());
            let _ = self.gate.go.lock().expect("lock").recv();
        }
        self.inner.read_at(offset, buf)
    }
}

/// Copies whose transfer is held at its first read.
struct HeldCopies {
    inner: CopyProvider,
    gate: Arc<TransferGate>,
}

impl SnapshotProvider for HeldCopies {
    fn version(&self) -> String {
        self.inner.version()
    }
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        let mut snap = self.inner.snapshot(vm, wanted)?;
        for d in &mut snap.disks {
            d.device = Arc::new(HeldRead { inner: d.device.clone(), gate: self.gate.clone() });
        }
        Ok(snap)
    }
    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<KeptDisk>> {
        self.inner.keepable(snapshot)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn a_point_restores_from_its_snapshot_tier_while_its_job_still_transfers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = image(dir.path(), "root.img", 14, 1 << 20);
    let data = image(dir.path(), "data.img", 15, 3 << 19);
    let originals = [fs::read(&root).expect("read"), fs::read(&data).expect("read")];
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&root, &data]).expect("vm");
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(TransferGate { entered: Mutex::new(Some(entered_tx)), go: Mutex::new(go_rx) });
    let provider = HeldCopies { inner: CopyProvider { fail_transfer: false, taken: AtomicU32::new(0) }, gate };
    let mut options = BackupOptions::default();
    options.instant_restore_days = 2;
    let report = std::thread::scope(|s| {
        // Owned here, so a failed assertion below drops it while unwinding
        // and the held job goes on: the test fails instead of hanging.
        let go = go;
        let h = s.spawn(|| backup(&vault, &provider, &vm, &options));
        entered.recv_timeout(std::time::Duration::from_secs(120)).expect("in the transfer phase");
        // No manifest yet: the point is the kept snapshot alone.
        assert!(vault.points(Some("web")).expect("points").is_empty());
        let (only, bad) = snapshot_only_points(&vault, Some("web")).expect("in flight");
        assert!(bad.is_empty());
        assert_eq!(only.len(), 1);
        let point = only[0].point.clone();
        let names: Vec<(&str, u64)> = only[0].disks.iter().map(|d| (d.name.as_str(), d.size)).collect();
        assert_eq!(names, [("root.img", 1 << 20), ("data.img", 3 << 19)]);
        // The VM's disks change after the snapshot; the restore has the
        // snapshot's bytes.
        image(dir.path(), "root.img", 16, 1 << 20);
        let one = dir.path().join("one.img");
        let stats = restore_from_snapshot(&vault, "web", &point, Some("1"), &one, &RestoreOptions::default())
            .expect("restore")
            .expect("tier");
        assert_eq!((stats.len(), stats[0].disk.as_str(), stats[0].size), (1, "data.img", 3 << 19));
        assert_eq!(fs::read(&one).expect("read"), originals[1]);
        let all = dir.path().join("all");
        let stats = restore_from_snapshot(&vault, "web", &point, None, &all, &RestoreOptions::default())
            .expect("restore")
            .expect("tier");
        assert_eq!(stats.len(), 2);
        assert_eq!(fs::read(all.join("root.img")).expect("read"), originals[0]);
        assert_eq!(fs::read(all.join("data.img")).expect("read"), originals[1]);
        assert!(matches!(
            restore_from_snapshot(&vault, "web", &point, Some("swap"), &one, &RestoreOptions::default()),
            Err(Error::NotFound { .. })
        ));
        go.send(()).expect("go");
        let report = h.join().expect("join").expect("backup");
        assert_eq!(report.point.id, point);
        report
    });
    assert!(snapshot_only_points(&vault, Some("web")).expect("in flight").0.is_empty());
    assert_eq!(point_tiers(&vault, &report.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);

    // A clone changed since it was kept is no tier: nothing is restored.
    let (kept, _) = kept_snapshots(&vault, Some("web")).expect("kept");
    fs::write(&kept[0].disks[1].path, b"scribbled").expect("write");
    let out = dir.path().join("late.img");
    assert!(
        restore_from_snapshot(&vault, "web", &report.point.id, Some("data.img"), &out, &RestoreOptions::default())
            .expect("ok")
            .is_none()
    );
    assert!(!out.exists());
}

#[test]
fn a_failed_job_releases_the_snapshot_it_meant_to_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 11, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let mut options = BackupOptions::default();
    options.instant_restore_days = 2;
    backup(&vault, &CopyProvider { fail_transfer: true, taken: AtomicU32::new(0) }, &vm, &options)
        .expect_err("the disk went away");
    assert!(leftover_clones(dir.path()).is_empty());
    assert!(kept_snapshots(&vault, None).expect("kept").0.is_empty());
    assert!(vault.points(None).expect("points").is_empty());
}

#[test]
fn a_snapshot_that_cannot_outlive_its_job_is_released_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 12, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let mut provider = ImageFileProvider::new();
    provider.in_place_only = true;
    let mut options = BackupOptions::default();
    options.instant_restore_days = 2;
    let report = backup(&vault, &provider, &vm, &options).expect("backup");
    assert!(report.snapshot_kept_until.is_none());
    assert!(report.warnings.iter().any(|w| w.contains("cannot be kept for instant restore")), "{report:?}");
    assert_eq!(point_tiers(&vault, &report.point).expect("tiers"), [Tier::Vault]);
    options.instant_restore_days = 31;
    assert!(matches!(backup(&vault, &provider, &vm, &options), Err(Error::InvalidArgument { .. })));
}

#[test]
fn snapshots_of_pruned_points_and_of_killed_jobs_are_released_before_their_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path(), "root.img", 13, 1 << 20);
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&img]).expect("vm");
    let provider = CopyProvider { fail_transfer: false, taken: AtomicU32::new(0) };
    let mut options = BackupOptions::default();
    options.instant_restore_days = 30;
    let pruned = backup(&vault, &provider, &vm, &options).expect("backup");
    let killed = backup(&vault, &provider, &vm, &options).expect("backup");
    let kept = backup(&vault, &provider, &vm, &options).expect("backup");
    assert_eq!(leftover_clones(dir.path()).len(), 3);
    let points = vault.path().join("points").join("web");
    // Prune removes a manifest; a job killed before its commit has none, and
    // its log no end record.
    fs::remove_file(points.join(&pruned.point.id)).expect("prune");
    fs::remove_file(points.join(&killed.point.id)).expect("remove");
    let log = vault.path().join("jobs").join("web").join(format!("{}.jsonl", killed.job));
    let text = fs::read_to_string(&log).expect("log");
    let cut: Vec<&str> = text.lines().take_while(|l| !l.contains("\"phase\":\"commit\"")).collect();
    fs::write(&log, cut.join("\n") + "\n").expect("write");

    let report = release_expired(&vault, Some("web"), kept.point.time).expect("release");
    let mut why: Vec<(String, String)> = report.released.iter().map(|(k, w)| (k.point.clone(), w.clone())).collect();
    why.sort();
    let mut want = vec![
        (pruned.point.id.clone(), "point pruned".to_string()),
        (killed.point.id.clone(), "job ended without its point".to_string()),
    ];
    want.sort();
    assert_eq!(why, want);
    assert_eq!(report.kept.len(), 1);
    assert_eq!(leftover_clones(dir.path()).len(), 1);
    assert_eq!(point_tiers(&vault, &kept.point).expect("tiers"), [Tier::Snapshot, Tier::Vault]);
}

/// Hands out a change token per snapshot and records the previous tokens
/// the job passed in.
struct Checkpointing {
    inner: ImageFileProvider,
    taken: AtomicU32,
    seen: Arc<Mutex<Vec<Tokens>>>,
}

/// The previous point's change tokens a snapshot was told: (disk, token).
type Tokens = Vec<(String, String)>;

impl SnapshotProvider for Checkpointing {
    fn snapshot(&self, _vm: &Vm, _wanted: Consistency) -> Result<Snapshot> {
        unreachable!("the job calls snapshot_since")
    }
    fn snapshot_since(&self, vm: &Vm, wanted: Consistency, previous: &[(String, String)]) -> Result<Snapshot> {
        self.seen.lock().expect("lock").push(previous.to_vec());
        let n = self.taken.fetch_add(1, Ordering::SeqCst);
        let mut s = self.inner.snapshot(vm, wanted)?;
        for d in &mut s.disks {
            d.change_token = Some(format!("checkpoint-{n}"));
        }
        Ok(s)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn a_snapshot_is_told_the_previous_points_change_tokens_through_the_wrappers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("root.img");
    fs::write(&image, vec![5u8; 1 << 20]).expect("image");
    let vault = Vault::init(dir.path().join("vault")).expect("init");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = Checkpointing { inner: ImageFileProvider::new(), taken: AtomicU32::new(0), seen: seen.clone() };
    // Through both wrappers a host may put around its provider.
    let throttle = Arc::new(Throttle::new(1 << 40).expect("throttle"));
    let provider = ConsistentProvider::new(ThrottledProvider::new(inner, throttle));
    let first = backup(&vault, &provider, &vm, &BackupOptions::default()).expect("first");
    assert_eq!(first.point.disks[0].change_token.as_deref(), Some("checkpoint-0"));
    backup(&vault, &provider, &vm, &BackupOptions::default()).expect("second");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, vec![vec![], vec![("root.img".to_string(), "checkpoint-0".to_string())]]);
}
