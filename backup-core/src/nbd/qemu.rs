//! The QEMU provider: point-in-time snapshots of a running QEMU or
//! qemu-storage-daemon's block nodes over QMP, read over NBD, with
//! persistent dirty bitmaps as checkpoints.
//!
//! For every disk (a [`VmDisk::location`](crate::VmDisk::location) is a
//! block node name) one QMP transaction, across all disks of the VM:
//!
//! 1. disables the recording checkpoint bitmap `vmb-ckpt-<time>` (it now
//!    holds exactly the writes since the previous snapshot);
//! 2. adds the next one, persistent and recording (the next checkpoint);
//! 3. starts `blockdev-backup` with `sync=none` into a temporary qcow2 whose
//!    backing is the disk: copy-before-write fleecing, a point-in-time view.
//!
//! The view is exported read-only over NBD with the disabled checkpoint
//! bitmaps (QEMU refuses to export a bitmap that still records), oldest
//! first. The change token of a snapshot is `qemu-checkpoint:<NODE>/<BITMAP>`,
//! the bitmap it started; the changes since a token are the union of that
//! checkpoint's bitmap and every later one. A job that failed before its
//! commit therefore loses nothing: its checkpoint stays and joins the union.
//! A lost bitmap (a non-persistent node, a daemon restart, a removal) breaks
//! the chain: the engine reads and compares every block and says so. Release
//! removes the export, the job, the fleecing node and its file, and all but
//! the newest [`QemuProvider::keep_checkpoints`] old checkpoints.
//!
//! Points are crash-consistent, or file-system-consistent when a
//! [guest agent](QemuProvider::guest_agent) froze the guest for the instant
//! of the transaction.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{NbdAddress, NbdDevice, NbdOptions};
use crate::error::{Error, Result};
use crate::model::{Consistency, Vm};
use crate::snapshot::{PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider};

const PREFIX: &str = "vmb-ckpt-";
/// The longest QMP message read.
const MAX_LINE: u64 = 16 << 20;

/// Snapshots of disks of a QEMU process or qemu-storage-daemon through its
/// QMP socket; each [`VmDisk::location`](crate::VmDisk::location) names a
/// block node (qcow2, for persistent bitmaps).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QemuProvider {
    /// The QMP unix socket.
    pub qmp: PathBuf,
    /// The unix socket of QEMU's NBD server: started there when QEMU runs
    /// none; when one already runs it must listen there.
    pub nbd_socket: PathBuf,
    /// Where the temporary fleecing images go (on the QEMU host).
    pub work_dir: PathBuf,
    /// How the disks are read.
    pub nbd: NbdOptions,
    /// Old (disabled) checkpoint bitmaps kept per disk after a release, so
    /// that a point whose job failed can still chain.
    pub keep_checkpoints: usize,
    /// How long a QMP command may take.
    pub timeout: Duration,
    /// The host end of the guest's qemu-guest-agent channel: with it, a
    /// snapshot asked for file-system consistency freezes the guest's file
    /// systems (`guest-fsfreeze-freeze`) for the instant of the QMP
    /// transaction and thaws them right after.
    pub guest_agent: Option<PathBuf>,
}

impl QemuProvider {
    /// A provider for the QMP socket `qmp`, with QEMU's NBD server on
    /// `nbd_socket` and fleecing images in `work_dir`.
    pub fn new(qmp: impl Into<PathBuf>, nbd_socket: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        QemuProvider {
            qmp: qmp.into(),
            nbd_socket: nbd_socket.into(),
            work_dir: work_dir.into(),
            nbd: NbdOptions::default(),
            keep_checkpoints: 3,
            timeout: Duration::from_secs(30),
            guest_agent: None,
        }
    }
}

