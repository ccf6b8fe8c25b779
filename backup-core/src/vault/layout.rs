//! Where each kind of vault object lives: one function per kind.
//!
//! A name here is a key relative to the vault: the same string is the
//! path of a file under a local vault's folder and the key of an object
//! under a remote vault's prefix. Nothing outside `vault/` builds such a
//! name (a test in `tests/layout_boundary.rs` looks), so the layout can
//! only change here.
//!
//! Names parsed back from a listing are checked with the same rules as
//! names given by a caller ([`validate_name`]): a name read from the vault
//! never becomes a path outside it.

use crate::model::{ContentId, validate_name};

/// The vault's config: format version, id, keys or key slots.
pub(crate) const CONFIG: &str = "config";
/// The lock file (local folders and caches only).
pub(crate) const LOCK: &str = "lock";
/// Packs of chunks.
pub(crate) const PACKS: &str = "packs/";
/// Chunk index files, one per pack.
pub(crate) const INDEX: &str = "index/";
/// Index segments, by content id.
pub(crate) const SEGMENTS: &str = "segments/";
/// Point manifests, by VM.
pub(crate) const POINTS: &str = "points/";
/// Manifests of soft-deleted points, by VM: kept, restorable by undelete,
/// until the vault's soft-delete days since their removal are over.
pub(crate) const DELETED: &str = "deleted/";
/// VM records.
pub(crate) const VMS: &str = "vms/";
/// Job logs, by VM (local folders and caches only).
pub(crate) const JOBS: &str = "jobs/";
/// Snapshots kept for instant restore, by VM (local only: they name host files).
pub(crate) const SNAPSHOTS: &str = "snapshots/";
/// Boot verdicts, by VM.
pub(crate) const VERDICTS: &str = "verdicts/";
/// What prune removed, by VM (seen by every host of a shared vault).
pub(crate) const PRUNED: &str = "pruned/";
/// gc marks of a shared (remote) vault.
pub(crate) const MARKS: &str = "gc/";
/// Leases of backups in flight on a shared (remote) vault.
pub(crate) const LEASES: &str = "leases/";
/// Staging of work in flight; never read as vault data.
pub(crate) const TMP: &str = "tmp/";

/// The folders a local vault (and a remote vault's cache) is made with.
pub(crate) const FOLDERS: [&str; 6] = [PACKS, INDEX, SEGMENTS, POINTS, VMS, TMP];

/// A pack.
pub(crate) fn pack(id: &str) -> String {
    format!("{PACKS}{id}.pack")
}

/// The chunk index file of a pack.
pub(crate) fn chunk_index(pack: &str) -> String {
    format!("{INDEX}{pack}.idx")
}

/// An index segment.
pub(crate) fn segment(id: &ContentId) -> String {
    let h = id.to_hex();
    format!("{SEGMENTS}{}/{h}", &h[..2])
}

/// The folder of a VM's point manifests, with its trailing `/`.
pub(crate) fn points_of(vm: &str) -> String {
    format!("{POINTS}{vm}/")
}

/// A point's manifest.
pub(crate) fn manifest(vm: &str, point: &str) -> String {
    format!("{POINTS}{vm}/{point}")
}

/// The folder of a VM's soft-deleted points, with its trailing `/`.
pub(crate) fn deleted_of(vm: &str) -> String {
    format!("{DELETED}{vm}/")
}

/// The manifest of a soft-deleted point (the same bytes as it had under
/// `points/`; the object's time is when it was deleted).
pub(crate) fn deleted(vm: &str, point: &str) -> String {
    format!("{DELETED}{vm}/{point}")
}

/// The VM and point id of a soft-deleted point's key, if it is one.
pub(crate) fn deleted_of_key(key: &str) -> Option<(&str, &str)> {
    let (vm, id) = key.strip_prefix(DELETED)?.split_once('/')?;
    (validate_name("vm name", vm).is_ok() && validate_name("point id", id).is_ok()).then_some((vm, id))
}

/// A VM's record.
pub(crate) fn vm_record(vm: &str) -> String {
    format!("{VMS}{vm}.json")
}

/// The folder of a VM's job logs, with its trailing `/`.
pub(crate) fn jobs_of(vm: &str) -> String {
    format!("{JOBS}{vm}/")
}

/// A job's log.
pub(crate) fn job_log(vm: &str, job: &str) -> String {
    format!("{JOBS}{vm}/{job}.jsonl")
}

/// The record of the points prune removed from a VM (beside its job logs).
pub(crate) fn pruned_log(vm: &str) -> String {
    format!("{JOBS}{vm}/pruned.log")
}

