//! NBD on the command line: backing up disks given as NBD URIs (with a
//! dirty bitmap as change tracking), and `vmbackup export`, a read-only NBD
//! server for a point.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backup_core::{ExportAddress, ExportOptions, NbdAddress, NbdOptions, NbdProvider, NbdServer, QemuProvider, VmDisk};

use crate::globals::Globals;
use crate::output::outln;

/// The name and location of a `--disk` given as a bare NBD URI: the
/// export's name, or `nbd<N>` for the default export. None for anything
/// else (a path, or NAME=LOCATION).
pub fn bare_uri_disk(arg: &str, index: usize) -> Option<Result<(String, String)>> {
    if !NbdAddress::is_uri(arg) {
        return None;
    }
    Some(NbdAddress::parse(arg).map_err(Into::into).map(|a| {
        let name = if a.export().is_empty() || a.export().contains('/') {
            format!("nbd{index}")
        } else {
            a.export().to_string()
        };
        (name, arg.to_string())
    }))
}

/// The provider for a VM whose disks are NBD URIs; None when no disk is.
/// The snapshot is whatever the server exports: nothing is frozen.
pub fn provider(disks: &[VmDisk], bitmap: Option<String>, hooks: bool) -> Result<Option<NbdProvider>> {
    let nbd = disks.iter().filter(|d| NbdAddress::is_uri(&d.location)).count();
    if nbd == 0 {
        if bitmap.is_some() {
            bail!("--bitmap needs disks given as NBD URIs (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT)");
        }
        return Ok(None);
    }
    if nbd != disks.len() {
        bail!("a VM's disks must be all image files or all NBD URIs");
    }
    if hooks {
        bail!("--scripts and --freeze are not supported with NBD disks: the snapshot is whatever the server exports");
    }
    let mut options = NbdOptions::default();
    options.bitmap = bitmap;
    Ok(Some(NbdProvider::new(options)))
}

/// The QMP provider when `--qmp` is given.
pub fn qemu_provider(
    qmp: Option<PathBuf>,
    nbd_socket: Option<PathBuf>,
    guest_agent: Option<PathBuf>,
    hooks: bool,
) -> Result<Option<QemuProvider>> {
    let Some(qmp) = qmp else { return Ok(None) };
    if hooks {
        bail!("--scripts and --freeze are not supported with --qmp (use --guest-agent for file-system consistency)");
    }
    let nbd_socket = nbd_socket.unwrap_or_else(|| {
        let mut s = qmp.clone().into_os_string();
        s.push(".nbd");
        s.into()
    });
    let mut provider = QemuProvider::new(qmp, nbd_socket, std::env::temp_dir());
    provider.guest_agent = guest_agent;
    Ok(Some(provider))
}

/// What `vmbackup export` was asked.
pub struct ExportArgs {
    pub of: crate::disk::DiskOfPoint,
    pub socket: Option<PathBuf>,
    pub listen: Option<String>,
    pub allow_remote: bool,
}

/// Serves a point's disk read-only over NBD until SIGINT or SIGTERM.
pub fn export(g: &Globals, a: ExportArgs) -> Result<ExitCode> {
    let (vault, point) = a.of.open(g)?;
    let at = match (&a.socket, &a.listen) {
        (Some(s), None) => ExportAddress::Unix(s.clone()),
        (None, Some(l)) => {
            let addr: SocketAddr = l
                .to_socket_addrs()
                .with_context(|| format!("--listen {l:?} is not HOST:PORT"))?
                .next()
                .with_context(|| format!("--listen {l:?} resolves to no address"))?;
            ExportAddress::Tcp(addr)
        }
        _ => bail!("give one of --socket PATH or --listen 127.0.0.1:PORT"),
    };
    let mut options = ExportOptions::default();
    options.allow_remote = a.allow_remote;
    let server = NbdServer::bind(&vault, &point, &a.of.disk, &at, options)?;
    let cancel = crate::signals::cancel_on_signals();
    eprintln!(
        "exporting disk {} of point {} of vm {} ({} bytes), read-only; stop with Ctrl-C",
        a.of.disk,
        point.id,
        point.vm,
        server.size()
    );
    // The URI alone on stdout, for scripts.
    outln!("{}", server.uri());
    server.serve(&cancel)?;
    Ok(ExitCode::SUCCESS)
}
