//! `vmbackup cat`: the bytes of a disk of a point on stdout, whole or a
//! range, read from the vault without restoring the disk.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backup_core::{DiskReader, PointManifest, Vault};
use clap::Args;

use crate::globals::Globals;

/// A disk of a point, as `cat` and `export` name it on the command line.
#[derive(Args, Debug)]
pub struct DiskOfPoint {
    /// The vault.
    #[arg(long)]
    pub vault: PathBuf,
    /// The VM.
    #[arg(long)]
    pub vm: String,
    /// The point: an id, a unique prefix of one, or `latest`.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// The disk, by name or index.
    #[arg(long)]
    pub disk: String,
}

impl DiskOfPoint {
    /// Opens the vault and finds the point.
    pub fn open(&self, g: &Globals) -> Result<(Vault, PointManifest)> {
        let vault = g.open(&self.vault)?;
        let point = vault.find_point(&self.vm, &self.point)?;
        Ok((vault, point))
    }
}

/// What `vmbackup cat` was asked.
pub struct CatArgs {
    pub of: DiskOfPoint,
    pub offset: u64,
    pub length: Option<u64>,
}

/// How much is read and written at once.
const BUFFER: usize = 1 << 20;

/// Writes `length` bytes of the disk from `offset` (to its end by default)
/// on stdout.
pub fn cat(g: &Globals, a: CatArgs) -> Result<ExitCode> {
    let (vault, point) = a.of.open(g)?;
    let mut disk = DiskReader::open(&vault, &point, &a.of.disk)?;
    if a.offset > disk.size() {
        bail!("--offset {} is past the end of disk {} ({} bytes)", a.offset, disk.name(), disk.size());
    }
    let end = match a.length {
        None => disk.size(),
        Some(n) => match a.offset.checked_add(n) {
            Some(end) if end <= disk.size() => end,
            _ => bail!(
                "--offset {} --length {n} ends past the end of disk {} ({} bytes)",
                a.offset,
                disk.name(),
                disk.size()
            ),
        },
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; BUFFER];
    let mut at = a.offset;
    while at < end {
        let n = (end - at).min(BUFFER as u64) as usize;
        disk.read_exact_at(at, &mut buf[..n])?;
        match out.write_all(&buf[..n]) {
            // A reader that stopped early (`| head -c N`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r.with_context(|| format!("cannot write disk {} to stdout at byte {at}", disk.name()))?,
        }
        at += n as u64;
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("cannot write to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}
