//! The backup job, in five phases: prepare (the VM's first backup, or a new
//! provider version), snapshot, transfer (every disk in parallel), commit
//! (the snapshot checked intact, the manifest written last) and release (the
//! snapshot released, or kept for instant restore). Every phase's start and
//! end, progress, warnings, retries and the error that stopped the job go
//! to the job's log in the vault (`log`); kept snapshots and tiers are in
//! `tiers`.
//!
//! Cancellation is checked at every phase boundary and inside the transfer;
//! once the manifest is written the point stands, and a cancel only makes
//! the job release its snapshot instead of keeping it. Whatever happens
//! after the snapshot is taken, the snapshot is released (or kept, on
//! success), and a job that commits nothing leaves the vault's points,
//! packs, segments and records as they were: only its log is added.

pub(crate) mod log;
pub(crate) mod tiers;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{self, EngineParams};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{CancelToken, Consistency, NoProgress, Progress, Vm, hex, validate_name};
use crate::snapshot::{PrepareReport, Snapshot, SnapshotProvider};
use crate::vault::{DEFAULT_BLOCK_SIZE, check_block_size};
use crate::vault::{MANIFEST_FORMAT, PointManifest, PointStats, Vault, VaultSink, VmRecord};

use log::{JobEvent, JobLog, JobResult, Phase};

/// The most a retry waits.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// The longest a snapshot is kept for instant restore.
const MAX_INSTANT_RESTORE_DAYS: u32 = 30;
/// The least time between two progress lines in the job log.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Checks the days a snapshot is to be kept for instant restore (at most 30).
///
/// # Errors
/// [`Error::InvalidArgument`] for more than 30.
///
/// ```
/// assert!(backup_core::check_instant_restore_days(7).is_ok());
/// assert!(backup_core::check_instant_restore_days(31).is_err());
/// ```
pub fn check_instant_restore_days(days: u32) -> Result<()> {
    if days > MAX_INSTANT_RESTORE_DAYS {
        return Err(Error::invalid("instant restore days", format!("{days} is more than {MAX_INSTANT_RESTORE_DAYS}")));
    }
    Ok(())
}

/// How a backup runs.
#[derive(Clone)]
#[non_exhaustive]
pub struct BackupOptions {
    /// The consistency asked of the provider.
    pub consistency: Consistency,
    /// The block size for a disk's first point (a power of two, 16 KiB to
    /// 4 MiB). A disk keeps its chain's block size; a different one starts
    /// a new chain.
    pub block_size: u32,
    /// The share of blocks that change tracking calls clean which are
    /// re-read to audit it (0 to 1).
    pub cbt_audit_rate: f64,
    /// How many times a block read that fails (EIO, a dropped connection)
    /// is tried again, with a short doubling backoff from 20 ms, before
    /// the job fails naming the disk and offset (default 2).
    pub read_retries: u32,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Set it to stop the job; nothing is committed then.
    pub cancel: CancelToken,
    /// The policy rule that started the job, recorded in the point.
    pub policy_rule: Option<String>,
    /// Days the snapshot is kept after the job for instant restore (0 to
    /// 30; 0, the default, releases it at the end of the job). Only a
    /// snapshot that can outlive its job is kept (see
    /// [`SnapshotProvider::keepable`]); others are released, with a warning.
    pub instant_restore_days: u32,
    /// How many times a provider's `prepare` or `snapshot` that fails with
    /// a [retryable](crate::ErrorKind::Retryable) error is tried again
    /// within the job (default 0: hosts that retry themselves see every
    /// failure at once; the CLI asks for 3).
    pub retries: u32,
    /// The wait before the first retry; it doubles with each one (at most
    /// five minutes). Cancelling the job cuts the wait short.
    pub retry_delay: Duration,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            consistency: Consistency::Crash,
            block_size: DEFAULT_BLOCK_SIZE,
            cbt_audit_rate: 0.01,
            read_retries: 2,
            progress: Arc::new(NoProgress),
            cancel: CancelToken::new(),
            policy_rule: None,
            instant_restore_days: 0,
            retries: 0,
            retry_delay: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("consistency", &self.consistency)
            .field("block_size", &self.block_size)
            .field("cbt_audit_rate", &self.cbt_audit_rate)
            .field("read_retries", &self.read_retries)
            .field("instant_restore_days", &self.instant_restore_days)
            .field("retries", &self.retries)
            .field("retry_delay", &self.retry_delay)
            .finish_non_exhaustive()
    }
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BackupReport {
    /// The committed point.
    pub point: PointManifest,
    /// What `prepare` did, when this backup ran it.
    pub prepared: Option<PrepareReport>,
    /// Warnings from the provider and the engine, and from release.
    pub warnings: Vec<String>,
    /// Wall-clock seconds for the whole job.
    pub seconds: f64,
    /// The job's id: its log is `VAULT/jobs/<vm>/<job>.jsonl`.
    pub job: String,
    /// Until when the snapshot is kept for instant restore; None when it
    /// was released.
    pub snapshot_kept_until: Option<Timestamp>,
}

