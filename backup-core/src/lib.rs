//! # backup-core: the vmbackup engine
//!
//! Backs up virtual machine disks the way a cloud backup service does: a
//! [`SnapshotProvider`] freezes a VM and hands back one [`BlockDevice`] per
//! disk; the changed-block engine moves only what changed since the last
//! point, every disk in parallel, into a deduplicating [`Vault`]; the point
//! is committed only once everything it names is durable. Points are
//! listed, [restored](restore_disk_to_path) and [verified](verify). A
//! [`Policy`] says when backups run ([`Schedule`]) and how long points live
//! ([`Retention`]); [`prune_plan`] and [`prune`] remove the points it no
//! longer keeps, and [`gc`] reclaims what no point references.
//!
//! Data flows one way: provider -> device -> engine -> vault.
//!
//! ```
//! use backup_core::*;
//! let dir = tempfile::tempdir()?;
//! let image = dir.path().join("root.img");
//! let mut data = vec![0u8; 4 << 20];
//! data[..11].copy_from_slice(b"boot sector");
//! std::fs::write(&image, &data)?;
//!
//! let vault = Vault::init(dir.path().join("vault"))?;
//! let vm = Vm::from_images("web", &[&image])?;
//! let provider = ImageFileProvider::new();
//! let first = backup(&vault, &provider, &vm, &BackupOptions::default())?;
//!
//! data[3 << 20] = 1; // one block changes
//! std::fs::write(&image, &data)?;
//! let second = backup(&vault, &provider, &vm, &BackupOptions::default())?;
//! assert_eq!(second.point.stats.totals.bytes_new, 64 << 10);
//! assert_eq!(second.point.parent.as_deref(), Some(first.point.id.as_str()));
//!
//! let out = dir.path().join("restored");
//! restore_vm(&vault, &second.point, &out, &RestoreOptions::default())?;
//! assert_eq!(std::fs::read(out.join("root.img"))?, data);
//! assert!(verify(&vault, &VerifyOptions::default())?.ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod copy;
mod device;
mod disk_reader;
mod engine;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
pub mod guest;
mod job;
#[cfg(feature = "libvirt")]
mod libvirt;
mod lz4;
mod model;
pub mod mount;
mod nbd;
mod no_follow;
mod policy;
mod prune;
#[cfg(feature = "libvirt")]
mod recovery;
mod repair;
mod restore;
mod restore_output;
mod snapshot;
mod soft_delete;
#[doc(hidden)]
pub mod testing;
mod throttle;
mod vault;
mod verify;

pub use copy::{CopiedPoint, CopyOptions, CopyReport, PointSelection, copy};
pub use device::{BlockDevice, RawImage};
pub use disk_reader::DiskReader;
pub use error::{Error, ErrorKind, Result};
pub use gc::{GcOptions, GcReport, gc};
pub use guest::{
    ExtractReport, FileEntry, FileKind, FoundFile, FsType, GuestDisk, GuestFs, TableKind, Volume, VolumeKind,
    find_files, glob_match,
};
pub use job::log::{JobEvent, JobRecord, JobResult, Phase, PhaseRecord, job_history, read_job};
pub use job::tiers::{
    KeptFile, KeptSnapshot, ReleaseReport, Tier, kept_snapshot, kept_snapshots, point_tiers, release_expired,
    restore_disk_from_snapshot, restore_from_snapshot, snapshot_only_points,
};
pub use job::{BackupOptions, BackupReport, backup, check_instant_restore_days};
#[cfg(feature = "libvirt")]
pub use libvirt::{
    DomainDisk, GUEST_CONFIG, GUEST_POST_SCRIPT, GUEST_PRE_SCRIPT, GuestAgentInfo, LibvirtProvider, SkippedDisks,
    parse_disks,
};
pub use model::{
    CancelToken, Consistency, ContentId, NoProgress, OsType, Progress, Vm, VmConfiguration, VmDisk, validate_name,
};
pub use mount::{Extent, MountSelection, MountedVault, image_file_name};
pub use nbd::{
    ExportAddress, ExportOptions, NBD_DEFAULT_PORT, NbdAddress, NbdDevice, NbdOptions, NbdProvider, NbdServer,
    QemuProvider, bitmap_token,
};
pub use policy::{
    BootVerifyRule, CopyRule, DEFAULT_JOB_LOG_DAYS, DayOfMonth, DaySelector, KeepReason, MonthlyRule, PointRef, Policy,
    Retained, Retention, Schedule, WeekOfMonth, WeeklyRule, YearlyRule,
};
pub use prune::{PlannedJobLog, PlannedPoint, PruneOptions, PrunePlan, PruneReport, prune, prune_plan};
#[cfg(feature = "libvirt")]
pub use recovery::{
    BootVerifyOptions, DomainRestore, DomainTarget, ImageFormat, InstantOptions, InstantReport, boot_verify,
    instant_restore, restore_to_domain,
};
pub use repair::{RebuiltIndex, RepairOptions, RepairReport, repair};
pub use restore::{
    DamagedRange, FileTarget, RestoreOptions, RestoreStats, RestoreTarget, restore_disk, restore_disk_to_path,
    restore_vm,
};
pub use snapshot::{
    ConsistentProvider, DEFAULT_FREEZE_TIMEOUT, DEFAULT_SCRIPT_TIMEOUT, FreezeGuard, ImageFileProvider, KeptDisk,
    MAX_SCRIPT_RETRIES, MAX_SCRIPT_TIMEOUT_SECS, MixedProvider, OUTPUT_LIMIT, PrepareReport, ScriptsConfig, Snapshot,
    SnapshotDisk, SnapshotProvider, ThawReport,
};
pub use soft_delete::{DeletedPoint, Deletion, delete_point, deleted_points, undelete_point};
pub use throttle::{Throttle, ThrottledDevice, ThrottledProvider};
pub use vault::{
    BackupSession, BootVerdict, Codec, DiskRecord, DiskStats, FORMAT_VERSION, KdfParams, KeySlotInfo, KeySource,
    LockMode, PointManifest, PointStats, RemoteOptions, SlotKind, UPLOAD_BUDGET, Vault, VaultLock, VaultOptions,
    VaultSink, VaultSource, VmRecord, generate_key_file, is_vault_url,
};
pub use vault::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size};
pub use vault::{DEFAULT_SOFT_DELETE_DAYS, MAX_SOFT_DELETE_DAYS, SettingsChange, StoreLock, VaultSettings};
pub use verify::{Problem, VerifyOptions, VerifyReport, verify};
