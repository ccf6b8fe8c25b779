//! `vmbackup schedule`: a foreground daemon that backs up VMs by a policy.
//!
//! What has been served is read from the vault, not kept in a state file:
//! every scheduled point records the run it served in its `policy_rule`
//! ("schedule: daily at 02:00; run 2026-11-26T01:00:00Z"). At start, and
//! after every job, a VM is due when a scheduled run lies after the last run
//! it served (or after its newest point) and at or before now; after
//! downtime only the latest missed run is made up, once. A VM without
//! points waits for its first scheduled run. At most `--concurrency` jobs run
//! at once; a job failing with a retryable error is tried again after 10,
//! 30 and 90 seconds. After a job succeeds and no other job is running, the
//! VM's points are pruned by the policy. SIGTERM or SIGINT cancels the jobs
//! in flight (they commit nothing, their snapshots are released) and exits 0.
//! Snapshots are kept for the policy's instant-restore days where the
//! images' file system has reflinks; expired ones are released after jobs.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::{
    BackupOptions, CancelToken, Consistency, ErrorKind, ImageFileProvider, Policy, PruneOptions, SnapshotProvider,
    Throttle, ThrottledProvider, Vault, Vm,
};
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

use crate::globals::Globals;

/// The VMs file: `{"vms": [{"name": "web", "disks": ["root=/images/web.img"], "consistency": "crash"},
/// {"name": "db", "libvirt": "db", "connect": "qemu:///system", "consistency": "app"}]}`: a VM
/// is image files (`disks`) or a libvirt domain (`libvirt`, with `connect`, `include`,
/// `exclude` and `guest_scripts` as `backup --libvirt` takes them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmsFile {
    vms: Vec<VmEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmEntry {
    name: String,
    #[serde(default)]
    disks: Vec<String>,
    libvirt: Option<String>,
    connect: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    guest_scripts: Option<std::path::PathBuf>,
    consistency: Option<String>,
}

/// Where a scheduled VM's disks come from.
enum Source {
    /// Image files, described once.
    Images(Vm),
    /// A libvirt domain, described again at each job (its disks may have
    /// changed).
    #[cfg(feature = "libvirt")]
    Libvirt(backup_core::LibvirtProvider),
}

impl Source {
    /// The libvirt connection of a domain, which a boot verification uses.
    fn libvirt_uri(&self) -> Option<&str> {
        match self {
            Source::Images(_) => None,
            #[cfg(feature = "libvirt")]
            Source::Libvirt(p) => Some(&p.uri),
        }
    }

    fn from_entry(e: &VmEntry) -> Result<Source> {
        let libvirt = crate::libvirt_provider(crate::LibvirtArgs {
            domain: e.libvirt.clone(),
            connect: e.connect.clone(),
            include: e.include.clone(),
            exclude: e.exclude.clone(),
            guest_scripts: e.guest_scripts.clone(),
            // Per VM file entry only the asked-for consistency: the
            // fallback rules of the table apply.
            min_consistency: Consistency::Crash,
            freeze_timeout: backup_core::DEFAULT_FREEZE_TIMEOUT,
            cancel: CancelToken::new(),
        })?;
        match libvirt {
            None => {
                if e.connect.is_some() || !e.include.is_empty() || !e.exclude.is_empty() || e.guest_scripts.is_some() {
                    anyhow::bail!("connect, include, exclude and guest_scripts go with libvirt");
                }
                Ok(Source::Images(crate::vm_from_args(&e.name, &e.disks)?))
            }
            #[cfg(feature = "libvirt")]
            Some(l) => {
                if !e.disks.is_empty() {
                    anyhow::bail!("give disks or libvirt, not both");
                }
                backup_core::validate_name("vm name", &e.name)?;
                Ok(Source::Libvirt(l.0))
            }
            #[cfg(not(feature = "libvirt"))]
            Some(l) => match l {},
        }
    }

    /// The VM and its provider for one job.
    #[cfg_attr(not(feature = "libvirt"), allow(unused_variables))]
    fn job(&self, name: &str, cancel: &CancelToken) -> backup_core::Result<(Vm, Box<dyn SnapshotProvider>)> {
        match self {
            Source::Images(vm) => Ok((vm.clone(), Box::new(ImageFileProvider::new()))),
            #[cfg(feature = "libvirt")]
            Source::Libvirt(p) => {
                let mut p = p.clone();
                p.cancel = cancel.clone();
                let (vm, _skipped) = p.vm(name)?;
                Ok((vm, Box::new(p)))
            }
        }
    }
}

