//! The job log: what a backup job did, kept in the vault beside its points.
//!
//! ```text
//! VAULT/jobs/<vm>/<job id>.jsonl
//! ```
//!
//! One file per job, created when the job starts, append-only, one JSON
//! object per line ([`JobEvent`], tagged by `"event"`), each line written
//! with a single `write` on a file opened with `O_APPEND` and flushed before
//! the job goes on (progress lines excepted: they are written, not synced).
//! A job's id is its start time and random digits (`20261125T140203Z-a1b2c3`),
//! so the files of a VM sort by start.
//!
//! ```text
//! {"event":"start","time":"2026-11-25T14:02:03Z","job":"20261125T140203Z-a1b2c3","vm":"web","pid":4242,...}
//! {"event":"phase_start","time":"...","phase":"prepare"}
//! {"event":"phase_end","time":"...","phase":"prepare","seconds":0.001,"ok":true}
//! {"event":"phase_start","time":"...","phase":"snapshot"}
//! {"event":"retry","time":"...","phase":"snapshot","attempt":1,"delay_seconds":1.0,"error":"..."}
//! {"event":"phase_end","time":"...","phase":"snapshot","seconds":1.02,"ok":true}
//! {"event":"progress","time":"...","phase":"transfer","done":1048576,"total":4194304}
//! {"event":"warning","time":"...","phase":"transfer","message":"..."}
//! {"event":"error","time":"...","phase":"commit","message":"...","kind":"permanent"}
//! {"event":"end","time":"...","result":"succeeded","point":"20261125T140203Z-0f1e2d","seconds":3.4}
//! ```
//!
//! The last line of a finished job is its `end` record. While the job runs
//! it holds an exclusive `flock` on its log file; a reader that finds no
//! `end` record tries a shared lock: still held means the job is running,
//! free means the job was killed ([`JobResult::Interrupted`]). A line cut
//! short by a crash is skipped and counted ([`JobRecord::damaged_lines`]).
//! Logs are never rewritten; prune removes the log of a finished job whose
//! point is gone once it is older than the retention's `job_log_days`
//! (default 90), dropping that point from `pruned.log` at the same time.
//! Nothing in the vault reads them to decide what
//! a point holds. Verify reads their `end` records to report a manifest that
//! is gone although its point was committed (and prune, which records the
//! points it removes in `jobs/<vm>/pruned.log`, did not remove it).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Consistency, hex, validate_name};
use crate::vault::Vault;

/// The phases of a backup job, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The provider prepares the VM (its first backup, or a new provider version).
    Prepare,
    /// The provider freezes the VM and hands back one device per disk.
    Snapshot,
    /// Every disk's changed blocks go into the vault's staging area.
    Transfer,
    /// The snapshot is checked intact and the point's manifest written.
    Commit,
    /// The snapshot is released, or kept for instant restore.
    Release,
}

impl Phase {
    /// The phase's name as the log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Snapshot => "snapshot",
            Phase::Transfer => "transfer",
            Phase::Commit => "commit",
            Phase::Release => "release",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// The point was committed.
    Succeeded,
    /// The job stopped on an error; nothing was committed.
    Failed,
    /// The job was cancelled; nothing was committed.
    Cancelled,
    /// No end record, and the job still holds its log: it is running.
    Running,
    /// No end record, and no process holds the log: the job was killed.
    Interrupted,
}

