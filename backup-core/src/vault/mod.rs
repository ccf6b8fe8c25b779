//! The vault: immutable objects holding recovery points, in a local folder
//! or an object store (`store` is that seam, `layout` names every object).
//!
//! ```text
//! VAULT/
//!   config                      JSON: format version, vault id, keys or key slots (see `Config`, `crypto`)
//!   lock                        the lock file (below)
//!   packs/<pack id>.pack        chunks (see `pack`)
//!   index/<pack id>.idx         a copy of each pack's trailer: the chunk index, rebuildable
//!   segments/<ab>/<id>          index segments, by content id (see `segment`)
//!   points/<vm>/<point id>      point manifests (see `manifest`)
//!   vms/<vm>.json               what `prepare` did to each VM
//!   jobs/<vm>/<job id>.jsonl    backup job logs, append-only (see `job::log`); made on first use
//!   snapshots/<vm>/<point>.json snapshots kept for instant restore (see `job::tiers`); made on first use
//!   verdicts/<vm>/<point>       boot verdicts (see `verdict`)
//!   pruned/<vm>/<point>         points prune removed, for verify on every host
//!   deleted/<vm>/<point>        manifests of soft-deleted points (see `trash`)
//!   tmp/                        staging of backups in flight; never read as vault data
//! ```
//!
//! `jobs/`, `snapshots/`, `tmp/` and `lock` concern one host and stay in
//! its local folder (a remote vault's cache); the rest is in the store.
//!
//! Nothing is rewritten in place. A backup stages its packs, chunk index
//! files and segments under `tmp/`, and on commit moves them into place,
//! flushes them, and writes the manifest last: a point exists only once
//! everything it names is durable. A cancelled or failed backup removes its
//! staging folder and leaves the vault as it was.
//!
//! ## Encryption at rest
//!
//! A vault made with a key ([`VaultOptions::key`]) seals every chunk, index
//! segment, manifest and VM record with AES-256-GCM before it leaves the
//! process, and keeps its master key only wrapped in key slots; `crypto`
//! is the spec, and says what stays in clear (names, sizes, times, job logs
//! and snapshot records). Its config has `format_version` 2; a vault
//! without encryption is written and read as version 1, exactly as before.
//!
//! ## Who locks what, when
//!
//! One lock file, `VAULT/lock`, taken with `flock` for the whole operation;
//! a caller waits up to [`VaultOptions::lock_timeout`] and then gets
//! [`Error::Locked`].
//!
//! | operation                    | lock      | why                                                     |
//! |------------------------------|-----------|---------------------------------------------------------|
//! | backup                       | shared    | only adds objects, under unique names; many at once     |
//! | restore, verify, list        | shared    | only reads; must not see objects removed under them     |
//! | prune, gc, repair            | exclusive | remove or rewrite objects others may be reading         |
//! | init                         | none      | refuses a folder that is not empty                      |
//! | key add, key remove          | exclusive | rewrite the config (atomically, by rename)              |
//! | a job's log (`jobs/`)        | its own   | an exclusive `flock` on the log file while the job runs |
//! | a backup's staging folder    | its own   | an exclusive `flock` on `tmp/backup-*/lock` while the backup lives; a free one is a dead backup's, whose finished packs the next backup adopts (see `adopt`) |
//! | release of kept snapshots    | none      | removes only `snapshots/` records and their clones      |

pub(crate) mod adopt;
mod beneath;
mod block_size;
pub use block_size::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, check_block_size};
pub(crate) mod crypto;
mod files;
mod host_files;
pub(crate) mod layout;
pub(crate) mod manifest;
pub(crate) mod pack;
mod pack_writer;
mod run_reader;
pub(crate) use run_reader::SpanBuffer;
pub(crate) mod lease;
pub(crate) mod remote;
pub(crate) use remote::Mark;
mod objects;
pub(crate) use objects::Stored;
pub(crate) mod segment;
mod session;
mod settings;
pub(crate) mod store;
mod trash;
mod verdict;

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{ContentId, hex, unhex, validate_name};
use crate::snapshot::PrepareReport;
use store::Store;

pub use crypto::{KdfParams, KeySlotInfo, KeySource, SlotKind, generate_key_file};
pub use manifest::{DiskRecord, DiskStats, MANIFEST_FORMAT, PointManifest, PointStats, disk_root};
pub use pack::{Codec, PackEntry};
pub use remote::{RemoteOptions, UPLOAD_BUDGET, is_vault_url};
pub(crate) use segment::encode as encode_segment;
pub use segment::{ENTRIES_PER_SEGMENT, Entries};
pub use session::BackupSession;
pub use settings::{DEFAULT_SOFT_DELETE_DAYS, MAX_SOFT_DELETE_DAYS, SettingsChange, StoreLock, VaultSettings};
pub use verdict::BootVerdict;

