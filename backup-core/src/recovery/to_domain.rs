//! A point restored as a new libvirt domain: every disk into the pool in
//! parallel (raw by vmbackup's own restore; qcow2 by `qemu-img convert`
//! reading the point's NBD exports, so that holes stay holes and nothing
//! is written twice), then the domain defined from the point's XML.
//! Files are written under temporary names and renamed when whole; a
//! failure or a cancel removes them and defines nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use super::domain_def::{self, DiskSource, NewDomain};
use super::exports::Exports;
use super::{DomainTarget, ImageFormat, check_target, fail, saved_xml, work_folder};
use crate::error::{Error, Result};
use crate::libvirt::domains::{self, Libvirt};
use crate::restore::{RestoreOptions, RestoreStats, restore_disks_to_paths};
use crate::vault::{PointManifest, Vault};

const STEP: &str = "restore";

/// What a restore as a domain made.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DomainRestore {
    /// The new domain.
    pub domain: String,
    /// Each disk and its file.
    pub disks: Vec<(String, PathBuf)>,
    /// Each disk's restore.
    pub stats: Vec<RestoreStats>,
    /// What was changed in the definition beyond name, UUID, MACs and
    /// paths (a disk left out, UEFI variables not kept, ...).
    pub notes: Vec<String>,
    /// Whether it was started.
    pub started: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Restores every disk of `point` into `target.pool` and defines a new
/// domain from the point's saved XML (started with `target.start`).
///
/// # Errors
/// [`Error::Recovery`] when the point has no domain XML, the name is taken
/// (without `replace`) or is the point's own domain, or libvirt refuses;
/// the restore's errors ([`Error::DamagedRange`], I/O). Nothing is left
/// behind on an error.
pub fn restore_to_domain(
    vault: &Vault,
    point: &PointManifest,
    target: &DomainTarget,
    options: &RestoreOptions,
) -> Result<DomainRestore> {
    let started = Instant::now();
    let xml = saved_xml(point, &target.name, STEP)?;
    let lv = Libvirt::open(&target.uri).map_err(|e| fail(point, &target.name, STEP, e))?;
    let existing = check_target(&lv, point, target, xml, STEP)?;
    std::fs::create_dir_all(&target.pool).map_err(|e| Error::io("create folder", &target.pool, e))?;
    // What a killed restore left: its export folder and unfinished disks.
    let mut left = super::remove_dead(&target.work_dir, "restore-");
    for d in &point.disks {
        let file = target.disk_path(&d.name, ImageFormat::Qcow2);
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        left.extend(super::remove_dead(&target.pool, &format!(".{name}.vmbackup-")));
    }
    for l in left {
        options.progress.warn(&format!("removed {}, left by a killed restore", l.display()));
    }
    let paths: Vec<(String, PathBuf)> =
        point.disks.iter().map(|d| (d.name.clone(), target.disk_path(&d.name, target.format))).collect();
    if !target.replace
        && let Some((_, p)) = paths.iter().find(|(_, p)| p.symlink_metadata().is_ok())
    {
        return Err(fail(point, &target.name, STEP, format!("{} exists (replace it explicitly)", p.display())));
    }
    let disks: BTreeMap<String, DiskSource> =
        paths.iter().map(|(d, p)| (d.clone(), DiskSource::File { path: p.clone(), format: target.format })).collect();
    let new = NewDomain { name: &target.name, disks: &disks, console_dir: &target.pool, throwaway: false };
    let (new_xml, notes) = domain_def::rewrite(xml, &new).map_err(|e| fail(point, &target.name, STEP, e))?;
    for n in &notes {
        options.progress.warn(&format!("domain {}: {n}", target.name));
    }

    let stats = match target.format {
        ImageFormat::Raw => restore_disks_to_paths(vault, point, &paths, options)?,
        ImageFormat::Qcow2 => convert_to_qcow2(vault, point, target, &paths, options)?,
    };
    let keep_files = |r: Result<DomainRestore>| {
        if r.is_err() {
            for (_, p) in &paths {
                let _ = std::fs::remove_file(p);
            }
        }
        r
    };
    keep_files((|| {
        if let Some(old) = existing {
            domains::remove(&old).map_err(|e| fail(point, &target.name, STEP, e))?;
        }
        let dom = lv.define(&new_xml).map_err(|e| fail(point, &target.name, STEP, e))?;
        if target.start
            && let Err(e) = dom.create()
        {
            let _ = domains::remove(&dom);
            return Err(fail(point, &target.name, STEP, format!("cannot start the domain: {e}")));
        }
        Ok(DomainRestore {
            domain: target.name.clone(),
            disks: paths.clone(),
            stats,
            notes,
            started: target.start,
            seconds: started.elapsed().as_secs_f64(),
        })
    })())
}

/// Writes each disk as qcow2 with `qemu-img convert` from the point's
/// exports, disks in parallel.
fn convert_to_qcow2(
    vault: &Vault,
    point: &PointManifest,
    target: &DomainTarget,
    paths: &[(String, PathBuf)],
    options: &RestoreOptions,
) -> Result<Vec<RestoreStats>> {
    let dir = target.work_dir.join(format!("restore-{}", std::process::id()));
    work_folder(&dir)?;
    let names: Vec<String> = paths.iter().map(|(d, _)| d.clone()).collect();
    let result = (|| {
        let exports = Exports::bind(vault, point, &names, &dir, None)?;
        options.progress.start(point.disks.iter().map(|d| d.size).sum());
        let r = exports.serve_while(|| {
            paths
                .par_iter()
                .map(|(disk, path)| {
                    let socket = exports.socket(disk).expect("bound above");
                    let one = Instant::now();
                    let tmp = path.with_file_name(format!(
                        ".{}.vmbackup-{}",
                        path.file_name().and_then(|n| n.to_str()).unwrap_or("disk"),
                        std::process::id()
                    ));
                    let url = format!("nbd+unix:///{disk}?socket={}", socket.display());
                    let run = qemu_img_convert(&url, &tmp, &options.cancel).and_then(|()| {
                        std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))
                    });
                    if let Err(e) = run {
                        let _ = std::fs::remove_file(&tmp);
                        options.cancel.check(&format!("restore of disk {disk} of vm {}", point.vm))?;
                        let why = exports.last_error().unwrap_or(e);
                        return Err(fail(
                            point,
                            &target.name,
                            STEP,
                            format!("disk {disk} to {}: {why}", path.display()),
                        ));
                    }
                    let size = point.disk(disk)?.size;
                    options.progress.advance(size);
                    let written = std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512);
                    Ok(RestoreStats {
                        disk: disk.clone(),
                        size,
                        bytes_written: written.unwrap_or(0),
                        seconds: one.elapsed().as_secs_f64(),
                        ..RestoreStats::default()
                    })
                })
                .collect::<Result<Vec<_>>>()
        });
        options.progress.finish();
        r
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs `qemu-img convert` from an NBD URL to a new qcow2 file, killed on
/// cancel.
fn qemu_img_convert(url: &str, to: &std::path::Path, cancel: &crate::model::CancelToken) -> Result<(), String> {
    let mut child = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-W", "-m", "8", url])
        .arg(to)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img (qemu-utils): {e}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return if status.success() {
                    // Disk images hold everything of a VM: the owner's only
                    // (libvirt hands them to QEMU at start).
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
                } else {
                    Err(format!("qemu-img convert failed ({status}): {}", err.trim()))
                };
            }
            Ok(None) if cancel.is_cancelled() => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("cancelled".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("cannot wait for qemu-img: {e}")),
        }
    }
}
