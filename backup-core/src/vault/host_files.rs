//! The files a host keeps in the vault's local folder (a local vault's
//! folder, or a remote vault's cache) rather than in its store, because
//! they concern this host alone: job logs (each locked by its running job),
//! the record of what prune removed, and the records of snapshots kept for
//! instant restore (which name files on this host). `job::log`, `prune` and
//! `job::tiers` read and write them through these calls only.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use super::{Vault, layout};
use crate::error::{Error, Result};
use crate::model::{random_hex, validate_name};

/// The largest job log (or prune record) read: a day-long job logs
/// progress once a second in well under this.
pub(crate) const MAX_JOB_LOG_LEN: u64 = 64 << 20;

impl Vault {
    fn local(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The names directly in a local folder that pass `validate_name` as
    /// `what` (others are not ours to read).
    fn local_names(&self, folder: &str, what: &str) -> Result<Vec<String>> {
        Ok(self.dir.list(&self.local(folder))?.into_iter().filter(|n| validate_name(what, n).is_ok()).collect())
    }

    /// Creates the log of a new job, locked by the caller's handle; returns
    /// its path (for messages) and the file.
    pub(crate) fn create_job_log(&self, vm: &str, job: &str) -> Result<(PathBuf, File)> {
        validate_name("vm name", vm)?;
        validate_name("job id", job)?;
        let dir = self.local(&layout::jobs_of(vm));
        self.dir.mkdirs(&dir)?;
        let path = self.local(&layout::job_log(vm, job));
        let file = self.dir.create_new(&path)?;
        file.try_lock().map_err(|e| Error::io("lock job log", &path, std::io::Error::other(e.to_string())))?;
        self.dir.sync_dir(&dir)?;
        Ok((path, file))
    }

    /// A job's log: its path (for messages), its bytes, and whether its job
    /// still holds its lock (runs).
    pub(crate) fn read_job_log(&self, vm: &str, job: &str) -> Result<(PathBuf, Vec<u8>, bool)> {
        validate_name("vm name", vm)?;
        validate_name("job id", job)?;
        let path = self.local(&layout::job_log(vm, job));
        let bytes = self.dir.read(&path, MAX_JOB_LOG_LEN)?;
        Ok((path, bytes, self.job_log_locked(vm, job)))
    }

    /// Whether the job that writes this log still runs (holds its lock).
    pub(crate) fn job_log_locked(&self, vm: &str, job: &str) -> bool {
        if validate_name("vm name", vm).is_err() || validate_name("job id", job).is_err() {
            return false;
        }
        let Ok(f) = self.dir.open(&self.local(&layout::job_log(vm, job))) else { return false };
        matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
    }

    /// The VMs with job logs.
    pub(crate) fn job_log_vms(&self) -> Result<Vec<String>> {
        self.local_names(layout::JOBS, "vm name")
    }

    /// The ids of a VM's job logs.
    pub(crate) fn job_log_ids(&self, vm: &str) -> Result<Vec<String>> {
        validate_name("vm name", vm)?;
        Ok(self
            .dir
            .list(&self.local(&layout::jobs_of(vm)))?
            .iter()
            .filter_map(|n| n.strip_suffix(".jsonl"))
            .filter(|j| validate_name("job id", j).is_ok())
            .map(str::to_string)
            .collect())
    }

    /// Removes job logs of a VM (a missing one is no error).
    pub(crate) fn remove_job_logs(&self, vm: &str, jobs: &[&str]) -> Result<()> {
        validate_name("vm name", vm)?;
        for job in jobs {
            // Names come from file names, checked again here: nothing read
            // from the vault may name a file outside it.
            validate_name("job id", job)?;
            self.dir.remove_file_if_exists(&self.local(&layout::job_log(vm, job)))?;
        }
        self.dir.sync_dir(&self.local(&layout::jobs_of(vm))).or_else(|e| match &e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
    }

    /// The record of the points prune removed from a VM (empty when none).
    pub(crate) fn read_pruned_log(&self, vm: &str) -> Result<Vec<u8>> {
        validate_name("vm name", vm)?;
        match self.dir.read(&self.local(&layout::pruned_log(vm)), MAX_JOB_LOG_LEN) {
            Ok(b) => Ok(b),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Appends lines to a VM's prune record, flushed.
    pub(crate) fn append_pruned_log(&self, vm: &str, lines: &[u8]) -> Result<()> {
        validate_name("vm name", vm)?;
        let dir = self.local(&layout::jobs_of(vm));
        self.dir.mkdirs(&dir)?;
        let path = self.local(&layout::pruned_log(vm));
        let mut f = self.dir.open_append(&path, true)?;
        f.write_all(lines).map_err(|e| Error::io("write", &path, e))?;
        f.sync_data().map_err(|e| Error::io("flush", &path, e))?;
        self.dir.sync_dir(&dir)
    }

    /// Replaces a VM's prune record, durably.
    pub(crate) fn rewrite_pruned_log(&self, vm: &str, bytes: &[u8]) -> Result<()> {
        validate_name("vm name", vm)?;
        let tmp = self.local(&layout::staging(&format!("pruned-{vm}.{}", random_hex(6, "a prune record")?)));
        self.dir.write_durable(&tmp, &self.local(&layout::pruned_log(vm)), bytes)
    }

    /// Writes the record of a snapshot kept for a point, durably.
    pub(crate) fn write_kept_record(&self, vm: &str, point: &str, bytes: &[u8]) -> Result<()> {
        validate_name("vm name", vm)?;
        validate_name("point id", point)?;
        self.dir.mkdirs(&self.local(&layout::snapshots_of(vm)))?;
        let tmp = self.local(&layout::staging(&format!("snapshot-{vm}-{point}.{}", random_hex(6, "a record")?)));
        self.dir.write_durable(&tmp, &self.local(&layout::kept_snapshot(vm, point)), bytes)
    }

    /// The record of a snapshot kept for a point, with how errors name it.
    pub(crate) fn read_kept_record(&self, vm: &str, point: &str) -> Result<(String, Option<Vec<u8>>)> {
        validate_name("vm name", vm)?;
        validate_name("point id", point)?;
        let path = self.local(&layout::kept_snapshot(vm, point));
        let object = format!("kept snapshot record {}", path.display());
        match self.dir.read(&path, super::MAX_RECORD_LEN) {
            Ok(b) => Ok((object, Some(b))),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok((object, None)),
            Err(e) => Err(e),
        }
    }

    /// Removes the record of a point's kept snapshot (a missing one is no
    /// error).
    pub(crate) fn remove_kept_record(&self, vm: &str, point: &str) -> Result<()> {
        validate_name("vm name", vm)?;
        validate_name("point id", point)?;
        if self.dir.remove_file_if_exists(&self.local(&layout::kept_snapshot(vm, point)))? {
            self.dir.sync_dir(&self.local(&layout::snapshots_of(vm)))?;
        }
        Ok(())
    }

    /// The VMs with kept-snapshot records, as named in the folder (a name
    /// that is not a VM name is returned too, for the caller to report).
    pub(crate) fn kept_record_vms(&self) -> Result<Vec<String>> {
        self.dir.list(&self.local(layout::SNAPSHOTS))
    }

    /// The points of a VM with kept-snapshot records.
    pub(crate) fn kept_record_points(&self, vm: &str) -> Result<Vec<String>> {
        validate_name("vm name", vm)?;
        Ok(self
            .dir
            .list(&self.local(&layout::snapshots_of(vm)))?
            .iter()
            .filter_map(|n| n.strip_suffix(".json"))
            .map(str::to_string)
            .collect())
    }
}
