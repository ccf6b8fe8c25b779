//! Instant-restore tiers: snapshots kept after their job, and where a point
//! can be restored from.
//!
//! ```text
//! VAULT/snapshots/<vm>/<point id>.json
//! ```
//!
//! A [`KeptSnapshot`] record (JSON) is written when a job's snapshot phase
//! ends with a snapshot the job means to keep (the policy's instant-restore
//! days, a provider whose snapshot outlives the job: reflink clones of
//! image files). It names the point the job will commit, the job, the
//! expiry, and each disk's file with the size and modification time it had
//! when kept. A point's tiers are computed, never stored (manifests are
//! immutable): "snapshot" while its record exists and every file is there
//! unchanged, "vault" once its manifest exists. A point is thus
//! ["snapshot"] while its job transfers, ["snapshot", "vault"] once
//! committed, and ["vault"] once the snapshot is released.
//!
//! [`release_expired`] releases (removes the files, then the record) every
//! kept snapshot past its expiry, and every one whose job ended without
//! committing its point or whose point was pruned. Backup jobs run it for
//! their VM at the end; `vmbackup release-expired` and `vmbackup schedule`
//! run it for the whole vault.
//!
//! ## Records drive host actions, so they are checked twice
//!
//! A record names files outside the vault that release deletes and restore
//! reads, and the vault may be writable by others. So:
//! - a record is authenticated: its JSON ends with a MAC line over the
//!   vault id, VM, point and JSON, and is sealed in an encrypted vault
//!   (`Vault::seal_host_record`); its VM, point and job must be valid
//!   names and match the file's own name;
//! - a file it names is opened without following a link, must be a regular
//!   file, and must carry the mark `v1 kept VAULT_ID VM POINT DISK` that
//!   the job set on it when it kept it (`snapshot::clone_mark`: a `trusted.`
//!   attribute when root, which whoever writes the vault cannot set). Size
//!   and time are checked on that same open file. Anything else is refused
//!   by name, never deleted, never read.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::validate_name;
use crate::restore::{RestoreOptions, RestoreStats};
use crate::snapshot::KeptDisk;
use crate::vault::{PointManifest, Vault};

/// A disk file of a kept snapshot, with what it looked like when kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeptFile {
    /// The disk's name.
    pub name: String,
    /// The file holding the snapshot of the disk.
    pub path: PathBuf,
    /// Its size when kept.
    pub size: u64,
    /// Its modification time when kept, in nanoseconds since the epoch.
    pub modified_ns: Option<i128>,
}

/// A snapshot kept after its job for instant restore (the record in
/// `VAULT/snapshots/<vm>/<point>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeptSnapshot {
    /// The VM.
    pub vm: String,
    /// The point it belongs to.
    pub point: String,
    /// The job that took it.
    pub job: String,
    /// The provider's name and version.
    pub provider: String,
    /// When it was taken.
    pub taken: Timestamp,
    /// When it is released.
    pub expires: Timestamp,
    /// Its disks.
    pub disks: Vec<KeptFile>,
}

fn modified_ns(m: &std::fs::Metadata) -> Option<i128> {
    let t = m.modified().ok()?;
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => Some(d.as_nanos() as i128),
        Err(e) => Some(-(e.duration().as_nanos() as i128)),
    }
}

impl KeptSnapshot {
    /// Whether every disk file is there, as it was when kept, and carries
    /// this vault's mark for this point and disk.
    pub fn usable(&self, vault: &Vault) -> bool {
        self.disks.iter().all(|d| self.open_disk(vault, d).is_ok())
    }

    /// Opens a disk's file when it is the clone this record kept: marked
    /// for it, the same size and time.
    fn open_disk(&self, vault: &Vault, d: &KeptFile) -> Result<std::fs::File> {
        let mark = crate::snapshot::clone_mark::kept(vault.id(), &self.vm, &self.point, &d.name);
        let f = crate::snapshot::clone_mark::open_marked(&d.path, &mark)?;
        let m = f.metadata().map_err(|e| Error::io("stat kept snapshot", &d.path, e))?;
        if m.len() != d.size || modified_ns(&m) != d.modified_ns {
            return Err(Error::invalid(
                "kept snapshot",
                format!("{} changed since it was kept (size or modification time)", d.path.display()),
            ));
        }
        Ok(f)
    }
}

