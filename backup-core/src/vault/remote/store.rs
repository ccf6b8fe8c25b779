//! The storage seam of a remote vault: the few operations the vault needs
//! of an object store, synchronous, with keys relative to the vault's
//! prefix (`config`, `packs/<id>.pack`, ...).

use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::Result;

/// One stored object, as a listing or a `head` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectInfo {
    /// The key, relative to the vault's prefix.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
}

/// An object store holding a vault's objects under one prefix.
///
/// Every error names the object's full URL; a transient failure that
/// outlived the retries is an I/O error of kind `TimedOut` (so
/// [`Error::kind`](crate::Error::kind) says retryable), a missing object
/// `NotFound`.
pub(crate) trait Store: Send + Sync {
    /// The full URL of a key, for messages.
    fn url(&self, key: &str) -> String;
    /// The whole object, or None when it does not exist.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Several whole objects at once, in the order asked (None for a
    /// missing one).
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;
    /// A byte range of an object (shorter only when the object is).
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// Writes an object, replacing any.
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
    /// Writes an object only if none exists under the key (a conditional,
    /// create-only put): Ok(false) when one does.
    fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool>;
    /// Uploads local files, `concurrency` at a time (each file is held in
    /// memory while it uploads, so memory stays within `concurrency` times
    /// the largest file).
    fn put_files(&self, files: &[(String, PathBuf)], concurrency: usize) -> Result<()>;
    /// Every object whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Several objects' metadata at once, in the order asked (None for a
    /// missing one).
    fn head_many(&self, keys: &[String]) -> Result<Vec<Option<ObjectInfo>>>;
    /// Removes an object; a missing one is no error.
    fn delete(&self, key: &str) -> Result<()>;
}
