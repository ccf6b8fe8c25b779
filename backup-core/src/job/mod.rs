//! The backup job: prepare (first time), snapshot, transfer every disk in
//! parallel, check, commit, release.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{self, DEFAULT_BLOCK_SIZE, EngineParams};
use crate::error::{Error, Result};
use crate::model::{CancelToken, Consistency, NoProgress, Progress, Vm, hex, validate_name};
use crate::snapshot::{PrepareReport, Snapshot, SnapshotProvider};
use crate::vault::{MANIFEST_FORMAT, PointManifest, PointStats, Vault, VaultSink, VmRecord};

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
}

/// Collects warnings while passing them on.
struct Collect<'a> {
    inner: &'a dyn Progress,
    warnings: std::sync::Mutex<Vec<String>>,
}

impl Progress for Collect<'_> {
    fn start(&self, total: u64) {
        self.inner.start(total);
    }
    fn advance(&self, bytes: u64) {
        self.inner.advance(bytes);
    }
    fn warn(&self, message: &str) {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(message.to_string());
        self.inner.warn(message);
    }
    fn finish(&self) {
        self.inner.finish();
    }
}

/// Backs up a VM into a vault through a snapshot provider.
///
/// # Errors
/// Anything that stops the job: bad names or options, the vault locked,
/// the provider failing, a disk unreadable (with the disk and offset), a
/// source that changed under an in-place read, cancellation. Nothing is
/// committed then, and the snapshot is released.
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
    engine::check_block_size(options.block_size)?;
    if !(0.0..=1.0).contains(&options.cbt_audit_rate) {
        return Err(Error::invalid("cbt audit rate", format!("{} is not between 0 and 1", options.cbt_audit_rate)));
    }
    let what = format!("backup of vm {}", vm.name);
    let session = vault.begin_backup()?;
    let parent = vault.points(Some(&vm.name))?.into_iter().last();

    // Prepare before the first snapshot, and again when the provider changed.
    let record = vault.vm_record(&vm.name)?;
    let version = provider.version();
    let prepared = if record.as_ref().is_none_or(|r| r.prepare.provider_version != version) {
        options.cancel.check(&what)?;
        let report = provider.prepare(vm)?;
        vault.write_vm_record(&VmRecord {
            vm: vm.name.clone(),
            prepared_at: crate::model::now(),
            prepare: report.clone(),
            times_prepared: record.as_ref().map_or(0, |r| r.times_prepared) + 1,
        })?;
        Some(report)
    } else {
        None
    };

    options.cancel.check(&what)?;
    let time = crate::model::now();
    let snapshot = provider.snapshot(vm, options.consistency)?;
    let collect = Collect { inner: &*options.progress, warnings: std::sync::Mutex::new(snapshot.warnings.clone()) };
    let result =
        transfer_and_commit(vault, &session, provider, vm, &snapshot, parent.as_ref(), time, options, &collect);
    collect.finish();
    let release = provider.release(vm, snapshot);
    let mut warnings = collect.warnings.into_inner().unwrap_or_else(|p| p.into_inner());
    let point = result?;
    if let Err(e) = release {
        warnings.push(format!("the point was committed, but releasing its snapshot failed: {e}"));
    }
    Ok(BackupReport { point, prepared, warnings, seconds: started.elapsed().as_secs_f64() })
}

#[allow(clippy::too_many_arguments)]
fn transfer_and_commit(
    vault: &Vault,
    session: &crate::vault::BackupSession<'_>,
    provider: &dyn SnapshotProvider,
    vm: &Vm,
    snapshot: &Snapshot,
    parent: Option<&PointManifest>,
    time: jiff::Timestamp,
    options: &BackupOptions,
    progress: &Collect<'_>,
) -> Result<PointManifest> {
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
    progress.start(snapshot.disks.iter().map(|d| d.device.size()).sum());
    let params = EngineParams {
        vm: &vm.name,
        block_size: options.block_size,
        audit_rate: options.cbt_audit_rate,
        read_retries: options.read_retries,
        cancel: &options.cancel,
        progress,
    };
    let disks = snapshot
        .disks
        .par_iter()
        .map(|d| {
            let prev = parent.and_then(|p| p.disks.iter().find(|pd| pd.name == d.name));
            // A disk keeps its chain's block size.
            let bs = prev.map_or(options.block_size, |p| p.block_size);
            let params = EngineParams { block_size: bs, ..params };
            engine::backup_disk(session, vault, d, prev, &params)
        })
        .collect::<Result<Vec<_>>>()?;
    options.cancel.check(&format!("backup of vm {}", vm.name))?;
    provider.check_intact(vm, snapshot)?;

    let mut totals = crate::vault::DiskStats::default();
    for d in &disks {
        totals.add(&d.stats);
    }
    totals.seconds = disks.iter().map(|d| d.stats.seconds).fold(0.0, f64::max);
    totals.change_detection = String::new();
    let mut r = [0u8; 3];
    let _ = getrandom::fill(&mut r);
    let id = format!("{}-{}", time.strftime("%Y%m%dT%H%M%SZ"), hex(&r));
    let manifest = PointManifest {
        format: MANIFEST_FORMAT,
        id,
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
        warnings: progress.warnings.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    session.commit_point(manifest)
}
