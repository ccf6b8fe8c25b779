//! [`Store`] over a local folder: a local vault, or a remote vault's cache.
//!
//! Every path is opened beneath the folder through [`VaultDir`] (no link
//! is followed, nothing but a regular file is read). Durability: a put
//! writes a temporary file under `tmp/`, flushes it, renames (or, for a
//! create-only put, hard-links) it into place and flushes the folder; a
//! publish renames flushed staging files and flushes each folder once; a
//! delete flushes each folder it removed from.

use std::collections::BTreeSet;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ObjectInfo, Store};
use crate::error::{Error, Result};
use crate::model::hex;
use crate::vault::beneath::{Kind, VaultDir};
use crate::vault::layout;

/// A vault's objects as files in a folder.
#[derive(Clone)]
pub(crate) struct LocalStore {
    root: PathBuf,
    dir: VaultDir,
}

impl LocalStore {
    /// The store of the folder `dir` opens.
    pub(crate) fn new(dir: VaultDir) -> LocalStore {
        LocalStore { root: dir.root().to_path_buf(), dir }
    }

    /// The path of a key.
    pub(crate) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn tmp_path(&self, what: &str) -> Result<PathBuf> {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| Error::io("get random bytes in", &self.root, std::io::Error::other(e)))?;
        Ok(self.path(&layout::staging(&format!("{what}.{}", hex(&r)))))
    }

    fn make_parent(&self, path: &Path) -> Result<()> {
        match path.parent() {
            Some(p) if p != self.root => self.dir.mkdirs(p),
            _ => Ok(()),
        }
    }

    /// Flushes the folder of `path` and the one above it (a folder made
    /// for it, `points/<new vm>/` say, must be durable too).
    fn sync_up(&self, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else { return Ok(()) };
        self.dir.sync_dir(parent)?;
        match parent.parent() {
            Some(up) if up.starts_with(&self.root) && up != self.root => self.dir.sync_dir(up),
            _ => Ok(()),
        }
    }

    /// Everything but folders beneath `folder` (a path), into `out` as
    /// keys. A FIFO, device or link planted in the vault is listed too, so
    /// that reading it is refused and reported rather than passed over.
    fn walk(&self, folder: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
        for name in self.dir.list(folder)? {
            self.visit(&folder.join(&name), out)?;
        }
        Ok(())
    }

    fn visit(&self, path: &Path, out: &mut Vec<ObjectInfo>) -> Result<()> {
        let Ok(st) = self.dir.stat(path) else { return Ok(()) };
        if st.kind == Kind::Dir {
            return self.walk(path, out);
        }
        if let Some(key) = path.strip_prefix(&self.root).ok().and_then(Path::to_str) {
            out.push(ObjectInfo { key: key.to_string(), size: st.len, modified: st.modified });
        }
        Ok(())
    }
}

fn not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if matches!(source.kind(), std::io::ErrorKind::NotFound))
}