/// A vault's config file and the keys it gives with `key`: its JSON, its
/// format version, and a chunk key (plain) or key slots unlocked by `key`
/// (encrypted). Nothing in it is trusted before the key check.
pub(crate) fn parse_config(bytes: &[u8], key: Option<&KeySource>, root: &Path) -> Result<(Config, Keys)> {
    let config_path = root.join("config");
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(format!("vault config {}", config_path.display()), e.to_string()))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    match version {
        None => return Err(Error::NotAVault { path: root.to_path_buf() }),
        Some(v) if v != u64::from(FORMAT_VERSION) && v != u64::from(PLAIN_FORMAT_VERSION) => {
            return Err(Error::UnsupportedVersion {
                path: root.to_path_buf(),
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        Some(_) => {}
    }
    let config: Config = serde_json::from_value(value)
        .map_err(|e| Error::corrupt(format!("vault config {}", config_path.display()), e.to_string()))?;
    let keys = match (&config.encryption, &config.chunk_key, config.format_version) {
        (None, Some(_), PLAIN_FORMAT_VERSION) if key.is_some() => {
            // Whoever can write the config could swap an encrypted
            // vault's for a plain one; a caller who brings a key expects
            // encryption, so nothing is read or written in clear for it.
            return Err(Error::WrongKey {
                path: root.to_path_buf(),
                detail: "the vault is not encrypted (format version 1), yet a key was given: refusing to use it \
                         in clear (open it without a key if it was made without encryption)"
                    .into(),
            });
        }
        (None, Some(chunk_key), PLAIN_FORMAT_VERSION) => {
            let chunk = unhex(chunk_key).and_then(|k| <[u8; 32]>::try_from(k).ok()).ok_or_else(|| {
                Error::corrupt(format!("vault config {}", config_path.display()), "chunk_key is not 64 hex digits")
            })?;
            Keys::from_chunk_key(chunk)
        }
        (Some(encryption), None, FORMAT_VERSION) => {
            let source = key.ok_or_else(|| Error::KeyRequired { path: root.to_path_buf() })?;
            Keys::from_master(encryption.unlock(&config.vault_id, source, root)?)
        }
        _ => {
            return Err(Error::corrupt(
                format!("vault config {}", config_path.display()),
                "it needs a chunk_key (format version 1) or key slots (format version 2), and not both",
            ));
        }
    };
    Ok((config, keys))
}

/// What restore needs of the vault's file helpers (for its targets).
pub(crate) mod internals {
    pub(crate) use super::files::mkdirs;
}

/// The newest vault format version this build reads and writes: 2, a vault
/// with encryption at rest. A vault without encryption is still written as
/// version 1 (which older builds read), and read as before.
pub const FORMAT_VERSION: u32 = 2;
/// The format version of a vault without encryption.
const PLAIN_FORMAT_VERSION: u32 = 1;
/// The largest config file read: a few key slots take a few KiB.
pub(crate) const MAX_CONFIG_LEN: u64 = 1 << 20;
/// The largest VM record or kept-snapshot record read.
pub(crate) const MAX_RECORD_LEN: u64 = 4 << 20;
/// The bytes of a pack read at once when its frames are walked or checked
/// in bulk (one request per window on a remote vault).
const FRAME_WINDOW: u64 = 16 << 20;

/// Where the engine writes a backup. Implemented by [`BackupSession`]; a
/// host may implement it to route a backup elsewhere.
pub trait VaultSink: Send + Sync {
    /// The id of a chunk's plaintext (keyed BLAKE3).
    fn chunk_id(&self, data: &[u8]) -> ContentId;
    /// Whether the vault (or this backup) already holds the chunk.
    fn has_chunk(&self, id: &ContentId) -> bool;
    /// Stores an encoded chunk. Returns the bytes added to the vault: 0
    /// when the chunk was already there. The payload is shared, not
    /// copied, where the sink can keep it as it is (a pack bound for an
    /// object store is a list of such buffers).
    ///
    /// # Errors
    /// Any failure to write it.
    fn put_chunk(&self, id: &ContentId, codec: Codec, raw_len: u32, payload: Bytes) -> Result<u64>;
    /// Stores an index segment. Returns its id and the bytes added.
    ///
    /// # Errors
    /// Any failure to write it.
    fn put_segment(&self, bytes: &[u8]) -> Result<(ContentId, u64)>;
    /// Makes everything durable, then writes the manifest. Returns the
    /// point as committed (its `stats.bytes_added` filled in).
    ///
    /// # Errors
    /// Any failure to write; the point then does not exist.
    fn commit_point(&self, manifest: PointManifest) -> Result<PointManifest>;
}

/// What restore, verify and incremental backups read.
pub trait VaultSource: Send + Sync {
    /// The decoded, hash-checked entries of an index segment.
    ///
    /// # Errors
    /// [`Error::Corrupt`] or an I/O error naming the object.
    fn segment(&self, id: &ContentId) -> Result<Entries>;
    /// A chunk's plaintext, crc-checked and re-hashed against its id.
    ///
    /// # Errors
    /// [`Error::Corrupt`], [`Error::NotFound`] or an I/O error naming the
    /// object.
    fn chunk(&self, id: &ContentId) -> Result<Vec<u8>>;
}

/// How a vault is opened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VaultOptions {
    /// How long an operation waits for the vault's lock.
    pub lock_timeout: Duration,
    /// The size at which a pack is closed and a new one started.
    pub pack_target_size: u64,
    /// The passphrase or key file: at open, what unlocks an encrypted vault
    /// (a vault without encryption is refused with [`Error::WrongKey`], so
    /// that a config swapped for a plain one cannot make a caller who
    /// expects encryption write in clear); at init, `Some` makes the vault
    /// encrypted with it as the first key slot.
    pub key: Option<KeySource>,
    /// The Argon2id cost of passphrase slots made by init and
    /// [`Vault::add_key`].
    pub kdf: KdfParams,
    /// Write new packs through the host's page cache (default false: with
    /// `O_DIRECT`, around it). A backup writes gigabytes that nobody reads
    /// soon: around the cache it neither evicts what the host keeps cached
    /// (on a hypervisor, memory that belongs to the VMs) nor pays the
    /// kernel to copy every byte into fresh pages (on the machine of
    /// BENCHMARKS.md, a third of a full backup's time). Through the cache,
    /// a restore right after the backup reads from memory. Where the file
    /// system refuses `O_DIRECT` the page cache is used either way; the
    /// flushes that make a pack durable are the same.
    pub buffered_io: bool,
    /// Read packs for restores with `O_DIRECT` (default false: through
    /// the page cache, which also reads ahead). Where the file system
    /// refuses `O_DIRECT`, the page cache is used.
    pub direct_io: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            lock_timeout: Duration::from_secs(60),
            pack_target_size: 32 << 20,
            key: None,
            kdf: KdfParams::default(),
            buffered_io: false,
            direct_io: false,
        }
    }
}

impl VaultOptions {
    /// These options with a passphrase or key file.
    ///
    /// ```
    /// use backup_core::{KdfParams, KeySource, Vault, VaultOptions};
    /// let dir = tempfile::tempdir()?;
    /// let mut options = VaultOptions::default().with_key(KeySource::passphrase("correct horse"));
    /// options.kdf = KdfParams::new(64, 1, 1); // cheap, for the example only
    /// let vault = Vault::init_with(dir.path().join("v"), options.clone())?;
    /// assert!(vault.is_encrypted());
    /// drop(vault);
    /// let wrong = VaultOptions::default().with_key(KeySource::passphrase("wrong"));
    /// assert!(matches!(Vault::open_with(dir.path().join("v"), wrong), Err(backup_core::Error::WrongKey { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_key(mut self, key: KeySource) -> VaultOptions {
        self.key = Some(key);
        self
    }
}

/// The vault's config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Config {
    format_version: u32,
    vault_id: String,
    created: jiff::Timestamp,
    /// The key of chunk ids, hex, in a vault without encryption. Segment
    /// and manifest keys derive from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunk_key: Option<String>,
    /// BLAKE3 of the vault id and the key (see `Config::check_value`), so
    /// that a changed key is refused on open instead of making every
    /// manifest look forged. Absent in vaults made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_check: Option<String>,
    /// The key slots of an encrypted vault (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<crypto::Encryption>,
    /// How the vault protects its points (absent in vaults made before
    /// settings existed: they read as the defaults).
    #[serde(default)]
    settings: VaultSettings,
}

impl Config {
    pub(crate) fn check_value(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("vmbackup 2026-11-25 config key check");
        h.update(self.vault_id.as_bytes());
        h.update(b"\0");
        h.update(self.chunk_key.as_deref().unwrap_or_default().as_bytes());
        h.finalize().to_hex().to_string()
    }
}

/// The keys of a vault.
#[derive(Clone)]
pub(crate) struct Keys {
    chunk: [u8; 32],
    segment: [u8; 32],
    mac: [u8; 32],
    /// Seals and opens objects; `None` in a vault without encryption.
    sealer: Option<crypto::Sealer>,
    /// The master key of an encrypted vault, to wrap it in new key slots.
    master: Option<crypto::MasterKey>,
}

impl Keys {
    fn from_chunk_key(chunk: [u8; 32]) -> Keys {
        Keys {
            chunk,
            segment: blake3::derive_key("vmbackup 2026-11-25 index segment id", &chunk),
            mac: blake3::derive_key("vmbackup 2026-11-25 manifest mac", &chunk),
            sealer: None,
            master: None,
        }
    }