/// The kind of host record a kept snapshot's record is (see `Vault::seal_host_record`).
const RECORD_KIND: &str = "kept snapshot";

/// Writes the record of a snapshot about to be kept.
#[allow(clippy::too_many_arguments)] // each is a field of the record; a struct would only rename them
pub(crate) fn write_kept(
    vault: &Vault,
    vm: &str,
    point: &str,
    job: &str,
    provider: String,
    taken: Timestamp,
    expires: Timestamp,
    disks: &[KeptDisk],
) -> Result<KeptSnapshot> {
    validate_name("vm name", vm)?;
    validate_name("point id", point)?;
    validate_name("job id", job)?;
    let mut files = Vec::new();
    for d in disks {
        // The mark, set through a descriptor that did not follow a link, is
        // what later lets release and restore trust this path.
        let f = crate::no_follow::open_regular(&d.path).map_err(|e| Error::io("open snapshot to keep", &d.path, e))?;
        crate::snapshot::clone_mark::set(&f, &crate::snapshot::clone_mark::kept(vault.id(), vm, point, &d.name))
            .map_err(|e| Error::io("mark snapshot clone as kept", &d.path, e))?;
        let m = f.metadata().map_err(|e| Error::io("stat snapshot clone", &d.path, e))?;
        files.push(KeptFile {
            name: d.name.clone(),
            path: d.path.clone(),
            size: m.len(),
            modified_ns: modified_ns(&m),
        });
    }
    let record = KeptSnapshot {
        vm: vm.to_string(),
        point: point.to_string(),
        job: job.to_string(),
        provider,
        taken,
        expires,
        disks: files,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::invalid("kept snapshot record", e.to_string()))?;
    let bytes = vault.seal_host_record(RECORD_KIND, &[vm, point], &json)?;
    vault.write_kept_record(vm, point, &bytes)?;
    Ok(record)
}

/// Removes a kept snapshot's record (after its files, or when they are gone).
pub(crate) fn remove_kept(vault: &Vault, vm: &str, point: &str) -> Result<()> {
    vault.remove_kept_record(vm, point)
}

/// The snapshots kept for instant restore, of one VM or of all, with the
/// errors of records that could not be read.
///
/// # Errors
/// A bad VM name; I/O errors listing the folders.
pub fn kept_snapshots(vault: &Vault, vm: Option<&str>) -> Result<(Vec<KeptSnapshot>, Vec<Error>)> {
    let vms = match vm {
        Some(v) => {
            validate_name("vm name", v)?;
            vec![v.to_string()]
        }
        None => vault.kept_record_vms()?,
    };
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for vm in vms {
        if let Err(e) = validate_name("vm name", &vm) {
            bad.push(Error::corrupt(
                format!("kept snapshot folder {vm:?} of vault {}", vault.location()),
                e.to_string(),
            ));
            continue;
        }
        for point in vault.kept_record_points(&vm)? {
            match read_record(vault, &vm, &point) {
                Ok(Some(k)) => out.push(k),
                Ok(None) => {}
                Err(e) => bad.push(e),
            }
        }
    }
    out.sort_by(|a, b| (a.taken, &a.point).cmp(&(b.taken, &b.point)));
    Ok((out, bad))
}

/// The kept snapshot of a point, when there is a usable one.
///
/// # Errors
/// A bad name; a damaged record.
pub fn kept_snapshot(vault: &Vault, vm: &str, point: &str) -> Result<Option<KeptSnapshot>> {
    let Some(k) = read_record(vault, vm, point)? else { return Ok(None) };
    Ok(k.usable(vault).then_some(k))
}

