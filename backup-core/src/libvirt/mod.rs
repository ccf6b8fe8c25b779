//! The libvirt provider: point-in-time snapshots of a running libvirt
//! domain's disks, read over NBD, with libvirt checkpoints as change
//! tracking (feature `libvirt`: libvirt itself is loaded at run time,
//! when a domain is first asked for, by `sys`).
//!
//! A domain's disks come from its XML (`domain_xml`): file-backed and block
//! disks; CD-ROMs, shareable and read-only disks are skipped with the
//! reason. One snapshot, for all selected disks at once:
//!
//! 1. a checkpoint `vmbackup.<nanoseconds>` (a dirty bitmap per disk: the
//!    next change-tracking token, `libvirt-checkpoint:<name>`) and a
//!    pull-mode backup job (`virDomainBackupBegin`) whose NBD server listens
//!    on a unix socket in a work folder of the job, with scratch files
//!    beside it (QEMU runs as its own user: the folder is made its);
//! 2. when the previous point's token names a checkpoint the domain still
//!    has, the job is incremental from it and exports its bitmap
//!    (`qemu:dirty-bitmap:vmbackup-<disk>`): only the blocks written since
//!    are read. Otherwise every block is read (the engine says why).
//!
//! The guest agent is what a cloud's snapshot extension is (`agent`):
//! `prepare` checks that it answers, records its version, the guest OS and
//! whether freeze and exec are enabled, and with
//! [`LibvirtProvider::guest_scripts`] installs pre/post scripts into the
//! guest (`guest_scripts`). The snapshot quiesces the guest through it
//! (`quiesce`): in-guest scripts, a freeze only as long as the checkpoint
//! takes, with a guardian that thaws if vmbackup dies; the fallback table of
//! `snapshot::consistent` applies with the agent as the freezer.
//!
//! A disk new since the previous point (hot-added) is read in full while
//! the others stay incremental. A shut-off domain's disks are read in place
//! (`offline`), crash-consistent. The domain's persistent XML is stored
//! with every point ([`SnapshotProvider::configuration`]).
//!
//! Release, on success, failure and cancel alike, ends the job, removes the
//! work folder, and deletes vmbackup's checkpoints beyond
//! [`LibvirtProvider::keep_checkpoints`]. A job or work folder left by a
//! killed run (its process gone) is ended and removed by the next snapshot.

pub(crate) mod agent;
mod domain_xml;
pub(crate) mod domains;
mod guest_scripts;
pub(crate) mod handle;
mod offline;
pub(crate) mod quiesce;
mod sys;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use agent::GuestAgentInfo;
pub use domain_xml::{DomainDisk, SkippedDisks, parse_disks};
pub use quiesce::{GUEST_CONFIG, GUEST_POST_SCRIPT, GUEST_PRE_SCRIPT};

use handle::{Connect, Domain};

use crate::error::{Error, Result};
use crate::model::{CancelToken, Consistency, Vm, VmConfiguration, VmDisk};
use crate::nbd::{NbdAddress, NbdDevice, NbdOptions};
use crate::snapshot::{PrepareReport, Snapshot, SnapshotDisk, SnapshotProvider};

/// The prefix of vmbackup's checkpoints on a domain.
const CHECKPOINT_PREFIX: &str = "vmbackup.";
/// The prefix of a change token of this provider.
const TOKEN_PREFIX: &str = "libvirt-checkpoint:";

/// Snapshots of a libvirt domain's disks (pull-mode backup jobs and
/// checkpoints).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LibvirtProvider {
    /// The connection URI (default `qemu:///system`).
    pub uri: String,
    /// The domain's name.
    pub domain: String,
    /// Where each job's socket and scratch files go (default
    /// `/var/tmp/vmbackup-libvirt`).
    pub work_dir: PathBuf,
    /// Back up only these disks (target names, e.g. `vda`); empty: all.
    pub include: Vec<String>,
    /// Never back up these disks.
    pub exclude: Vec<String>,
    /// How many of vmbackup's checkpoints to keep on the domain (default 3;
    /// at least 1: the next incremental starts from the newest).
    pub keep_checkpoints: usize,
    /// A host `VMSnapshotScriptPluginConfig.json` whose scripts `prepare`
    /// installs into the guest (Linux guests); None: install nothing (the
    /// guest's own, if any, still run).
    pub guest_scripts: Option<PathBuf>,
    /// The weakest consistency accepted; a fallback below it fails the
    /// snapshot (default crash).
    pub min_consistency: Consistency,
    /// How long the guest may stay frozen before the guardian thaws it
    /// (default 60 s).
    pub freeze_timeout: Duration,
    /// Stops a running in-guest pre-script (give it the job's cancel token).
    pub cancel: CancelToken,
}

