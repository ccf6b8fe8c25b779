//! FAT12/16/32 (an EFI system partition), read in user space with the
//! `fatfs` crate: no privileges needed, and no kernel driver (this host's
//! kernel has no vfat). FAT keeps no owners or modes: entries are root's,
//! folders 0755 and files 0644 (0444 when read-only), as Linux's vfat shows
//! them with its default mask. Its times are local times without a zone;
//! they are read as UTC.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Backend, FileEntry, FileKind, VolumeReader};

type Fs = fatfs::FileSystem<VolumeReader>;

/// Runs `f`, turning a panic inside the FAT reader (on a guest's damaged
/// or hostile file system) into an I/O error; the file system is then
/// unusable (its lock is poisoned), never the process.
fn guarded<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(io::Error::other("the FAT reader failed on damaged file-system data")))
}

/// A FAT file system.
pub(super) struct FatFs {
    fs: Mutex<Fs>,
}

impl FatFs {
    pub(super) fn open(volume: VolumeReader) -> io::Result<FatFs> {
        let fs = guarded(|| fatfs::FileSystem::new(volume, fatfs::FsOptions::new()))?;
        Ok(FatFs { fs: Mutex::new(fs) })
    }

    fn fs(&self) -> io::Result<std::sync::MutexGuard<'_, Fs>> {
        self.fs.lock().map_err(|_| io::Error::other("an earlier read panicked"))
    }
}

/// `/EFI/BOOT` as fatfs names it: `EFI/BOOT` (the root is "").
fn rel(path: &Path) -> String {
    path.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().to_string()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn time(dt: fatfs::DateTime) -> jiff::Timestamp {
    let (d, t) = (dt.date, dt.time);
    jiff::civil::DateTime::new(
        d.year as i16,
        d.month as i8,
        d.day as i8,
        t.hour as i8,
        t.min as i8,
        t.sec as i8,
        i32::from(t.millis) * 1_000_000,
    )
    .and_then(|c| c.to_zoned(jiff::tz::TimeZone::UTC))
    .map(|z| z.timestamp())
    .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn date(d: fatfs::Date) -> jiff::Timestamp {
    time(fatfs::DateTime { date: d, time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 } })
}

fn entry<T: fatfs::ReadWriteSeek>(dir: &Path, e: &fatfs::DirEntry<'_, T>) -> FileEntry {
    let kind = if e.is_dir() { FileKind::Dir } else { FileKind::File };
    let read_only = e.attributes().contains(fatfs::FileAttributes::READ_ONLY);
    FileEntry {
        path: dir.join(e.file_name()),
        kind,
        size: if kind == FileKind::Dir { 0 } else { e.len() },
        mode: match (kind, read_only) {
            (FileKind::Dir, _) => 0o755,
            (_, true) => 0o444,
            _ => 0o644,
        },
        uid: 0,
        gid: 0,
        mtime: time(e.modified()),
        atime: date(e.accessed()),
        target: None,
    }
}

fn root_entry() -> FileEntry {
    FileEntry {
        path: PathBuf::from("/"),
        kind: FileKind::Dir,
        size: 0,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: jiff::Timestamp::UNIX_EPOCH,
        atime: jiff::Timestamp::UNIX_EPOCH,
        target: None,
    }
}

impl Backend for FatFs {
    fn stat(&self, path: &Path) -> io::Result<FileEntry> {
        guarded(|| self.stat_unguarded(path))
    }

    fn list(&self, path: &Path) -> io::Result<Vec<FileEntry>> {
        guarded(|| self.list_unguarded(path))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        guarded(|| self.open_unguarded(path))
    }
}

impl FatFs {
    fn stat_unguarded(&self, path: &Path) -> io::Result<FileEntry> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { return Ok(root_entry()) };
        let fs = self.fs()?;
        let root = fs.root_dir();
        let dir = if rel(parent).is_empty() { root } else { root.open_dir(&rel(parent))? };
        let name = name.to_string_lossy();
        for e in dir.iter() {
            let e = e?;
            if e.file_name().eq_ignore_ascii_case(&name) || e.short_file_name().eq_ignore_ascii_case(&name) {
                return Ok(entry(parent, &e));
            }
        }
        Err(io::Error::from(io::ErrorKind::NotFound))
    }

    fn list_unguarded(&self, path: &Path) -> io::Result<Vec<FileEntry>> {
        let fs = self.fs()?;
        let root = fs.root_dir();
        let dir = if rel(path).is_empty() { root } else { root.open_dir(&rel(path))? };
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name();
            if name != "." && name != ".." {
                out.push(entry(path, &e));
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn open_unguarded(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        // fatfs files borrow the file system: read it whole here (EFI
        // partitions hold small files).
        let fs = self.fs()?;
        let mut file = fs.root_dir().open_file(&rel(path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(Box::new(io::Cursor::new(data)))
    }
}