/// A QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> io::Result<Qmp> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut q = Qmp { reader: BufReader::new(s.try_clone()?), writer: s };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a QMP greeting"));
        }
        q.cmd("qmp_capabilities", json!({})).map_err(io::Error::other)?;
        Ok(q)
    }

    fn read(&mut self) -> io::Result<Value> {
        let mut line = String::new();
        let n = (&mut self.reader).take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP closed the connection"));
        }
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Runs a command: its return value, or QMP's error description.
    fn cmd(&mut self, name: &str, args: Value) -> std::result::Result<Value, String> {
        let msg = json!({ "execute": name, "arguments": args }).to_string() + "\n";
        self.writer.write_all(msg.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        loop {
            let v = self.read().map_err(|e| format!("{name}: {e}"))?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let desc = v.pointer("/error/desc").and_then(Value::as_str).unwrap_or("unknown error");
            return Err(format!("{name}: {desc}"));
        }
    }

    /// Runs a command without arguments (the guest agent wants none given).
    fn cmd_noargs(&mut self, name: &str) -> std::result::Result<Value, String> {
        let msg = json!({ "execute": name }).to_string() + "\n";
        self.writer.write_all(msg.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
        loop {
            let v = self.read().map_err(|e| format!("{name}: {e}"))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if v.get("error").is_some() {
                let desc = v.pointer("/error/desc").and_then(Value::as_str).unwrap_or("unknown error");
                return Err(format!("{name}: {desc}"));
            }
        }
    }

    /// Polls `query` until `gone` says the object disappeared.
    fn wait_gone(&mut self, query: &str, gone: impl Fn(&Value) -> bool, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            match self.cmd(query, json!({})) {
                Ok(v) if gone(&v) => return true,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return false,
            }
        }
        false
    }
}

/// Connects to the guest agent, synchronizes, and freezes the guest's file
/// systems.
fn freeze(path: &Path, timeout: Duration) -> std::result::Result<Qmp, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("guest agent {}: {e}", path.display()))?;
    let io = |e: io::Error| format!("guest agent {}: {e}", path.display());
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut ga = Qmp { reader: BufReader::new(s.try_clone().map_err(io)?), writer: s };
    // guest-sync with a fresh id skips any stale reply left in the channel.
    let mut id = [0u8; 4];
    let _ = getrandom::fill(&mut id);
    let id = u64::from(u32::from_le_bytes(id) >> 1);
    let msg = json!({ "execute": "guest-sync", "arguments": { "id": id } }).to_string() + "\n";
    ga.writer.write_all(msg.as_bytes()).map_err(io)?;
    let started = Instant::now();
    loop {
        let v = ga.read().map_err(io)?;
        if v.get("return").and_then(Value::as_u64) == Some(id) {
            break;
        }
        if started.elapsed() > timeout {
            return Err("guest agent did not synchronize".into());
        }
    }
    ga.cmd_noargs("guest-fsfreeze-freeze")?;
    Ok(ga)
}

/// What a snapshot made, to undo at release.
#[derive(Debug, Default)]
struct Made {
    /// (node, fleecing node, its file, job id, export id)
    disks: Vec<Fleece>,
}

#[derive(Debug, Default, Clone)]
struct Fleece {
    node: String,
    fleece: Option<String>,
    file: Option<PathBuf>,
    job: Option<String>,
    export: Option<String>,
}

fn token(node: &str, bitmap: &str) -> String {
    format!("qemu-checkpoint:{node}/{bitmap}")
}

impl QemuProvider {
    fn err(&self, vm: &Vm, step: &'static str, message: String) -> Error {
        Error::Provider { vm: vm.name.clone(), step, message, retryable: false }
    }

    fn connect(&self, vm: &Vm, step: &'static str) -> Result<Qmp> {
        Qmp::connect(&self.qmp, self.timeout)
            .map_err(|e| self.err(vm, step, format!("qmp socket {}: {e}", self.qmp.display())))
    }

    fn undo(&self, q: &mut Qmp, made: &Made) -> Vec<String> {
        let mut problems = Vec::new();
        for f in &made.disks {
            if let Some(id) = &f.export {
                if let Err(e) = q.cmd("block-export-del", json!({ "id": id, "mode": "hard" })) {
                    problems.push(e);
                }
                let id = id.clone();
                q.wait_gone(
                    "query-block-exports",
                    |v| !v.as_array().is_some_and(|a| a.iter().any(|x| x["id"] == id.as_str())),
                    self.timeout,
                );
            }
            if let Some(job) = &f.job {
                if let Err(e) = q.cmd("block-job-cancel", json!({ "device": job, "force": true })) {
                    problems.push(e);
                }
                let job = job.clone();
                q.wait_gone(
                    "query-block-jobs",
                    |v| !v.as_array().is_some_and(|a| a.iter().any(|x| x["device"] == job.as_str())),
                    self.timeout,
                );
            }
            if let Some(node) = &f.fleece
                && let Err(e) = q.cmd("blockdev-del", json!({ "node-name": node }))
            {
                problems.push(e);
            }
            if let Some(file) = &f.file {
                let _ = std::fs::remove_file(file);
            }
        }
        problems
    }
}