impl JobResult {
    /// The result's name as the log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Succeeded => "succeeded",
            JobResult::Failed => "failed",
            JobResult::Cancelled => "cancelled",
            JobResult::Running => "running",
            JobResult::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a job log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobEvent {
    /// The job started.
    Start {
        /// When.
        time: Timestamp,
        /// The job's id.
        job: String,
        /// The VM.
        vm: String,
        /// The process running the job.
        pid: u32,
        /// The consistency asked for.
        consistency: Consistency,
        /// The policy rule that started the job, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_rule: Option<String>,
        /// Days the snapshot is kept for instant restore (0: released at the end).
        #[serde(default)]
        instant_restore_days: u32,
    },
    /// A phase started.
    PhaseStart {
        /// When.
        time: Timestamp,
        /// Which.
        phase: Phase,
    },
    /// A phase ended.
    PhaseEnd {
        /// When.
        time: Timestamp,
        /// Which.
        phase: Phase,
        /// How long it took.
        seconds: f64,
        /// Whether it succeeded.
        ok: bool,
    },
    /// Bytes processed so far in the transfer.
    Progress {
        /// When.
        time: Timestamp,
        /// The phase (transfer).
        phase: Phase,
        /// Bytes of the disks processed.
        done: u64,
        /// Bytes of the disks in all.
        total: u64,
    },
    /// Something a user should know.
    Warning {
        /// When.
        time: Timestamp,
        /// The phase it happened in.
        phase: Phase,
        /// What.
        message: String,
    },
    /// A provider step failed with a retryable error and is tried again.
    Retry {
        /// When.
        time: Timestamp,
        /// The phase.
        phase: Phase,
        /// Which retry this is (1 for the first).
        attempt: u32,
        /// How long the job waits before it.
        delay_seconds: f64,
        /// The error.
        error: String,
    },
    /// The error that stopped the job.
    Error {
        /// When.
        time: Timestamp,
        /// The phase it happened in.
        phase: Phase,
        /// The error, as displayed.
        message: String,
        /// Whether retrying may succeed, or the job was cancelled.
        kind: ErrorKind,
    },
    /// What `prepare` changed on the VM.
    Prepared {
        /// When.
        time: Timestamp,
        /// The provider's name and version.
        provider_version: String,
        /// The changes, one line each.
        changes: Vec<String>,
    },
    /// The snapshot is kept for instant restore until `expires`.
    SnapshotKept {
        /// When.
        time: Timestamp,
        /// The point it belongs to.
        point: String,
        /// When it is released.
        expires: Timestamp,
    },
    /// The job's final record.
    End {
        /// When.
        time: Timestamp,
        /// How it ended (never `running` or `interrupted`).
        result: JobResult,
        /// The committed point.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        point: Option<String>,
        /// The error that stopped it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Wall-clock seconds of the whole job.
        seconds: f64,
    },
}

/// Writes one job's log. Holds the log's exclusive lock until dropped.
pub(crate) struct JobLog {
    path: PathBuf,
    file: Mutex<File>,
    /// Set when a write failed: the job goes on, and says so once.
    broken: std::sync::atomic::AtomicBool,
}

/// A new job id: the start time, then random digits.
pub(crate) fn new_job_id(time: Timestamp) -> String {
    let mut r = [0u8; 3];
    let _ = getrandom::fill(&mut r);
    format!("{}-{}", time.strftime("%Y%m%dT%H%M%SZ"), hex(&r))
}

impl JobLog {
    /// Creates the log of a new job and takes its lock.
    pub(crate) fn create(vault: &Vault, vm: &str, job: &str) -> Result<JobLog> {
        let (path, file) = vault.create_job_log(vm, job)?;
        Ok(JobLog { path, file: Mutex::new(file), broken: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Appends an event; `sync` flushes it to disk before returning.
    /// Returns a warning the first time a write fails: a log that cannot be
    /// written does not fail the backup.
    pub(crate) fn write(&self, event: &JobEvent, sync: bool) -> Option<String> {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => return Some(format!("cannot encode a job log event: {e}")),
        };
        line.push(b'\n');
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut f: &File = &file;
        let r = f.write_all(&line).and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        match r {
            Ok(()) => None,
            Err(e) if !self.broken.swap(true, std::sync::atomic::Ordering::SeqCst) => {
                Some(format!("cannot write job log {}: {e}; the job goes on without it", self.path.display()))
            }
            Err(_) => None,
        }
    }
}

/// A phase of a job as its log tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PhaseRecord {
    /// Which phase.
    pub phase: Phase,
    /// When it started.
    pub started: Timestamp,
    /// When it ended; None when the log stops inside it.
    pub ended: Option<Timestamp>,
    /// How long it took.
    pub seconds: Option<f64>,
    /// Whether it succeeded; None when it never ended.
    pub ok: Option<bool>,
}

/// One job's history, read back from its log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// The job's id.
    pub job: String,
    /// The VM.
    pub vm: String,
    /// The log file.
    pub path: PathBuf,
    /// When it started.
    pub started: Option<Timestamp>,
    /// When it ended; None for a running or killed job.
    pub ended: Option<Timestamp>,
    /// How it ended, or that it is running or was killed.
    pub result: JobResult,
    /// The phases it went through, in order.
    pub phases: Vec<PhaseRecord>,
    /// The committed point.
    pub point: Option<String>,
    /// The error that stopped it.
    pub error: Option<String>,
    /// Its warnings.
    pub warnings: Vec<String>,
    /// How many times a provider step was retried.
    pub retries: u32,
    /// Wall-clock seconds, from its end record.
    pub seconds: Option<f64>,
    /// Lines that could not be read (a line cut short when the job was killed).
    pub damaged_lines: u32,
    /// Every event, in order.
    #[serde(skip)]
    pub events: Vec<JobEvent>,
}

/// Reads one job log, a file of your choosing (the job and VM are named
/// after the file and its folder).
///
/// # Errors
/// I/O errors reading it; a damaged line is counted, not an error.
pub fn read_job(path: &Path) -> Result<JobRecord> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read job log", path, e))?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let vm = path.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()).unwrap_or_default().to_string();
    Ok(parse_job(&bytes, path, name, vm, |p| is_locked(&std::fs::File::open(p).ok())))
}

/// Reads the log of job `job` of `vm` in the vault, beneath its folder.
///
/// # Errors
/// Bad names; I/O errors reading it (a link or FIFO in its place included).
pub(crate) fn read_vault_job(vault: &Vault, vm: &str, job: &str) -> Result<JobRecord> {
    let (path, bytes, locked) = vault.read_job_log(vm, job)?;
    Ok(parse_job(&bytes, &path, job.to_string(), vm.to_string(), |_| locked))
}

