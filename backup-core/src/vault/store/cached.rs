//! [`Store`] of a remote vault: the object store, with the immutable
//! objects this host fetched kept in a local folder, the cache.
//!
//! Cached are the objects that do not change once written and that every
//! operation reads: chunk index files (`index/`), index segments
//! (`segments/`), manifests (`points/`) and gc marks (`gc/`). A read finds
//! them in the cache first; a listing of one of their folders drops the
//! cached ones the store no longer has (removed by prune or gc on any
//! host) or has written since (an index file repair rebuilt). "Since"
//! compares the store's time of the object with the cache file's: a
//! rewrite within the same second as the first write is missed by a store
//! whose listings give whole seconds (moto's S3 server does). Comparing
//! ETags would close that; it is not done yet. Packs are never cached, and the config and VM records (which are
//! rewritten) are always read from the store. The cache's files are not
//! flushed: after a crash, what is missing is fetched again.

use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;

use super::local::LocalStore;
use super::{ObjectInfo, Store};
use crate::error::Result;
use crate::vault::layout;
use crate::vault::settings::StoreLock;

/// A remote store and its local cache.
pub(crate) struct CachedStore {
    remote: Box<dyn Store>,
    cache: LocalStore,
}

/// Whether objects under a key are kept in the cache.
fn cached(key: &str) -> bool {
    [layout::INDEX, layout::SEGMENTS, layout::POINTS, layout::MARKS].iter().any(|f| key.starts_with(f))
}

impl CachedStore {
    /// `remote`, cached in the folder of `cache`.
    pub(crate) fn new(remote: Box<dyn Store>, cache: LocalStore) -> CachedStore {
        CachedStore { remote, cache }
    }
}

impl Store for CachedStore {
    fn describe(&self, key: &str) -> String {
        self.remote.describe(key)
    }

    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        if !cached(key) {
            return self.remote.get(key, limit);
        }
        if let Some(b) = self.cache.get(key, limit)? {
            return Ok(Some(b));
        }
        let got = self.remote.get(key, limit)?;
        if let Some(b) = &got {
            self.cache.write_cached(key, b)?;
        }
        Ok(got)
    }

    fn get_many(&self, keys: &[String], limit: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = if cached(key) { self.cache.get(key, limit)? } else { None };
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        let wanted: Vec<String> = missing.iter().map(|i| keys[*i].clone()).collect();
        for (i, got) in missing.into_iter().zip(self.remote.get_many(&wanted, limit)?) {
            if let Some(b) = &got
                && cached(&keys[i])
            {
                self.cache.write_cached(&keys[i], b)?;
            }
            out[i] = got;
        }
        Ok(out)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.remote.get_range(key, range)
    }

    fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.remote.put(key, bytes.clone())?;
        if cached(key) {
            self.cache.write_cached(key, &bytes)?;
        }
        Ok(())
    }

    fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        if cached(key) {
            let joined = parts.concat();
            self.remote.put_parts(key, parts)?;
            return self.cache.write_cached(key, &joined);
        }
        self.remote.put_parts(key, parts)
    }

    fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let made = self.remote.put_new(key, bytes.clone())?;
        if made && cached(key) {
            self.cache.write_cached(key, &bytes)?;
        }
        Ok(made)
    }

    fn publish(&self, files: &[(String, PathBuf)], concurrency: usize) -> Result<()> {
        self.remote.publish(files, concurrency)?;
        for (key, from) in files.iter().filter(|(k, _)| cached(k)) {
            self.cache.move_cached(from, key)?;
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let listed = self.remote.list(prefix)?;
        if cached(prefix) {
            // Cached copies of objects gone from the store, or written
            // there after they were cached (repair rewrites index files),
            // are dropped: the next read fetches them again.
            let stale: Vec<String> = self
                .cache
                .list(prefix)?
                .into_iter()
                .filter(|have| match listed.binary_search_by(|o| o.key.as_str().cmp(&have.key)) {
                    Ok(i) => listed[i].modified > have.modified,
                    Err(_) => true,
                })
                .map(|o| o.key)
                .collect();
            self.cache.remove_cached(&stale)?;
        }
        Ok(listed)
    }

    fn list_folders(&self, folder: &str) -> Result<Vec<String>> {
        self.remote.list_folders(folder)
    }

    fn head_many(&self, keys: &[String]) -> Result<Vec<Option<ObjectInfo>>> {
        self.remote.head_many(keys)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.remote.delete_many(keys)?;
        let local: Vec<String> = keys.iter().filter(|k| cached(k)).cloned().collect();
        self.cache.remove_cached(&local)
    }

    fn open_file(&self, _key: &str, _flags: libc::c_int) -> Option<Result<File>> {
        None
    }

    fn uncache(&self, keys: &[String]) -> Result<()> {
        self.cache.remove_cached(keys)
    }

    fn lock_writes(&self, days: u32) {
        self.remote.lock_writes(days);
    }

    fn store_lock(&self) -> Result<StoreLock> {
        self.remote.store_lock()
    }
}