/// A job in flight: its log, the phase it is in, its warnings.
struct Job<'a> {
    vault: &'a Vault,
    provider: &'a dyn SnapshotProvider,
    vm: &'a Vm,
    options: &'a BackupOptions,
    id: String,
    log: JobLog,
    phase: Mutex<Phase>,
    warnings: Mutex<Vec<String>>,
    /// Bytes done and the time of the last progress line.
    progress: Mutex<(u64, u64, Instant)>,
}

impl Job<'_> {
    fn what(&self) -> String {
        format!("backup of vm {}", self.vm.name)
    }

    fn current(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, event: &JobEvent, sync: bool) {
        if let Some(w) = self.log.write(event, sync) {
            self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(w.clone());
            self.options.progress.warn(&w);
        }
    }

    fn note_warning(&self, message: &str) {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(message.to_string());
        self.write(
            &JobEvent::Warning { time: crate::model::now(), phase: self.current(), message: message.into() },
            true,
        );
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs one phase: its start and end (and error) go to the log.
    fn phase<T>(&self, phase: Phase, f: impl FnOnce() -> Result<T>) -> Result<T> {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
        let started = Instant::now();
        self.write(&JobEvent::PhaseStart { time: crate::model::now(), phase }, true);
        let r = f();
        if let Err(e) = &r {
            self.write(
                &JobEvent::Error { time: crate::model::now(), phase, message: e.to_string(), kind: e.kind() },
                true,
            );
        }
        self.write(
            &JobEvent::PhaseEnd { time: crate::model::now(), phase, seconds: log::since(started), ok: r.is_ok() },
            true,
        );
        r
    }

    /// Calls a provider step, trying it again after a growing wait while it
    /// fails with a retryable error and retries are left.
    fn retrying<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut delay = self.options.retry_delay.min(MAX_RETRY_DELAY);
        let mut attempt = 0;
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == ErrorKind::Retryable && attempt < self.options.retries => {
                    attempt += 1;
                    self.write(
                        &JobEvent::Retry {
                            time: crate::model::now(),
                            phase: self.current(),
                            attempt,
                            delay_seconds: delay.as_secs_f64(),
                            error: e.to_string(),
                        },
                        true,
                    );
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        self.options.cancel.check(&self.what())?;
                        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
                    }
                    self.options.cancel.check(&self.what())?;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Passes progress on, and writes it (at most once a second) and warnings
/// to the job log.
impl Progress for Job<'_> {
    fn start(&self, total: u64) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = (0, total, Instant::now());
        self.write(&JobEvent::Progress { time: crate::model::now(), phase: self.current(), done: 0, total }, false);
        self.options.progress.start(total);
    }
    fn advance(&self, bytes: u64) {
        let line = {
            let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            p.0 += bytes;
            (p.2.elapsed() >= PROGRESS_LOG_INTERVAL).then(|| {
                p.2 = Instant::now();
                (p.0, p.1)
            })
        };
        if let Some((done, total)) = line {
            self.write(&JobEvent::Progress { time: crate::model::now(), phase: self.current(), done, total }, false);
        }
        self.options.progress.advance(bytes);
    }
    fn warn(&self, message: &str) {
        self.note_warning(message);
        self.options.progress.warn(message);
    }
    fn finish(&self) {
        let (done, total, _) = *self.progress.lock().unwrap_or_else(|p| p.into_inner());
        self.write(&JobEvent::Progress { time: crate::model::now(), phase: self.current(), done, total }, false);
        self.options.progress.finish();
    }
}