impl Store for LocalStore {
    fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self.dir.read(&self.path(key), limit) {
            Ok(b) => Ok(Some(b)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_many(&self, keys: &[String], limit: u64) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k, limit)).collect()
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(key);
        let f = self.dir.open(&path)?;
        let mut out = vec![0u8; range.end.saturating_sub(range.start) as usize];
        let mut done = 0;
        while done < out.len() {
            match f.read_at(&mut out[done..], range.start + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", &path, e)),
            }
        }
        out.truncate(done);
        Ok(out)
    }

    fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key);
        self.make_parent(&path)?;
        self.dir.write_durable(&self.tmp_path("put")?, &path, &bytes)?;
        self.sync_up(&path)
    }

    fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        let path = self.path(key);
        self.make_parent(&path)?;
        let tmp = self.tmp_path("put")?;
        let mut file = self.dir.create_new(&tmp)?;
        let written =
            parts.iter().try_for_each(|p| std::io::Write::write_all(&mut file, p)).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = self.dir.remove_file(&tmp);
            return Err(Error::io("write", &tmp, e));
        }
        self.dir.rename(&tmp, &path)?;
        self.sync_up(&path)
    }

    fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let path = self.path(key);
        self.make_parent(&path)?;
        let tmp = self.tmp_path("new")?;
        self.dir.write_flushed(&tmp, &bytes)?;
        // A hard link never replaces: two writers can never share a name.
        let linked = self.dir.hard_link(&tmp, &path);
        let _ = self.dir.remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        self.sync_up(&path)?;
        Ok(true)
    }

    fn publish(&self, files: &[(String, PathBuf)], _concurrency: usize) -> Result<()> {
        let mut folders = BTreeSet::new();
        for (key, from) in files {
            let to = self.path(key);
            if let Some(parent) = to.parent().map(Path::to_path_buf)
                && folders.insert(parent.clone())
            {
                self.make_parent(&to)?;
            }
            self.dir.rename(from, &to)?;
        }
        // Deepest first, so that a new folder's entry in its parent is flushed last.
        for folder in folders.iter().rev() {
            self.dir.sync_dir(folder)?;
            if let Some(parent) = folder.parent().filter(|p| *p != self.root && !folders.contains(*p)) {
                self.dir.sync_dir(parent)?;
            }
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (folder, start) = match prefix.rsplit_once('/') {
            Some((folder, start)) => (self.path(folder), start),
            None => (self.root.clone(), prefix),
        };
        let mut out = Vec::new();
        if start.is_empty() {
            self.walk(&folder, &mut out)?;
        } else {
            for name in self.dir.list(&folder)?.into_iter().filter(|n| n.starts_with(start)) {
                self.visit(&folder.join(&name), &mut out)?;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_folders(&self, folder: &str) -> Result<Vec<String>> {
        let path = self.path(folder.trim_end_matches('/'));
        Ok(self
            .dir
            .list(&path)?
            .into_iter()
            .filter(|n| self.dir.stat(&path.join(n)).is_ok_and(|s| s.kind == Kind::Dir))
            .collect())
    }

    fn head_many(&self, keys: &[String]) -> Result<Vec<Option<ObjectInfo>>> {
        keys.iter()
            .map(|k| match self.dir.stat(&self.path(k)) {
                // As listed: anything but a folder (reading a FIFO or a
                // link is then refused, and says why).
                Ok(st) if st.kind != Kind::Dir => {
                    Ok(Some(ObjectInfo { key: k.clone(), size: st.len, modified: st.modified }))
                }
                Ok(_) => Ok(None),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let mut folders = BTreeSet::new();
        for key in keys {
            let path = self.path(key);
            if self.dir.remove_file_if_exists(&path)?
                && let Some(parent) = path.parent()
            {
                folders.insert(parent.to_path_buf());
            }
        }
        for folder in folders {
            self.dir.sync_dir(&folder)?;
        }
        Ok(())
    }

    fn open_file(&self, key: &str, flags: libc::c_int) -> Option<Result<File>> {
        Some(self.dir.open_with(&self.path(key), flags))
    }
}

/// Writes that a cache makes: not flushed, since a cache is rebuilt from
/// its store after a crash; a reader still never sees half a file.
impl LocalStore {
    /// Writes a file under a temporary name, then renames it into place.
    pub(crate) fn write_cached(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key);
        self.make_parent(&path)?;
        let tmp = self.tmp_path("fetch")?;
        drop(self.dir.write_new(&tmp, bytes)?);
        self.dir.rename(&tmp, &path)
    }

    /// Moves a staging file to a key.
    pub(crate) fn move_cached(&self, from: &Path, key: &str) -> Result<()> {
        let path = self.path(key);
        self.make_parent(&path)?;
        self.dir.rename(from, &path)
    }

    /// Removes files, without flushing their folders.
    pub(crate) fn remove_cached(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            self.dir.remove_file_if_exists(&self.path(key))?;
        }
        Ok(())
    }
}
