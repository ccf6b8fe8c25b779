//! `vmbackup repair`, and the vault lock timeout every command honours.

use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, bail};
use backup_core::{RemoteOptions, RepairOptions, Vault, VaultOptions};
use serde_json::json;

use crate::output::outln;

static OPTIONS: OnceLock<VaultOptions> = OnceLock::new();
static REMOTE: OnceLock<RemoteOptions> = OnceLock::new();

/// Sets how a vault given as a URL is cached and reached (`--cache`,
/// `--endpoint`).
pub fn set_remote_options(cache: Option<std::path::PathBuf>, endpoint: Option<String>) {
    let mut remote = RemoteOptions::default();
    remote.cache = cache;
    remote.endpoint = endpoint;
    let _ = REMOTE.set(remote);
}

fn remote_options() -> RemoteOptions {
    REMOTE.get().cloned().unwrap_or_default()
}

/// Sets how long commands wait for the vault's lock (`--lock-timeout`),
/// the pack size of backups (hidden `--pack-target-size`) and whether packs
/// go around the page cache (`--direct-io`).
pub fn set_vault_options(lock_timeout: Option<f64>, pack_target_size: Option<u32>, direct_io: bool) -> Result<()> {
    let mut options = VaultOptions::default();
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
    let _ = OPTIONS.set(options);
    Ok(())
}

/// The vault options asked for on the command line.
pub fn options() -> VaultOptions {
    OPTIONS.get().cloned().unwrap_or_default()
}

/// Opens a vault with the options and key asked for on the command line.
/// A path or a vault URL (`az://CONTAINER/PREFIX`, `s3://BUCKET/PREFIX`).
pub fn open(path: &Path) -> Result<Vault> {
    crate::keys::open(path, options(), &crate::keys::given_args())
}

/// Opens the vault at a path or a vault URL with these options.
pub fn open_with(path: &Path, options: VaultOptions) -> backup_core::Result<Vault> {
    Vault::open_location(path, options, &remote_options())
}

/// Creates a vault at a path or a vault URL with these options.
pub fn init_with(path: &Path, options: VaultOptions) -> backup_core::Result<Vault> {
    Vault::init_location(path, options, &remote_options())
}

/// Rebuilds the chunk index files from the packs and says what is lost.
/// Exit code 1 when a point lost data.
pub fn run(vault: &Path, dry_run: bool, json: bool) -> Result<ExitCode> {
    let vault = open(vault)?;
    let mut options = RepairOptions::default();
    options.dry_run = dry_run;
    let report = backup_core::repair(&vault, &options)?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "nothing_lost": report.nothing_lost(), "report": report }))?
        );
    } else {
        let verb = if dry_run { "would rebuild" } else { "rebuilt" };
        for r in &report.rebuilt {
            let how = if r.from_frame_walk { "from a walk over its frames" } else { "from its trailer" };
            outln!("{verb} chunk index of pack {} ({} chunks, {how}): was {}", r.pack, r.chunks, r.why);
        }
        for p in &report.unreadable_packs {
            outln!("UNREADABLE pack {p}");
        }
        for p in &report.lost {
            outln!("LOST {p}");
        }
        for p in &report.other {
            outln!("DAMAGED {p}");
        }
        outln!(
            "{}: {} packs, {} chunk index files {verb}, {} damaged ranges of points lost",
            if report.nothing_lost() { "nothing lost" } else { "DATA LOST" },
            report.packs,
            report.rebuilt.len(),
            report.lost.len()
        );
    }
    Ok(if report.nothing_lost() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