/// Backs up a VM into a vault through a snapshot provider, in phases
/// (prepare, snapshot, transfer, commit, release), logging each to the
/// job log in the vault ([`job_history`](crate::job_history) reads it).
///
/// # Errors
/// Anything that stops the job: bad names or options, the vault locked,
/// the provider failing (after [`BackupOptions::retries`] for retryable
/// failures), a disk unreadable (with the disk and offset), a source that
/// changed under an in-place read, cancellation. Nothing is committed then,
/// and the snapshot is released.
///
/// ```
/// use backup_core::{backup, BackupOptions, ImageFileProvider, Vault, Vm};
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, vec![7u8; 300_000])?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// let report = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default())?;
/// assert_eq!(report.point.disks[0].size, 300_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn backup(
    vault: &Vault,
    provider: &dyn SnapshotProvider,
    vm: &Vm,
    options: &BackupOptions,
) -> Result<BackupReport> {
    let started = Instant::now();
    vm.validate()?;
    check_block_size(options.block_size)?;
    if !(0.0..=1.0).contains(&options.cbt_audit_rate) {
        return Err(Error::invalid("cbt audit rate", format!("{} is not between 0 and 1", options.cbt_audit_rate)));
    }
    check_instant_restore_days(options.instant_restore_days)?;
    // Two jobs of one VM starting in the same second draw 24 random bits
    // each; on the rare clash the log's exclusive create fails: draw again.
    let (id, log) = {
        let mut attempt = 0;
        loop {
            let id = log::new_job_id(crate::model::now());
            match JobLog::create(vault, &vm.name, &id) {
                Ok(log) => break (id, log),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists && attempt < 3 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let job = Job {
        vault,
        provider,
        vm,
        options,
        log,
        id,
        phase: Mutex::new(Phase::Prepare),
        warnings: Mutex::new(Vec::new()),
        progress: Mutex::new((0, 0, Instant::now())),
    };
    job.write(
        &JobEvent::Start {
            time: crate::model::now(),
            job: job.id.clone(),
            vm: vm.name.clone(),
            pid: std::process::id(),
            consistency: options.consistency,
            policy_rule: options.policy_rule.clone(),
            instant_restore_days: options.instant_restore_days,
        },
        true,
    );
    let r = run(&job);
    let (result, point, error) = match &r {
        Ok((p, ..)) => (JobResult::Succeeded, Some(p.id.clone()), None),
        Err(e) if e.kind() == ErrorKind::Cancelled => (JobResult::Cancelled, None, Some(e.to_string())),
        Err(e) => (JobResult::Failed, None, Some(e.to_string())),
    };
    let seconds = started.elapsed().as_secs_f64();
    job.write(&JobEvent::End { time: crate::model::now(), result, point, error, seconds }, true);
    let (point, prepared, kept) = r?;
    Ok(BackupReport {
        point,
        prepared,
        warnings: job.warnings(),
        seconds,
        job: job.id.clone(),
        snapshot_kept_until: kept,
    })
}

type Done = (PointManifest, Option<PrepareReport>, Option<Timestamp>);

fn run(job: &Job<'_>) -> Result<Done> {
    let (vault, provider, vm, options) = (job.vault, job.provider, job.vm, job.options);
    let what = job.what();

    // Prepare before the first snapshot, and again when the provider changed.
    let (session, parent, prepared, record) = job.phase(Phase::Prepare, || {
        // Not retried here: taking the lock already waits its timeout.
        let session = vault.begin_backup()?;
        let parent = vault.latest_point(&vm.name)?;
        let record = vault.vm_record(&vm.name)?;
        let version = provider.version();
        let prepared = if record.as_ref().is_none_or(|r| r.prepare.provider_version != version) {
            options.cancel.check(&what)?;
            let report = job.retrying(|| provider.prepare(vm))?;
            // The vault's record of the VM is written with the point (in the
            // commit phase): a job that commits nothing leaves the vault as
            // it was, and the next job prepares again (prepare is
            // idempotent). The job log says what this prepare did.
            job.write(
                &JobEvent::Prepared {
                    time: crate::model::now(),
                    provider_version: report.provider_version.clone(),
                    changes: report.changes.clone(),
                },
                true,
            );
            Some(report)
        } else {
            None
        };
        options.cancel.check(&what)?;
        let record = prepared.as_ref().map(|report| VmRecord {
            vm: vm.name.clone(),
            prepared_at: crate::model::now(),
            prepare: report.clone(),
            times_prepared: record.as_ref().map_or(0, |r| r.times_prepared) + 1,
        });
        Ok((session, parent, prepared, record))
    })?;

    // Snapshot: from here on the snapshot is released (or kept) whatever happens.
    let time = crate::model::now();
    let point_id = {
        let mut r = [0u8; 3];
        let _ = getrandom::fill(&mut r);
        format!("{}-{}", time.strftime("%Y%m%dT%H%M%SZ"), hex(&r))
    };
    let mut taken: Option<Snapshot> = None;
    let kept = job.phase(Phase::Snapshot, || {
        // The previous point's change tokens, for providers that track
        // changes from a checkpoint they must name.
        let previous: Vec<(String, String)> = parent
            .iter()
            .flat_map(|p| p.disks.iter())
            .filter_map(|d| d.change_token.clone().map(|t| (d.name.clone(), t)))
            .collect();
        let snapshot = taken.insert(job.retrying(|| provider.snapshot_since(vm, options.consistency, &previous))?);
        for w in &snapshot.warnings {
            job.note_warning(w);
        }
        check_disks(vm, snapshot)?;
        let kept = keep_record(job, snapshot, &point_id, time)?;
        options.cancel.check(&what)?;
        Ok(kept)
    });
    let Some(snapshot) = taken else {
        return Err(kept.err().unwrap_or_else(|| Error::invalid("snapshot", "the provider returned none")));
    };

    let result = kept.and_then(|kept| {
        transfer_and_commit(job, &session, &snapshot, parent.as_ref(), record.as_ref(), time, &point_id)
            .map(|p| (p, kept))
    });
    drop(session);
    release(job, snapshot, result, &point_id).map(|(p, until)| (p, prepared, until))
}

/// Refuses a snapshot whose disks have bad or duplicate names, or none.
fn check_disks(vm: &Vm, snapshot: &Snapshot) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for d in &snapshot.disks {
        validate_name("disk name", &d.name)?;
        if !seen.insert(d.name.as_str()) {
            return Err(Error::Provider {
                vm: vm.name.clone(),
                step: "snapshot",
                message: format!("two disks named {}", d.name),
                retryable: false,
            });
        }
    }
    if snapshot.disks.is_empty() {
        return Err(Error::Provider {
            vm: vm.name.clone(),
            step: "snapshot",
            message: "the snapshot has no disks".into(),
            retryable: false,
        });
    }
    Ok(())
}

/// Records the snapshot as kept for instant restore when the options ask
/// for it and the provider can keep it: from now on the point has the
/// snapshot tier.
fn keep_record(job: &Job<'_>, snapshot: &Snapshot, point: &str, time: Timestamp) -> Result<Option<Timestamp>> {
    let days = job.options.instant_restore_days;
    if days == 0 {
        return Ok(None);
    }
    let Some(disks) = job.provider.keepable(snapshot) else {
        job.note_warning(&format!(
            "the snapshot cannot be kept for instant restore ({} days asked): the provider's snapshot does not outlive the job (no reflinks?); the point has the vault tier only",
            days
        ));
        return Ok(None);
    };
    let expires = time
        .checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days)))
        .map_err(|e| Error::invalid("instant restore days", e.to_string()))?;
    tiers::write_kept(job.vault, &job.vm.name, point, &job.id, job.provider.version(), time, expires, &disks)?;
    Ok(Some(expires))
}