    fn from_master(master: crypto::MasterKey) -> Keys {
        let d = crypto::derive_keys(&master);
        Keys { chunk: d.chunk, segment: d.segment, mac: d.mac, sealer: Some(d.sealer.clone()), master: Some(master) }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.chunk.zeroize();
        self.segment.zeroize();
        self.mac.zeroize();
    }
}

/// The chunk index: where every chunk of the vault's published packs is.
#[derive(Default)]
struct ChunkIndex {
    /// Pack ids by number; shared, so a chunk lookup copies no string.
    packs: Vec<Arc<str>>,
    known: std::collections::HashSet<String>,
    map: HashMap<ContentId, (u32, PackEntry)>,
}

/// What the vault records about a VM: what `prepare` did to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VM's name.
    pub vm: String,
    /// When it was last prepared.
    pub prepared_at: jiff::Timestamp,
    /// What the provider reported.
    pub prepare: PrepareReport,
    /// How many times it was prepared in this vault.
    pub times_prepared: u32,
}

/// The two kinds of lock on a vault (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once: backups, restores, verifies.
    Shared,
    /// One holder alone: prune, gc, repair.
    Exclusive,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct VaultLock {
    _file: File,
}

/// An open vault.
///
/// ```
/// use backup_core::Vault;
/// let dir = tempfile::tempdir()?;
/// let vault = Vault::init(dir.path().join("vault"))?;
/// assert!(vault.points(None)?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Vault {
    root: PathBuf,
    /// The vault's folder (a remote vault's cache), held open: every path
    /// in it resolves beneath it.
    dir: beneath::VaultDir,
    /// Where the vault's objects are: the folder itself, or an object
    /// store cached in the folder.
    store: Arc<dyn Store>,
    config: Config,
    keys: Keys,
    options: VaultOptions,
    index: RwLock<ChunkIndex>,
    /// Pack files opened for reads, by pack number (local vaults).
    open_packs: Mutex<HashMap<u32, Arc<File>>>,
    /// Packs opened with `O_DIRECT` for a restore's spans (`None`: the
    /// file system refused it); see `run_reader`.
    direct_packs: Mutex<HashMap<u32, Option<Arc<File>>>>,
    /// What a vault shared through an object store needs besides its
    /// store (its URL, the gc marks); `root` is then the store's cache.
    remote: Option<Arc<remote::Remote>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("root", &self.root).field("id", &self.config.vault_id).finish()
    }
}

impl Vault {
    /// Creates a new vault in a folder that does not exist or is empty.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] for a folder with files in it; I/O errors.
    pub fn init(path: impl AsRef<Path>) -> Result<Vault> {
        Self::init_with(path, VaultOptions::default())
    }

