//! Consistent snapshots on real file systems: an XFS file system (for
//! reflinks) in a loop-mounted image holds the guest's ext4 disk image,
//! which is itself loop-mounted as the guest's file system. Pre/post
//! scripts, `FIFREEZE` with its watchdog, the fallback table of DESIGN.md,
//! and prepare on the first backup.
//!
//! Tests that mount skip, with the reason printed, when not root or when
//! mounting is impossible; the script and prepare tests run anywhere.
//! Every timeout is short, so the whole file runs in seconds.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backup_core::*;
use testkit::{LoopMount, s, sh, write_within};

/// Mount tests run one at a time: they share loop devices and two cores,
/// and the watchdog tests measure time.
static MOUNTS: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    MOUNTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// An XFS file system with reflinks holding the guest's ext4 image, the
/// guest's file system mounted from it, and a vault.
struct Fixture {
    // Field order is drop order: the guest before the XFS under it.
    guest_mount: LoopMount,
    _xfs_mount: LoopMount,
    dir: tempfile::TempDir,
    image: PathBuf,
    vault: Vault,
    vm: Vm,
}

impl Fixture {
    fn guest(&self) -> &Path {
        &self.guest_mount.0
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The fixture, or None (with the reason printed) where it cannot be built.
fn fixture(test: &str) -> Option<Fixture> {
    for tool in ["mkfs.xfs", "mkfs.ext4", "e2fsck", "debugfs", "fsfreeze"] {
        if sh("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            testkit::skip(test, &format!("{tool} is not installed (scripts/setup.sh installs it)"));
            return None;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (guest_mount, xfs, image) = match testkit::guest_on_xfs(dir.path(), 64 << 20) {
        Ok(m) => m,
        Err(why) => {
            testkit::skip(test, &format!("cannot build the XFS + ext4 loop mounts: {why}"));
            return None;
        }
    };
    let vault = Vault::init(dir.path().join("vault")).expect("init vault");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    Some(Fixture { guest_mount, _xfs_mount: xfs, dir, image, vault, vm })
}

/// Writes an executable script owned by the current user, mode 0700.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).expect("chmod");
    p
}

/// Scripts with short timeouts; pass None for a stage with no script.
fn scripts(pre: Option<&Path>, post: Option<&Path>, continue_on_failure: bool, freeze: bool) -> ScriptsConfig {
    let mut c = ScriptsConfig::default();
    c.pre_script = pre.map(Path::to_path_buf);
    c.post_script = post.map(Path::to_path_buf);
    c.continue_on_failure = continue_on_failure;
    c.fs_freeze_enabled = freeze;
    c.timeout = Duration::from_secs(5);
    c.poll_interval = Duration::from_millis(50);
    c
}

fn options(consistency: Consistency) -> BackupOptions {
    let mut o = BackupOptions::default();
    o.consistency = consistency;
    o
}

/// Restores a point's disk and checks its file system with `e2fsck -fn`;
/// returns the restored image.
fn restore_and_fsck(f: &Fixture, point: &PointManifest) -> PathBuf {
    let out = f.path(&format!("restored-{}.img", point.id));
    restore_disk_to_path(&f.vault, point, "root.img", &out, &RestoreOptions::default()).expect("restore");
    if let Err(e) = sh("e2fsck", &["-fn", s(&out)]) {
        panic!("point {} ({}) restores to an unclean file system: {e}", point.id, point.consistency);
    }
    out
}

/// A file's content in an ext4 image, read without mounting it.
fn cat_in_image(image: &Path, file: &str) -> Option<String> {
    let out = sh("debugfs", &["-R", &format!("cat {file}"), s(image)]).ok()?;
    // debugfs prints nothing (and complains on stderr) for a missing file.
    if out.is_empty() { None } else { Some(out) }
}

/// Clones the snapshot left behind beside the image.
fn leftover_clones(f: &Fixture) -> Vec<String> {
    let dir = f.image.parent().expect("image folder");
    fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("vmbackup-snap"))
        .collect()
}

/// A guest application: writes and rewrites files until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(dir: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let (st, wr, dir) = (Arc::clone(&stop), Arc::clone(&written), dir.join("app"));
        fs::create_dir_all(&dir).expect("app dir");
        let thread = std::thread::spawn(move || {
            let mut n = 0usize;
            while !st.load(Ordering::Relaxed) {
                let body = format!("record {n}\n").repeat(200 + n % 700);
                let _ = fs::write(dir.join(format!("f{}", n % 60)), body);
                if n.is_multiple_of(7) {
                    let _ = fs::remove_file(dir.join(format!("f{}", (n + 30) % 60)));
                }
                n += 1;
                wr.store(n, Ordering::Relaxed);
            }
        });
        Writer { stop, written, thread: Some(thread) }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn file_system_consistent_points_of_a_busy_guest_restore_clean_with_the_pre_script_files() {
    let _serial = serial();
    let Some(f) = fixture("busy guest") else { return };
    let tools = f.path("tools");
    fs::create_dir_all(&tools).expect("tools");
    let count = tools.join("count");
    let pre = script(
        &tools,
        "pre.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
             echo \"flushed $n for $VMBACKUP_VM\" > {g}/app-flushed-$n\necho pre ran $n",
            c = s(&count),
            g = s(f.guest())
        ),
    );
    let post = script(&tools, "post.sh", &format!("echo resumed >> {}", s(&tools.join("post.log"))));
    let config = tools.join("VMSnapshotScriptPluginConfig.json");
    fs::write(
        &config,
        serde_json::json!({
            "pluginName": "ScriptRunner",
            "preScriptLocation": pre,
            "postScriptLocation": post,
            "preScriptParams": ["", ""],
            "postScriptParams": ["", ""],
            "preScriptNoOfRetries": 0,
            "postScriptNoOfRetries": 0,
            "timeoutInSeconds": 10,
            "continueBackupOnFailure": true,
            "fsFreezeEnabled": true,
            "ScriptsExecutionPollTimeSeconds": 1
        })
        .to_string(),
    )
    .expect("config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod");
    let provider = ConsistentProvider::new(ImageFileProvider::new())
        .with_scripts(ScriptsConfig::load(&config).expect("load config"))
        .with_freeze([f.guest()])
        .with_freeze_timeout(Duration::from_secs(10));

    let writer = Writer::start(f.guest());
    let mut points = Vec::new();
    for i in 1..=4 {
        // Let the writer get some work in between.
        let before = writer.written.load(Ordering::Relaxed);
        while writer.written.load(Ordering::Relaxed) < before + 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let wanted = if i % 2 == 0 { Consistency::FileSystem } else { Consistency::Application };
        let report = backup(&f.vault, &provider, &f.vm, &options(wanted)).expect("backup");
        let p = report.point;
        assert_eq!(p.consistency, wanted, "point {i}: {:?}", p.warnings);
        assert_eq!(p.disks[0].snapshot_method, "reflink", "the image is on XFS");
        assert!(p.warnings.iter().any(|w| w.contains("froze")), "{:?}", p.warnings);
        if wanted == Consistency::Application {
            assert!(p.warnings.iter().any(|w| w.contains("pre-script") && w.contains("pre ran")), "{:?}", p.warnings);
        }
        assert!(leftover_clones(&f).is_empty(), "the clone is removed at release: {:?}", leftover_clones(&f));
        points.push(p);
    }
    let written = writer.written.load(Ordering::Relaxed);
    drop(writer);
    assert!(written > 200, "the writer wrote only {written} files during the backups");
    assert_eq!(fs::read_to_string(tools.join("post.log")).expect("post log").lines().count(), 2);

    let mut pre_runs = 0;
    for p in &points {
        let restored = restore_and_fsck(&f, p);
        if p.consistency == Consistency::Application {
            pre_runs += 1;
            // Every file the pre-script wrote up to this point is there.
            for n in 1..=pre_runs {
                let got = cat_in_image(&restored, &format!("/app-flushed-{n}"));
                assert_eq!(got.as_deref(), Some(format!("flushed {n} for web\n").as_str()), "point {}", p.id);
            }
        }
        let listing = sh("debugfs", &["-R", "ls /app", s(&restored)]).expect("debugfs ls");
        assert!(listing.contains("f1"), "the writer's files are in point {}: {listing}", p.id);
        fs::remove_file(restored).expect("clean");
    }
    assert!(verify(&f.vault, &VerifyOptions::default()).expect("verify").ok());
}

/// One backup through a provider; the point, or the error.
fn run(f: &Fixture, provider: &dyn SnapshotProvider, wanted: Consistency) -> Result<PointManifest, Error> {
    backup(&f.vault, provider, &f.vm, &options(wanted)).map(|r| r.point)
}

#[test]
fn every_row_of_the_fallback_table_gives_its_consistency() {
    let _serial = serial();
    let Some(f) = fixture("fallback table") else { return };
    let tools = f.path("tools");
    fs::create_dir_all(&tools).expect("tools");
    let post_log = tools.join("post.log");
    let ok = script(&tools, "ok.sh", &format!("echo pre ok >> {}", s(&tools.join("pre.log"))));
    let bad = script(&tools, "bad.sh", "echo broken application >&2; exit 3");
    let post = script(&tools, "post.sh", &format!("echo post >> {}", s(&post_log)));
    let post_runs = || fs::read_to_string(&post_log).map_or(0, |t| t.lines().count());
    let points = || f.vault.points(Some("web")).expect("points").len();
    let base = || ConsistentProvider::new(ImageFileProvider::new()).with_freeze_timeout(Duration::from_secs(10));
    let guest = [f.guest().to_path_buf()];
    let app = Consistency::Application;

    // scripts succeed | freeze succeeds -> application
    let p = run(&f, &base().with_scripts(scripts(Some(&ok), Some(&post), true, true)).with_freeze(guest.clone()), app)
        .expect("row 1");
    assert_eq!(p.consistency, Consistency::Application, "{:?}", p.warnings);
    assert_eq!(post_runs(), 1);

    // scripts succeed | freeze disabled (fsFreezeEnabled false, or no mounts) -> application
    let p = run(&f, &base().with_scripts(scripts(Some(&ok), Some(&post), true, false)).with_freeze(guest.clone()), app)
        .expect("row 1, freeze disabled");
    assert_eq!(p.consistency, Consistency::Application, "{:?}", p.warnings);
    assert!(!p.warnings.iter().any(|w| w.starts_with("froze")), "{:?}", p.warnings);
    let p = run(&f, &base().with_scripts(scripts(Some(&ok), None, true, true)), app).expect("row 1, no mounts");
    assert_eq!(p.consistency, Consistency::Application, "{:?}", p.warnings);

    // scripts fail, continue | freeze succeeds -> file system
    let p = run(&f, &base().with_scripts(scripts(Some(&bad), Some(&post), true, true)).with_freeze(guest.clone()), app)
        .expect("row 2");
    assert_eq!(p.consistency, Consistency::FileSystem, "{:?}", p.warnings);
    assert_eq!(p.wanted_consistency, Consistency::Application);
    assert!(p.warnings.iter().any(|w| w.contains("broken application")), "script output kept: {:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("got filesystem")), "{:?}", p.warnings);
    assert_eq!(post_runs(), 3, "the post-script runs after a failed pre-script too");

    // scripts fail, continue | freeze disabled -> crash
    let p = run(&f, &base().with_scripts(scripts(Some(&bad), None, true, false)).with_freeze(guest.clone()), app)
        .expect("row 3, disabled");
    assert_eq!(p.consistency, Consistency::Crash, "{:?}", p.warnings);

    // scripts fail, continue | freeze fails -> crash. The guest is frozen by
    // someone else, so our FIFREEZE gets EBUSY.
    sh("fsfreeze", &["-f", s(f.guest())]).expect("outside freeze");
    let r = run(&f, &base().with_scripts(scripts(Some(&bad), None, true, true)).with_freeze(guest.clone()), app);
    sh("fsfreeze", &["-u", s(f.guest())]).expect("outside thaw");
    let p = r.expect("row 3, freeze fails");
    assert_eq!(p.consistency, Consistency::Crash, "{:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("FIFREEZE")), "{:?}", p.warnings);

    // ... and when crash is not allowed, the job fails and commits nothing.
    let before = points();
    let e = run(
        &f,
        &base()
            .with_scripts(scripts(Some(&bad), None, true, false))
            .with_freeze(guest.clone())
            .with_min_consistency(Consistency::FileSystem),
        app,
    )
    .expect_err("row 3, crash not allowed");
    assert!(e.to_string().contains("at least filesystem"), "{e}");
    assert_eq!(points(), before);

    // scripts fail, do not continue | any -> the job fails, nothing committed,
    // and the post-script still runs.
    let runs = post_runs();
    for freeze in [true, false] {
        let e = run(
            &f,
            &base().with_scripts(scripts(Some(&bad), Some(&post), false, freeze)).with_freeze(guest.clone()),
            app,
        )
        .expect_err("row 4");
        assert!(matches!(e, Error::Script { stage: "pre", .. }), "{e}");
        assert!(e.to_string().contains("exit status 3") && e.to_string().contains("broken application"), "{e}");
    }
    assert_eq!(post_runs(), runs + 2);
    // A post-script that fails fails the job the same way.
    let e = run(&f, &base().with_scripts(scripts(Some(&ok), Some(&bad), false, true)).with_freeze(guest.clone()), app)
        .expect_err("row 4, post fails");
    assert!(matches!(e, Error::Script { stage: "post", .. }), "{e}");
    assert_eq!(points(), before);
    assert!(leftover_clones(&f).is_empty(), "a failed job releases its clone: {:?}", leftover_clones(&f));

    // none configured | freeze succeeds -> file system
    let p = run(&f, &base().with_freeze(guest.clone()), app).expect("row 5");
    assert_eq!(p.consistency, Consistency::FileSystem, "{:?}", p.warnings);
    let p = run(&f, &base().with_scripts(scripts(None, None, true, true)).with_freeze(guest.clone()), app)
        .expect("row 5, empty config");
    assert_eq!(p.consistency, Consistency::FileSystem, "{:?}", p.warnings);

    // Beyond the table: scripts succeed but the freeze fails -> crash.
    sh("fsfreeze", &["-f", s(f.guest())]).expect("outside freeze");
    let r = run(&f, &base().with_scripts(scripts(Some(&ok), None, true, true)).with_freeze(guest.clone()), app);
    sh("fsfreeze", &["-u", s(f.guest())]).expect("outside thaw");
    assert_eq!(r.expect("freeze fails").consistency, Consistency::Crash);

    // The level asked for caps the work: fs runs no scripts, crash freezes nothing.
    let pre_runs = fs::read_to_string(tools.join("pre.log")).expect("pre log").lines().count();
    let with_all = base().with_scripts(scripts(Some(&ok), Some(&post), true, true)).with_freeze(guest.clone());
    let p = run(&f, &with_all, Consistency::FileSystem).expect("fs asked");
    assert_eq!(p.consistency, Consistency::FileSystem);
    let p = run(&f, &with_all, Consistency::Crash).expect("crash asked");
    assert_eq!(p.consistency, Consistency::Crash);
    assert!(!p.warnings.iter().any(|w| w.starts_with("froze")), "{:?}", p.warnings);
    assert_eq!(fs::read_to_string(tools.join("pre.log")).expect("pre log").lines().count(), pre_runs);

    // Every file-system-consistent point restores to a clean file system
    // (a crash-consistent one may need its journal replayed).
    for p in f.vault.points(Some("web")).expect("points") {
        if p.consistency >= Consistency::FileSystem {
            fs::remove_file(restore_and_fsck(&f, &p)).expect("clean");
        }
    }
}

/// An inner provider that sleeps (or panics, or fails) before its snapshot,
/// and says when it starts.
struct Slow {
    inner: ImageFileProvider,
    delay: Duration,
    fail: Option<&'static str>,
    entered: Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl Slow {
    fn new(delay: Duration, fail: Option<&'static str>) -> Slow {
        Slow { inner: ImageFileProvider::new(), delay, fail, entered: Mutex::new(None) }
    }
}

impl SnapshotProvider for Slow {
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot, Error> {
        if let Some(tx) = self.entered.lock().expect("lock").take() {
            let _ = tx.send(());
        }
        std::thread::sleep(self.delay);
        match self.fail {
            Some("panic") => panic!("the host's snapshot step panicked"),
            Some(msg) => {
                Err(Error::Provider { vm: vm.name.clone(), step: "snapshot", message: msg.into(), retryable: true })
            }
            None => self.inner.snapshot(vm, wanted),
        }
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<(), Error> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn the_watchdog_thaws_a_mount_when_the_snapshot_step_hangs() {
    let _serial = serial();
    let Some(f) = fixture("watchdog") else { return };
    let watchdog = Duration::from_millis(300);
    let hang = Duration::from_millis(2500);
    let slow = Slow::new(hang, None);
    let (tx, entered) = std::sync::mpsc::channel();
    *slow.entered.lock().expect("lock") = Some(tx);
    let provider = ConsistentProvider::new(slow).with_freeze([f.guest()]).with_freeze_timeout(watchdog);

    // While the snapshot step hangs (the freeze is held by then), a guest
    // write blocks until the watchdog thaws, long before the step ends.
    let guest = f.guest().to_path_buf();
    let probe = std::thread::spawn(move || {
        entered.recv_timeout(Duration::from_secs(10)).expect("the snapshot step started");
        write_within(&guest, "during", Duration::from_secs(10))
    });
    let started = Instant::now();
    let p = run(&f, &provider, Consistency::FileSystem).expect("backup");
    let took = started.elapsed();
    let blocked = probe.join().expect("probe").expect("the write finished");
    assert!(took >= hang, "{took:?}");
    assert!(blocked < Duration::from_millis(1500), "the write waited {blocked:?}: the watchdog did not thaw");
    assert!(blocked >= Duration::from_millis(100), "the write did not wait at all ({blocked:?}): was it frozen?");
    assert_eq!(p.consistency, Consistency::Crash, "the watchdog fired: {:?}", p.warnings);
    assert!(p.warnings.iter().any(|w| w.contains("watchdog")), "{:?}", p.warnings);

    // Afterwards the mount is writable, and can be frozen again.
    write_within(f.guest(), "after", Duration::from_secs(2)).expect("writable after the watchdog");
    let quick = ConsistentProvider::new(ImageFileProvider::new()).with_freeze([f.guest()]);
    assert_eq!(run(&f, &quick, Consistency::FileSystem).expect("backup").consistency, Consistency::FileSystem);
    write_within(f.guest(), "after-2", Duration::from_secs(2)).expect("writable");
}

#[test]
fn an_error_or_a_panic_in_the_snapshot_step_thaws_and_runs_the_post_script() {
    let _serial = serial();
    let Some(f) = fixture("error or panic") else { return };
    let tools = f.path("tools");
    fs::create_dir_all(&tools).expect("tools");
    let post_log = tools.join("post.log");
    let pre = script(&tools, "pre.sh", "true");
    let post = script(&tools, "post.sh", &format!("echo post >> {}", s(&post_log)));
    for fail in ["the host lost the VM", "panic"] {
        let provider = ConsistentProvider::new(Slow::new(Duration::ZERO, Some(fail)))
            .with_scripts(scripts(Some(&pre), Some(&post), true, true))
            .with_freeze([f.guest()])
            .with_freeze_timeout(Duration::from_secs(30));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&f, &provider, Consistency::Application)));
        match (fail, r) {
            ("panic", Err(_)) => {}
            (_, Ok(Err(e))) => assert!(e.to_string().contains(fail), "{e}"),
            (_, other) => panic!("{fail}: unexpected {:?}", other.map(|r| r.map(|p| p.id))),
        }
        write_within(f.guest(), "after", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{fail}: left frozen: {e}"));
    }
    assert_eq!(fs::read_to_string(&post_log).expect("post log").lines().count(), 2);
    assert!(f.vault.points(Some("web")).expect("points").is_empty());
}

#[test]
fn two_freezes_of_one_mount_never_overlap() {
    let _serial = serial();
    let Some(f) = fixture("overlap") else { return };
    let first = FreezeGuard::freeze(&[f.guest().to_path_buf()], Duration::from_secs(10)).expect("first freeze");
    let guest = f.guest().to_path_buf();
    let thawed_at = Arc::new(Mutex::new(None::<Instant>));
    let t = Arc::clone(&thawed_at);
    let second = std::thread::spawn(move || {
        // The same file system under a second name is still one file system.
        let g = FreezeGuard::freeze(&[guest.clone(), guest.join(".")], Duration::from_secs(10)).expect("second freeze");
        let got = Instant::now();
        assert_eq!(g.mounts().len(), 1);
        let r = g.thaw();
        assert!(!r.expired);
        (got, t.lock().expect("lock").expect("the first thawed before the second froze"))
    });
    std::thread::sleep(Duration::from_millis(300));
    *thawed_at.lock().expect("lock") = Some(Instant::now());
    let r = first.thaw();
    assert!(!r.expired && r.warnings.is_empty(), "{:?}", r.warnings);
    let (second_froze, first_thawed) = second.join().expect("second thread");
    assert!(second_froze >= first_thawed, "the second freeze began before the first ended");
    write_within(f.guest(), "after", Duration::from_secs(2)).expect("writable");
}

#[test]
fn a_hanging_script_is_killed_at_its_timeout_with_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = d.join("root.img");
    fs::write(&image, vec![1u8; 1 << 20]).expect("image");
    let vault = Vault::init(d.join("vault")).expect("vault");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let pids = d.join("pids");
    let hang =
        script(d, "hang.sh", &format!("echo $$ > {p}; sleep 300 & echo $! >> {p}; echo waiting; wait", p = s(&pids)));
    let mut cfg = scripts(Some(&hang), None, false, false);
    cfg.timeout = Duration::from_millis(500);
    let provider = ConsistentProvider::new(ImageFileProvider::new()).with_scripts(cfg);
    let started = Instant::now();
    let e = backup(&vault, &provider, &vm, &options(Consistency::Application)).expect_err("the script hangs");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?} for a 0.5 s timeout");
    assert!(matches!(e, Error::Script { stage: "pre", .. }), "{e}");
    assert!(e.to_string().contains("timed out") && e.to_string().contains("waiting"), "{e}");
    let pids: Vec<i32> =
        fs::read_to_string(&pids).expect("pids").lines().map(|l| l.trim().parse().expect("pid")).collect();
    assert_eq!(pids.len(), 2, "the script and its child");
    for pid in pids {
        assert!(gone(pid), "process {pid} outlived the timeout");
    }
}

/// Whether a process is gone (or a zombie nobody reaped yet: a container's
/// init may not reap orphans).
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
            .flatten();
        if matches!(state, None | Some('Z') | Some('X')) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_script_that_fails_twice_then_succeeds_with_two_retries_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = d.join("root.img");
    fs::write(&image, vec![1u8; 1 << 20]).expect("image");
    let vault = Vault::init(d.join("vault")).expect("vault");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let count = d.join("count");
    let flaky = script(
        d,
        "flaky.sh",
        &format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
             if [ $n -le 2 ]; then echo attempt $n fails; exit 1; fi; echo attempt $n works",
            c = s(&count)
        ),
    );
    for (retries, works) in [(1, false), (2, true)] {
        let _ = fs::remove_file(&count);
        let mut cfg = scripts(Some(&flaky), None, false, false);
        cfg.pre_retries = retries;
        let provider = ConsistentProvider::new(ImageFileProvider::new()).with_scripts(cfg);
        let r = backup(&vault, &provider, &vm, &options(Consistency::Application));
        let runs: u32 = fs::read_to_string(&count).expect("count").trim().parse().expect("number");
        assert_eq!(runs, retries + 1, "each retry really runs the script again");
        if works {
            let p = r.expect("the third attempt works").point;
            assert_eq!(p.consistency, Consistency::Application, "{:?}", p.warnings);
            let log = p.warnings.join("\n");
            assert!(log.contains("attempt 1 fails") && log.contains("attempt 2 fails"), "{log}");
            assert!(log.contains("attempt 3 of 3: succeeded") && log.contains("attempt 3 works"), "{log}");
        } else {
            let e = r.expect_err("two attempts are not enough");
            assert!(matches!(e, Error::Script { attempts: 2, .. }), "{e}");
        }
    }
}

