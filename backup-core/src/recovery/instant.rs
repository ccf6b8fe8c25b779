//! Instant recovery: the new domain runs within seconds on qcow2 overlays
//! in the pool whose backing is the point, served by this process over NBD
//! (one unix socket per disk in `WORK/instant-NAME/`). Libvirt's block pull
//! then copies the point's data into the overlays while the guest runs;
//! when every pull is done the overlays stand alone, the definition loses
//! its backing stores, and the exports stop.
//!
//! The guest never sees made-up data: its disks stop on errors
//! (`error_policy`/`rerror_policy` `stop`), so a failed export pauses it.
//! A guardian process pauses it at once if this process dies, and the
//! domain's description says why. Run again with the same point, the
//! command finds the interrupted recovery (its work folder and the
//! description), serves the exports at the same sockets (QEMU reconnects),
//! resumes the guest and finishes the move: the guest's writes, which live
//! in the overlays, are kept. A cancel (Ctrl-C) discards the recovery: the
//! domain and its overlays are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::domain_def::{self, DiskSource, NewDomain};
use super::exports::Exports;
use super::xml_tree::Element;
use super::{DomainTarget, ImageFormat, check_target, fail, qemu_owner, saved_xml, work_folder};
use crate::error::{Error, Result};
use crate::libvirt::alive;
use crate::libvirt::domains::{self, Libvirt};
use crate::libvirt::handle::Domain;
use crate::libvirt::quiesce::virsh_command;
use crate::model::{CancelToken, NoProgress, Progress};
use crate::snapshot::guardian::{Guardian, ThawAction};
use crate::vault::{PointManifest, Vault};

const STEP: &str = "instant recovery";
/// How a domain's description starts while its recovery is under way.
const MARK: &str = "vmbackup instant recovery";
/// How long a resumed recovery waits for QEMU to reconnect to the exports
/// (it retries with a back-off of up to 16 s).
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// How an instant recovery runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct InstantOptions {
    /// Bytes moved, and messages (the domain started, the move is done).
    pub progress: Arc<dyn Progress>,
    /// Set it to discard the recovery: the domain and its overlays are
    /// removed.
    pub cancel: CancelToken,
    /// At most this many bytes per second per disk for the move (0, the
    /// default: as fast as it goes), to leave the host's disks and the
    /// vault to others.
    pub bandwidth: u64,
}

impl Default for InstantOptions {
    fn default() -> Self {
        InstantOptions { progress: Arc::new(NoProgress), cancel: CancelToken::new(), bandwidth: 0 }
    }
}

/// What an instant recovery did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct InstantReport {
    /// The new domain.
    pub domain: String,
    /// Whether it finished a recovery that a killed run began.
    pub resumed: bool,
    /// Seconds from the call until the domain ran.
    pub seconds_to_start: f64,
    /// Seconds until the move was done.
    pub seconds: f64,
    /// Each disk and its (now standalone) qcow2 file.
    pub disks: Vec<(String, PathBuf)>,
    /// What was changed in the definition beyond name, UUID, MACs and
    /// paths.
    pub notes: Vec<String>,
}

/// What a work folder says about the recovery in it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct State {
    vm: String,
    point: String,
    pid: i32,
}