impl LibvirtProvider {
    /// A provider for `domain` on `qemu:///system`.
    pub fn new(domain: impl Into<String>) -> LibvirtProvider {
        LibvirtProvider {
            uri: "qemu:///system".into(),
            domain: domain.into(),
            work_dir: PathBuf::from("/var/tmp/vmbackup-libvirt"),
            include: Vec::new(),
            exclude: Vec::new(),
            keep_checkpoints: 3,
            guest_scripts: None,
            min_consistency: Consistency::Crash,
            freeze_timeout: crate::snapshot::DEFAULT_FREEZE_TIMEOUT,
            cancel: CancelToken::new(),
        }
    }

    fn err(&self, step: &'static str, message: impl std::fmt::Display) -> Error {
        Error::Provider {
            vm: self.domain.clone(),
            step,
            message: format!("libvirt domain {} ({}): {message}", self.domain, self.uri),
            retryable: false,
        }
    }

    fn domain(&self, step: &'static str) -> Result<Domain> {
        let conn = Connect::open(&self.uri).map_err(|e| self.err(step, e))?;
        conn.lookup_domain_by_name(&self.domain).map_err(|e| self.err(step, e))
    }

    /// The domain's disks to back up, from its XML, and the ones skipped
    /// with why.
    ///
    /// # Errors
    /// libvirt errors; an include naming no disk.
    pub fn disks(&self) -> Result<(Vec<DomainDisk>, SkippedDisks)> {
        self.disks_of(&self.domain("check")?)
    }

    /// As [`disks`](Self::disks), over a domain already looked up.
    fn disks_of(&self, dom: &Domain) -> Result<(Vec<DomainDisk>, SkippedDisks)> {
        let xml = dom.xml_desc().map_err(|e| self.err("check", e))?;
        let (mut disks, mut skipped) = parse_disks(&xml).map_err(|e| self.err("check", e))?;
        for name in &self.include {
            if !disks.iter().any(|d| &d.target == name) {
                return Err(self.err("check", format!("--include {name}: the domain has no such disk to back up")));
            }
        }
        disks.retain(|d| {
            let keep =
                (self.include.is_empty() || self.include.contains(&d.target)) && !self.exclude.contains(&d.target);
            if !keep {
                skipped.push((d.target.clone(), "not selected".into()));
            }
            keep
        });
        Ok((disks, skipped))
    }

    /// The VM to back up: named `name`, one disk per selected disk of the
    /// domain (named after its target), and the disks skipped with why.
    ///
    /// # Errors
    /// As [`disks`](Self::disks); a domain with no disk to back up.
    pub fn vm(&self, name: &str) -> Result<(Vm, SkippedDisks)> {
        let (disks, skipped) = self.disks()?;
        if disks.is_empty() {
            return Err(self.err("check", "no disk to back up"));
        }
        crate::model::validate_name("vm name", name)?;
        let vm = Vm {
            name: name.to_string(),
            os: crate::model::OsType::Other,
            disks: disks.iter().map(|d| VmDisk { name: d.target.clone(), location: d.source.clone() }).collect(),
        };
        Ok((vm, skipped))
    }

    /// vmbackup's checkpoints on the domain, oldest first.
    fn checkpoints(&self, dom: &Domain) -> Result<Vec<String>> {
        let mut names = dom.checkpoint_names().map_err(|e| self.err("snapshot", e))?;
        names.retain(|n| n.starts_with(CHECKPOINT_PREFIX));
        // Names carry a zero-padded time: they sort by age.
        names.sort();
        Ok(names)
    }

    fn delete_checkpoint(&self, dom: &Domain, name: &str) -> Result<()> {
        dom.delete_checkpoint(name).map_err(|e| self.err("release", e))
    }

