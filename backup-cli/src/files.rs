//! `vmbackup files ls|cat|extract|find`: guest files inside a point, read
//! without restoring a disk (see `backup_core::guest`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use backup_core::{FileEntry, FileKind, GuestDisk, Vault, Volume};
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// Which disk of which point: what `ls`, `cat` and `extract` share.
#[derive(clap::Args, Debug)]
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
    /// The disk, by name or index (default: the point's only disk).
    #[arg(long)]
    pub disk: Option<String>,
}

/// The `files` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum FilesAction {
    /// With no PATH, the disk's volumes (partitions, LVM volumes, or the
    /// whole disk) with type, size and label; with a PATH (`p1:/etc`,
    /// `vg/lv:/var/log`, `/etc` on a disk without partitions), the entries
    /// of that folder, or that file.
    Ls {
        #[command(flatten)]
        of: DiskOfPoint,
        /// What to list.
        path: Option<String>,
        /// Everything under PATH, not only its entries.
        #[arg(long, short = 'R')]
        recursive: bool,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a guest file's content on stdout.
    Cat {
        #[command(flatten)]
        of: DiskOfPoint,
        /// The file (`p1:/etc/fstab`).
        path: String,
    },
    /// Copy a guest file, link or folder (with everything in it) into a
    /// folder, keeping modes, times and (as root) owners. Nothing is
    /// overwritten, and no name can land outside --to.
    Extract {
        #[command(flatten)]
        of: DiskOfPoint,
        /// What to copy (`p1:/etc`; `p1:/` for the whole file system).
        path: String,
        /// The folder to copy into (made if missing).
        #[arg(long)]
        to: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Which points of a VM hold a file whose name (or, with a `/` in the
    /// pattern, whose path) matches PATTERN (`*` and `?`), with its size
    /// and time: to pick the point to restore from.
    Find {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The VM.
        #[arg(long)]
        vm: String,
        /// The pattern: `fstab`, `*.conf`, `/etc/*/site?`.
        pattern: String,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `files` subcommand.
pub fn run(g: &Globals, action: FilesAction) -> Result<ExitCode> {
    match action {
        FilesAction::Ls { of, path, recursive, json } => ls(g, &of, path.as_deref(), recursive, json),
        FilesAction::Cat { of, path } => cat(g, &of, &path),
        FilesAction::Extract { of, path, to, json } => extract(g, &of, &path, &to, json),
        FilesAction::Find { vault, vm, pattern, json } => find(g, &vault, &vm, &pattern, json),
    }
}

fn open_disk(g: &Globals, of: &DiskOfPoint) -> Result<GuestDisk> {
    let vault = Arc::new(g.open(&of.vault)?);
    let point = vault.find_point(&of.vm, &of.point)?;
    let disk = match &of.disk {
        Some(d) => d.clone(),
        None if point.disks.len() == 1 => point.disks[0].name.clone(),
        None => bail!(
            "point {} of vm {} has {} disks: name one with --disk ({})",
            point.id,
            of.vm,
            point.disks.len(),
            point.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    Ok(GuestDisk::open(vault, &point, &disk)?)
}

fn volume_json(v: &Volume) -> serde_json::Value {
    json!({"name": v.name, "type": v.fs.name(), "size": v.size, "label": v.label, "uuid": v.uuid,
           "kind": format!("{:?}", v.kind).to_lowercase()})
}

/// `ls -l`'s mode column: `drwxr-xr-x`.
fn mode_string(e: &FileEntry) -> String {
    let kind = match e.kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => '?',
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let special = match shift {
            6 => e.mode & 0o4000 != 0,
            3 => e.mode & 0o2000 != 0,
            _ => e.mode & 0o1000 != 0,
        };
        let exec = bits & 1 != 0;
        s.push(match (special, exec, shift) {
            (true, true, 0) => 't',
            (true, false, 0) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => 'x',
            (false, false, _) => '-',
        });
    }
    s
}

fn entry_json(e: &FileEntry) -> serde_json::Value {
    json!({"path": e.path.to_string_lossy(), "type": format!("{:?}", e.kind).to_lowercase(), "size": e.size,
           "mode": format!("{:04o}", e.mode), "uid": e.uid, "gid": e.gid, "mtime": e.mtime.to_string(),
           "target": e.target.as_ref().map(|t| t.to_string_lossy().to_string())})
}

fn entry_line(e: &FileEntry) -> String {
    let link = e.target.as_ref().map(|t| format!(" -> {}", t.display())).unwrap_or_default();
    format!(
        "{} {:>6} {:>6} {:>12} {} {}{link}",
        mode_string(e),
        e.uid,
        e.gid,
        e.size,
        e.mtime.strftime("%Y-%m-%d %H:%M:%S"),
        e.path.display()
    )
}

fn ls(g: &Globals, of: &DiskOfPoint, path: Option<&str>, recursive: bool, as_json: bool) -> Result<ExitCode> {
    let disk = open_disk(g, of)?;
    let Some(path) = path else {
        if as_json {
            let volumes: Vec<_> = disk.volumes().iter().map(volume_json).collect();
            outln!("{}", json!({"vm": of.vm, "point": disk.point().id, "disk": disk.disk(), "volumes": volumes}));
        } else {
            outln!("{:<20} {:<12} {:>14}  LABEL", "VOLUME", "TYPE", "SIZE");
            for v in disk.volumes() {
                outln!("{:<20} {:<12} {:>14}  {}", v.name, v.fs.name(), v.size, v.label.as_deref().unwrap_or(""));
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let (fs, inside) = disk.open_path(path)?;
    let entries = if recursive {
        let mut all = Vec::new();
        fs.walk(&inside, &mut |e| {
            all.push(e.clone());
            Ok(())
        })?;
        all
    } else {
        fs.list(&inside)?
    };
    if as_json {
        let list: Vec<_> = entries.iter().map(entry_json).collect();
        outln!(
            "{}",
            json!({"vm": of.vm, "point": disk.point().id, "disk": disk.disk(), "path": path, "entries": list})
        );
    } else {
        for e in &entries {
            outln!("{}", entry_line(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cat(g: &Globals, of: &DiskOfPoint, path: &str) -> Result<ExitCode> {
    let disk = open_disk(g, of)?;
    let (fs, inside) = disk.open_path(path)?;
    let mut input = fs.open(&inside)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => bail!("cannot read {path} in {}: {e}", fs.place()),
        };
        match out.write_all(&buf[..n]) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            r => r.context("cannot write to stdout")?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("cannot write to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

use std::io::Read;

fn extract(g: &Globals, of: &DiskOfPoint, path: &str, to: &Path, as_json: bool) -> Result<ExitCode> {
    let disk = open_disk(g, of)?;
    let (fs, inside) = disk.open_path(path)?;
    let r = fs.extract(&inside, to)?;
    if as_json {
        outln!(
            "{}",
            json!({"point": disk.point().id, "path": path, "to": to, "files": r.files, "dirs": r.dirs,
                   "links": r.links, "skipped": r.skipped, "bytes": r.bytes})
        );
    } else {
        let skipped =
            if r.skipped > 0 { format!(", {} devices/FIFOs/sockets left out", r.skipped) } else { String::new() };
        outln!(
            "extracted {path} of point {} into {}: {} files ({} bytes), {} folders, {} links{skipped}",
            disk.point().id,
            to.display(),
            r.files,
            r.bytes,
            r.dirs,
            r.links
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn find(g: &Globals, vault: &Path, vm: &str, pattern: &str, as_json: bool) -> Result<ExitCode> {
    let v: Arc<Vault> = Arc::new(g.open(vault)?);
    let found = backup_core::find_files(&v, vm, pattern)?;
    if as_json {
        let list: Vec<_> = found
            .iter()
            .map(|f| {
                json!({"point": f.point, "time": f.time.to_string(), "disk": f.disk, "volume": f.volume,
                       "entry": entry_json(&f.entry)})
            })
            .collect();
        outln!("{}", json!({"vm": vm, "pattern": pattern, "found": list}));
    } else {
        for f in &found {
            outln!(
                "{} {} {}:{}  {:>12} {} {}",
                f.point,
                f.disk,
                f.volume,
                f.entry.path.display(),
                f.entry.size,
                f.entry.mtime.strftime("%Y-%m-%d %H:%M:%S"),
                mode_string(&f.entry)
            );
        }
        if found.is_empty() {
            eprintln!("no point of vm {vm} holds a file matching {pattern}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
