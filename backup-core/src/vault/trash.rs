//! Where soft-deleted points wait: `deleted/<vm>/<point>` holds the very
//! bytes the manifest had under `points/` (sealed the same way: its
//! associated data names the VM and point, not the key), and the object's
//! time in the store is when the point was deleted.
//!
//! A move is a create-only copy made durable first, then the removal of
//! the original; a crash between the two leaves the point in both places,
//! and the one under `points/` wins (it is listed, and the next delete or
//! undelete finishes the move). The crate's `soft_delete` module decides
//! when to move; this one only moves.

use std::time::SystemTime;

use bytes::Bytes;

use super::{Vault, layout, manifest};
use crate::error::{Error, Result};
use crate::model::validate_name;
use crate::vault::PointManifest;

/// A soft-deleted point as the store lists it.
#[derive(Debug, Clone)]
pub(crate) struct Trashed {
    pub vm: String,
    pub id: String,
    /// When it was deleted (the store's time of the object).
    pub deleted: SystemTime,
    /// Its manifest is also under `points/` (a move cut short): it is not
    /// deleted, and this copy is stale.
    pub also_live: bool,
}

impl Vault {
    /// Moves a point's manifest to `deleted/` (its boot verdict stays, for
    /// an undelete).
    pub(crate) fn trash_point(&self, vm: &str, id: &str) -> Result<()> {
        validate_name("vm name", vm)?;
        validate_name("point id", id)?;
        let bytes = self.checked_manifest(&layout::manifest(vm, id), vm, id)?;
        // Replaces a stale copy left by a move cut short, so that the
        // object's time is this deletion's.
        self.store.put(&layout::deleted(vm, id), bytes)?;
        self.store.delete(&layout::manifest(vm, id))
    }

    /// Moves a soft-deleted point's manifest back to `points/`.
    pub(crate) fn untrash_point(&self, vm: &str, id: &str) -> Result<()> {
        validate_name("vm name", vm)?;
        validate_name("point id", id)?;
        let bytes = self.checked_manifest(&layout::deleted(vm, id), vm, id)?;
        // Ok(false): already there, from a move a crash cut short.
        self.store.put_new(&layout::manifest(vm, id), bytes)?;
        self.store.delete(&layout::deleted(vm, id))
    }

    /// The bytes of a manifest, checked before they move: a damaged
    /// manifest stays where it is.
    fn checked_manifest(&self, key: &str, vm: &str, id: &str) -> Result<Bytes> {
        let Some(bytes) = self.store.get(key, manifest::MAX_MANIFEST_LEN)? else {
            return Err(Error::NotFound { what: format!("point {id} of vm {vm} at {}", self.describe(key)) });
        };
        self.decode_manifest(key, vm, id, bytes.clone())?;
        Ok(Bytes::from(bytes))
    }

    /// The soft-deleted points of one VM, or of all, by VM then id.
    pub(crate) fn trashed_points(&self, vm: Option<&str>) -> Result<Vec<Trashed>> {
        let prefix = match vm {
            Some(vm) => {
                validate_name("vm name", vm)?;
                layout::deleted_of(vm)
            }
            None => layout::DELETED.to_string(),
        };
        let mut out = Vec::new();
        for o in self.store.list(&prefix)? {
            let Some((vm, id)) = layout::deleted_of_key(&o.key) else { continue };
            out.push(Trashed { vm: vm.to_string(), id: id.to_string(), deleted: o.modified, also_live: false });
        }
        let keys: Vec<String> = out.iter().map(|t| layout::manifest(&t.vm, &t.id)).collect();
        for (t, live) in out.iter_mut().zip(self.store.head_many(&keys)?) {
            t.also_live = live.is_some();
        }
        Ok(out)
    }

    /// Reads a soft-deleted point's manifest.
    pub(crate) fn read_trashed_point(&self, vm: &str, id: &str) -> Result<PointManifest> {
        validate_name("vm name", vm)?;
        validate_name("point id", id)?;
        let key = layout::deleted(vm, id);
        let Some(bytes) = self.store.get(&key, manifest::MAX_MANIFEST_LEN)? else {
            return Err(Error::NotFound { what: format!("deleted point {id} of vm {vm}") });
        };
        self.decode_manifest(&key, vm, id, bytes)
    }

    /// Removes soft-deleted points for good: their boot verdicts, then
    /// their manifests.
    pub(crate) fn purge_trashed(&self, points: &[(&str, &str)]) -> Result<()> {
        for (vm, id) in points {
            validate_name("vm name", vm)?;
            validate_name("point id", id)?;
        }
        let verdicts: Vec<String> = points.iter().map(|(vm, id)| layout::verdict(vm, id)).collect();
        self.store.delete_many(&verdicts)?;
        self.remove_trash_copies(points)
    }

    /// Removes the `deleted/` objects of points, nothing else.
    pub(crate) fn remove_trash_copies(&self, points: &[(&str, &str)]) -> Result<()> {
        for (vm, id) in points {
            validate_name("vm name", vm)?;
            validate_name("point id", id)?;
        }
        let keys: Vec<String> = points.iter().map(|(vm, id)| layout::deleted(vm, id)).collect();
        self.store.delete_many(&keys)
    }
}