    /// Ends a backup job of ours that a killed run left, and removes work
    /// folders (`<domain>-<pid>`) whose process is gone.
    fn clean_leftovers(&self, dom: &Domain) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(text) = dom.backup_xml()
            && let Some(pid) = job_pid(&text, &self.work_dir, &self.domain)
            && !alive(pid)
        {
            let _ = dom.abort_job();
            notes.push(format!("ended a backup job of domain {} left by a killed vmbackup (pid {pid})", self.domain));
        }
        if let Ok(entries) = std::fs::read_dir(&self.work_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Any domain's folder whose process is gone: a domain that
                // was since removed would otherwise keep its folder forever
                // (its job, if any, died with its QEMU).
                if let Some(pid) = name.rsplit_once('-').and_then(|(_, p)| p.parse::<i32>().ok())
                    && !alive(pid)
                    && std::fs::remove_dir_all(e.path()).is_ok()
                {
                    notes.push(format!("removed {} left by a killed vmbackup", e.path().display()));
                }
            }
        }
        notes
    }
}

/// The pid in the socket path of a backup job's XML, when the job is one of
/// ours (its socket in our work folder, in a folder of this domain).
fn job_pid(xml: &str, work_dir: &Path, domain: &str) -> Option<i32> {
    let prefix = format!("{}/{domain}-", work_dir.display());
    let at = xml.find(&prefix)? + prefix.len();
    xml[at..].split('/').next()?.parse().ok()
}

/// Whether process `pid` lives (0 and negative pids, which name process
/// groups, never do).
pub(crate) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// What release needs, and the domain's XML for the point.
struct Job {
    dir: PathBuf,
    /// The backup job was started (a running domain).
    running: bool,
    /// The qemu-nbd processes reading a shut-off domain's disks.
    served: Option<offline::Served>,
    xml: Option<String>,
}