#[test]
fn a_world_writable_script_or_config_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = d.join("root.img");
    fs::write(&image, vec![1u8; 1 << 20]).expect("image");
    let vault = Vault::init(d.join("vault")).expect("vault");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let ran = d.join("ran");
    let pre = script(d, "pre.sh", &format!("touch {}", s(&ran)));
    fs::set_permissions(&pre, fs::Permissions::from_mode(0o777)).expect("chmod");

    let provider =
        ConsistentProvider::new(ImageFileProvider::new()).with_scripts(scripts(Some(&pre), None, true, true));
    let e = backup(&vault, &provider, &vm, &options(Consistency::Application)).expect_err("refused");
    let msg = e.to_string();
    assert!(matches!(e, Error::UnsafeFile { .. }), "{msg}");
    assert!(msg.contains(s(&pre)) && msg.contains("mode 0777") && msg.contains("uid "), "{msg}");
    assert!(!ran.exists(), "a refused script never runs");
    assert!(vault.points(None).expect("points").is_empty());

    let config = d.join("VMSnapshotScriptPluginConfig.json");
    fs::write(&config, serde_json::json!({ "preScriptLocation": pre }).to_string()).expect("config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod");
    let msg = ScriptsConfig::load(&config).expect_err("its script is world-writable").to_string();
    assert!(msg.contains(s(&pre)), "{msg}");
    fs::set_permissions(&pre, fs::Permissions::from_mode(0o700)).expect("chmod");
    ScriptsConfig::load(&config).expect("safe now");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o646)).expect("chmod");
    let msg = ScriptsConfig::load(&config).expect_err("world-writable config").to_string();
    assert!(msg.contains(s(&config)) && msg.contains("mode 0646"), "{msg}");
}

