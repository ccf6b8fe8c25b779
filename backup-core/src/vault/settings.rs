//! The settings a vault keeps in its config and applies to every host and
//! every caller: how it protects its points from deletion.
//!
//! They live in the `config` object (the one object that is rewritten), so
//! every operation reads them from the store when it acts, never from a
//! copy taken when the vault was opened.

use serde::{Deserialize, Serialize};

use super::Vault;
use crate::error::{Error, Result};

/// How many days a removed point stays recoverable when a vault does not
/// say otherwise (Azure Backup's default).
pub const DEFAULT_SOFT_DELETE_DAYS: u32 = 14;

/// The most soft-delete days a vault accepts (ten years).
pub const MAX_SOFT_DELETE_DAYS: u32 = 3650;

/// A vault's protection settings, as `vmbackup config` shows them.
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// assert_eq!(vault.settings()?.soft_delete_days, DEFAULT_SOFT_DELETE_DAYS);
/// let mut change = SettingsChange::default();
/// change.soft_delete_days = Some(30);
/// change.soft_delete_always_on = true;
/// let now = vault.change_settings(&change)?;
/// assert!(now.soft_delete_always_on);
/// // Always on: soft delete can no longer be turned off.
/// change.soft_delete_days = Some(0);
/// assert!(matches!(vault.change_settings(&change), Err(Error::Protected { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct VaultSettings {
    /// Days a point removed by prune or delete stays recoverable (listed
    /// as deleted, brought back by undelete, its data kept by gc); 0
    /// removes points at once.
    pub soft_delete_days: u32,
    /// Soft delete can never be turned off again, and its days never
    /// shortened; this setting itself cannot be unset.
    pub soft_delete_always_on: bool,
    /// Points younger than this many days, and every object written in
    /// that time, are immutable: delete refuses them, prune spares them,
    /// gc neither removes nor rewrites them; the days can only grow. 0:
    /// off.
    pub immutable_days: u32,
}

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings { soft_delete_days: DEFAULT_SOFT_DELETE_DAYS, soft_delete_always_on: false, immutable_days: 0 }
    }
}

/// Whether the store beneath a vault can itself keep the vault's objects
/// from being deleted, even by someone holding the vault's credentials.
///
/// ```
/// use backup_core::*;
/// let dir = tempfile::tempdir()?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// // A folder's protection is the host's permissions, not the store's.
/// assert_eq!(vault.store_lock()?, StoreLock::Unavailable);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLock {
    /// The store cannot: a folder (protect it with the host's permissions),
    /// or Azure Blob (a container's immutability policy is its owner's to
    /// set; this build sets none).
    Unavailable,
    /// An S3 bucket without Object Lock: the vault cannot be made immutable
    /// there.
    Disabled,
    /// An S3 bucket with Object Lock: while the vault is immutable, each
    /// object it writes is locked (compliance mode) for its immutable days.
    Enabled,
}

impl StoreLock {
    /// The state in a word, as `vmbackup config` and the bindings say it.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreLock::Unavailable => "unavailable",
            StoreLock::Disabled => "disabled",
            StoreLock::Enabled => "enabled",
        }
    }
}

/// A change to a vault's settings: each field left at its default leaves
/// the setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettingsChange {
    /// New soft-delete days (0 turns soft delete off).
    pub soft_delete_days: Option<u32>,
    /// Make soft delete always on (it cannot be made optional again).
    pub soft_delete_always_on: bool,
    /// New immutable days (they can only grow).
    pub immutable_days: Option<u32>,
}

impl VaultSettings {
    /// Until when a point taken at `time` is immutable, if it still is at
    /// `now`.
    pub fn immutable_until(&self, time: jiff::Timestamp, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let until = time.checked_add(jiff::SignedDuration::from_hours(24 * i64::from(self.immutable_days))).ok()?;
        (self.immutable_days > 0 && until > now).then_some(until)
    }