/// The uid and gid QEMU runs as under libvirt's system instance, when that
/// user exists.
pub(crate) fn qemu_user() -> Option<(u32, u32)> {
    let name = c"libvirt-qemu";
    // SAFETY: getpwnam returns a pointer to static storage or null.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null, so a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

impl SnapshotProvider for LibvirtProvider {
    fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
        let dom = self.domain("prepare")?;
        let mut changes = Vec::new();
        let running = dom.is_active().map_err(|e| self.err("prepare", e))?;
        if !running {
            changes.push(format!(
                "domain {} is shut off: its guest agent is looked at when it runs; points are crash-consistent until then",
                self.domain
            ));
            if let Some(config) = &self.guest_scripts {
                changes.push(format!(
                    "the scripts of {} are installed into the guest when the domain runs",
                    config.display()
                ));
            }
            return Ok(PrepareReport { provider_version: self.version(), changes });
        }
        let probe = agent::Agent { dom: &dom, windows: false }.info();
        match probe {
            Ok(info) => {
                changes.push(info.summary());
                if !info.freeze_enabled {
                    changes.push("the agent has freezing disabled: points are crash-consistent".into());
                }
                if let Some(config) = &self.guest_scripts {
                    let agent = agent::Agent { dom: &dom, windows: info.is_windows() };
                    let lines = guest_scripts::install(&agent, &info, config).map_err(|e| {
                        self.err(
                            "prepare",
                            format!("installing the scripts of {} into the guest: {e}", config.display()),
                        )
                    })?;
                    changes.extend(lines);
                }
            }
            Err(e) => {
                if let Some(config) = &self.guest_scripts {
                    return Err(self.err(
                        "prepare",
                        format!("cannot install the scripts of {}: no guest agent answers ({e})", config.display()),
                    ));
                }
                changes.push(format!("no guest agent answers ({e}): points are crash-consistent"));
            }
        }
        let _ = vm;
        Ok(PrepareReport { provider_version: self.version(), changes })
    }

    /// The provider's version, the agent's and a digest of the guest scripts
    /// to install: a new agent (or new scripts) prepares the VM again.
    fn version(&self) -> String {
        let agent = self
            .domain("prepare")
            .ok()
            .filter(|d| d.is_active().unwrap_or(false))
            .and_then(|d| agent::Agent { dom: &d, windows: false }.version().ok())
            .unwrap_or_else(|| "none".to_string());
        let scripts = self.guest_scripts.as_ref().map_or_else(String::new, |p| {
            let mut h = blake3::Hasher::new();
            h.update(p.to_string_lossy().as_bytes());
            if let Ok(c) = crate::snapshot::ScriptsConfig::load(p) {
                for s in c.pre_script.iter().chain(&c.post_script) {
                    h.update(&std::fs::read(s).unwrap_or_default());
                }
            }
            h.update(&std::fs::read(p).unwrap_or_default());
            format!("; guest scripts {}", &h.finalize().to_hex()[..16])
        });
        format!("libvirt {}; qemu-ga {agent}{scripts}", env!("CARGO_PKG_VERSION"))
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        self.snapshot_since(vm, wanted, &[])
    }

    fn snapshot_since(&self, vm: &Vm, wanted: Consistency, previous: &[(String, String)]) -> Result<Snapshot> {
        let dom = self.domain("snapshot")?;
        let mut warnings = self.clean_leftovers(&dom);
        let (disks, skipped) = self.disks_of(&dom)?;
        for (t, why) in &skipped {
            warnings.push(format!("disk {t} of domain {} is skipped: {why}", self.domain));
        }
        let disks: Vec<DomainDisk> =
            disks.into_iter().filter(|d| vm.disks.iter().any(|v| v.name == d.target)).collect();
        if disks.len() != vm.disks.len() {
            return Err(self.err("snapshot", "the domain's disks changed since the VM was described"));
        }
        let xml = dom.inactive_xml_desc().ok();
        // Each disk's previous checkpoint, if the domain still has it.
        let have = self.checkpoints(&dom)?;
        let since: Vec<(DomainDisk, Option<String>)> = disks
            .into_iter()
            .map(|d| {
                let token = previous.iter().find(|(n, _)| n == &d.target).map(|(_, t)| t.as_str());
                let cp = token.and_then(|t| t.strip_prefix(TOKEN_PREFIX));
                let usable = cp.filter(|c| have.iter().any(|h| h == c)).map(str::to_string);
                match (token, cp, &usable) {
                    (None, _, _) if !previous.is_empty() => warnings.push(format!(
                        "disk {} is new since the previous point (added to the domain): every block of it is read",
                        d.target
                    )),
                    (Some(_), Some(c), None) => warnings.push(format!(
                        "disk {}: the previous point's checkpoint {c} is gone from domain {}: every block is read",
                        d.target, self.domain
                    )),
                    _ => {}
                }
                (d, usable)
            })
            .collect();
        let dir = self.work_dir.join(format!("{}-{}", self.domain, std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create work folder", &dir, e))?;
        if !dom.is_active().map_err(|e| self.err("snapshot", e))? {
            return self.snapshot_offline(since, dir, xml, warnings, wanted, &have);
        }
        if let Some((uid, gid)) = qemu_user() {
            // QEMU, not us, makes the socket and the scratch files there.
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown work folder", &dir, e))?;
        }
        let sock = dir.join("nbd.sock");
        let next = format!("{CHECKPOINT_PREFIX}{:020}", jiff::Timestamp::now().as_nanosecond());
        let only: Vec<DomainDisk> = since.iter().map(|(d, _)| d.clone()).collect();
        let checkpoint_xml = domain_xml::checkpoint_xml(&next, &only);
        let backup_xml = domain_xml::backup_xml(&sock, &dir, &since);

        // The agent, when a consistency above crash is asked for.
        let info = if wanted > Consistency::Crash {
            agent::Agent { dom: &dom, windows: false }.info()
        } else {
            Err("not asked for".into())
        };
        let plan = quiesce::Plan {
            agent: info.map(|i| (agent::Agent { dom: &dom, windows: i.is_windows() }, i)),
            wanted,
            min: self.min_consistency,
            freeze_timeout: self.freeze_timeout,
            cancel: &self.cancel,
            vm: &vm.name,
            thaw_command: quiesce::thaw_command(&self.uri, &self.domain),
        };
        let q = plan.run(|| {
            dom.backup_begin(&backup_xml, &checkpoint_xml)
                .map_err(|e| self.err("snapshot", format!("cannot start the backup job: {e}")))
        });
        let q = match q {
            Ok(q) => q,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        warnings.extend(q.log);
        let job = Job { dir: dir.clone(), running: true, served: None, xml };
        let level = match q.level {
            Ok(l) => l,
            Err(e) => {
                self.end_job(&dom, job);
                return Err(e);
            }
        };
        let token = format!("{TOKEN_PREFIX}{next}");
        let mut out = Vec::new();
        for (d, prev) in &since {
            let addr = NbdAddress::parse(&format!("nbd+unix:///{}?socket={}", d.target, sock.display()))?;
            let chain: Vec<(String, String)> =
                prev.iter().map(|p| (domain_xml::export_bitmap(&d.target), format!("{TOKEN_PREFIX}{p}"))).collect();
            let device =
                match NbdDevice::open_with_checkpoints(&addr, &NbdOptions::default(), &chain, Some(token.clone())) {
                    Ok(dev) => dev,
                    Err(e) => {
                        self.end_job(&dom, job);
                        return Err(e);
                    }
                };
            out.push(SnapshotDisk {
                name: d.target.clone(),
                device: Arc::new(device),
                change_token: Some(token.clone()),
                method: if prev.is_some() { "libvirt-incremental" } else { "libvirt-full" }.to_string(),
            });
        }
        Ok(Snapshot { disks: out, consistency: level, warnings, provider_data: Some(Box::new(job)) })
    }

    fn configuration(&self, _vm: &Vm, snapshot: &Snapshot) -> Option<VmConfiguration> {
        let job = snapshot.provider_data.as_ref()?.downcast_ref::<Job>()?;
        job.xml.as_ref().map(|x| VmConfiguration { kind: "libvirt-domain-xml".into(), text: x.clone() })
    }

    fn release(&self, _vm: &Vm, snapshot: Snapshot) -> Result<()> {
        let dom = self.domain("release")?;
        if let Some(job) = snapshot.provider_data.and_then(|d| d.downcast::<Job>().ok()) {
            drop(snapshot.disks);
            self.end_job(&dom, *job);
        }
        let names = self.checkpoints(&dom)?;
        let keep = self.keep_checkpoints.max(1);
        for old in names.iter().take(names.len().saturating_sub(keep)) {
            self.delete_checkpoint(&dom, old)?;
        }
        Ok(())
    }
}

impl LibvirtProvider {
    /// A shut-off domain: its disks read in place, crash-consistent.
    fn snapshot_offline(
        &self,
        since: Vec<(DomainDisk, Option<String>)>,
        dir: PathBuf,
        xml: Option<String>,
        mut warnings: Vec<String>,
        wanted: Consistency,
        have: &[String],
    ) -> Result<Snapshot> {
        // Not the fallback table's error (`settle`): that one is retryable,
        // and a shut-off domain does not start by itself within the job's
        // retries.
        if self.min_consistency > Consistency::Crash {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(self.err(
                "snapshot",
                format!(
                    "the domain is shut off, so the point would be crash-consistent, and at least {} consistency is required",
                    self.min_consistency
                ),
            ));
        }
        if wanted > Consistency::Crash {
            warnings.push(format!(
                "domain {} is shut off: its disks are read in place and the point is crash-consistent",
                self.domain
            ));
        }
        // The previous checkpoint and every later one of ours.
        let chains: Vec<(DomainDisk, Option<offline::Since>)> = since
            .into_iter()
            .map(|(d, prev)| {
                let chain = prev.map(|p| offline::Since {
                    checkpoints: have.iter().filter(|h| **h >= p).cloned().collect(),
                    token: format!("{TOKEN_PREFIX}{p}"),
                });
                (d, chain)
            })
            .collect();
        match offline::serve(&chains, &dir, &self.domain) {
            Ok((disks, served, log)) => {
                warnings.extend(log);
                let job = Job { dir, running: false, served: Some(served), xml };
                Ok(Snapshot { disks, consistency: Consistency::Crash, warnings, provider_data: Some(Box::new(job)) })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn end_job(&self, dom: &Domain, mut job: Job) {
        drop(job.served.take());
        if job.running {
            // An error (no job) is fine.
            let _ = dom.abort_job();
        }
        let _ = std::fs::remove_dir_all(&job.dir);
    }
}