/// What the daemon was asked to do.
pub struct Args<'a> {
    pub vault: &'a Path,
    pub policy: &'a Path,
    pub vms: &'a Path,
    pub concurrency: usize,
    pub limit: Option<u64>,
    pub max_reads: Option<usize>,
    pub once: bool,
    pub now: Option<Timestamp>,
}

const RETRY_AFTER: [u64; 3] = [10, 30, 90];

fn log(msg: impl AsRef<str>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ =
        writeln!(out, "{} {}", Timestamp::now().round(jiff::Unit::Second).unwrap_or(Timestamp::now()), msg.as_ref());
    let _ = out.flush();
}

/// The scheduled run a point served, from its policy rule.
fn served_run(rule: Option<&str>) -> Option<Timestamp> {
    rule?.rsplit_once("; run ")?.1.trim().parse().ok()
}

/// Runs the daemon until a signal (or, with `once`, until nothing is due).
pub fn run(g: &Globals, args: Args<'_>) -> Result<ExitCode> {
    let policy = Policy::from_file(args.policy)?;
    let text = std::fs::read_to_string(args.vms).with_context(|| format!("cannot read {}", args.vms.display()))?;
    let file: VmsFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a VMs file", args.vms.display()))?;
    let mut vms: Vec<(String, Source, Consistency)> = Vec::new();
    for e in &file.vms {
        let source = Source::from_entry(e).with_context(|| format!("vm {} in {}", e.name, args.vms.display()))?;
        let c = e.consistency.as_deref().unwrap_or("crash").parse::<Consistency>()?;
        if vms.iter().any(|(v, _, _)| *v == e.name) {
            anyhow::bail!("vm {} is listed twice in {}", e.name, args.vms.display());
        }
        vms.push((e.name.clone(), source, c));
    }
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let vault = g.open(args.vault)?;
    // The second site, opened once: a policy whose target cannot be opened
    // does not start.
    let second_site = match &policy.copy {
        None => None,
        Some(rule) => {
            let mut target = g.clone();
            target.remote = backup_core::RemoteOptions::default();
            target.remote.endpoint = rule.endpoint.clone();
            let opened = crate::keys::open_copy_target(
                Path::new(&rule.to),
                &target,
                rule.key_file.as_deref(),
                rule.passphrase_file.as_deref(),
            )
            .with_context(|| format!("the policy's copy target {}", rule.to))?;
            Some(opened)
        }
    };
    let throttle: Option<Arc<Throttle>> = match (args.limit, args.max_reads) {
        (None, None) => None,
        (rate, reads) => {
            let mut t = Throttle::new(rate.unwrap_or(u64::MAX))?;
            if let Some(n) = reads {
                t = t.with_concurrent_reads(n)?;
            }
            Some(Arc::new(t))
        }
    };
    // A fake clock for tests and dry rehearsals: real time shifted.
    let offset = args.now.map_or(SignedDuration::ZERO, |n| n.duration_since(Timestamp::now()));
    let clock = || Timestamp::now().checked_add(offset).unwrap_or_else(|_| Timestamp::now());
    let start = clock();
    let mut served: HashMap<String, Timestamp> = HashMap::new();
    for (name, _, _) in &vms {
        let last = vault.latest_point(name)?;
        let since = last.map_or(start, |p| served_run(p.policy_rule.as_deref()).map_or(p.time, |r| r.max(p.time)));
        served.insert(name.clone(), since);
    }
    let _ = crate::signals::cancel_on_signals();
    // Snapshots whose instant-restore days ran out while the daemon was down.
    release_expired(&vault, start);
    log(format!(
        "schedule started: {} vms, {}, at most {} at once{}",
        vms.len(),
        policy.schedule.describe(),
        args.concurrency,
        args.limit.map(|l| format!(", reads limited to {l} bytes/s")).unwrap_or_default()
            + &args.max_reads.map(|n| format!(", at most {n} reads at once")).unwrap_or_default()
    ));
    if let Some(next) = policy.next_runs(start, 1)?.first() {
        log(format!("next run: {next}"));
    }

    let mut failures = 0u32;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::channel::<(String, Result<String, String>)>();
        let mut running: HashMap<String, CancelToken> = HashMap::new();
        loop {
            if crate::signals::signalled() {
                if !running.is_empty() {
                    log(format!("stopping: cancelling {} running job(s)", running.len()));
                }
                for t in running.values() {
                    t.cancel();
                }
                break;
            }
            let now = clock();
            for (name, source, consistency) in &vms {
                if running.len() >= args.concurrency || running.contains_key(name) {
                    continue;
                }
                let since = served.get(name).copied().unwrap_or(start);
                let Some(due) = policy.schedule.due(&policy.time_zone, since, now)? else { continue };
                served.insert(name.clone(), due.timestamp());
                let cancel = CancelToken::new();
                running.insert(name.clone(), cancel.clone());
                let rule = format!("schedule: {}; run {}", policy.schedule.describe(), due.timestamp());
                log(format!("{name}: backup started for the run of {due}"));
                let (tx, vault, throttle, second_site) = (tx.clone(), &vault, throttle.clone(), second_site.as_ref());
                let consistency = *consistency;
                let days = policy.instant_restore_days;
                let (boot_rule, uri) = (policy.boot_verify.clone(), source.libvirt_uri());
                s.spawn(move || {
                    let mut options = BackupOptions::default();
                    options.consistency = consistency;
                    options.cancel = cancel;
                    options.policy_rule = Some(rule);
                    options.instant_restore_days = days;
                    let (vm, provider) = match source.job(name, &options.cancel) {
                        Ok((vm, p)) => match throttle {
                            Some(t) => (vm, Box::new(ThrottledProvider::new(p, t)) as Box<dyn SnapshotProvider>),
                            None => (vm, p),
                        },
                        Err(e) => {
                            let _ = tx.send((name.clone(), Err(e.to_string())));
                            return;
                        }
                    };
                    let vm = &vm;
                    let mut attempt = 0;
                    let result = loop {
                        match backup_core::backup(vault, &provider, vm, &options) {
                            Ok(r) => {
                                let committed = format!(
                                    "committed point {} ({} read, {} added, {:.1} s)",
                                    r.point.id,
                                    crate::human(r.point.stats.totals.bytes_read),
                                    crate::human(r.point.stats.bytes_added),
                                    r.seconds
                                );
                                // The policy's boot verification, when one is due.
                                let verified = match (&boot_rule, uri) {
                                    (Some(rule), Some(uri)) => {
                                        boot_verify_if_due(vault, &r.point, rule, uri, &options.cancel, clock())
                                    }
                                    _ => Ok(None),
                                };
                                let committed = match second_site {
                                    Some(to) => format!("{committed}; {}", copy_point(vault, to, vm, &options.cancel)),
                                    None => committed,
                                };
                                break match verified {
                                    Ok(None) => Ok(committed),
                                    Ok(Some(v)) => Ok(format!("{committed}; {v}")),
                                    Err(e) => Err(format!("{committed}; {e}")),
                                };
                            }
                            Err(e) if e.kind() == ErrorKind::Retryable && attempt < RETRY_AFTER.len() => {
                                log(format!("{}: {e}; trying again in {} s", vm.name, RETRY_AFTER[attempt]));
                                for _ in 0..RETRY_AFTER[attempt] * 10 {
                                    if options.cancel.is_cancelled() {
                                        break;
                                    }
                                    std::thread::sleep(Duration::from_millis(100));
                                }
                                attempt += 1;
                            }
                            Err(e) => break Err(e.to_string()),
                        }
                    };
                    let _ = tx.send((vm.name.clone(), result));
                });
            }
            if args.once && running.is_empty() {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok((name, result)) => {
                    running.remove(&name);
                    match result {
                        Ok(msg) => {
                            log(format!("{name}: {msg}"));
                            if running.is_empty() {
                                prune_vm(&vault, &policy, &name, clock());
                                release_expired(&vault, clock());
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            // A backup that committed but whose boot
                            // verification failed says so itself.
                            if e.starts_with("committed point") {
                                log(format!("{name}: {e}"));
                            } else {
                                log(format!("{name}: backup failed: {e}"));
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        while !running.is_empty() {
            match rx.recv() {
                Ok((name, result)) => {
                    running.remove(&name);
                    match result {
                        Ok(msg) => log(format!("{name}: {msg}")),
                        Err(e) => log(format!("{name}: {e}")),
                    }
                }
                Err(_) => break,
            }
        }
        Ok(())
    })?;
    log("schedule stopped");
    Ok(if args.once && failures > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Copies a VM's newest point to the policy's second site; what happened,
/// in words (a failed copy does not fail the backup: the next one copies
/// its own point, and `vmbackup copy --points all` catches up).
fn copy_point(vault: &Vault, to: &Vault, vm: &backup_core::Vm, cancel: &CancelToken) -> String {
    let mut options = backup_core::CopyOptions::default();
    options.vms = vec![vm.name.clone()];
    options.cancel = cancel.clone();
    match backup_core::copy(vault, to, &options) {
        Ok(r) => format!("copied to {} ({} written)", to.location(), crate::human(r.bytes_added())),
        Err(e) => format!("copy to {} failed: {e}", to.location()),
    }
}

fn prune_vm(vault: &Vault, policy: &Policy, vm: &str, now: Timestamp) {
    let mut options = PruneOptions::default();
    options.vm = Some(vm.to_string());
    let r =
        backup_core::prune_plan(vault, &policy.retention, now, &options).and_then(|p| backup_core::prune(vault, &p));
    match r {
        Ok(r) if !r.removed.is_empty() => log(format!("{vm}: pruned {} point(s)", r.removed.len())),
        Ok(_) => {}
        Err(e) => log(format!("{vm}: prune failed (tried again after the next job): {e}")),
    }
}

/// Releases the snapshots kept for instant restore whose days are over.
fn release_expired(vault: &Vault, now: Timestamp) {
    match backup_core::release_expired(vault, None, now) {
        Ok(r) => {
            for (k, why) in &r.released {
                log(format!("{}: released the snapshot of point {} ({why})", k.vm, k.point));
            }
            for p in &r.problems {
                log(format!("a kept snapshot could not be released (tried again after the next job): {p}"));
            }
        }
        Err(e) => log(format!("kept snapshots could not be released (tried again after the next job): {e}")),
    }
}

/// Boots the VM's newest point when the policy's rule says it is due (no
/// point of the VM verified in `every_days`); what it showed, or None when
/// none was due.
#[cfg(feature = "libvirt")]
fn boot_verify_if_due(
    vault: &backup_core::Vault,
    point: &backup_core::PointManifest,
    rule: &backup_core::BootVerifyRule,
    uri: &str,
    cancel: &CancelToken,
    now: Timestamp,
) -> Result<Option<String>, String> {
    let last = vault.boot_verdicts(&point.vm).map_err(|e| e.to_string())?.values().map(|v| v.checked_at).max();
    let age_days = last.map(|t| (now.as_second() - t as i64) / 86_400);
    if age_days.is_some_and(|d| d < i64::from(rule.every_days)) {
        return Ok(None);
    }
    let mut options = backup_core::BootVerifyOptions::default();
    options.uri = uri.to_string();
    options.timeout = Duration::from_secs(u64::from(rule.timeout_secs));
    options.script_timeout = options.timeout;
    options.cancel = cancel.clone();
    if let Some(script) = &rule.script {
        options.script = Some(std::fs::read(script).map_err(|e| format!("cannot read {}: {e}", script.display()))?);
    }
    let v = backup_core::boot_verify(vault, point, &options).map_err(|e| format!("boot verification failed: {e}"))?;
    if v.passed {
        Ok(Some(format!("boot verification of point {} passed", point.id)))
    } else {
        Err(format!("boot verification of point {} FAILED: {}", point.id, v.reason.as_deref().unwrap_or("no reason")))
    }
}

#[cfg(not(feature = "libvirt"))]
fn boot_verify_if_due(
    _: &backup_core::Vault,
    _: &backup_core::PointManifest,
    _: &backup_core::BootVerifyRule,
    _: &str,
    _: &CancelToken,
    _: Timestamp,
) -> Result<Option<String>, String> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_run_reads_the_policy_rule() {
        let t = served_run(Some("schedule: daily at 02:00; run 2026-11-26T01:00:00Z"));
        assert_eq!(t, Some("2026-11-26T01:00:00Z".parse().expect("ts")));
        assert_eq!(served_run(Some("manual")), None);
        assert_eq!(served_run(None), None);
    }
}