/// A job's record from its log's bytes. The job id and VM are the ones of
/// the file's name and folder, never what the lines say: a forged line
/// must not name another file.
fn parse_job(bytes: &[u8], path: &Path, name: String, vm: String, locked: impl Fn(&Path) -> bool) -> JobRecord {
    let mut r = JobRecord {
        job: name,
        vm,
        path: path.to_path_buf(),
        started: None,
        ended: None,
        result: JobResult::Interrupted,
        phases: Vec::new(),
        point: None,
        error: None,
        warnings: Vec::new(),
        retries: 0,
        seconds: None,
        damaged_lines: 0,
        events: Vec::new(),
    };
    let mut ended = false;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<JobEvent>(line) else {
            r.damaged_lines += 1;
            continue;
        };
        match &event {
            JobEvent::Start { time, .. } => r.started = Some(*time),
            JobEvent::PhaseStart { time, phase } => {
                r.phases.push(PhaseRecord { phase: *phase, started: *time, ended: None, seconds: None, ok: None })
            }
            JobEvent::PhaseEnd { time, phase, seconds, ok } => {
                if let Some(p) = r.phases.iter_mut().rev().find(|p| p.phase == *phase && p.ended.is_none()) {
                    p.ended = Some(*time);
                    p.seconds = Some(*seconds);
                    p.ok = Some(*ok);
                }
            }
            JobEvent::Warning { message, .. } => r.warnings.push(message.clone()),
            JobEvent::Retry { .. } => r.retries += 1,
            JobEvent::Error { message, .. } => r.error = Some(message.clone()),
            JobEvent::End { time, result, point, error, seconds } => {
                ended = true;
                r.ended = Some(*time);
                r.result = *result;
                r.point.clone_from(point);
                if error.is_some() {
                    r.error.clone_from(error);
                }
                r.seconds = Some(*seconds);
            }
            JobEvent::Progress { .. } | JobEvent::Prepared { .. } | JobEvent::SnapshotKept { .. } => {}
        }
        r.events.push(event);
    }
    if !ended {
        r.result = if locked(path) { JobResult::Running } else { JobResult::Interrupted };
    }
    r
}

/// Whether a running job holds the lock of this open log.
fn is_locked(file: &Option<File>) -> bool {
    file.as_ref().is_some_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// Whether the job that wrote this log still runs (holds its lock).
pub(crate) fn job_running(vault: &Vault, vm: &str, job: &str) -> bool {
    vault.job_log_locked(vm, job)
}

/// The history of backup jobs in a vault, of one VM or of all, oldest first.
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, vec![7u8; 300_000])?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// let report = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default())?;
/// let jobs = job_history(&vault, Some("web"))?;
/// assert_eq!(jobs[0].result, JobResult::Succeeded);
/// assert_eq!(jobs[0].point.as_deref(), Some(report.point.id.as_str()));
/// assert_eq!(jobs[0].phases.len(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// A bad VM name; I/O errors listing or reading the logs.
pub fn job_history(vault: &Vault, vm: Option<&str>) -> Result<Vec<JobRecord>> {
    let vms = match vm {
        Some(v) => {
            validate_name("vm name", v)?;
            vec![v.to_string()]
        }
        None => vault.job_log_vms()?,
    };
    let mut out = Vec::new();
    for vm in vms {
        for job in vault.job_log_ids(&vm)? {
            out.push(read_vault_job(vault, &vm, &job)?);
        }
    }
    out.sort_by(|a, b| (a.started, &a.job).cmp(&(b.started, &b.job)));
    Ok(out)
}

/// Seconds since an instant, for phase ends.
pub(crate) fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as earlier versions wrote them, when `consistency` and `kind` were
    /// plain strings: logs already in vaults must stay readable.
    #[test]
    fn older_lines_parse_into_the_enums() {
        let start = r#"{"event":"start","time":"2026-11-01T10:00:00Z","job":"j1","vm":"web","pid":7,"consistency":"filesystem"}"#;
        let error =
            r#"{"event":"error","time":"2026-11-01T10:00:01Z","phase":"transfer","message":"boom","kind":"retryable"}"#;
        match serde_json::from_str::<JobEvent>(start).expect("start parses") {
            JobEvent::Start { consistency, .. } => assert_eq!(consistency, Consistency::FileSystem),
            other => panic!("not a start: {other:?}"),
        }
        match serde_json::from_str::<JobEvent>(error).expect("error parses") {
            JobEvent::Error { kind, .. } => assert_eq!(kind, ErrorKind::Retryable),
            other => panic!("not an error: {other:?}"),
        }
        let bad = start.replace("filesystem", "sideways");
        assert!(serde_json::from_str::<JobEvent>(&bad).is_err(), "an unknown consistency is refused");
    }
}
