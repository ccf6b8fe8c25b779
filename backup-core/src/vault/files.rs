//! Small file-system helpers for durable writes: everything the vault
//! publishes is written to a temporary name, flushed, renamed, and its
//! folder flushed.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Flushes a folder so that a rename or a new file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io("flush folder", dir, e))
}

/// Writes `bytes` to `tmp`, flushes it, and renames it to `dest`
/// (replacing it), then flushes `dest`'s folder.
pub(crate) fn write_durable(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    write_flushed(tmp, bytes)?;
    fs::rename(tmp, dest).map_err(|e| Error::io("rename into place", dest, e))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Creates `path` (which must not exist), writes `bytes` and flushes it.
pub(crate) fn write_flushed(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new(path, bytes)?.sync_all().map_err(|e| Error::io("flush", path, e))
}

/// Creates `path` (which must not exist) and writes `bytes`, without
/// flushing: the caller flushes it before anything names it.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<File> {
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| Error::io("create", path, e))?;
    f.write_all(bytes).map_err(|e| Error::io("write", path, e))?;
    Ok(f)
}

/// Creates a folder and its parents.
pub(crate) fn mkdirs(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io("create folder", path, e))
}

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io("read", path, e))
}