/// A provider that counts `prepare` calls and reports what it changed.
struct Counting {
    inner: ImageFileProvider,
    prepared: AtomicUsize,
    version: Mutex<String>,
}

impl SnapshotProvider for Counting {
    fn prepare(&self, _vm: &Vm) -> Result<PrepareReport, Error> {
        let n = self.prepared.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(PrepareReport {
            provider_version: self.version(),
            changes: vec![format!("installed the snapshot extension (run {n})")],
        })
    }
    fn version(&self) -> String {
        self.version.lock().expect("lock").clone()
    }
    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot, Error> {
        self.inner.snapshot(vm, wanted)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<(), Error> {
        self.inner.release(vm, snapshot)
    }
}

#[test]
fn prepare_runs_exactly_once_across_many_backups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = d.join("root.img");
    fs::write(&image, vec![1u8; 1 << 20]).expect("image");
    let vault = Vault::init(d.join("vault")).expect("vault");
    let vm = Vm::from_images("web", &[&image]).expect("vm");
    let provider = ConsistentProvider::new(Counting {
        inner: ImageFileProvider::new(),
        prepared: AtomicUsize::new(0),
        version: Mutex::new("ext 1.0".into()),
    });
    let count = || provider.inner().prepared.load(Ordering::SeqCst);
    for i in 0..8 {
        let r = backup(&vault, &provider, &vm, &options(Consistency::Crash)).expect("backup");
        assert_eq!(r.prepared.is_some(), i == 0, "backup {i}");
    }
    assert_eq!(count(), 1);
    let record = vault.vm_record("web").expect("record").expect("prepared");
    assert_eq!(record.times_prepared, 1);
    assert_eq!(record.prepare.provider_version, "ext 1.0");
    assert_eq!(record.prepare.changes, ["installed the snapshot extension (run 1)"]);