    /// [`init`](Self::init) with options.
    ///
    /// # Errors
    /// As [`init`](Self::init).
    pub fn init_with(path: impl AsRef<Path>, options: VaultOptions) -> Result<Vault> {
        let root = path.as_ref().to_path_buf();
        if root.exists() {
            let non_empty = std::fs::read_dir(&root).map_err(|e| Error::io("list", &root, e))?.next().is_some();
            if non_empty {
                return Err(Error::AlreadyExists { path: root });
            }
        }
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 8];
        getrandom::fill(key.as_mut())
            .and_then(|()| getrandom::fill(&mut id))
            .map_err(|e| Error::io("get random bytes for the key of", &root, std::io::Error::other(e)))?;
        // The config (and its key slots: a key file that cannot be read
        // fails here) is made before anything is written, so a refused init
        // leaves nothing behind for a retry to trip over.
        let mut master = None;
        let config = match &options.key {
            None => {
                let config = Config {
                    format_version: PLAIN_FORMAT_VERSION,
                    vault_id: hex(&id),
                    created: crate::model::now(),
                    chunk_key: Some(hex(key.as_ref())),
                    key_check: None,
                    encryption: None,
                    settings: VaultSettings::default(),
                };
                Config { key_check: Some(config.check_value()), ..config }
            }
            Some(source) => {
                let (encryption, made) = crypto::Encryption::create(&hex(&id), source, options.kdf)?;
                master = Some(made);
                Config {
                    format_version: FORMAT_VERSION,
                    vault_id: hex(&id),
                    created: crate::model::now(),
                    chunk_key: None,
                    key_check: None,
                    encryption: Some(encryption),
                    settings: VaultSettings::default(),
                }
            }
        };
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::invalid("config", e.to_string()))?;
        let made_root = !root.exists();
        let written = (|| {
            files::mkdirs(&root)?;
            for d in layout::FOLDERS {
                files::mkdirs(&root.join(d))?;
            }
            let lock = root.join(layout::LOCK);
            files::write_durable(&root.join(layout::staging("config.new")), &root.join(layout::CONFIG), &bytes)?;
            files::write_flushed(&lock, b"").or_else(|e| if lock.exists() { Ok(()) } else { Err(e) })?;
            files::sync_dir(&root)
        })();
        if let Err(e) = written {
            // A full disk or a read-only folder: take back what was made.
            if made_root {
                let _ = std::fs::remove_dir_all(&root);
            } else if let Ok(d) = beneath::VaultDir::open_root(&root) {
                for name in layout::FOLDERS.iter().copied().chain([layout::CONFIG, layout::LOCK]) {
                    let p = root.join(name);
                    let _ = d.remove_dir_all(&p);
                }
            }
            return Err(e);
        }
        match master {
            // The key just made: unlocking the slot again would run the
            // passphrase's Argon2id a second time.
            Some(master) => Self::from_parts(root, config, Keys::from_master(master), options),
            None => Self::open_with(root, options),
        }
    }

    /// Opens an existing vault.
    ///
    /// # Errors
    /// [`Error::NotAVault`], [`Error::UnsupportedVersion`], or
    /// [`Error::Corrupt`] for a damaged config.
    pub fn open(path: impl AsRef<Path>) -> Result<Vault> {
        Self::open_with(path, VaultOptions::default())
    }

    /// [`open`](Self::open) with options.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, options: VaultOptions) -> Result<Vault> {
        let root = path.as_ref().to_path_buf();
        let config_path = root.join(layout::CONFIG);
        let not_found = |e: &Error| {
            matches!(e, Error::Io { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory))
        };
        let bytes = match beneath::VaultDir::open_root(&root).and_then(|d| d.read(&config_path, MAX_CONFIG_LEN)) {
            Ok(b) => b,
            Err(e) if not_found(&e) => return Err(Error::NotAVault { path: root }),
            Err(e) => return Err(e),
        };
        let (config, keys) = parse_config(&bytes, options.key.as_ref(), &root)?;
        Self::from_parts(root, config, keys, options)
    }

    /// A vault from its parsed config and its keys, once the config's check
    /// value and the vault's folders are checked.
    fn from_parts(root: PathBuf, config: Config, keys: Keys, options: VaultOptions) -> Result<Vault> {
        let config_path = root.join(layout::CONFIG);
        if config.encryption.is_none() && config.key_check.as_ref().is_some_and(|c| *c != config.check_value()) {
            return Err(Error::corrupt(
                format!("vault config {}", config_path.display()),
                "the vault key or id does not match its check value: the config was changed, so this is the wrong key \
                 for the vault's data (restore the config from a copy)",
            ));
        }
        let dir = beneath::VaultDir::open_root(&root)?;
        for d in layout::FOLDERS {
            if !dir.stat(&root.join(d)).is_ok_and(|s| s.kind == beneath::Kind::Dir) {
                return Err(Error::corrupt(
                    format!("vault {}", root.display()),
                    format!("folder {d} is missing, or is not a real folder (a link is never followed)"),
                ));
            }
        }
        Ok(Vault {
            root,
            store: Arc::new(store::local::LocalStore::new(dir.clone())),
            dir,
            config,
            keys,
            options,
            index: RwLock::new(ChunkIndex::default()),
            open_packs: Mutex::new(HashMap::new()),
            direct_packs: Mutex::new(HashMap::new()),
            remote: None,
        })
    }

    /// The vault's folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The vault's folder, through which every vault path is opened.
    pub(crate) fn dir(&self) -> &beneath::VaultDir {
        &self.dir
    }

    /// The vault's random id, made at init.
    pub fn id(&self) -> &str {
        &self.config.vault_id
    }

    /// The options it was opened with.
    pub fn options(&self) -> &VaultOptions {
        &self.options
    }

    /// Takes the vault's lock, waiting up to the lock timeout.
    ///
    /// # Errors
    /// [`Error::Locked`] after the timeout; I/O errors.
    pub fn lock(&self, mode: LockMode) -> Result<VaultLock> {
        let path = self.root.join(layout::LOCK);
        // Never through a link, and only a regular file (a FIFO or device
        // planted as `lock` is refused).
        let file = self.dir.open_append(&path, true)?;
        let start = Instant::now();
        loop {
            let r = match mode {
                LockMode::Shared => file.try_lock_shared(),
                LockMode::Exclusive => file.try_lock(),
            };
            match r {
                Ok(()) => return Ok(VaultLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
            }
            if start.elapsed() >= self.options.lock_timeout {
                return Err(Error::Locked {
                    path: self.root.clone(),
                    mode: match mode {
                        LockMode::Shared => "shared",
                        LockMode::Exclusive => "exclusive",
                    },
                    waited_secs: start.elapsed().as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn keys_chunk(&self) -> &[u8; 32] {
        &self.keys.chunk
    }

    /// Where the vault's objects are kept.
    pub(crate) fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The vault's store, shared with a thread that outlives a borrow of
    /// the vault (a pack uploading, a lease being renewed).
    pub(crate) fn store_handle(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// How errors name an object of the vault: its path, or its URL.
    pub(crate) fn describe(&self, key: &str) -> String {
        self.store.describe(key)
    }

    /// How errors name a pack.
    pub(crate) fn pack_object(&self, pack: &str) -> String {
        format!("pack {}", self.describe(&layout::pack(pack)))
    }

    /// The packs the vault holds, by id.
    ///
    /// # Errors
    /// Errors listing `packs/`.
    pub fn pack_ids(&self) -> Result<Vec<String>> {
        Ok(self.store.list(layout::PACKS)?.iter().filter_map(|o| layout::pack_of(&o.key)).map(str::to_string).collect())
    }

    /// Loads the chunk index entries of packs published since the last
    /// call (by this or another process or host). A chunk index file that
    /// is missing or damaged is rebuilt from its pack's trailer.
    ///
    /// # Errors
    /// Errors listing the packs.
    pub fn refresh_index(&self) -> Result<()> {
        // On a shared vault, a chunk in a pack gc condemned is found in
        // another pack where there is one (gc rewrote it there): packs the
        // marks name are loaded last, afresh when the marks changed.
        let condemned = match &self.remote {
            Some(r) => {
                if r.sync_marks(self)? {
                    self.forget_index();
                }
                r.condemned()
            }
            None => std::collections::HashSet::new(),
        };
        let packs = self.pack_ids()?;
        // A pack that is gone was removed or repacked by gc (in any
        // process): forget the whole index, or a backup through this handle
        // would deduplicate against chunks that no longer exist.
        let gone = {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            let now: std::collections::HashSet<&String> = packs.iter().collect();
            idx.known.iter().any(|p| !now.contains(p))
        };
        if gone {
            self.forget_index();
        }
        let mut new: Vec<String> = {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            packs.into_iter().filter(|p| !idx.known.contains(p)).collect()
        };
        new.sort_by_key(|p| condemned.contains(p));
        if new.is_empty() {
            return Ok(());
        }
        // The listing also drops a cache's copies of index files rewritten
        // since (by repair, on any host).
        let indexed: std::collections::HashSet<String> = self
            .store
            .list(layout::INDEX)?
            .iter()
            .filter_map(|o| layout::index_of(&o.key))
            .map(str::to_string)
            .collect();
        let mut loaded = Vec::with_capacity(new.len());
        for batch in new.chunks(256) {
            let keys: Vec<String> =
                batch.iter().filter(|p| indexed.contains(*p)).map(|p| layout::chunk_index(p)).collect();
            let mut got = self.store.get_many(&keys, pack::MAX_IDX_LEN)?.into_iter();
            for pack in batch {
                let key = layout::chunk_index(pack);
                let got = if indexed.contains(pack) { got.next().flatten() } else { None };
                let parsed = got.map(|b| pack::parse_idx(&b, &format!("chunk index file {}", self.describe(&key))));
                let entries = match parsed {
                    Some(Ok(e)) => e,
                    _ => {
                        // Rebuild from the pack; a pack whose trailer is also
                        // gone is left out (verify and repair report it).
                        match self.read_trailer(pack) {
                            Ok(e) => {
                                let blob = pack::encode_trailer(&e, 0);
                                let _ = self.store.put(&key, pack::encode_idx(&blob).into());
                                e
                            }
                            Err(_) => Vec::new(),
                        }
                    }
                };
                loaded.push((pack.clone(), entries));
            }
        }
        let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
        for (pack, entries) in loaded {
            if !idx.known.insert(pack.clone()) {
                continue;
            }
            let n = idx.packs.len() as u32;
            idx.packs.push(Arc::from(pack));
            for e in entries {
                idx.map.entry(e.id).or_insert((n, e));
            }
        }
        Ok(())
    }

    /// The entries of a pack's chunk index file.
    pub(crate) fn read_idx(&self, pack: &str) -> Result<Vec<PackEntry>> {
        let key = layout::chunk_index(pack);
        let bytes = self.store.get(&key, pack::MAX_IDX_LEN)?.ok_or_else(|| self.missing("read", &key))?;
        pack::parse_idx(&bytes, &format!("chunk index file {}", self.describe(&key)))
    }

    /// The entries of a pack's chunk index file as the store holds it now,
    /// not as a cache remembers it: what repair and verify's pack scan
    /// compare with the pack.
    pub(crate) fn read_idx_from_store(&self, pack: &str) -> Result<Vec<PackEntry>> {
        self.store.uncache(&[layout::chunk_index(pack)])?;
        self.read_idx(pack)
    }

    /// Writes a pack's chunk index file (replacing one).
    pub(crate) fn write_idx(&self, pack: &str, entries: &[PackEntry]) -> Result<()> {
        let blob = pack::encode_trailer(entries, 0);
        self.store.put(&layout::chunk_index(pack), pack::encode_idx(&blob).into())
    }

    /// An I/O error of kind `NotFound` naming an object.
    fn missing(&self, action: &'static str, key: &str) -> Error {
        Error::io(action, self.describe(key), std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    /// A pack's length in bytes.
    pub(crate) fn pack_len(&self, pack: &str) -> Result<u64> {
        let key = layout::pack(pack);
        Ok(self.store.head(&key)?.ok_or_else(|| self.missing("stat", &key))?.size)
    }

    /// Bytes `range` of a pack, fewer when the pack ends first: a read of
    /// the file in a local vault, one ranged GET in a remote one.
    pub(crate) fn read_pack_range(&self, pack: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.store.get_range(&layout::pack(pack), range)
    }

    /// The entries of a pack's trailer, read from the pack itself.
    pub(crate) fn read_trailer(&self, pack: &str) -> Result<Vec<PackEntry>> {
        let object = self.pack_object(pack);
        let len = self.pack_len(pack)?;
        if len < (pack::PACK_HEADER_LEN + pack::FOOTER_LEN) as u64 {
            return Err(Error::corrupt(object, format!("only {len} bytes: truncated")));
        }
        let footer = self.read_pack_range(pack, len - pack::FOOTER_LEN as u64..len)?;
        if footer.len() != pack::FOOTER_LEN {
            return Err(Error::corrupt(object, "it shrank while being read"));
        }
        let (toff, count, crc) = pack::parse_footer(&footer, &object)?;
        pack::check_trailer_bounds(toff, count, len, &object)?;
        let tlen = u64::from(count) * pack::ENTRY_LEN as u64;
        let t = self.read_pack_range(pack, toff..toff + tlen)?;
        if t.len() as u64 != tlen {
            return Err(Error::corrupt(object, "it shrank while being read"));
        }
        let entries = pack::parse_entries(&t, count, crc, &object)?;
        pack::check_entries_within(&entries, toff, &object)?;
        Ok(entries)
    }

    /// The frames of a pack: from its trailer when that is readable, else
    /// by walking the frame headers from the start (a pack that lost its
    /// trailer). The second value is the fault found on the way: a missing
    /// trailer, or where the walk had to stop.
    ///
    /// # Errors
    /// The pack cannot be read, or has no pack header.
    pub(crate) fn pack_frames(&self, pack: &str) -> Result<(Vec<PackEntry>, Option<Error>)> {
        let object = self.pack_object(pack);
        let head = self.read_pack_range(pack, 0..pack::PACK_HEADER_LEN as u64)?;
        let len = self.pack_len(pack)?;
        if head.len() < pack::PACK_HEADER_LEN {
            return Err(Error::corrupt(&object, "shorter than a pack header"));
        }
        pack::check_header(&head, &object)?;
        let trailer_fault = match self.read_trailer(pack) {
            Ok(entries) => return Ok((entries, None)),
            Err(e) => e,
        };
        // The frame headers, read in windows: one request per window on a
        // remote vault, not one per frame.
        let mut entries = Vec::new();
        let mut off = pack::PACK_HEADER_LEN as u64;
        let mut window: (u64, Vec<u8>) = (0, Vec::new());
        let header_len = pack::FRAME_HEADER_LEN as u64;
        while off + header_len <= len {
            if off < window.0 || off + header_len > window.0 + window.1.len() as u64 {
                window = (off, self.read_pack_range(pack, off..len.min(off + FRAME_WINDOW))?);
                if (window.1.len() as u64) < header_len {
                    break;
                }
            }
            let at = (off - window.0) as usize;
            match pack::parse_frame_header(&window.1[at..at + pack::FRAME_HEADER_LEN], off, &object) {
                Ok(e) if off + e.frame_len() <= len => {
                    entries.push(e);
                    off += e.frame_len();
                }
                _ => break,
            }
        }
        Ok((entries, Some(trailer_fault)))
    }

    /// Reads the frames of `entries` (of one pack) in windows of the pack,
    /// and hands each to `each` with its plaintext, decoded, crc-checked
    /// and re-hashed against its id (or why it is not intact). The frame's
    /// bytes come first, as stored.
    ///
    /// # Errors
    /// What `each` returns; errors reading the pack (a frame past its end
    /// is handed to `each` as damage).
    pub(crate) fn check_frames(
        &self,
        pack: &str,
        entries: &[PackEntry],
        mut each: impl FnMut(&PackEntry, &[u8], Result<Vec<u8>>) -> Result<()>,
    ) -> Result<()> {
        let object = self.pack_object(pack);
        let mut order: Vec<&PackEntry> = entries.iter().collect();
        order.sort_by_key(|e| e.offset);
        let mut window: (u64, Vec<u8>) = (0, Vec::new());
        for e in order {
            let (start, end) = (e.offset, e.offset + e.frame_len());
            if start < window.0 || end > window.0 + window.1.len() as u64 {
                window = (start, self.read_pack_range(pack, start..end.max(start + FRAME_WINDOW))?);
            }
            if end > window.0 + window.1.len() as u64 {
                let fault =
                    Error::corrupt(format!("{object} at byte {start}"), "pack ends inside this chunk (truncated)");
                each(e, &[], Err(fault))?;
                continue;
            }
            let frame = &window.1[(start - window.0) as usize..(end - window.0) as usize];
            let mut out = vec![0u8; e.raw_len as usize];
            let checked = self.open_frame(frame, &object, e, &mut out).map(|()| out);
            each(e, frame, checked)?;
        }
        Ok(())
    }

    /// Reads one frame of a pack, checks its crc, decodes it and re-hashes
    /// the plaintext against its id.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the pack and offset; I/O errors.
    pub(crate) fn read_frame(&self, file: &File, pack: &str, entry: &PackEntry) -> Result<Vec<u8>> {
        let mut out = vec![0u8; entry.raw_len as usize];
        self.read_frame_into(file, pack, entry, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// As [`read_frame`](Self::read_frame), into `out` (exactly the chunk's
    /// length), with `frame` as the caller's reusable read buffer.
    fn read_frame_into(
        &self,
        file: &File,
        pack: &str,
        entry: &PackEntry,
        frame: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Result<()> {
        let object = self.pack_object(pack);
        frame.resize(entry.frame_len() as usize, 0);
        file.read_exact_at(frame, entry.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(format!("{object} at byte {}", entry.offset), "pack ends inside this chunk (truncated)")
            } else {
                Error::io("read", self.describe(&layout::pack(pack)), e)
            }
        })?;
        self.open_frame(frame, &object, entry, out)
    }

    /// Where the chunk index says a chunk is: (pack id, frame offset).
    pub(crate) fn index_location(&self, id: &ContentId) -> Option<(Arc<str>, u64)> {
        self.locate(id).map(|(_, p, e)| (p, e.offset))
    }

    /// Whether a backup may deduplicate against a chunk: the index has it,
    /// in a pack no gc mark condemns.
    pub(crate) fn has_chunk(&self, id: &ContentId) -> bool {
        match &self.remote {
            Some(r) => self.locate(id).is_some_and(|(_, pack, _)| r.dedup_allowed(&pack)),
            None => self.index.read().unwrap_or_else(|p| p.into_inner()).map.contains_key(id),
        }
    }

    fn locate(&self, id: &ContentId) -> Option<(u32, Arc<str>, PackEntry)> {
        let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
        idx.map.get(id).map(|(p, e)| (*p, idx.packs[*p as usize].clone(), *e))
    }

    /// A pack's file, opened once per handle; None when the store is not
    /// a folder (a remote vault reads packs with ranged GETs).
    fn pack_file(&self, n: u32, pack: &str) -> Option<Result<Arc<File>>> {
        let mut open = self.open_packs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&n) {
            return Some(Ok(f.clone()));
        }
        let f = match self.store.open_file(&layout::pack(pack), 0)? {
            Ok(f) => Arc::new(f),
            Err(e) => return Some(Err(e)),
        };
        open.insert(n, f.clone());
        Some(Ok(f))
    }

    /// Where a chunk is: its pack's id and its entry.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no pack holds it.
    pub fn chunk_location(&self, id: &ContentId) -> Result<(String, PackEntry)> {
        if self.locate(id).is_none() {
            self.refresh_index()?;
        }
        self.locate(id)
            .map(|(_, p, e)| (p.to_string(), e))
            .ok_or_else(|| Error::NotFound { what: format!("chunk {id} in any pack") })
    }

    /// Reads the manifest of a point.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Corrupt`], I/O errors.
    pub fn read_point(&self, vm: &str, id: &str) -> Result<PointManifest> {
        validate_name("vm name", vm)?;
        validate_name("point id", id)?;
        let key = layout::manifest(vm, id);
        let Some(bytes) = self.store.get(&key, manifest::MAX_MANIFEST_LEN)? else {
            return Err(Error::NotFound { what: format!("point {id} of vm {vm}") });
        };
        self.decode_manifest(&key, vm, id, bytes)
    }

    /// Opens (in an encrypted vault) and checks the bytes of point `id` of
    /// `vm`, read from `key` (its place under `points/`, or `deleted/`).
    pub(crate) fn decode_manifest(&self, key: &str, vm: &str, id: &str, bytes: Vec<u8>) -> Result<PointManifest> {
        let object = format!("manifest {}", self.describe(key));
        let bytes = match &self.keys.sealer {
            None => bytes,
            Some(s) => crypto::open_file(s, &self.manifest_aad(vm, id), &bytes, &object)?,
        };
        let m = manifest::decode(&bytes, &self.keys.mac, &object)?;
        if m.vm != vm || m.id != id {
            return Err(Error::corrupt(object, format!("it names point {} of vm {}", m.id, m.vm)));
        }
        Ok(m)
    }

    /// The VMs that have points.
    ///
    /// # Errors
    /// I/O errors listing `points/`.
    pub fn vms(&self) -> Result<Vec<String>> {
        Ok(self
            .store
            .list_folders(layout::POINTS)?
            .into_iter()
            .filter(|n| validate_name("vm name", n).is_ok())
            .collect())
    }

    /// The ids of a VM's points, without reading them.
    ///
    /// # Errors
    /// I/O errors.
    pub fn point_ids(&self, vm: &str) -> Result<Vec<String>> {
        validate_name("vm name", vm)?;
        Ok(self
            .store
            .list(&layout::points_of(vm))?
            .iter()
            .filter_map(|o| layout::manifest_of(&o.key).filter(|(v, _)| *v == vm).map(|(_, id)| id.to_string()))
            .collect())
    }

    /// Every readable point of one VM (or of all), oldest first, and the
    /// errors of the manifests that could not be read.
    ///
    /// # Errors
    /// I/O errors listing the folders.
    pub fn scan_points(&self, vm: Option<&str>) -> Result<(Vec<PointManifest>, Vec<Error>)> {
        let vms = match vm {
            Some(v) => vec![v.to_string()],
            None => self.vms()?,
        };
        let mut points = Vec::new();
        let mut bad = Vec::new();
        for vm in vms {
            for id in self.point_ids(&vm)? {
                match self.read_point(&vm, &id) {
                    Ok(m) => points.push(m),
                    Err(e) => bad.push(e),
                }
            }
        }
        points.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
        Ok((points, bad))
    }

    /// Every readable point of one VM (or of all), oldest first. Damaged
    /// manifests are left out; [`scan_points`](Self::scan_points) and verify
    /// report them.
    ///
    /// # Errors
    /// I/O errors listing the folders.
    pub fn points(&self, vm: Option<&str>) -> Result<Vec<PointManifest>> {
        Ok(self.scan_points(vm)?.0)
    }

    /// Every readable point of one VM, oldest first, for a caller that
    /// names a VM it expects the vault to hold: a VM of which the vault
    /// holds no point at all (a typo) is an error, not an empty list.
    ///
    /// # Errors
    /// [`Error::NotFound`] ("points of vm X not found") when the vault
    /// holds no point of `vm`, readable or damaged; I/O errors.
    pub fn vm_points(&self, vm: &str) -> Result<Vec<PointManifest>> {
        let (points, bad) = self.scan_points(Some(vm))?;
        if points.is_empty() && bad.is_empty() {
            return Err(Error::NotFound { what: format!("points of vm {vm}") });
        }
        Ok(points)
    }

    /// The newest readable point of a VM, or None when it has none.
    ///
    /// A point's id starts with its time in UTC to the second, so ids sort
    /// by time: only the manifests of the newest second are read (and, when
    /// all of those are damaged, of the second before). A backup asks this
    /// for its parent; reading every manifest of a long chain each time
    /// would cost I/O in proportion to the VM's history.
    ///
    /// # Errors
    /// I/O errors listing the VM's points.
    pub fn latest_point(&self, vm: &str) -> Result<Option<PointManifest>> {
        let ids = self.point_ids(vm)?;
        let second = |id: &str| id.split_once('-').map_or(id, |(t, _)| t).to_string();
        let mut end = ids.len();
        while end > 0 {
            let newest = second(&ids[end - 1]);
            let start = ids[..end].partition_point(|id| second(id) < newest);
            let best = ids[start..end]
                .iter()
                .filter_map(|id| self.read_point(vm, id).ok())
                .max_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
            if best.is_some() {
                return Ok(best);
            }
            end = start;
        }
        Ok(None)
    }

    /// A point of a VM by id, by a unique prefix of its id, or `latest`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when none or several match.
    pub fn find_point(&self, vm: &str, id: &str) -> Result<PointManifest> {
        if id == "latest" {
            if let Some(p) = self.latest_point(vm)? {
                return Ok(p);
            }
            // No readable point: say what is damaged rather than "not found".
            let ids = self.point_ids(vm)?;
            if let Some(newest) = ids.last() {
                let e = self.read_point(vm, newest).err();
                return Err(Error::corrupt(
                    format!("vm {vm}"),
                    format!(
                        "none of its {} point manifest(s) can be read; the newest fails with: {}",
                        ids.len(),
                        e.map_or_else(|| "?".to_string(), |e| e.to_string())
                    ),
                ));
            }
            return Err(Error::NotFound { what: format!("points of vm {vm}") });
        }
        let ids = self.point_ids(vm)?;
        self.read_point(vm, &pick_point_id(&ids, id, &format!("point {id} of vm {vm}"))?)
    }

    /// What the vault records about a VM, if it was ever prepared here.
    ///
    /// # Errors
    /// A damaged record; I/O errors.
    pub fn vm_record(&self, vm: &str) -> Result<Option<VmRecord>> {
        validate_name("vm name", vm)?;
        let key = layout::vm_record(vm);
        let object = format!("vm record {}", self.describe(&key));
        let Some(b) = self.store.get(&key, MAX_RECORD_LEN)? else { return Ok(None) };
        let b = match &self.keys.sealer {
            None => b,
            Some(s) => crypto::open_file(s, &self.vm_record_aad(vm), &b, &object)?,
        };
        serde_json::from_slice(&b).map(Some).map_err(|e| Error::corrupt(object, e.to_string()))
    }

    pub(crate) fn write_vm_record(&self, record: &VmRecord) -> Result<()> {
        validate_name("vm name", &record.vm)?;
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::invalid("vm record", e.to_string()))?;
        if let Some(s) = &self.keys.sealer {
            bytes = crypto::seal_file(s, &self.vm_record_aad(&record.vm), &bytes)?;
        }
        self.store.put(&layout::vm_record(&record.vm), bytes.into())
    }

    /// Starts a backup: a staging area whose point becomes part of the
    /// vault only on commit (on an object store, its packs are uploaded as
    /// they close). Holds a shared lock until dropped.
    ///
    /// # Errors
    /// [`Error::Locked`]; I/O errors.
    pub fn begin_backup(&self) -> Result<BackupSession<'_>> {
        BackupSession::new(self)
    }

    /// Reads and checks an index segment.
    fn read_segment(&self, id: &ContentId) -> Result<Entries> {
        let key = layout::segment(id);
        let object = format!("index segment {}", self.describe(&key));
        let Some(bytes) = self.store.get(&key, segment::MAX_SEGMENT_FILE_LEN)? else {
            return Err(Error::corrupt(object, "missing"));
        };
        let bytes = match &self.keys.sealer {
            None => bytes,
            Some(s) => crypto::open_file(s, &segment_aad(id), &bytes, &object)?,
        };
        if ContentId(*blake3::keyed_hash(&self.keys.segment, &bytes).as_bytes()) != *id {
            return Err(Error::corrupt(object, "content does not match its id"));
        }
        segment::decode(&bytes, &object)
    }

    /// Reads, checks and decodes a chunk.
    fn read_chunk(&self, id: &ContentId) -> Result<Vec<u8>> {
        if self.locate(id).is_none() {
            self.refresh_index()?;
        }
        let (n, pack, entry) =
            self.locate(id).ok_or_else(|| Error::corrupt(format!("chunk {id}"), "missing: no pack holds it"))?;
        if let Some(f) = self.pack_file(n, &pack) {
            let f = f?;
            return self.read_frame(&f, &pack, &entry);
        }
        // One ranged GET of the frame, checked as a local read is.
        let object = self.pack_object(&pack);
        let frame = self.read_pack_range(&pack, entry.offset..entry.offset + entry.frame_len())?;
        if frame.len() as u64 != entry.frame_len() {
            return Err(Error::corrupt(
                format!("{object} at byte {}", entry.offset),
                "pack ends inside this chunk (truncated)",
            ));
        }
        let mut out = vec![0u8; entry.raw_len as usize];
        self.open_frame(&frame, &object, &entry, &mut out)?;
        Ok(out)
    }

    /// How errors name a point's manifest: its path or URL.
    pub(crate) fn describe_manifest(&self, vm: &str, id: &str) -> String {
        self.describe(&layout::manifest(vm, id))
    }

    /// Whether the vault holds an index segment (read or not).
    pub(crate) fn has_segment(&self, id: &ContentId) -> Result<bool> {
        Ok(self.store.head(&layout::segment(id))?.is_some())
    }

    /// Whether a point's manifest exists (read or not).
    ///
    /// # Errors
    /// Errors asking the store.
    pub(crate) fn has_point(&self, vm: &str, id: &str) -> Result<bool> {
        validate_name("vm name", vm)?;
        validate_name("point id", id)?;
        Ok(self.store.head(&layout::manifest(vm, id))?.is_some())
    }

    /// Forgets the loaded chunk index and open pack files: repair calls it
    /// after rewriting index files, so that the next read loads them anew.
    pub(crate) fn forget_index(&self) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = ChunkIndex::default();
        self.open_packs.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.direct_packs.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(crate) fn segment_key(&self) -> &[u8; 32] {
        &self.keys.segment
    }

    pub(crate) fn sealer(&self) -> Option<&crypto::Sealer> {
        self.keys.sealer.as_ref()
    }

    /// Whether the vault is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.config.encryption.is_some()
    }

    fn manifest_aad(&self, vm: &str, id: &str) -> Vec<u8> {
        [b"vmbackup manifest\0", self.config.vault_id.as_bytes(), b"\0", vm.as_bytes(), b"\0", id.as_bytes()].concat()
    }

    fn vm_record_aad(&self, vm: &str) -> Vec<u8> {
        [b"vmbackup vm record\0", self.config.vault_id.as_bytes(), b"\0", vm.as_bytes()].concat()
    }

    /// The bytes of a record that drives actions on the host (a kept
    /// snapshot's record, whose paths release deletes and restore reads):
    /// its JSON, then a line `mac <keyed BLAKE3>` over the record's kind,
    /// the vault id, `names` (which file it is) and the JSON, all sealed in
    /// an encrypted vault. A record moved to another name, another vault,
    /// or changed, fails [`open_host_record`](Self::open_host_record).
    ///
    /// In a vault without encryption the key is derived from the config's
    /// key, which anyone who can read the vault can read: there the MAC
    /// stops edits and mix-ups, not a determined forger, and what a record
    /// may make the host do is confined by other means (see `job::tiers`).
    pub(crate) fn seal_host_record(&self, kind: &str, names: &[&str], json: &[u8]) -> Result<Vec<u8>> {
        let aad = self.host_record_aad(kind, names);
        let mac = blake3::keyed_hash(&self.host_record_key(), &[&aad[..], json].concat());
        let mut out = json.to_vec();
        out.extend_from_slice(b"\nmac ");
        out.extend_from_slice(mac.to_hex().as_bytes());
        out.push(b'\n');
        match &self.keys.sealer {
            None => Ok(out),
            Some(s) => crypto::seal_file(s, &aad, &out),
        }
    }

    /// The JSON of a record sealed by [`seal_host_record`](Self::seal_host_record).
    ///
    /// # Errors
    /// [`Error::Tampered`] when it does not authenticate or is not such a
    /// record.
    pub(crate) fn open_host_record(&self, kind: &str, names: &[&str], bytes: &[u8], object: &str) -> Result<Vec<u8>> {
        let aad = self.host_record_aad(kind, names);
        let bytes = match &self.keys.sealer {
            None => bytes.to_vec(),
            Some(s) => crypto::open_file(s, &aad, bytes, object)?,
        };
        let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let cut = text.iter().rposition(|b| *b == b'\n').ok_or_else(|| Error::tampered(object, "no mac line"))?;
        let (json, mac_line) = (&text[..cut], &text[cut + 1..]);
        let found = std::str::from_utf8(mac_line)
            .ok()
            .and_then(|l| l.strip_prefix("mac "))
            .and_then(|h| blake3::Hash::from_hex(h).ok())
            .ok_or_else(|| Error::tampered(object, "its last line is not a mac"))?;
        // blake3::Hash compares in constant time.
        if blake3::keyed_hash(&self.host_record_key(), &[&aad[..], json].concat()) != found {
            return Err(Error::tampered(object, "mac mismatch: changed, moved, forged, or from another vault"));
        }
        Ok(json.to_vec())
    }

    fn host_record_key(&self) -> [u8; 32] {
        blake3::derive_key("vmbackup 2026-12-03 host record mac", &self.keys.mac)
    }

    fn host_record_aad(&self, kind: &str, names: &[&str]) -> Vec<u8> {
        let mut aad = [b"vmbackup host record\0", kind.as_bytes(), b"\0", self.config.vault_id.as_bytes()].concat();
        for n in names {
            aad.push(0);
            aad.extend_from_slice(n.as_bytes());
        }
        aad
    }

    /// A manifest's file bytes: its JSON and MAC, sealed in an encrypted vault.
    pub(crate) fn encode_manifest(&self, m: &PointManifest) -> Result<Vec<u8>> {
        let bytes = manifest::encode(m, &self.keys.mac)?;
        match &self.keys.sealer {
            None => Ok(bytes),
            Some(s) => crypto::seal_file(s, &self.manifest_aad(&m.vm, &m.id), &bytes),
        }
    }

    /// A segment's file bytes: sealed in an encrypted vault.
    pub(crate) fn seal_segment<'b>(&self, id: &ContentId, bytes: &'b [u8]) -> Result<std::borrow::Cow<'b, [u8]>> {
        match &self.keys.sealer {
            None => Ok(std::borrow::Cow::Borrowed(bytes)),
            Some(s) => crypto::seal_file(s, &segment_aad(id), bytes).map(std::borrow::Cow::Owned),
        }
    }

    /// A chunk's frame payload: sealed in an encrypted vault (the second
    /// value says so).
    pub(crate) fn seal_chunk(
        &self,
        id: &ContentId,
        codec: Codec,
        raw_len: u32,
        payload: Bytes,
    ) -> Result<(Bytes, bool)> {
        match &self.keys.sealer {
            None => Ok((payload, false)),
            Some(s) => {
                let sealed = crypto::seal(s, &pack::chunk_aad(id, codec, raw_len), &payload)?;
                Ok((Bytes::from(sealed), true))
            }
        }
    }

    /// The key slots of an encrypted vault, read afresh from its config
    /// (empty for a vault without encryption).
    ///
    /// # Errors
    /// The config cannot be read.
    pub fn key_slots(&self) -> Result<Vec<KeySlotInfo>> {
        Ok(self.read_config()?.encryption.map(|e| e.slots.iter().map(|s| s.info()).collect()).unwrap_or_default())
    }

    /// Adds a key slot: `key` opens the vault too from now on. Rewrites only
    /// the config (atomically, under the exclusive lock); no data is
    /// re-encrypted. Passphrase slots cost [`VaultOptions::kdf`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a vault without encryption, an
    /// unreadable key file; [`Error::Locked`]; I/O errors.
    pub fn add_key(&self, key: &KeySource) -> Result<KeySlotInfo> {
        self.add_key_with_kdf(key, self.options.kdf)
    }

    /// As [`add_key`](Self::add_key), with a passphrase slot's Argon2id
    /// cost given here rather than by the options the vault was opened with.
    ///
    /// # Errors
    /// As [`add_key`](Self::add_key).
    pub fn add_key_with_kdf(&self, key: &KeySource, kdf: KdfParams) -> Result<KeySlotInfo> {
        let master = self.keys.master.as_ref().ok_or_else(|| self.not_encrypted())?;
        let _lock = self.lock(LockMode::Exclusive)?;
        let mut config = self.read_config()?;
        let enc = config.encryption.as_mut().ok_or_else(|| self.not_encrypted())?;
        let info = enc.add_slot(&config.vault_id, master, key, kdf)?;
        self.write_config(&config)?;
        Ok(info)
    }

    /// Removes a key slot by id. Refuses to remove the last one, which
    /// would lock everyone out for good.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown slot; [`Error::InvalidArgument`]
    /// for the last slot or a vault without encryption; [`Error::Locked`];
    /// I/O errors.
    pub fn remove_key(&self, slot_id: &str) -> Result<KeySlotInfo> {
        let _lock = self.lock(LockMode::Exclusive)?;
        let mut config = self.read_config()?;
        let enc = config.encryption.as_mut().ok_or_else(|| self.not_encrypted())?;
        let i = enc
            .slots
            .iter()
            .position(|s| s.id() == slot_id)
            .ok_or_else(|| Error::NotFound { what: format!("key slot {slot_id} of vault {}", self.location()) })?;
        if enc.slots.len() == 1 {
            return Err(Error::invalid(
                format!("key slot {slot_id}"),
                "it is the vault's last key slot; add another before removing it",
            ));
        }
        let removed = enc.slots.remove(i).info();
        self.write_config(&config)?;
        Ok(removed)
    }

    fn not_encrypted(&self) -> Error {
        Error::invalid(format!("vault {}", self.location()), "it is not encrypted, so it has no key slots")
    }

    /// The config as the store holds it now: key slots change there, not
    /// in a remote vault's cache.
    fn read_config(&self) -> Result<Config> {
        let object = format!("vault config {}", self.describe(layout::CONFIG));
        let bytes = self
            .store
            .get(layout::CONFIG, MAX_CONFIG_LEN)?
            .ok_or_else(|| Error::NotAVault { path: PathBuf::from(self.location()) })?;
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(object, e.to_string()))?;
        // Every read of the settings keeps the store's locks in step.
        self.store.lock_writes(config.settings.immutable_days);
        Ok(config)
    }

    /// Replaces the config (a key slot added or removed): the one object
    /// of a vault that is ever rewritten. On a remote vault two hosts
    /// changing key slots at the same moment: the last write wins (a slot
    /// is lost, never the data, which every remaining slot still opens).
    fn write_config(&self, config: &Config) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::invalid("config", e.to_string()))?;
        self.store.put(layout::CONFIG, bytes.into())
    }
}

/// The one id among `ids` that `wanted` names: itself, or the only id it
/// is a prefix of. [`Error::NotFound`] naming `what` otherwise.
pub(crate) fn pick_point_id(ids: &[String], wanted: &str, what: &str) -> Result<String> {
    let matches: Vec<&String> = ids.iter().filter(|p| p.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::NotFound { what: what.to_string() }),
        _ if ids.iter().any(|p| p == wanted) => Ok(wanted.to_string()),
        many => Err(Error::NotFound { what: format!("a single {what} ({} points start so)", many.len()) }),
    }
}

/// The associated data of a sealed index segment.
fn segment_aad(id: &ContentId) -> Vec<u8> {
    [&b"vmbackup segment\0"[..], &id.0].concat()
}

impl VaultSource for Vault {
    fn segment(&self, id: &ContentId) -> Result<Entries> {
        self.read_segment(id)
    }
    fn chunk(&self, id: &ContentId) -> Result<Vec<u8>> {
        self.read_chunk(id)
    }
}