/// Reads, authenticates and checks the record of a point's kept snapshot.
///
/// # Errors
/// Bad names; a record that is damaged, forged, or names another point.
fn read_record(vault: &Vault, vm: &str, point: &str) -> Result<Option<KeptSnapshot>> {
    let (object, bytes) = vault.read_kept_record(vm, point)?;
    let Some(bytes) = bytes else { return Ok(None) };
    let json = vault.open_host_record(RECORD_KIND, &[vm, point], &bytes, &object)?;
    let k: KeptSnapshot = serde_json::from_slice(&json).map_err(|e| Error::corrupt(&object, e.to_string()))?;
    if k.vm != vm || k.point != point {
        return Err(Error::tampered(object, format!("it names point {} of vm {}", k.point, k.vm)));
    }
    validate_name("job id", &k.job).map_err(|e| Error::corrupt(&object, e.to_string()))?;
    for d in &k.disks {
        validate_name("disk name", &d.name).map_err(|e| Error::corrupt(&object, e.to_string()))?;
    }
    Ok(Some(k))
}

/// Where a point can be restored from. Serialized as its name in lower
/// case (`"snapshot"`, `"vault"`), as the command line prints it.
///
/// ```
/// use backup_core::Tier;
/// assert_eq!(Tier::Snapshot.to_string(), "snapshot");
/// assert_eq!(serde_json::to_string(&[Tier::Snapshot, Tier::Vault]).unwrap(), r#"["snapshot","vault"]"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Tier {
    /// The snapshot kept after its job, there and unchanged: the fastest
    /// restore.
    Snapshot,
    /// The vault: the point is committed.
    Vault,
}

