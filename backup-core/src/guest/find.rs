//! Which points hold a file: every file system of every disk of every
//! point of a VM, walked, its paths matched against a pattern.

use std::path::Path;
use std::sync::Arc;

use super::{FileEntry, GuestDisk};
use crate::error::Result;
use crate::vault::Vault;

/// A file that matched, and where: point, disk, volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// The point's id.
    pub point: String,
    /// When the point's snapshot was taken.
    pub time: jiff::Timestamp,
    /// The disk.
    pub disk: String,
    /// The volume (`p1`, `vg/lv`, `disk`).
    pub volume: String,
    /// The file: path, size, times, owner.
    pub entry: FileEntry,
}

/// Whether `text` matches the glob `pattern`: `*` any run of characters,
/// `?` any one, everything else itself.
///
/// ```
/// use backup_core::glob_match;
/// assert!(glob_match("*.conf", "nginx.conf"));
/// assert!(glob_match("/etc/*/site?", "/etc/nginx/site1"));
/// assert!(!glob_match("*.conf", "nginx.conf.bak"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether entry path `path` matches `pattern`: a pattern with a `/` is
/// matched against the whole path, one without against the file's name.
fn matches(pattern: &str, path: &Path) -> bool {
    if pattern.contains('/') {
        glob_match(pattern, &path.to_string_lossy())
    } else {
        path.file_name().is_some_and(|n| glob_match(pattern, &n.to_string_lossy()))
    }
}

/// Every file, folder or link in every point of `vm` whose path matches
/// `pattern` (see [`glob_match`]; a pattern with a `/` matches whole paths,
/// one without names), oldest point first.
///
/// # Errors
/// As [`GuestDisk::open`] and [`GuestDisk::open_fs`] (ext4 and XFS need
/// root).
pub fn find_files(vault: &Arc<Vault>, vm: &str, pattern: &str) -> Result<Vec<FoundFile>> {
    let mut points = vault.points(Some(vm))?;
    points.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
    let mut found = Vec::new();
    for point in &points {
        for disk in &point.disks {
            let guest = GuestDisk::open(vault.clone(), point, &disk.name)?;
            for volume in guest.volumes().iter().filter(|v| v.fs.has_files()) {
                let fs = guest.open_fs(&volume.name)?;
                fs.walk(Path::new("/"), &mut |e| {
                    if e.path != Path::new("/") && matches(pattern, &e.path) {
                        found.push(FoundFile {
                            point: point.id.clone(),
                            time: point.time,
                            disk: disk.name.clone(),
                            volume: volume.name.clone(),
                            entry: e.clone(),
                        });
                    }
                    Ok(())
                })?;
            }
        }
    }
    Ok(found)
}