    /// How long objects stay untouched after they are written.
    pub(crate) fn immutable_span(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.immutable_days) * 86_400)
    }

    /// The settings after `change`, or why they may not change so.
    fn changed(self, change: &SettingsChange, vault: &str) -> Result<VaultSettings> {
        let mut next = self;
        if let Some(days) = change.soft_delete_days {
            if days > MAX_SOFT_DELETE_DAYS {
                return Err(Error::invalid(
                    "soft-delete days",
                    format!("{days} is more than {MAX_SOFT_DELETE_DAYS} (ten years)"),
                ));
            }
            next.soft_delete_days = days;
        }
        next.soft_delete_always_on |= change.soft_delete_always_on;
        if let Some(days) = change.immutable_days {
            if days > MAX_SOFT_DELETE_DAYS {
                return Err(Error::invalid(
                    "immutable days",
                    format!("{days} is more than {MAX_SOFT_DELETE_DAYS} (ten years)"),
                ));
            }
            if days < self.immutable_days {
                return Err(Error::Protected {
                    action: format!(
                        "shorten immutability from {} to {days} days in vault {vault}",
                        self.immutable_days
                    ),
                    why: "the vault is immutable, so its days can only grow".to_string(),
                });
            }
            next.immutable_days = days;
        }
        if next.soft_delete_always_on && next.soft_delete_days == 0 {
            let action = format!("turn soft delete off in vault {vault}");
            let why = if self.soft_delete_always_on {
                "soft delete is always on there".to_string()
            } else {
                "always-on soft delete needs at least 1 day".to_string()
            };
            return Err(Error::Protected { action, why });
        }
        if self.soft_delete_always_on && next.soft_delete_days < self.soft_delete_days {
            return Err(Error::Protected {
                action: format!(
                    "shorten soft delete from {} to {} days in vault {vault}",
                    self.soft_delete_days, next.soft_delete_days
                ),
                why: "soft delete is always on there, so its days can only grow".to_string(),
            });
        }
        Ok(next)
    }
}

impl Vault {
    /// The vault's settings as its store holds them now.
    ///
    /// # Errors
    /// The config unreadable; I/O errors.
    pub fn settings(&self) -> Result<VaultSettings> {
        Ok(self.read_config()?.settings)
    }

    /// Whether the vault's store can lock the objects it writes (asked of
    /// the store: for S3, its bucket's Object Lock configuration).
    ///
    /// # Errors
    /// Errors reaching the store.
    pub fn store_lock(&self) -> Result<StoreLock> {
        self.store.store_lock()
    }

    /// Changes the vault's settings, under the exclusive lock, and returns
    /// them as they now are. A change that weakens a protection the vault
    /// forbids weakening is refused whole.
    ///
    /// # Errors
    /// [`Error::Protected`] for a refused change; [`Error::InvalidArgument`]
    /// for days out of range; the vault locked; I/O errors.
    pub fn change_settings(&self, change: &SettingsChange) -> Result<VaultSettings> {
        let _lock = self.lock(super::LockMode::Exclusive)?;
        let mut config = self.read_config()?;
        let next = config.settings.changed(change, &self.location())?;
        if next.immutable_days > config.settings.immutable_days && self.store.store_lock()? == StoreLock::Disabled {
            return Err(Error::invalid(
                format!("immutable days of vault {}", self.location()),
                "its S3 bucket has no Object Lock, so the vault's own credentials could still delete its objects; \
                 enable Object Lock on the bucket (or create one with it), then run this again",
            ));
        }
        // Lock what is written from now on, this config first.
        self.store.lock_writes(next.immutable_days);
        if next != config.settings {
            config.settings = next;
            self.write_config(&config)?;
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(days: Option<u32>, always_on: bool) -> SettingsChange {
        SettingsChange { soft_delete_days: days, soft_delete_always_on: always_on, immutable_days: None }
    }

    #[test]
    fn immutable_days_only_grow() {
        let locked = VaultSettings { immutable_days: 7, ..VaultSettings::default() };
        let to = |d| SettingsChange { immutable_days: Some(d), ..SettingsChange::default() };
        assert_eq!(locked.changed(&to(30), "v").expect("longer").immutable_days, 30);
        assert!(matches!(locked.changed(&to(6), "v"), Err(Error::Protected { .. })));
        assert!(matches!(locked.changed(&to(0), "v"), Err(Error::Protected { .. })));
        assert_eq!(VaultSettings::default().changed(&to(3), "v").expect("on").immutable_days, 3);
    }

    #[test]
    fn always_on_can_only_grow() {
        let on = VaultSettings { soft_delete_days: 14, soft_delete_always_on: true, immutable_days: 0 };
        assert_eq!(on.changed(&change(Some(30), false), "v").expect("30 days").soft_delete_days, 30);
        assert!(matches!(on.changed(&change(Some(0), false), "v"), Err(Error::Protected { .. })));
        assert!(matches!(on.changed(&change(Some(13), false), "v"), Err(Error::Protected { .. })));
        let off = VaultSettings { soft_delete_days: 14, soft_delete_always_on: false, immutable_days: 0 };
        assert_eq!(off.changed(&change(Some(0), false), "v").expect("off").soft_delete_days, 0);
        assert!(matches!(off.changed(&change(Some(0), true), "v"), Err(Error::Protected { .. })));
        assert!(matches!(
            off.changed(&change(Some(MAX_SOFT_DELETE_DAYS + 1), false), "v"),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn a_config_without_settings_reads_as_the_defaults() {
        let s: VaultSettings = serde_json::from_str("{}").expect("an empty object");
        assert_eq!(s, VaultSettings::default());
    }
}