/// The folder of a VM's kept-snapshot records, with its trailing `/`.
pub(crate) fn snapshots_of(vm: &str) -> String {
    format!("{SNAPSHOTS}{vm}/")
}

/// The record of a snapshot kept for a point.
pub(crate) fn kept_snapshot(vm: &str, point: &str) -> String {
    format!("{SNAPSHOTS}{vm}/{point}.json")
}

/// The folder of a VM's boot verdicts, with its trailing `/`.
pub(crate) fn verdicts_of(vm: &str) -> String {
    format!("{VERDICTS}{vm}/")
}

/// A point's boot verdict.
pub(crate) fn verdict(vm: &str, point: &str) -> String {
    format!("{VERDICTS}{vm}/{point}")
}

/// The folder of the points prune removed from a VM, with its trailing `/`.
pub(crate) fn pruned_of(vm: &str) -> String {
    format!("{PRUNED}{vm}/")
}

/// The record that prune removed a point.
pub(crate) fn pruned(vm: &str, point: &str) -> String {
    format!("{PRUNED}{vm}/{point}")
}

/// A gc mark.
pub(crate) fn mark(name: &str) -> String {
    format!("{MARKS}{name}")
}

/// The lease of a backup in flight on a shared vault.
pub(crate) fn lease(name: &str) -> String {
    format!("{LEASES}{name}.json")
}

/// The name of a lease's key, if it is one.
pub(crate) fn lease_of(key: &str) -> Option<&str> {
    key.strip_prefix(LEASES)?.strip_suffix(".json").filter(|n| validate_name("lease", n).is_ok())
}

/// A staging entry (a file or a folder) under `tmp/`.
pub(crate) fn staging(name: &str) -> String {
    format!("{TMP}{name}")
}

/// The pack id of a pack's key, if it is one.
pub(crate) fn pack_of(key: &str) -> Option<&str> {
    key.strip_prefix(PACKS)?.strip_suffix(".pack").filter(|id| validate_name("pack id", id).is_ok())
}

/// The pack id of a chunk index file's key, if it is one.
pub(crate) fn index_of(key: &str) -> Option<&str> {
    key.strip_prefix(INDEX)?.strip_suffix(".idx").filter(|id| validate_name("pack id", id).is_ok())
}

/// The segment id of a segment's key, if it is one.
pub(crate) fn segment_of(key: &str) -> Option<ContentId> {
    let rest = key.strip_prefix(SEGMENTS)?;
    let (sub, name) = rest.split_once('/')?;
    let id = ContentId::from_hex(name).ok()?;
    (sub.len() == 2 && name.starts_with(sub)).then_some(id)
}

/// The VM and point id of a manifest's key, if it is one.
pub(crate) fn manifest_of(key: &str) -> Option<(&str, &str)> {
    let (vm, id) = key.strip_prefix(POINTS)?.split_once('/')?;
    (validate_name("vm name", vm).is_ok() && validate_name("point id", id).is_ok()).then_some((vm, id))
}

/// The name of a gc mark's key, if it is one.
pub(crate) fn mark_of(key: &str) -> Option<&str> {
    key.strip_prefix(MARKS).filter(|n| n.ends_with(".json") && validate_name("gc mark", n).is_ok())
}

/// The last part of a key under `folder` (which ends with `/`), if it is a
/// plain name.
pub(crate) fn name_in<'k>(key: &'k str, folder: &str) -> Option<&'k str> {
    key.strip_prefix(folder).filter(|n| validate_name("name", n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_foreign_ones_are_refused() {
        let id = ContentId([0xab; 32]);
        assert_eq!(segment_of(&segment(&id)), Some(id));
        assert_eq!(pack_of(&pack("0123abcd")), Some("0123abcd"));
        assert_eq!(index_of(&chunk_index("0123abcd")), Some("0123abcd"));
        assert_eq!(lease_of(&lease("host-1-ab")), Some("host-1-ab"));
        assert_eq!(lease_of("leases/../x.json"), None);
        assert_eq!(manifest_of(&manifest("web", "20261203T000000Z-1")), Some(("web", "20261203T000000Z-1")));
        assert_eq!(deleted_of_key(&deleted("web", "20261203T000000Z-1")), Some(("web", "20261203T000000Z-1")));
        assert_eq!(deleted_of_key("deleted/web/../x"), None);
        assert_eq!(pack_of("packs/../config.pack"), None);
        assert_eq!(pack_of("packs/a/b.pack"), None);
        assert_eq!(manifest_of("points/web/a/b"), None);
        assert_eq!(segment_of("segments/cd/abab"), None);
        assert_eq!(mark_of("gc/x.json"), Some("x.json"));
        assert_eq!(mark_of("gc/../x.json"), None);
    }
}
