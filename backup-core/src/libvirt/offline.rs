//! A shut-off domain's disks, read in place: one read-only `qemu-nbd` per
//! disk on a unix socket in the job's work folder. QEMU's image locks keep
//! the domain from starting on an image while `qemu-nbd` reads it (the
//! start fails with a lock error rather than change the disk under the
//! read). The point is crash-consistent: the guest was shut down, or lost.
//!
//! The chain continues where the image allows: libvirt keeps each
//! checkpoint as a persistent qcow2 bitmap of the same name, and the
//! changes since the previous point's checkpoint are the union of its
//! bitmap and those of every later checkpoint. When the image holds them
//! all they are exported (`qemu-nbd -B`) and only those blocks are read;
//! the point keeps the previous point's token, whose bitmaps go on
//! recording when the domain runs again. Otherwise every block is read.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::DomainDisk;
use crate::error::{Error, Result};
use crate::nbd::{NbdAddress, NbdDevice, NbdOptions};
use crate::snapshot::SnapshotDisk;

/// The `qemu-nbd` processes serving a shut-off domain's disks; stopped on
/// drop. Each dies with the thread that started it too (`PR_SET_PDEATHSIG`),
/// so a killed vmbackup leaves no image locked.
pub(crate) struct Served {
    children: Vec<Child>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where a disk's changes are counted from: the checkpoints whose bitmaps
/// together hold them (the previous point's first), and the token they
/// answer for.
pub(crate) struct Since {
    pub checkpoints: Vec<String>,
    pub token: String,
}

/// The usable bitmaps an image holds (`qemu-img info`): not those marked
/// in use or inconsistent (a domain destroyed, or a host that crashed,
/// while they recorded).
fn bitmaps(image: &str) -> std::result::Result<Vec<String>, String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", image])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("qemu-img info {image}: {e}"))?;
    if !out.status.success() {
        return Err(format!("qemu-img info {image}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info {image}: {e}"))?;
    Ok(v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|b| {
                    !b["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "in-use" || x == "inconsistent"))
                })
                .filter_map(|b| b["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Serves `disks` of a shut-off domain from `dir` and opens each. `since`
/// gives, per disk, the chain of checkpoints to export (the previous
/// point's first, then every later one) and the token they answer for.
/// Returns the disks, what serves them, and lines for the job log.
pub(crate) fn serve(
    disks: &[(DomainDisk, Option<Since>)],
    dir: &Path,
    domain: &str,
) -> Result<(Vec<SnapshotDisk>, Served, Vec<String>)> {
    let mut served = Served { children: Vec::new() };
    let mut out = Vec::new();
    let mut log = Vec::new();
    for (d, since) in disks {
        let format = d.format.clone().unwrap_or_else(|| "raw".into());
        let mut chain: Vec<(String, String)> = Vec::new();
        if let Some(Since { checkpoints: names, token }) = since {
            let have = if format == "qcow2" { bitmaps(&d.source) } else { Ok(Vec::new()) };
            match have {
                Ok(have) if names.iter().all(|n| have.contains(n)) => {
                    chain = names.iter().map(|n| (n.clone(), token.clone())).collect();
                }
                Ok(_) => log.push(format!(
                    "disk {} of shut-off domain {domain}: its image lacks the checkpoint bitmaps since the previous point: every block is read",
                    d.target
                )),
                Err(e) => log.push(format!("disk {} of shut-off domain {domain}: {e}: every block is read", d.target)),
            }
        }
        let sock = dir.join(format!("{}.sock", d.target));
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["--read-only", "--persistent", "--shared=16", "--format", &format, "--socket"])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (bitmap, _) in &chain {
            cmd.args(["--bitmap", bitmap]);
        }
        cmd.arg(&d.source);
        // SAFETY: prctl in the forked child before exec only sets a flag of
        // that process; it is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().map_err(|e| Error::io("start qemu-nbd for a shut-off domain's disk", &d.source, e))?;
        let listening = wait_for_socket(&mut child, &sock, &d.source);
        // Stopped with the others on drop, whether it listens or not.
        served.children.push(child);
        listening?;
        let addr = NbdAddress::parse(&format!("nbd+unix:///?socket={}", sock.display()))?;
        let token = since.as_ref().map(|s| s.token.clone()).filter(|_| !chain.is_empty());
        let device = NbdDevice::open_with_checkpoints(&addr, &NbdOptions::default(), &chain, token.clone())?;
        out.push(SnapshotDisk {
            name: d.target.clone(),
            device: Arc::new(device),
            change_token: token,
            method: if chain.is_empty() { "libvirt-offline-full" } else { "libvirt-offline-incremental" }.into(),
        });
    }
    Ok((out, served, log))
}

/// Waits until `qemu-nbd` listens, or says why it did not.
fn wait_for_socket(child: &mut Child, sock: &Path, image: &str) -> Result<()> {
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(Error::io(
                "serve a shut-off domain's disk with qemu-nbd",
                image,
                std::io::Error::other(format!("qemu-nbd exited ({status}): {}", err.trim())),
            ));
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(Error::io(
                "serve a shut-off domain's disk with qemu-nbd",
                image,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "qemu-nbd did not listen within 30 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
