//! Boot verification: a point boots in a throwaway domain and its guest
//! agent judges it. The domain is transient, named
//! `vmbackup-verify-PID-VM`, has no network and no host devices, stands on
//! qcow2 overlays (discarded afterwards) over this process's exports, and
//! writes its serial console to a file. It passes when the agent answers
//! `guest-ping` within the timeout and the optional in-guest test exits 0;
//! it fails, with the reason, when the kernel panics, the guest stops or
//! pauses on an error, the agent stays silent, or the test fails. The
//! verdict, the console's end and a screenshot are kept beside the point
//! ([`BootVerdict`]).
//!
//! Nothing stays: the domain is destroyed and the work folder removed on
//! every path; a guardian destroys the domain if this process dies, and
//! the next run removes domains and folders of dead runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::domain_def::{self, DiskSource, NewDomain};
use super::exports::Exports;
use super::{dead_pid, fail, qemu_owner, saved_xml, work_folder};
use crate::error::{Error, Result};
use crate::libvirt::agent::Agent;
use crate::libvirt::domains::{self, Libvirt};
use crate::libvirt::handle::Domain;
use crate::libvirt::quiesce::virsh_command;
use crate::model::{CancelToken, NoProgress, Progress};
use crate::snapshot::guardian::{Guardian, ThawAction};
use crate::vault::{BootVerdict, PointManifest, Vault};

const STEP: &str = "boot verification";
/// Names of throwaway domains start so: `vmbackup-verify-PID-VM`.
const PREFIX: &str = "vmbackup-verify-";
/// The console's end and a test's output kept in a verdict.
const KEEP: usize = 64 << 10;

/// How a boot verification runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct BootVerifyOptions {
    /// The libvirt connection (default `qemu:///system`).
    pub uri: String,
    /// Where the overlays, sockets and console log live while it runs
    /// (default `/var/tmp/vmbackup-libvirt`).
    pub work_dir: PathBuf,
    /// How long the guest's agent has to answer after the start (default
    /// 300 s).
    pub timeout: Duration,
    /// An in-guest test: a script copied into the guest and run there
    /// through the agent; exit status 0 passes.
    pub script: Option<Vec<u8>>,
    /// How long the test may run (default 300 s).
    pub script_timeout: Duration,
    /// Messages (the domain started, the agent answered).
    pub progress: Arc<dyn Progress>,
    /// Set it to stop: the domain is destroyed, nothing is recorded.
    pub cancel: CancelToken,
}

impl Default for BootVerifyOptions {
    fn default() -> Self {
        BootVerifyOptions {
            uri: "qemu:///system".into(),
            work_dir: PathBuf::from("/var/tmp/vmbackup-libvirt"),
            timeout: Duration::from_secs(300),
            script: None,
            script_timeout: Duration::from_secs(300),
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
        }
    }
}

