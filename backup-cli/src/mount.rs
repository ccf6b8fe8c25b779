//! `vmbackup mount`: a vault's points as a read-only file system,
//! `vm/point/disk.img`, until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use backup_core::{MountSelection, MountedVault};

use crate::globals::Globals;
use crate::signals;

/// What `vmbackup mount` was asked.
pub struct MountArgs {
    pub vault: PathBuf,
    pub mountpoint: PathBuf,
    pub vm: Option<String>,
    pub point: Option<String>,
}

/// Mounts, reports failed reads on stderr while mounted, and unmounts on a
/// signal or when someone else unmounted it.
pub fn mount(g: &Globals, a: MountArgs) -> Result<ExitCode> {
    let cancel = signals::cancel_on_signals();
    let vault = Arc::new(g.open(&a.vault)?);
    let selection = MountSelection { vm: a.vm, point: a.point };
    let mounted = MountedVault::mount(vault, &a.mountpoint, &selection)
        .with_context(|| format!("cannot mount vault {} at {}", a.vault.display(), a.mountpoint.display()))?;
    eprintln!(
        "vault {} mounted read-only at {}; Ctrl-C or SIGTERM unmounts it",
        a.vault.display(),
        a.mountpoint.display()
    );
    while !cancel.is_cancelled() && mounted.is_mounted() {
        std::thread::sleep(Duration::from_millis(100));
        for e in mounted.take_errors() {
            eprintln!("vmbackup: a read failed: {e}");
        }
    }
    let by_signal = cancel.is_cancelled();
    mounted.unmount().with_context(|| format!("cannot unmount {}", a.mountpoint.display()))?;
    eprintln!("{} unmounted{}", a.mountpoint.display(), if by_signal { "" } else { " (by someone else)" });
    Ok(ExitCode::SUCCESS)
}