/// The release phase: keeps the snapshot (a committed point, instant
/// restore asked, not cancelled) or releases it, and releases this VM's
/// expired snapshots.
fn release(
    job: &Job<'_>,
    snapshot: Snapshot,
    result: Result<(PointManifest, Option<Timestamp>)>,
    point: &str,
) -> Result<(PointManifest, Option<Timestamp>)> {
    let (vault, provider, vm, options) = (job.vault, job.provider, job.vm, job.options);
    let recorded = matches!(&result, Ok((_, Some(_))) | Err(_));
    let keep = matches!(&result, Ok((_, Some(_)))) && !options.cancel.is_cancelled();
    let phase = job.phase(Phase::Release, || {
        if keep {
            // The files stay; closing the devices is all there is to do now.
            drop(snapshot);
            if let Ok((_, Some(expires))) = &result {
                job.write(
                    &JobEvent::SnapshotKept { time: crate::model::now(), point: point.to_string(), expires: *expires },
                    true,
                );
            }
        } else {
            let released = provider.release(vm, snapshot);
            if recorded && let Err(e) = tiers::remove_kept(vault, &vm.name, point) {
                job.note_warning(&format!("the snapshot was released, but its instant-restore record stays: {e}"));
            }
            if let Err(e) = released {
                job.note_warning(&match &result {
                    Ok(_) => format!("the point was committed, but releasing its snapshot failed: {e}"),
                    Err(_) => format!("releasing the snapshot failed: {e}"),
                });
            }
        }
        if result.is_ok() && options.cancel.is_cancelled() {
            job.note_warning(
                "cancelled after the point was committed: the point stands, and its snapshot was released",
            );
        }
        // Snapshots of earlier points whose instant-restore days are over.
        match tiers::release_expired(vault, Some(&vm.name), crate::model::now()) {
            Ok(r) => {
                for p in r.problems {
                    job.note_warning(&format!("an expired snapshot could not be released: {p}"));
                }
            }
            Err(e) => job.note_warning(&format!("expired snapshots could not be released: {e}")),
        }
        Ok(())
    });
    let (point, kept) = result?;
    phase?;
    Ok((point, if keep { kept } else { None }))
}

