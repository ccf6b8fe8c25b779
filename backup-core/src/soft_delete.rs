//! Soft delete: a point removed by [`prune`](crate::prune) or
//! [`delete_point`] stays recoverable for the vault's
//! [`soft_delete_days`](crate::VaultSettings::soft_delete_days) (14 unless
//! changed): [`deleted_points`] lists it, [`undelete_point`] brings it
//! back whole, and [`gc`](crate::gc) keeps every object it needs until
//! its days are over, then removes it for good.
//!
//! With 0 days a removed point is gone at once, as before soft delete
//! existed. A vault whose soft delete is always on refuses to go there
//! ([`Vault::change_settings`]).
//!
//! A deleted point keeps its id and its manifest's bytes; while deleted it
//! is no point of the vault (not listed, restored, verified, exported,
//! judged by retention, nor a backup's parent). Undelete puts the same
//! manifest back, so the point restores bit for bit as before.

use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::vault::{LockMode, PointManifest, Vault};

/// What [`delete_point`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Deletion {
    /// The point deleted, as it was.
    pub point: PointManifest,
    /// Until when [`undelete_point`] can bring it back; None when the
    /// vault's soft delete is off and the point is gone for good.
    pub recoverable_until: Option<Timestamp>,
}

/// A soft-deleted point.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeletedPoint {
    /// When it was deleted, by the store's clock.
    pub deleted: Timestamp,
    /// When gc may remove it for good: its deletion plus the vault's
    /// soft-delete days as they are now.
    pub purge_after: Timestamp,
    /// Its manifest, as it was when it was deleted.
    pub point: PointManifest,
}

/// Deletes a point of a VM (by id, a unique prefix of one, or `latest`),
/// under the vault's exclusive lock. With soft delete on (the default) the
/// point becomes a deleted point, recoverable by [`undelete_point`] for the
/// vault's soft-delete days; with it off, its manifest is removed at once.
/// Either way, [`gc`](crate::gc) reclaims its data once nothing needs it.
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("root.img");
/// std::fs::write(&image, vec![7u8; 1 << 20])?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// let vm = Vm::from_images("web", &[&image])?;
/// let made = backup(&vault, &ImageFileProvider::new(), &vm, &BackupOptions::default())?.point;
///
/// let gone = delete_point(&vault, "web", "latest")?;
/// assert!(gone.recoverable_until.is_some());
/// assert!(vault.points(Some("web"))?.is_empty());
/// assert_eq!(deleted_points(&vault, Some("web"))?[0].point.id, made.id);
///
/// let back = undelete_point(&vault, "web", &made.id)?;
/// assert_eq!(back, made);
/// assert!(deleted_points(&vault, None)?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::NotFound`] for an unknown VM or point (or a prefix that names
/// several); a damaged manifest (it is left where it is); the vault
/// locked; I/O errors.
pub fn delete_point(vault: &Vault, vm: &str, point: &str) -> Result<Deletion> {
    let _lock = vault.lock(LockMode::Exclusive)?;
    let found = vault.find_point(vm, point)?;
    let settings = vault.settings()?;
    if let Some(until) = settings.immutable_until(found.time, crate::model::now()) {
        return Err(Error::Protected {
            action: format!("delete point {} of vm {vm} in vault {}", found.id, vault.location()),
            why: format!(
                "the vault keeps points immutable for {} days: this one until {until}",
                settings.immutable_days
            ),
        });
    }
    crate::prune::record_removed(vault, vm, &[found.id.as_str()])?;
    let days = remove_points(vault, &[(vm, found.id.as_str())])?;
    let recoverable_until = (days > 0).then(|| crate::model::now() + days_span(days));
    Ok(Deletion { point: found, recoverable_until })
}

/// The soft-deleted points of one VM, or of every VM, by VM then id.
///
/// # Errors
/// A deleted point's manifest that cannot be read (damaged or tampered);
/// an invalid VM name; I/O errors.
pub fn deleted_points(vault: &Vault, vm: Option<&str>) -> Result<Vec<DeletedPoint>> {
    let _lock = vault.lock(LockMode::Shared)?;
    let days = vault.settings()?.soft_delete_days;
    let mut out = Vec::new();
    for t in vault.trashed_points(vm)? {
        if t.also_live {
            continue;
        }
        let deleted = Timestamp::try_from(t.deleted)
            .map_err(|e| Error::invalid(format!("deletion time of point {} of vm {}", t.id, t.vm), e.to_string()))?;
        let point = vault.read_trashed_point(&t.vm, &t.id)?;
        out.push(DeletedPoint { deleted, purge_after: deleted + days_span(days), point });
    }
    Ok(out)
}