/// Boots `point` in a throwaway domain, judges it, records the verdict
/// beside the point and returns it. A failed boot is a verdict, not an
/// error.
///
/// # Errors
/// [`Error::Recovery`] when the point has no domain XML or libvirt cannot
/// create the domain; [`Error::Cancelled`]; the vault's errors.
pub fn boot_verify(vault: &Vault, point: &PointManifest, options: &BootVerifyOptions) -> Result<BootVerdict> {
    let pid = std::process::id();
    let name = format!("{PREFIX}{pid}-{}", point.vm);
    let err = |m: String| fail(point, &name, STEP, m);
    let xml = saved_xml(point, &name, STEP)?;
    let lv = Libvirt::open(&options.uri).map_err(&err)?;
    for removed in remove_leftovers(&lv, &options.work_dir) {
        options.progress.warn(&format!("removed {removed}, left by a killed boot verification"));
    }
    let dir = options.work_dir.join(format!("verify-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    work_folder(&dir)?;
    let r = (|| {
        let names: Vec<String> = point.disks.iter().map(|d| d.name.clone()).collect();
        let exports = Exports::bind(vault, point, &names, &dir, qemu_owner(&options.uri))?;
        exports.serve_while(|| boot(&lv, &exports, point, xml, &name, &dir, options, &err))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let verdict = r?;
    vault.write_boot_verdict(&verdict)?;
    Ok(verdict)
}

#[allow(clippy::too_many_arguments)]
fn boot(
    lv: &Libvirt,
    exports: &Exports<'_>,
    point: &PointManifest,
    xml: &str,
    name: &str,
    dir: &Path,
    options: &BootVerifyOptions,
    err: &dyn Fn(String) -> Error,
) -> Result<BootVerdict> {
    let mut disks = BTreeMap::new();
    for d in &point.disks {
        let overlay = dir.join(format!("{}.qcow2", d.name));
        let socket = exports.socket(&d.name).map(Path::to_path_buf).unwrap_or_default();
        super::instant::create_overlay(&overlay, &d.name, &socket, d.size)
            .map_err(|e| err(format!("disk {}: {e}", d.name)))?;
        disks.insert(d.name.clone(), DiskSource::Overlay { path: overlay, socket, export: d.name.clone() });
    }
    let new = NewDomain { name, disks: &disks, console_dir: dir, throwaway: true };
    let (new_xml, _) = domain_def::rewrite(xml, &new).map_err(err)?;
    let console = dir.join(format!("{name}-serial0.log"));
    let destroy = virsh_command(&lv.uri, "destroy", name).map_err(err)?;
    let mut guardian = Guardian::spawn_until_death(ThawAction::Exec(destroy))?;
    let started = Instant::now();
    let dom = lv.create_transient(&new_xml).map_err(err)?;
    options.progress.warn(&format!("domain {name} started; waiting for its guest agent"));
    let judged = judge(&dom, point, &console, started, options);
    let screenshot = lv.screenshot(&dom).unwrap_or_default();
    let _ = domains::remove(&dom);
    guardian.stand_down();
    let (passed, reason, agent_seconds, test, notes) = judged?;
    let (script_exit, script_output) = match test {
        Some((code, out)) => (Some(code), Some(out)),
        None => (None, None),
    };
    Ok(BootVerdict {
        vm: point.vm.clone(),
        point: point.id.clone(),
        passed,
        reason,
        checked_at: jiff::Timestamp::now().as_second().max(0) as u64,
        agent_seconds,
        script: options
            .script
            .as_ref()
            .map(|s| String::from_utf8_lossy(s).lines().next().unwrap_or_default().to_string()),
        script_exit,
        script_output,
        console: tail(&std::fs::read(&console).unwrap_or_default()),
        notes,
        screenshot,
    })
}

/// The verdict: passed, why not, seconds to the agent, the test's exit
/// code and output, notes.
type Judged = (bool, Option<String>, Option<f64>, Option<(i64, String)>, Vec<String>);

fn judge(
    dom: &Domain,
    point: &PointManifest,
    console: &Path,
    started: Instant,
    options: &BootVerifyOptions,
) -> Result<Judged> {
    let agent = Agent { dom, windows: false };
    let failed = |why: String| Ok((false, Some(why), None, None, Vec::new()));
    loop {
        options.cancel.check(&format!("boot verification of vm {} point {}", point.vm, point.id))?;
        let log = std::fs::read(console).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if let Some(i) = lines.iter().position(|l| l.contains("Kernel panic")) {
            let before = if i > 0 { format!(" (after: {})", lines[i - 1].trim()) } else { String::new() };
            return failed(format!("the guest kernel panicked: {}{before}", lines[i].trim()));
        }
        let (state, reason) = dom.state().unwrap_or((0, 0));
        if state == domains::SHUTOFF || state == domains::CRASHED {
            return failed(format!("the guest stopped before its agent answered; console: {}", last_line(&text)));
        }
        if state == domains::PAUSED && reason == domains::PAUSED_IOERROR {
            return failed("the guest paused on an I/O error reading the point".into());
        }
        if agent.ping().is_ok() {
            break;
        }
        if started.elapsed() >= options.timeout {
            return failed(format!(
                "the guest agent did not answer within {} s; console: {}",
                options.timeout.as_secs(),
                last_line(&text)
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let agent_seconds = started.elapsed().as_secs_f64();
    options.progress.warn(&format!("the guest agent answered after {agent_seconds:.1} s"));
    let mut notes = Vec::new();
    if agent.says_frozen() {
        // The point was taken during a freeze and the agent keeps its state
        // on disk: nothing is frozen, but it refuses commands until a thaw.
        let thawed = agent.thaw().map_or_else(|e| format!("the thaw failed: {e}"), |_| "thawed it".into());
        notes.push(format!("the agent believed the guest frozen (its state from the backup's freeze): {thawed}"));
    }
    let Some(script) = &options.script else { return Ok((true, None, Some(agent_seconds), None, notes)) };
    let windows = agent.info().map(|i| i.is_windows()).unwrap_or(false);
    let agent = Agent { dom, windows };
    let (path, program, args): (&str, &str, Vec<String>) = if windows {
        let p = r"C:\Windows\Temp\vmbackup-boot-test.ps1";
        (
            p,
            "powershell.exe",
            vec!["-NoProfile".into(), "-ExecutionPolicy".into(), "Bypass".into(), "-File".into(), p.into()],
        )
    } else {
        ("/tmp/vmbackup-boot-test", "/bin/sh", vec!["/tmp/vmbackup-boot-test".into()])
    };
    if let Err(e) = agent.write_file(path, script, "0700") {
        return Ok((
            false,
            Some(format!("cannot copy the test into the guest: {e}")),
            Some(agent_seconds),
            None,
            notes,
        ));
    }
    let attempt = agent.exec(program, &args, options.script_timeout, Duration::from_millis(500), Some(&options.cancel));
    options.cancel.check(&format!("boot verification of vm {} point {}", point.vm, point.id))?;
    let output = tail(attempt.output.as_bytes());
    use crate::snapshot::scripts::Outcome;
    Ok(match attempt.outcome {
        Outcome::Succeeded => (true, None, Some(agent_seconds), Some((0, output)), notes),
        other => {
            let code = match &other {
                Outcome::Failed(s) => s.strip_prefix("exit status ").and_then(|c| c.parse().ok()).unwrap_or(-1),
                _ => -1,
            };
            (false, Some(format!("the in-guest test {other}")), Some(agent_seconds), Some((code, output)), notes)
        }
    })
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty)").trim().to_string()
}

/// The last [`KEEP`] bytes, as text.
fn tail(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(KEEP)..]).into_owned()
}

/// Destroys throwaway domains and removes work folders of runs whose
/// process is gone; what it removed.
pub(crate) fn remove_leftovers(lv: &Libvirt, work_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for name in lv.names() {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        if rest.split('-').next().is_some_and(dead_pid)
            && let Some(dom) = lv.lookup(&name)
            && domains::remove(&dom).is_ok()
        {
            removed.push(format!("domain {name}"));
        }
    }
    removed.extend(super::remove_dead(work_dir, "verify-").into_iter().map(|p| p.display().to_string()));
    removed
}