/// The transfer phase, then the commit phase.
fn transfer_and_commit(
    job: &Job<'_>,
    session: &crate::vault::BackupSession<'_>,
    snapshot: &Snapshot,
    parent: Option<&PointManifest>,
    record: Option<&VmRecord>,
    time: Timestamp,
    point_id: &str,
) -> Result<PointManifest> {
    let (vault, provider, vm, options) = (job.vault, job.provider, job.vm, job.options);
    let what = job.what();
    let disks = job.phase(Phase::Transfer, || {
        job.start(snapshot.disks.iter().map(|d| d.device.size()).sum());
        let params = EngineParams {
            vm: &vm.name,
            block_size: options.block_size,
            audit_rate: options.cbt_audit_rate,
            read_retries: options.read_retries,
            cancel: &options.cancel,
            progress: job,
        };
        let disks = snapshot
            .disks
            .par_iter()
            .map(|d| {
                let prev = parent.and_then(|p| p.disks.iter().find(|pd| pd.name == d.name));
                // A disk keeps its chain's block size.
                let bs = prev.map_or(options.block_size, |p| p.block_size);
                let params = EngineParams { block_size: bs, ..params };
                engine::backup_disk(session, vault, &engine::DiskSource::from(d), prev, &params)
            })
            .collect::<Result<Vec<_>>>();
        job.finish();
        let disks = disks?;
        options.cancel.check(&what)?;
        Ok(disks)
    })?;

    job.phase(Phase::Commit, || {
        provider.check_intact(vm, snapshot)?;
        let totals = crate::vault::PointStats::totals_of(&disks);
        let manifest = PointManifest {
            format: MANIFEST_FORMAT,
            id: point_id.to_string(),
            vm: vm.name.clone(),
            os: vm.os,
            time,
            wanted_consistency: options.consistency,
            consistency: snapshot.consistency,
            parent: parent.map(|p| p.id.clone()),
            tiers: vec!["vault".into()],
            disks,
            stats: PointStats { totals, bytes_added: 0 },
            policy_rule: options.policy_rule.clone(),
            warnings: job.warnings(),
            configuration: provider.configuration(vm, snapshot),
        };
        // The last moment a cancel is heeded: after this the point stands.
        options.cancel.check(&what)?;
        if let Some(r) = record {
            vault.write_vm_record(r)?;
        }
        session.commit_point(manifest)
    })
}
