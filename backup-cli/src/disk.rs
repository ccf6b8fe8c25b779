//! `vmbackup cat`: the bytes of a disk of a point on stdout, whole or a
//! range, read from the vault without restoring the disk.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backup_core::DiskReader;

use crate::globals::Globals;

/// What `vmbackup cat` was asked.
pub struct CatArgs {
    pub vault: PathBuf,
    pub vm: String,
    pub point: String,
    pub disk: String,
    pub offset: u64,
    pub length: Option<u64>,
}

/// How much is read and written at once.
const BUFFER: usize = 1 << 20;

/// Writes `length` bytes of the disk from `offset` (to its end by default)
/// on stdout.
pub fn cat(g: &Globals, a: CatArgs) -> Result<ExitCode> {
    let vault = g.open(&a.vault)?;
    let point = vault.find_point(&a.vm, &a.point)?;
    let mut disk = DiskReader::open(&vault, &point, &a.disk)?;
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
