//! The command line's global options (`--lock-timeout`, `--cache`,
//! `--endpoint`, the key options, ...), read once by `main` and handed to
//! every command that opens a vault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};
use backup_core::{RemoteOptions, Vault, VaultOptions};

use crate::keys::KeyArgs;

/// The global options on how vaults are opened, as given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VaultArgs {
    /// Seconds to wait for the vault's lock when another process holds it,
    /// before failing with "vault is locked" (default 60).
    #[arg(long, global = true, value_name = "SECONDS")]
    pub lock_timeout: Option<f64>,
    /// The size at which a backup closes a pack (tests use small packs).
    #[arg(long, global = true, hide = true, value_parser = crate::parse_size)]
    pub pack_target_size: Option<u32>,
    /// For a vault given as a URL (az://CONTAINER/PREFIX, s3://BUCKET/PREFIX):
    /// the local cache folder (default under ~/.cache/vmbackup).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// For a vault given as a URL: the object store's endpoint, e.g. an
    /// emulator's http://127.0.0.1:10000 (default: the cloud's, or the
    /// environment's).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Write packs through the page cache. By default a backup writes them
    /// around it (O_DIRECT): it neither evicts what the host keeps cached
    /// nor pays to fill it with data nobody reads soon.
    #[arg(long, global = true)]
    pub buffered_io: bool,
    /// Read packs for a restore around the page cache (O_DIRECT) too, as
    /// a backup writes them (by default a restore reads through the cache).
    #[arg(long, global = true, conflicts_with = "buffered_io")]
    pub direct_io: bool,
}

/// How this run of the command opens vaults.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    /// The lock timeout, pack size and page-cache use asked for.
    pub options: VaultOptions,
    /// How a vault given as a URL is cached and reached.
    pub remote: RemoteOptions,
    /// The key or passphrase given, if any.
    pub key: KeyArgs,
}

impl Globals {
    /// Checks and gathers the global options: `--lock-timeout` in
    /// seconds, the hidden `--pack-target-size`, `--buffered-io`,
    /// `--direct-io`, `--cache`, `--endpoint`, and the key options.
    pub fn new(args: VaultArgs, key: KeyArgs) -> Result<Self> {
        let VaultArgs { lock_timeout, pack_target_size, cache, endpoint, buffered_io, direct_io } = args;
        let mut options = VaultOptions::default();
        options.buffered_io = buffered_io;
        options.direct_io = direct_io;
        if let Some(s) = lock_timeout {
            if !(s.is_finite() && (0.0..=86_400.0).contains(&s)) {
                bail!("--lock-timeout {s} is not between 0 and 86400 seconds");
            }
            options.lock_timeout = Duration::from_secs_f64(s);
        }
        if let Some(n) = pack_target_size {
            options.pack_target_size = u64::from(n.max(4096));
        }
        let mut remote = RemoteOptions::default();
        remote.cache = cache;
        remote.endpoint = endpoint;
        Ok(Self { options, remote, key })
    }

    /// Opens a vault (a path or a URL such as `az://CONTAINER/PREFIX` or
    /// `s3://BUCKET/PREFIX`) with the key given, or with a passphrase
    /// asked on the terminal when it is encrypted and none was.
    pub fn open(&self, path: &Path) -> Result<Vault> {
        crate::keys::open(path, self)
    }

    /// Opens the vault at a path or a URL with these options (the key
    /// among them) instead of the global ones.
    pub fn open_with(&self, path: &Path, options: VaultOptions) -> backup_core::Result<Vault> {
        Vault::open_location(path, options, &self.remote)
    }

    /// Creates a vault at a path or a URL with these options.
    pub fn init_with(&self, path: &Path, options: VaultOptions) -> backup_core::Result<Vault> {
        Vault::init_location(path, options, &self.remote)
    }
}
