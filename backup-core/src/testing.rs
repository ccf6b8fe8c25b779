//! Raw access to a vault's objects by key, on any store, for tests that
//! damage a vault on purpose (a flipped byte in a pack, a lost index file,
//! a manifest deleted behind prune's back). Not part of the API: it may
//! change at any time, and nothing it does is checked.

use crate::error::Result;
use crate::vault::Vault;

/// A vault's objects, by key (`packs/<id>.pack`, `index/<id>.idx`, ...).
pub struct Objects<'v>(&'v Vault);

/// The objects of `vault`, through its own store.
pub fn objects(vault: &Vault) -> Objects<'_> {
    Objects(vault)
}

impl Objects<'_> {
    /// The keys that start with `prefix`, sorted.
    ///
    /// # Errors
    /// The store's errors.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.0.store().list(prefix)?.into_iter().map(|o| o.key).collect())
    }

    /// An object's bytes, or None.
    ///
    /// # Errors
    /// The store's errors.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.store().get(key, 1 << 30)
    }

    /// Replaces an object (and any copy a cache holds).
    ///
    /// # Errors
    /// The store's errors.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.0.store().put(key, bytes.into())
    }

    /// Removes an object (and any copy a cache holds).
    ///
    /// # Errors
    /// The store's errors.
    pub fn delete(&self, key: &str) -> Result<()> {
        self.0.store().delete(key)
    }
}

/// Records a boot verdict of `point` in `vault`, as `verify --boot` would
/// (without booting anything): for tests of what carries verdicts along.
///
/// # Errors
/// Invalid names; the store's errors.
pub fn record_boot_verdict(vault: &Vault, vm: &str, point: &str, passed: bool, checked_at: u64) -> Result<()> {
    vault.write_boot_verdict(&crate::BootVerdict {
        vm: vm.to_string(),
        point: point.to_string(),
        passed,
        reason: (!passed).then(|| "the agent did not answer".to_string()),
        checked_at,
        agent_seconds: passed.then_some(4.5),
        script: None,
        script_exit: None,
        script_output: None,
        console: "login:".to_string(),
        notes: Vec::new(),
        screenshot: vec![0x89, b'P', b'N', b'G'],
    })
}
