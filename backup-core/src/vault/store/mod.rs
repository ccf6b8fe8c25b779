//! The storage boundary of a vault: the few operations the vault needs of
//! where its objects live, with keys from `vault::layout` (`config`,
//! `packs/<id>.pack`, ...). Two stores implement it:
//!
//! - [`local::LocalStore`], a folder: every path is opened beneath the
//!   vault's folder (no link followed), a write is made durable by fsync
//!   of the file and a rename (or link) flushed by fsync of its folder;
//! - `object::ObjectBackend` (cargo feature `object-store`), Azure Blob or
//!   S3 through `object_store`: a write is durable once the store answers;
//!   a create-only put is a conditional put.
//!
//! A remote vault reads through [`cached::CachedStore`]: the object store,
//! with the immutable objects it fetched (chunk index files, segments,
//! manifests, gc marks) kept in a local folder.
//!
//! Every method is synchronous; every error names the object by its path
//! or URL. A transient failure that outlived the retries is an I/O error of
//! kind `TimedOut` (so [`Error::kind`](crate::Error::kind) says
//! retryable), a missing object `NotFound`.

pub(crate) mod cached;
pub(crate) mod local;
#[cfg(feature = "object-store")]
pub(crate) mod object;
#[cfg(feature = "object-store")]
pub(crate) mod s3_lock;

use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::Result;
use crate::vault::settings::StoreLock;

/// One stored object, as a listing or a `head` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectInfo {
    /// The key, relative to the vault.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
}

/// Where a vault's objects are kept.
pub(crate) trait Store: Send + Sync {
    /// Where an object is, for messages: its path or its URL (the vault's
    /// own location for an empty key).
    fn describe(&self, key: &str) -> String;
    /// The whole object (at most `limit` bytes, else an error naming it),
    /// or None when it does not exist.
    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>>;
    /// Several whole objects at once, in the order asked (None for a
    /// missing one).
    fn get_many(&self, keys: &[String], limit: u64) -> Result<Vec<Option<Vec<u8>>>>;
    /// A byte range of an object (shorter only when the object is).
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// Writes an object durably, replacing any (only the config, VM records
    /// and boot verdicts are ever replaced).
    fn put(&self, key: &str, bytes: Bytes) -> Result<()>;
    /// Writes an object made of `parts`, in order, durably, replacing any.
    /// An object store sends the parts as they are, without joining them
    /// into one buffer first (a pack built in memory: its frames' payloads
    /// are the buffers the engine compressed into).
    fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()>;
    /// Writes an object durably only if none exists under the key (a
    /// create-only put): Ok(false) when one does.
    fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool>;
    /// Moves finished local files (flushed, in the staging folder `tmp/`
    /// of the vault's local folder) into place under their keys, durably,
    /// `concurrency` at a time where the store can. Each file is gone from
    /// its staging path afterwards, or (a store that copies) may be.
    fn publish(&self, files: &[(String, PathBuf)], concurrency: usize) -> Result<()>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// The names directly inside `folder` (a prefix ending with `/`) that
    /// have objects beneath them: the VMs under `points/`, say.
    fn list_folders(&self, folder: &str) -> Result<Vec<String>>;
    /// Several objects' metadata at once, in the order asked (None for a
    /// missing one).
    fn head_many(&self, keys: &[String]) -> Result<Vec<Option<ObjectInfo>>>;
    /// Removes objects durably; a missing one is no error.
    fn delete_many(&self, keys: &[String]) -> Result<()>;
    /// The object as a local file opened for reading, when the store is a
    /// folder (reads then use `pread`, and `O_DIRECT` where asked); None
    /// for a store reached over the network.
    fn open_file(&self, key: &str, flags: libc::c_int) -> Option<Result<File>>;
    /// Drops any local copy of objects, so that the next read asks the
    /// store itself (an object this host can no longer vouch for); a store
    /// without a cache has nothing to drop.
    fn uncache(&self, _keys: &[String]) -> Result<()> {
        Ok(())
    }
    /// Locks every object written from now on for `days` days (0: none),
    /// where the store can lock objects (S3 with Object Lock); a store that
    /// cannot ignores it.
    fn lock_writes(&self, _days: u32) {}
    /// Whether the store can lock the objects the vault writes.
    fn store_lock(&self) -> Result<StoreLock> {
        Ok(StoreLock::Unavailable)
    }
}

impl dyn Store + '_ {
    /// Removes one object; a missing one is no error.
    pub(crate) fn delete(&self, key: &str) -> Result<()> {
        self.delete_many(std::slice::from_ref(&key.to_string()))
    }

    /// One object's metadata, or None when it does not exist.
    pub(crate) fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        Ok(self.head_many(std::slice::from_ref(&key.to_string()))?.pop().flatten())
    }
}