impl Tier {
    /// The tier's name: `"snapshot"` or `"vault"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Snapshot => "snapshot",
            Tier::Vault => "vault",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a point can be restored from now: [`Tier::Snapshot`] (its kept
/// snapshot, there and unchanged) and [`Tier::Vault`] (it is committed),
/// in that order.
///
/// # Errors
/// A damaged kept-snapshot record.
pub fn point_tiers(vault: &Vault, point: &PointManifest) -> Result<Vec<Tier>> {
    let mut tiers = Vec::new();
    if kept_snapshot(vault, &point.vm, &point.id)?.is_some() {
        tiers.push(Tier::Snapshot);
    }
    tiers.push(Tier::Vault);
    Ok(tiers)
}

/// The points that can be restored from their kept snapshot but are not
/// committed yet (their job is in its transfer or commit phase): tier
/// ["snapshot"], with the errors of records that could not be read.
///
/// # Errors
/// A bad VM name; I/O errors listing the folders.
pub fn snapshot_only_points(vault: &Vault, vm: Option<&str>) -> Result<(Vec<KeptSnapshot>, Vec<Error>)> {
    let (records, bad) = kept_snapshots(vault, vm)?;
    let only =
        records.into_iter().filter(|k| !vault.has_point(&k.vm, &k.point).unwrap_or(true) && k.usable(vault)).collect();
    Ok((only, bad))
}

/// What [`release_expired`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ReleaseReport {
    /// The snapshots released, with why ("expired", "job ended without its
    /// point", "point pruned").
    pub released: Vec<(KeptSnapshot, String)>,
    /// The snapshots still kept.
    pub kept: Vec<KeptSnapshot>,
    /// Snapshots that could not be released (they are tried again next
    /// time), and damaged records.
    pub problems: Vec<String>,
}

/// Releases kept snapshots that are past their expiry at `now`, whose job
/// ended without committing their point, or whose point is gone (pruned):
/// removes their files, then their record. Of one VM or of all.
///
/// # Errors
/// A bad VM name; I/O errors listing the folders. A snapshot that cannot be
/// released is reported in [`ReleaseReport::problems`].
pub fn release_expired(vault: &Vault, vm: Option<&str>, now: Timestamp) -> Result<ReleaseReport> {
    let (records, bad) = kept_snapshots(vault, vm)?;
    let mut report = ReleaseReport { problems: bad.iter().map(ToString::to_string).collect(), ..Default::default() };
    for k in records {
        // A running job's snapshot is its own to keep or release.
        if super::log::job_running(vault, &k.vm, &k.job) {
            report.kept.push(k);
            continue;
        }
        let why = if k.expires <= now {
            "expired"
        } else if vault.has_point(&k.vm, &k.point).unwrap_or(true) {
            report.kept.push(k);
            continue;
        } else if job_committed(vault, &k) {
            "point pruned"
        } else {
            "job ended without its point"
        };
        match release_files(vault, &k) {
            Ok(()) => match remove_kept(vault, &k.vm, &k.point) {
                Ok(()) => report.released.push((k, why.to_string())),
                Err(e) => report.problems.push(e.to_string()),
            },
            Err(e) => report.problems.push(format!("snapshot of point {} of vm {}: {e}", k.point, k.vm)),
        }
    }
    Ok(report)
}

/// Whether the job's log says it committed the point (so a missing
/// manifest means the point was pruned since).
fn job_committed(vault: &Vault, k: &KeptSnapshot) -> bool {
    super::log::read_vault_job(vault, &k.vm, &k.job).is_ok_and(|j| j.point.as_deref() == Some(k.point.as_str()))
}

/// Removes the clones of a kept snapshot: each only if it carries this
/// vault's mark for the point and disk (a file that is gone is released).
fn release_files(vault: &Vault, k: &KeptSnapshot) -> Result<()> {
    let mut first = Ok(());
    for d in &k.disks {
        let mark = crate::snapshot::clone_mark::kept(vault.id(), &k.vm, &k.point, &d.name);
        let r = match crate::snapshot::clone_mark::open_marked(&d.path, &mark) {
            Ok(f) => crate::snapshot::clone_mark::remove(&d.path, &f),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}

/// Restores one disk of a point from its kept snapshot, when it has a
/// usable one: a reflink copy where the file system allows, else a sparse
/// copy of the clone. Returns None when the point has no snapshot tier
/// (restore it from the vault then).
///
/// # Errors
/// An unknown disk; I/O errors naming the file.
pub fn restore_disk_from_snapshot(
    vault: &Vault,
    point: &PointManifest,
    disk: &str,
    to: &Path,
    options: &RestoreOptions,
) -> Result<Option<RestoreStats>> {
    let Some(k) = kept_snapshot(vault, &point.vm, &point.id)? else { return Ok(None) };
    let started = Instant::now();
    let d = point
        .disks
        .iter()
        .enumerate()
        .find(|(i, d)| d.name == disk || disk.parse::<usize>().ok() == Some(*i))
        .map(|(_, d)| d)
        .ok_or_else(|| Error::NotFound { what: format!("disk {disk} of point {} of vm {}", point.id, point.vm) })?;
    let Some(file) = k.disks.iter().find(|f| f.name == d.name) else { return Ok(None) };
    if file.size != d.size {
        return Ok(None);
    }
    let Some(written) = copy_kept(vault, &k, file, to, options)? else { return Ok(None) };
    let stats = RestoreStats {
        disk: d.name.clone(),
        size: d.size,
        bytes_written: written,
        bytes_zero: d.size.saturating_sub(written),
        seconds: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    Ok(Some(stats))
}

/// Restores a point from its kept snapshot alone, without its manifest: a
/// point in its transfer phase (tier ["snapshot"]) can be restored as soon
/// as its snapshot phase ends. With `disk` (a name or index), that disk to
/// the file `to`; without, every disk into the folder `to` (one file per
/// disk name). Each clone's size and modification time are checked against
/// the record before the copy and again after it. Returns None when the
/// point has no usable kept snapshot.
///
/// # Errors
/// A bad name; a damaged record; an unknown disk; I/O errors naming the file.
pub fn restore_from_snapshot(
    vault: &Vault,
    vm: &str,
    point: &str,
    disk: Option<&str>,
    to: &Path,
    options: &RestoreOptions,
) -> Result<Option<Vec<RestoreStats>>> {
    let Some(k) = kept_snapshot(vault, vm, point)? else { return Ok(None) };
    let targets: Vec<(&KeptFile, PathBuf)> = match disk {
        Some(disk) => {
            let f = k
                .disks
                .iter()
                .enumerate()
                .find(|(i, d)| d.name == disk || disk.parse::<usize>().ok() == Some(*i))
                .map(|(_, d)| d)
                .ok_or_else(|| Error::NotFound { what: format!("disk {disk} of point {point} of vm {vm}") })?;
            vec![(f, to.to_path_buf())]
        }
        None => {
            crate::vault::internals::mkdirs(to)?;
            k.disks
                .iter()
                .map(|d| validate_name("disk name", &d.name).map(|()| (d, to.join(&d.name))))
                .collect::<Result<_>>()?
        }
    };
    let mut all = Vec::new();
    for (file, out) in targets {
        let started = Instant::now();
        let Some(written) = copy_kept(vault, &k, file, &out, options)? else { return Ok(None) };
        all.push(RestoreStats {
            disk: file.name.clone(),
            size: file.size,
            bytes_written: written,
            bytes_zero: file.size.saturating_sub(written),
            seconds: started.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }
    Ok(Some(all))
}

/// Copies a kept clone to `to`, through the same safe target handling as
/// a restore from the vault (`restore_output`): a new file put in place
/// whole, or a block device. The clone is opened once, checked (mark, size,
/// time) on that descriptor before and after the copy; None when it is no
/// longer the snapshot (the output is then removed).
fn copy_kept(
    vault: &Vault,
    k: &KeptSnapshot,
    file: &KeptFile,
    to: &Path,
    options: &RestoreOptions,
) -> Result<Option<u64>> {
    let Ok(src) = k.open_disk(vault, file) else { return Ok(None) };
    let out = crate::restore_output::Output::open(to)?;
    let written = copy_file(&src, &file.path, &out, &options.cancel)?;
    // The copy is of a file that was unchanged when the copy began; it must
    // still be so, or the copy may mix two states.
    let same = src.metadata().is_ok_and(|m| m.len() == file.size && modified_ns(&m) == file.modified_ns);
    if !same {
        return Ok(None); // dropping `out` removes what was written
    }
    out.commit()?;
    Ok(Some(written))
}

/// Copies an open file into a restore output: a reflink clone when
/// possible, else a sparse copy (data extents only). Returns the bytes of
/// data copied.
fn copy_file(
    src: &std::fs::File,
    from: &Path,
    out: &crate::restore_output::Output,
    cancel: &crate::model::CancelToken,
) -> Result<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    cancel.check("restore from the snapshot tier")?;
    let to = &out.path;
    let dst = &out.file;
    let len = src.metadata().map_err(|e| Error::io("stat", from, e))?.len();
    if out.device {
        use std::io::Seek;
        let dev = (&*dst).seek(std::io::SeekFrom::End(0)).map_err(|e| Error::io("find the size of", to, e))?;
        if dev < len {
            return Err(Error::invalid(
                "restore target",
                format!("{} holds {dev} bytes; the disk needs {len}", to.display()),
            ));
        }
    } else {
        // `_IOW(0x94, 9, int)`: FICLONE, as the image-file provider uses it.
        const FICLONE: libc::c_ulong = 0x4004_9409;
        // SAFETY: both descriptors are owned by live `File`s for the call.
        if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) } == 0 {
            return dst.sync_all().map(|()| len).map_err(|e| Error::io("flush", to, e));
        }
        dst.set_len(len).map_err(|e| Error::io("set length of", to, e))?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut off = 0u64;
    while off < len {
        cancel.check("restore from the snapshot tier")?;
        let n = usize::try_from((len - off).min(buf.len() as u64)).unwrap_or(buf.len());
        src.read_exact_at(&mut buf[..n], off).map_err(|e| Error::io("read kept snapshot", from, e))?;
        if out.device || buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], off).map_err(|e| Error::io("write", to, e))?;
            written += n as u64;
        }
        off += n as u64;
    }
    dst.sync_all().map_err(|e| Error::io("flush", to, e))?;
    Ok(written)
}