/// Brings a soft-deleted point back (by id, or a unique prefix of one),
/// under the vault's exclusive lock: the same manifest, so it restores bit
/// for bit as before. Its data is there, since gc keeps a deleted point's
/// data until its days are over.
///
/// # Errors
/// [`Error::NotFound`] when no deleted point (or several) matches; a
/// damaged manifest; the vault locked; I/O errors.
pub fn undelete_point(vault: &Vault, vm: &str, point: &str) -> Result<PointManifest> {
    crate::model::validate_name("vm name", vm)?;
    let _lock = vault.lock(LockMode::Exclusive)?;
    let ids: Vec<String> = vault.trashed_points(Some(vm))?.into_iter().filter(|t| !t.also_live).map(|t| t.id).collect();
    let id = crate::vault::pick_point_id(&ids, point, &format!("deleted point {point} of vm {vm}"))?;
    vault.untrash_point(vm, &id)?;
    crate::prune::forget_removed(vault, vm, &[id.as_str()])?;
    vault.read_point(vm, &id)
}

/// Removes points as the vault's settings say (the caller holds the
/// exclusive lock and has recorded them as removed): to `deleted/` while
/// soft delete is on, at once otherwise. Returns the soft-delete days.
pub(crate) fn remove_points(vault: &Vault, points: &[(&str, &str)]) -> Result<u32> {
    let days = vault.settings()?.soft_delete_days;
    if days == 0 {
        vault.remove_points(points)?;
    } else {
        for (vm, id) in points {
            vault.trash_point(vm, id)?;
        }
    }
    Ok(days)
}

/// What gc does with the soft-deleted points.
pub(crate) struct Swept {
    /// The deleted points whose days are not over: their data stays.
    pub held: Vec<PointManifest>,
    /// How many were removed for good (or, in a dry run, would be).
    pub purged: u64,
}

/// Removes for good (unless `dry_run`) the deleted points whose days are
/// over at `now` (and the stale copies a move cut short left of live
/// points); reads the others, whose data gc must keep.
///
/// # Errors
/// A held point's manifest that cannot be read: gc could not know what it
/// needs; I/O errors.
pub(crate) fn sweep(vault: &Vault, settings: &crate::VaultSettings, now: SystemTime, dry_run: bool) -> Result<Swept> {
    let days = settings.soft_delete_days;
    let now_ts = Timestamp::try_from(now).map_err(|e| Error::invalid("gc time", e.to_string()))?;
    let span = Duration::from_secs(u64::from(days) * 86_400);
    let mut held = Vec::new();
    let mut expired = Vec::new();
    let mut stale = Vec::new();
    for t in vault.trashed_points(None)? {
        if t.also_live {
            stale.push(t);
            continue;
        }
        let point = vault.read_trashed_point(&t.vm, &t.id).map_err(|e| {
            Error::corrupt(
                format!("vault {}", vault.location()),
                format!("gc refuses to run: deleted point {} of vm {} cannot be read: {e}", t.id, t.vm),
            )
        })?;
        // A point deleted before the vault became immutable stays until
        // it is old enough, whatever its soft-delete days say.
        let over = t.deleted.checked_add(span).is_none_or(|end| end <= now);
        if over && settings.immutable_until(point.time, now_ts).is_none() {
            expired.push(t);
        } else {
            held.push(point);
        }
    }
    let purged = expired.len() as u64;
    if !dry_run {
        let expired: Vec<(&str, &str)> = expired.iter().map(|t| (t.vm.as_str(), t.id.as_str())).collect();
        vault.purge_trashed(&expired)?;
        // A stale copy's point is live: only the copy goes, not its verdict.
        let stale: Vec<(&str, &str)> = stale.iter().map(|t| (t.vm.as_str(), t.id.as_str())).collect();
        vault.remove_trash_copies(&stale)?;
    }
    Ok(Swept { held, purged })
}

fn days_span(days: u32) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(24 * i64::from(days))
}