    // A new provider version prepares again, once.
    *provider.inner().version.lock().expect("lock") = "ext 1.1".into();
    for _ in 0..3 {
        backup(&vault, &provider, &vm, &options(Consistency::Crash)).expect("backup");
    }
    assert_eq!(count(), 2);
    let record = vault.vm_record("web").expect("record").expect("prepared");
    assert_eq!((record.times_prepared, record.prepare.provider_version.as_str()), (2, "ext 1.1"));

    // Another vault is another first backup.
    let other = Vault::init(d.join("vault2")).expect("vault");
    backup(&other, &provider, &vm, &options(Consistency::Crash)).expect("backup");
    assert_eq!(count(), 3);
}

/// Run by `a_freeze_held_by_a_killed_process_is_thawed_by_its_guardian` in
/// a child process of its own: freezes the mount named by
/// `VMB_FREEZE_HELPER`, says so, and waits to be killed.
#[test]
#[ignore = "a helper: run by the guardian test in a process of its own"]
fn freeze_helper_process() {
    let Some(mount) = std::env::var_os("VMB_FREEZE_HELPER") else { return };
    let guard = FreezeGuard::freeze(&[PathBuf::from(mount)], Duration::from_secs(120)).expect("freeze");
    println!("frozen");
    use std::io::Write;
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(120));
    drop(guard);
}

#[test]
fn a_freeze_held_by_a_killed_process_is_thawed_by_its_guardian() {
    let _g = serial();
    let Some(f) = fixture("a_freeze_held_by_a_killed_process_is_thawed_by_its_guardian") else { return };
    let mut helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "freeze_helper_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env("VMB_FREEZE_HELPER", f.guest())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn helper");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(helper.stdout.take().expect("stdout")));
    assert!(lines.any(|l| l.is_ok_and(|l| l.trim_end().ends_with("frozen"))), "the helper never froze");
    assert!(write_within(f.guest(), "probe", Duration::from_millis(500)).is_err(), "the mount is not frozen");
    // SIGKILL: no destructor, no watchdog thread runs in the helper.
    helper.kill().expect("kill");
    helper.wait().expect("wait");
    let thawed = write_within(f.guest(), "probe-after", Duration::from_secs(5));
    assert!(thawed.is_ok(), "the guardian did not thaw the mount: {thawed:?}");
}