/// The node's checkpoint bitmaps, oldest first: (name, recording).
fn checkpoints(node: &Value) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = node["dirty-bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    let name = b["name"].as_str()?;
                    name.starts_with(PREFIX).then(|| (name.to_string(), b["recording"].as_bool().unwrap_or(false)))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl SnapshotProvider for QemuProvider {
    fn prepare(&self, _vm: &Vm) -> Result<PrepareReport> {
        Ok(PrepareReport { provider_version: self.version(), changes: Vec::new() })
    }

    fn version(&self) -> String {
        concat!("qemu-qmp ", env!("CARGO_PKG_VERSION")).to_string()
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        let mut q = self.connect(vm, "snapshot")?;
        let nbd_sock = self.nbd_socket.to_string_lossy().into_owned();
        // An NBD server already running is taken to listen on nbd_socket.
        if let Err(e) = q.cmd("nbd-server-start", json!({ "addr": { "type": "unix", "data": { "path": nbd_sock } } }))
            && !e.contains("already running")
        {
            return Err(self.err(vm, "snapshot", e));
        }
        let nodes =
            q.cmd("query-named-block-nodes", json!({ "flat": true })).map_err(|e| self.err(vm, "snapshot", e))?;
        let nodes = nodes.as_array().cloned().unwrap_or_default();
        let stamp = jiff::Timestamp::now().as_nanosecond();
        let next = format!("{PREFIX}{stamp:020}");
        // QEMU caps node names at 31 characters: microseconds in hex.
        let short = format!("{:x}", stamp / 1000);
        let mut made = Made::default();
        let r = (|| -> std::result::Result<Snapshot, String> {
            let mut actions = Vec::new();
            let mut plan = Vec::new();
            for (i, d) in vm.disks.iter().enumerate() {
                let node = nodes
                    .iter()
                    .find(|n| n["node-name"] == d.location.as_str())
                    .ok_or_else(|| format!("disk {}: no block node named {:?}", d.name, d.location))?;
                let size = node["image"]["virtual-size"]
                    .as_u64()
                    .ok_or_else(|| format!("disk {}: node {} has no size", d.name, d.location))?;
                let old = checkpoints(node);
                let file = self.work_dir.join(format!("vmb-fleece-{short}-{i}.qcow2"));
                let out = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&file)
                    .arg(size.to_string())
                    .output()
                    .map_err(|e| format!("qemu-img create: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "qemu-img create {}: {}",
                        file.display(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let fleece = format!("vmbf-{short}-{i}");
                let mut f = Fleece { node: d.location.clone(), file: Some(file.clone()), ..Fleece::default() };
                q.cmd(
                    "blockdev-add",
                    json!({ "driver": "qcow2", "node-name": fleece,
                            "file": { "driver": "file", "filename": file.to_string_lossy() },
                            "backing": d.location }),
                )?;
                f.fleece = Some(fleece.clone());
                let job = format!("vmbj-{short}-{i}");
                for (b, recording) in &old {
                    if *recording {
                        actions.push(json!({ "type": "block-dirty-bitmap-disable",
                                             "data": { "node": d.location, "name": b } }));
                    }
                }
                actions.push(json!({ "type": "block-dirty-bitmap-add",
                                     "data": { "node": d.location, "name": next, "persistent": true } }));
                actions.push(json!({ "type": "blockdev-backup",
                                     "data": { "device": d.location, "target": fleece, "sync": "none", "job-id": job } }));
                made.disks.push(f);
                plan.push((d, old.into_iter().map(|(b, _)| b).collect::<Vec<_>>(), job));
            }
            // Frozen for the transaction only: milliseconds.
            let mut agent = match (&self.guest_agent, wanted) {
                (Some(path), Consistency::FileSystem | Consistency::Application) => Some(freeze(path, self.timeout)),
                _ => None,
            };
            let tx = q.cmd("transaction", json!({ "actions": actions }));
            let mut warnings = Vec::new();
            let consistency = match agent.as_mut() {
                Some(Ok(ga)) => match ga.cmd_noargs("guest-fsfreeze-thaw") {
                    Ok(_) => Consistency::FileSystem,
                    Err(e) => {
                        warnings.push(format!("guest-fsfreeze-thaw failed ({e}): the guest may still be frozen"));
                        Consistency::FileSystem
                    }
                },
                Some(Err(e)) => {
                    warnings.push(format!("guest file systems not frozen ({e}): the point is crash-consistent"));
                    Consistency::Crash
                }
                None => Consistency::Crash,
            };
            tx?;
            let mut disks = Vec::new();
            for (i, (d, old, job)) in plan.into_iter().enumerate() {
                made.disks[i].job = Some(job);
                let export = format!("vmb-{short}-{i}");
                q.cmd(
                    "block-export-add",
                    json!({ "type": "nbd", "id": export, "node-name": made.disks[i].fleece, "name": export,
                            "writable": false, "bitmaps": old }),
                )?;
                made.disks[i].export = Some(export.clone());
                let addr = NbdAddress::Unix { socket: self.nbd_socket.clone(), export };
                let chain: Vec<(String, String)> = old.iter().map(|b| (b.clone(), token(&d.location, b))).collect();
                let device =
                    NbdDevice::open_with_checkpoints(&addr, &self.nbd, &chain, Some(token(&d.location, &next)))
                        .map_err(|e| format!("disk {}: {e}", d.name))?;
                let change_token = device.change_token();
                disks.push(SnapshotDisk {
                    name: d.name.clone(),
                    device: Arc::new(device),
                    change_token,
                    method: "qemu fleecing (blockdev-backup sync=none), checkpoint bitmaps".into(),
                });
            }
            if wanted != Consistency::Crash && self.guest_agent.is_none() {
                warnings.push(format!("no guest agent: the point is crash-consistent (asked {wanted})"));
            }
            if wanted == Consistency::Application && consistency == Consistency::FileSystem {
                warnings.push("the guest agent freezes file systems only: the point is file-system-consistent".into());
            }
            Ok(Snapshot { disks, consistency, warnings, provider_data: None })
        })();
        match r {
            Ok(mut snap) => {
                snap.provider_data = Some(Box::new(made));
                Ok(snap)
            }
            Err(e) => {
                self.undo(&mut q, &made);
                Err(self.err(vm, "snapshot", e))
            }
        }
    }

    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        let Some(made) = snapshot.provider_data.as_ref().and_then(|d| d.downcast_ref::<Made>()) else { return Ok(()) };
        let mut q = self.connect(vm, "check")?;
        let jobs = q.cmd("query-block-jobs", json!({})).map_err(|e| self.err(vm, "check", e))?;
        for f in &made.disks {
            let Some(job) = &f.job else { continue };
            let j = jobs.as_array().and_then(|a| a.iter().find(|x| x["device"] == job.as_str()));
            let ok = j.is_some_and(|j| j["status"] == "running" && j["io-status"] == "ok");
            if !ok {
                // Copy-before-write stopped: the view may hold later data.
                return Err(Error::SourceChanged {
                    vm: vm.name.clone(),
                    disk: f.node.clone(),
                    detail: format!("the fleecing job {job} stopped or failed during the backup: {j:?}"),
                });
            }
        }
        Ok(())
    }

    fn release(&self, vm: &Vm, mut snapshot: Snapshot) -> Result<()> {
        let made = snapshot.provider_data.take().and_then(|d| d.downcast::<Made>().ok());
        // Disconnect the devices before their exports go.
        snapshot.disks.clear();
        let Some(made) = made else { return Ok(()) };
        let mut q = self.connect(vm, "release")?;
        let mut problems = self.undo(&mut q, &made);
        if let Ok(nodes) = q.cmd("query-named-block-nodes", json!({ "flat": true })) {
            for f in &made.disks {
                let Some(node) = nodes.as_array().and_then(|a| a.iter().find(|n| n["node-name"] == f.node.as_str()))
                else {
                    continue;
                };
                let old: Vec<String> = checkpoints(node).into_iter().filter(|(_, rec)| !rec).map(|(b, _)| b).collect();
                for b in old.iter().take(old.len().saturating_sub(self.keep_checkpoints)) {
                    if let Err(e) = q.cmd("block-dirty-bitmap-remove", json!({ "node": f.node, "name": b })) {
                        problems.push(e);
                    }
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(self.err(vm, "release", problems.join("; "))) }
    }
}
