//! Signals to `vmbackup backup --freeze MOUNT --scripts CONFIG` on a real
//! guest file system (ext4 in an image on a reflink XFS, both
//! loop-mounted), at each phase of the job: during the pre-script, around
//! the freeze, during the post-script, during the transfer.
//!
//! SIGINT and SIGTERM take the cancel path: afterwards the guest file
//! system is writable, the post-script ran, the pre-script and what it
//! started are gone, no clone is left beside the image, no point was
//! committed, and the job log says "cancelled". SIGKILL cannot be caught:
//! a frozen file system is thawed by the freeze's guardian, and the next
//! backup removes the clone and staging the killed one left, then commits.
//!
//! To land a signal in a phase for sure, the test stops vmbackup
//! (SIGSTOP) as soon as the phase shows (a file the script writes, the job
//! log's phase record), sends the signal, and lets it go on (SIGCONT).
//! Needs root; with `VMB_REQUIRE_ALL` set (CI) a missing prerequisite fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::{LoopMount, s, write_within};

mod common;
use common::{BIN, json, ok};

/// One mount fixture at a time: loop devices and two cores.
static SERIAL: Mutex<()> = Mutex::new(());

struct Fixture {
    guest: LoopMount,
    _xfs: LoopMount,
    dir: tempfile::TempDir,
    image: PathBuf,
    vault: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn fixture(test: &str) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (guest, xfs, image) = match testkit::guest_on_xfs(dir.path(), 160 << 20) {
        Ok(m) => m,
        Err(why) => {
            testkit::skip(test, &why);
            return None;
        }
    };
    // Data for the transfer to take a while, and a file system to check.
    fs::write(guest.0.join("data"), testkit::random(96 << 20, 11)).expect("guest data");
    testkit::run("sync", &[]);
    let vault = dir.path().join("vault");
    ok(&["init", s(&vault)]);
    Some(Fixture { guest, _xfs: xfs, dir, image, vault })
}

/// The phases a signal lands in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    PreScript,
    Freeze,
    PostScript,
    Transfer,
}

const PHASES: [Phase; 4] = [Phase::PreScript, Phase::Freeze, Phase::PostScript, Phase::Transfer];

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// Writes the scripts and their config for `phase`: the script of the
/// phase sleeps; every script logs to `log`.
fn scripts(f: &Fixture, phase: Phase) -> PathBuf {
    let log = f.path("scripts.log");
    let _ = fs::remove_file(&log);
    let (pre_sleep, post_sleep) = match phase {
        Phase::PreScript => (30, 0),
        Phase::PostScript => (0, 2),
        _ => (0, 0),
    };
    let (pre, post) = (f.path("pre.sh"), f.path("post.sh"));
    script(
        &pre,
        &format!(
            "echo $$ > {pid}; echo pre-start >> {log}; sleep {pre_sleep}; echo pre-done >> {log}",
            pid = s(&f.path("pre.pid")),
            log = s(&log)
        ),
    );
    script(&post, &format!("echo post-start >> {log}; sleep {post_sleep}; echo post-done >> {log}", log = s(&log)));
    let config = f.path("VMSnapshotScriptPluginConfig.json");
    fs::write(
        &config,
        serde_json::json!({
            "preScriptLocation": pre, "postScriptLocation": post, "timeoutInSeconds": 60,
            "continueBackupOnFailure": false, "fsFreezeEnabled": true,
        })
        .to_string(),
    )
    .expect("config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod");
    config
}