/// Starts `point` as the domain `target.name` on overlays backed by this
/// process's exports, moves its data into the overlays in the background,
/// and returns when the domain stands on local disks only. Resumes a
/// recovery of the same name and point that a killed run left.
///
/// # Errors
/// [`Error::Recovery`] as for a restore, when another process is
/// recovering that domain, or when the move fails: the domain is then
/// paused, with its overlays, and running the call again resumes it.
/// [`Error::Cancelled`] after the recovery was discarded.
pub fn instant_restore(
    vault: &Vault,
    point: &PointManifest,
    target: &DomainTarget,
    options: &InstantOptions,
) -> Result<InstantReport> {
    let started = Instant::now();
    let name = &target.name;
    let err = |m: String| fail(point, name, STEP, m);
    let xml = saved_xml(point, name, STEP)?;
    let lv = Libvirt::open(&target.uri).map_err(&err)?;
    crate::model::validate_name("domain name", name)?;
    let dir = target.work_dir.join(format!("instant-{name}"));
    let state_file = dir.join("state.json");
    let earlier: Option<State> = std::fs::read(&state_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let existing = lv.lookup(name);
    let resumed = match (&earlier, &existing) {
        (Some(s), _) if alive(s.pid) && s.pid != std::process::id() as i32 => {
            return Err(err(format!("vmbackup (pid {}) is recovering it now", s.pid)));
        }
        (Some(s), Some(dom)) if dom.description().starts_with(MARK) => {
            if s.vm != point.vm || s.point != point.id {
                return Err(err(format!(
                    "an interrupted recovery of it from vm {} point {} waits to be resumed: give that point, or remove the domain",
                    s.vm, s.point
                )));
            }
            true
        }
        _ => false,
    };
    let paths: Vec<(String, PathBuf)> =
        point.disks.iter().map(|d| (d.name.clone(), target.disk_path(&d.name, ImageFormat::Qcow2))).collect();
    let replaced = if resumed {
        None
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        let replaced = check_target(&lv, point, target, xml, STEP)?;
        if !target.replace
            && let Some((_, p)) = paths.iter().find(|(_, p)| p.symlink_metadata().is_ok())
        {
            return Err(err(format!("{} exists (replace it explicitly)", p.display())));
        }
        replaced
    };
    work_folder(&dir)?;
    std::fs::create_dir_all(&target.pool).map_err(|e| Error::io("create folder", &target.pool, e))?;
    let state = State { vm: point.vm.clone(), point: point.id.clone(), pid: std::process::id() as i32 };
    let state_json = serde_json::to_vec(&state).map_err(|e| err(e.to_string()))?;
    std::fs::write(&state_file, state_json).map_err(|e| Error::io("write", &state_file, e))?;

    let names: Vec<String> = paths.iter().map(|(d, _)| d.clone()).collect();
    let exports = Exports::bind(vault, point, &names, &dir, qemu_owner(&target.uri))?;
    let mut notes = Vec::new();
    let run = exports.serve_while(|| -> Result<(Result<f64>, bool)> {
        let pause = virsh_command(&target.uri, "suspend", name).map_err(&err)?;
        let mut guardian = Guardian::spawn_until_death(ThawAction::Exec(pause))?;
        let dom = if resumed {
            let dom = existing.clone().ok_or_else(|| err("the domain vanished".into()))?;
            options.progress.warn(&format!("domain {name}: resuming the interrupted recovery"));
            dom
        } else {
            let disks: BTreeMap<String, DiskSource> = paths
                .iter()
                .map(|(d, p)| {
                    let socket = exports.socket(d).map(Path::to_path_buf).unwrap_or_default();
                    (d.clone(), DiskSource::Overlay { path: p.clone(), socket, export: d.clone() })
                })
                .collect();
            let new = NewDomain { name, disks: &disks, console_dir: &target.pool, throwaway: false };
            let (new_xml, n) = domain_def::rewrite(xml, &new).map_err(&err)?;
            notes = n;
            for n in &notes {
                options.progress.warn(&format!("domain {name}: {n}"));
            }
            for (d, p) in &paths {
                let size = point.disk(d)?.size;
                let socket = exports.socket(d).map(Path::to_path_buf).unwrap_or_default();
                create_overlay(p, d, &socket, size).map_err(|e| err(format!("disk {d}: {e}")))?;
            }
            if let Some(old) = &replaced {
                domains::remove(old).map_err(&err)?;
            }

            lv.define(&new_xml).map_err(&err)?
        };
        let description = format!(
            "{MARK} of vm {} point {} from vault {} is moving its data (vmbackup pid {}). \
             If this domain is paused, that process stopped: run vmbackup instant-restore for the same point and \
             name again to resume.",
            point.vm,
            point.id,
            vault.location(),
            std::process::id()
        );
        let _ = dom.set_description(&description);
        let ran = std::cell::Cell::new(false);
        let r = Move { dom: &dom, exports: &exports, point, paths: &paths, options, err: &err }.run(resumed, &ran);
        // A domain that never ran holds no writes of its guest: an error
        // then discards it, as a cancel always does.
        let discard = |e: &Error| e.kind() == crate::error::ErrorKind::Cancelled || (!ran.get() && !resumed);
        match &r {
            Ok(_) => {
                guardian.stand_down();
                finish_definition(&lv, &dom, &paths).map_err(&err)?;
                let _ = dom.set_description("");
            }
            Err(e) if discard(e) => {
                guardian.stand_down();
                for (d, _) in &paths {
                    let _ = dom.abort_block_job(d);
                }
                let _ = domains::remove(&dom);
                for (_, p) in &paths {
                    let _ = std::fs::remove_file(p);
                }
            }
            Err(_) => {
                // Kept for a rerun to resume: nothing reads past the export.
                let _ = dom.suspend();
                guardian.stand_down();
            }
        }
        let resolved = r.as_ref().map_or_else(discard, |_| true);
        Ok((r, resolved))
    });
    let (run, resolved) = match run {
        Ok(pair) => pair,
        Err(e) => {
            // Failed before the domain was defined: its overlays go too.
            if !resumed {
                for (_, p) in &paths {
                    let _ = std::fs::remove_file(p);
                }
            }
            (Err(e), !resumed)
        }
    };
    drop(exports);
    if resolved {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let seconds_to_start = run?;
    Ok(InstantReport {
        domain: name.clone(),
        resumed,
        seconds_to_start,
        seconds: started.elapsed().as_secs_f64(),
        disks: paths,
        notes,
    })
}

/// The move of a recovery's data into its overlays.
struct Move<'a> {
    dom: &'a Domain,
    exports: &'a Exports<'a>,
    point: &'a PointManifest,
    paths: &'a [(String, PathBuf)],
    options: &'a InstantOptions,
    err: &'a dyn Fn(String) -> Error,
}

impl Move<'_> {
    /// Starts or resumes the domain (`ran` says when it did), then pulls
    /// every disk's data in while watching the guest. Seconds until the
    /// domain ran.
    fn run(&self, resumed: bool, ran: &std::cell::Cell<bool>) -> Result<f64> {
        let (dom, err, options) = (self.dom, self.err, self.options);
        let t0 = Instant::now();
        let (state, _) = dom.state().map_err(err)?;
        if state == domains::SHUTOFF || state == domains::CRASHED {
            dom.create().map_err(|e| err(format!("cannot start the domain: {e}")))?;
        } else if resumed && state == domains::PAUSED {
            // QEMU reconnects to the exports on its own schedule: resume
            // once it did, or the first read fails again.
            let wait = Instant::now();
            while self.paths.iter().any(|(d, _)| self.exports.clients(d) == 0) && wait.elapsed() < RECONNECT_WAIT {
                options.cancel.check(&format!("instant recovery of vm {}", self.point.vm))?;
                std::thread::sleep(Duration::from_millis(200));
            }
            dom.resume().map_err(|e| err(format!("cannot resume the domain: {e}")))?;
        }
        ran.set(true);
        let seconds_to_start = t0.elapsed().as_secs_f64();
        let name = dom.name().unwrap_or_default();
        options.progress.warn(&format!("domain {name} runs ({seconds_to_start:.1} s); moving its data"));
        let sizes: Vec<u64> = self.paths.iter().map(|(d, _)| self.point.disk(d).map(|r| r.size).unwrap_or(0)).collect();
        options.progress.start(sizes.iter().sum());
        let r = self.pull_all(&sizes);
        options.progress.finish();
        r.map(|()| seconds_to_start)
    }

    fn pull_all(&self, sizes: &[u64]) -> Result<()> {
        let (dom, err, options, exports) = (self.dom, self.err, self.options, self.exports);
        let mut reported = vec![0u64; self.paths.len()];
        let mut done = vec![false; self.paths.len()];
        let mut starts = vec![0u32; self.paths.len()];
        for (disk, _) in self.paths {
            // A pull that a killed run started may still be under way.
            if dom.block_job(disk).is_ok_and(|j| j.is_some())
                && let Err(e) = dom.set_block_job_speed(disk, options.bandwidth)
            {
                options.progress.warn(&e);
            }
        }
        loop {
            options.cancel.check(&format!("instant recovery of vm {}", self.point.vm))?;
            let (state, reason) = dom.state().map_err(err)?;
            if state == domains::PAUSED && reason == domains::PAUSED_IOERROR {
                let why = exports.last_error().unwrap_or_else(|| "a read of the point failed".into());
                return Err(err(format!(
                    "the guest paused on an I/O error: {why}; it stays paused: run again to resume"
                )));
            }
            if state == domains::SHUTOFF || state == domains::CRASHED {
                return Err(err("the domain stopped during the move; run again to start it and finish".into()));
            }
            let live = dom.xml_desc().map_err(|e| err(e.to_string()))?;
            for (i, (disk, _)) in self.paths.iter().enumerate() {
                if done[i] {
                    continue;
                }
                match dom.block_job(disk).map_err(err)? {
                    Some((cur, end)) => {
                        let moved = if end == 0 { 0 } else { (cur as u128 * sizes[i] as u128 / end as u128) as u64 };
                        if moved > reported[i] {
                            options.progress.advance(moved - reported[i]);
                            reported[i] = moved;
                        }
                    }
                    None if !has_network_backing(&live, disk) => {
                        options.progress.advance(sizes[i].saturating_sub(reported[i]));
                        reported[i] = sizes[i];
                        done[i] = true;
                    }
                    None if starts[i] < 3 => {
                        starts[i] += 1;
                        dom.block_pull(disk, options.bandwidth).map_err(err)?;
                    }
                    None => {
                        let why = exports.last_error().unwrap_or_else(|| "no reason given by libvirt".into());
                        return Err(err(format!("the block pull of disk {disk} failed three times: {why}")));
                    }
                }
            }
            if done.iter().all(|d| *d) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Whether the domain's disk `target` still reads through an NBD backing.
fn has_network_backing(xml: &str, target: &str) -> bool {
    let Ok(dom) = Element::parse(xml) else { return true };
    let Some(devices) = dom.child("devices") else { return true };
    devices
        .elements()
        .filter(|e| e.name == "disk" && e.child("target").and_then(|t| t.attr("dev")) == Some(target))
        .any(|d| d.elements().any(|b| b.name == "backingStore" && b.attr("type") == Some("network")))
}

/// Drops the network backing stores and the stop-on-error policies from
/// the persistent definition: the domain stands on its own files now.
fn finish_definition(lv: &Libvirt, dom: &Domain, paths: &[(String, PathBuf)]) -> Result<(), String> {
    let xml = dom.inactive_xml_desc().map_err(|e| e.to_string())?;
    let mut def = Element::parse(&xml)?;
    if let Some(devices) = def.child_mut("devices") {
        for disk in devices.elements_mut().filter(|e| e.name == "disk") {
            let ours =
                disk.child("target").and_then(|t| t.attr("dev")).is_some_and(|t| paths.iter().any(|(d, _)| d == t));
            if !ours {
                continue;
            }
            disk.retain_elements(|c| !(c.name == "backingStore" && c.attr("type") == Some("network")));
            if let Some(driver) = disk.child_mut("driver") {
                driver.remove_attr("error_policy");
                driver.remove_attr("rerror_policy");
            }
        }
    }
    lv.define(&def.to_xml()).map(|_| ())
}

/// Creates a qcow2 overlay whose backing is the export at `socket`
/// (without opening it: the size is given), readable by its owner only.
pub(super) fn create_overlay(path: &Path, disk: &str, socket: &Path, size: u64) -> Result<(), String> {
    let backing = format!("nbd+unix:///{disk}?socket={}", socket.display());
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", &backing])
        .arg(path)
        .arg(size.to_string())
        .output()
        .map_err(|e| format!("cannot run qemu-img (qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}