fn start_backup(f: &Fixture, config: &Path) -> Child {
    Command::new(BIN)
        .args(["backup", "--vault", s(&f.vault), "--vm", "web", "--disk", s(&f.image)])
        .args(["--scripts", s(config), "--freeze", s(&f.guest.0), "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmbackup")
}

fn log_text(f: &Fixture) -> String {
    fs::read_to_string(f.path("scripts.log")).unwrap_or_default()
}

/// Waits until `ready` says the phase has begun; fails after 60 s.
fn wait_for(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(child.try_wait().expect("wait").is_none(), "vmbackup ended before {what}");
        assert!(t.elapsed() < Duration::from_secs(60), "{what} never came");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The job logs of the VM.
fn job_logs(f: &Fixture) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(f.vault.join("jobs/web")) else { return Vec::new() };
    rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect()
}

/// Whether the log of a job started after `before` was listed shows the
/// transfer phase (job ids of one second do not sort by time).
fn in_transfer(f: &Fixture, before: &[PathBuf]) -> bool {
    job_logs(f)
        .iter()
        .filter(|l| !before.contains(l))
        .any(|l| fs::read_to_string(l).is_ok_and(|t| t.contains(r#""phase":"transfer""#)))
}

/// Brings vmbackup to `phase` and holds it there, stopped.
fn stop_in(f: &Fixture, child: &mut Child, phase: Phase, before: &[PathBuf]) {
    match phase {
        Phase::PreScript => wait_for("the pre-script", child, || log_text(f).contains("pre-start")),
        Phase::Freeze => wait_for("the end of the pre-script", child, || log_text(f).contains("pre-done")),
        Phase::PostScript => wait_for("the post-script", child, || log_text(f).contains("post-start")),
        Phase::Transfer => wait_for("the transfer", child, || in_transfer(f, before)),
    }
    signal(child, libc::SIGSTOP);
}

/// Starts a backup with the scripts of `phase` and holds it there, stopped.
fn backup_stopped_in(f: &Fixture, phase: Phase) -> Child {
    let config = scripts(f, phase);
    let logs = job_logs(f);
    let mut child = start_backup(f, &config);
    stop_in(f, &mut child, phase, &logs);
    child
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// Waits for vmbackup to end (at most 60 s); its status and stderr.
fn finish(child: Child) -> (std::process::ExitStatus, String) {
    let t = Instant::now();
    let mut child = child;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (st, String::from_utf8_lossy(&out.stderr).into_owned());
        }
        assert!(t.elapsed() < Duration::from_secs(60), "vmbackup did not end after the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn clones(f: &Fixture) -> Vec<String> {
    fs::read_dir(f.image.parent().expect("folder"))
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("vmbackup-snap"))
        .collect()
}

fn points(f: &Fixture) -> usize {
    json(&["list", "--vault", s(&f.vault), "--json"])["points"].as_array().expect("points").len()
}

/// Whether the process whose pid the pre-script wrote is gone.
fn pre_script_gone(f: &Fixture) -> bool {
    let Ok(pid) = fs::read_to_string(f.path("pre.pid")) else { return true };
    let pid = pid.trim();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(st) if st.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

fn cancel_path(sig: libc::c_int, name: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(f) = fixture(name) else { return };
    for phase in PHASES {
        let before = points(&f);
        let child = backup_stopped_in(&f, phase);
        signal(&child, sig);
        signal(&child, libc::SIGCONT);
        let (status, err) = finish(child);
        let what = format!("{name} in {phase:?}");
        assert_eq!(status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("cancelled"), "{what}: {err}");
        let w = write_within(&f.guest.0, "probe", Duration::from_secs(5));
        assert!(w.is_ok(), "{what}: the guest file system is still frozen: {w:?}");
        assert!(log_text(&f).contains("post-done"), "{what}: the post-script did not run: {}", log_text(&f));
        assert!(pre_script_gone(&f), "{what}: the pre-script outlived the cancel");
        assert_eq!(clones(&f), Vec::<String>::new(), "{what}: a clone was left");
        assert_eq!(points(&f), before, "{what}: a point was committed");
        let jobs = json(&["jobs", "--vault", s(&f.vault), "--vm", "web", "--json"]);
        let last = jobs["jobs"].as_array().and_then(|j| j.last()).cloned().unwrap_or_default();
        assert_eq!(last["result"], "cancelled", "{what}: {last}");
    }
}

#[test]
fn sigint_at_each_phase_takes_the_cancel_path() {
    cancel_path(libc::SIGINT, "sigint_at_each_phase_takes_the_cancel_path");
}

#[test]
fn sigterm_at_each_phase_takes_the_cancel_path() {
    cancel_path(libc::SIGTERM, "sigterm_at_each_phase_takes_the_cancel_path");
}

#[test]
fn sigkill_at_each_phase_is_cleaned_up_by_the_next_run() {
    let name = "sigkill_at_each_phase_is_cleaned_up_by_the_next_run";
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(f) = fixture(name) else { return };
    for phase in PHASES {
        let before = points(&f);
        let child = backup_stopped_in(&f, phase);
        signal(&child, libc::SIGKILL);
        let _ = finish(child);
        let what = format!("SIGKILL in {phase:?}");
        // The guardian thaws a freeze the killed process held.
        let w = write_within(&f.guest.0, "probe", Duration::from_secs(10));
        assert!(w.is_ok(), "{what}: the guest file system stayed frozen: {w:?}");
        // A killed pre-script is an orphan now: end it as an operator would.
        if let Ok(pid) = fs::read_to_string(f.path("pre.pid")) {
            let _ = testkit::sh("pkill", &["-KILL", "-s", pid.trim()]);
        }
        assert_eq!(points(&f), before, "{what}: a point was committed");
        // The next run cleans up and commits.
        let config = scripts(&f, Phase::Transfer);
        let (status, err) = finish(start_backup(&f, &config));
        assert!(status.success(), "{what}: the next backup failed: {err}");
        assert_eq!(points(&f), before + 1, "{what}");
        assert_eq!(clones(&f), Vec::<String>::new(), "{what}: a clone was left after the next run");
        let staging: Vec<_> =
            fs::read_dir(f.vault.join("tmp")).expect("tmp").flatten().map(|e| e.file_name()).collect();
        assert!(staging.is_empty(), "{what}: staging left in the vault: {staging:?}");
        let v = testkit::output(BIN, &["verify", "--vault", s(&f.vault)]);
        assert!(v.status.success(), "{what}: {}", testkit::text(&v));
    }
}
