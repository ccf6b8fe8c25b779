//! The vault's objects by kind, for the operations that judge and remove
//! them (gc, prune, repair): listings with sizes and times, removal, and
//! the staging leftovers under `tmp/`. The same calls work on a local
//! folder and on an object store.

use std::time::SystemTime;

use super::beneath::Kind;
use super::{PackEntry, Vault, layout, pack};
use crate::error::{Error, Result};
use crate::model::{ContentId, random_hex};

/// An object of the vault as a listing gives it.
#[derive(Debug, Clone)]
pub(crate) struct Stored<N> {
    /// Its name: a pack id, a segment id, a staging entry's name.
    pub name: N,
    /// Its bytes (for a staging folder, of every file in it).
    pub size: u64,
    /// When it was last written (for a staging folder, its newest file).
    pub modified: SystemTime,
}

impl Vault {
    /// Every pack.
    pub(crate) fn list_packs(&self) -> Result<Vec<Stored<String>>> {
        Ok(self
            .store
            .list(layout::PACKS)?
            .into_iter()
            .filter_map(|o| {
                let name = layout::pack_of(&o.key)?.to_string();
                Some(Stored { name, size: o.size, modified: o.modified })
            })
            .collect())
    }

    /// Every chunk index file, by its pack's id.
    pub(crate) fn list_chunk_index_files(&self) -> Result<Vec<Stored<String>>> {
        Ok(self
            .store
            .list(layout::INDEX)?
            .into_iter()
            .filter_map(|o| {
                let name = layout::index_of(&o.key)?.to_string();
                Some(Stored { name, size: o.size, modified: o.modified })
            })
            .collect())
    }

    /// Every index segment (names that are not segment ids are not ours to
    /// judge, and are left out).
    pub(crate) fn list_segments(&self) -> Result<Vec<Stored<ContentId>>> {
        Ok(self
            .store
            .list(layout::SEGMENTS)?
            .into_iter()
            .filter_map(|o| Some(Stored { name: layout::segment_of(&o.key)?, size: o.size, modified: o.modified }))
            .collect())
    }

    /// The segments of `ids` that the vault holds, with their sizes.
    pub(crate) fn stat_segments(&self, ids: &[ContentId]) -> Result<Vec<Stored<ContentId>>> {
        let keys: Vec<String> = ids.iter().map(layout::segment).collect();
        Ok(ids
            .iter()
            .zip(self.store.head_many(&keys)?)
            .filter_map(|(id, o)| o.map(|o| Stored { name: *id, size: o.size, modified: o.modified }))
            .collect())
    }

    /// Removes packs, then their chunk index files (so that an index file
    /// left by a crash between the two names a pack that is gone, which gc
    /// and repair notice, never the other way round).
    pub(crate) fn remove_packs(&self, ids: &[String]) -> Result<()> {
        let packs: Vec<String> = ids.iter().map(|p| layout::pack(p)).collect();
        self.store.delete_many(&packs)?;
        self.remove_chunk_index_files(ids)
    }

    /// Removes chunk index files.
    pub(crate) fn remove_chunk_index_files(&self, ids: &[String]) -> Result<()> {
        let keys: Vec<String> = ids.iter().map(|p| layout::chunk_index(p)).collect();
        self.store.delete_many(&keys)
    }

    /// Removes index segments.
    pub(crate) fn remove_segments(&self, ids: &[ContentId]) -> Result<()> {
        let keys: Vec<String> = ids.iter().map(layout::segment).collect();
        self.store.delete_many(&keys)
    }

    /// The size of a point's manifest, or None when it is gone.
    pub(crate) fn manifest_len(&self, vm: &str, id: &str) -> Result<Option<u64>> {
        crate::model::validate_name("vm name", vm)?;
        crate::model::validate_name("point id", id)?;
        Ok(self.store.head(&layout::manifest(vm, id))?.map(|o| o.size))
    }

    /// Removes points: their boot verdicts, then their manifests.
    pub(crate) fn remove_points(&self, points: &[(&str, &str)]) -> Result<()> {
        for (vm, id) in points {
            crate::model::validate_name("vm name", vm)?;
            crate::model::validate_name("point id", id)?;
        }
        let verdicts: Vec<String> = points.iter().map(|(vm, id)| layout::verdict(vm, id)).collect();
        self.store.delete_many(&verdicts)?;
        let manifests: Vec<String> = points.iter().map(|(vm, id)| layout::manifest(vm, id)).collect();
        self.store.delete_many(&manifests)
    }

    /// Records in the store that prune removed these points of a VM, so
    /// that verify on any host tells them from lost manifests.
    pub(crate) fn record_pruned(&self, vm: &str, ids: &[&str], json: &[u8]) -> Result<()> {
        crate::model::validate_name("vm name", vm)?;
        for id in ids {
            crate::model::validate_name("point id", id)?;
            self.store.put(&layout::pruned(vm, id), bytes::Bytes::copy_from_slice(json))?;
        }
        Ok(())
    }

    /// The points of a VM that prune recorded as removed in the store.
    pub(crate) fn pruned_in_store(&self, vm: &str) -> Result<Vec<String>> {
        crate::model::validate_name("vm name", vm)?;
        let folder = layout::pruned_of(vm);
        Ok(self
            .store
            .list(&folder)?
            .iter()
            .filter_map(|o| layout::name_in(&o.key, &folder))
            .map(str::to_string)
            .collect())
    }

    /// Drops the store's prune records of points no job log names any more.
    pub(crate) fn forget_pruned(&self, vm: &str, ids: &[&str]) -> Result<()> {
        crate::model::validate_name("vm name", vm)?;
        let keys: Vec<String> = ids
            .iter()
            .filter(|id| crate::model::validate_name("point id", id).is_ok())
            .map(|id| layout::pruned(vm, id))
            .collect();
        self.store.delete_many(&keys)
    }

    /// The entries under `tmp/` of the local folder (staging of backups,
    /// gc and repack runs, temporary files), but `except`.
    pub(crate) fn staging_entries(&self, except: Option<&str>) -> Result<Vec<Stored<String>>> {
        let tmp = self.root.join(layout::TMP);
        let mut out = Vec::new();
        for name in self.dir.list(&tmp)? {
            if Some(name.as_str()) == except {
                continue;
            }
            let (newest, size) = self.newest_mtime(&tmp.join(&name));
            let Some(modified) = newest else { continue };
            out.push(Stored { name, size, modified });
        }
        Ok(out)
    }

    /// Removes a staging entry under `tmp/` (a file, or a folder with all
    /// it holds; a link in it is removed, never followed).
    pub(crate) fn remove_staging(&self, name: &str) -> Result<()> {
        crate::model::validate_name("staging entry", name)?;
        let path = self.root.join(layout::staging(name));
        match self.dir.stat(&path) {
            Ok(st) if st.kind == Kind::Dir => self.dir.remove_dir_all(&path),
            Ok(_) => self.dir.remove_file(&path),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The newest modification time of a file or of anything in a folder
    /// tree, and the bytes of its files. A link (never followed) counts as
    /// old and empty.
    fn newest_mtime(&self, path: &std::path::Path) -> (Option<SystemTime>, u64) {
        let Ok(meta) = self.dir.stat(path) else { return (None, 0) };
        let mut newest = Some(meta.modified);
        let mut bytes = if meta.kind == Kind::File { meta.len } else { 0 };
        if meta.kind == Kind::Dir
            && let Ok(names) = self.dir.list(path)
        {
            for name in names {
                let (t, b) = self.newest_mtime(&path.join(name));
                newest = newest.max(t);
                bytes += b;
            }
        }
        (newest, bytes)
    }

    /// Starts writing new packs of frames copied from others (gc's repack),
    /// staged in a folder `tmp/<what>-<pid>-<random>/` of the local folder.
    pub(crate) fn copy_frames(&self, what: &str) -> Result<FrameCopier<'_>> {
        let name = format!("{what}-{}-{}", std::process::id(), random_hex(8, "a staging folder")?);
        Ok(FrameCopier { vault: self, name, current: None, written: Vec::new() })
    }
}

/// New packs being written from frames copied byte for byte out of other
/// packs (same pack format, same chunk index files as a backup writes),
/// published together by [`FrameCopier::publish`]; dropping it removes
/// what it staged.
pub(crate) struct FrameCopier<'v> {
    vault: &'v Vault,
    /// The staging folder's name under `tmp/`.
    name: String,
    current: Option<NewPack>,
    /// The packs finished: id and bytes written (pack and index file).
    written: Vec<(String, u64)>,
}

/// A pack being written by a [`FrameCopier`].
struct NewPack {
    id: String,
    path: std::path::PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    offset: u64,
    entries: Vec<PackEntry>,
}

impl FrameCopier<'_> {
    fn staged(&self, key: &str) -> std::path::PathBuf {
        self.vault.root.join(layout::staging(&self.name)).join(key)
    }

    /// Appends a frame (checked by the caller) as the chunk `entry` names.
    pub(crate) fn copy(&mut self, entry: &PackEntry, frame: &[u8]) -> Result<()> {
        use std::io::Write;
        if self.current.is_none() {
            let dir = self.vault.dir();
            dir.mkdirs(&self.staged(layout::PACKS))?;
            dir.mkdirs(&self.staged(layout::INDEX))?;
            let id = random_hex(16, "a pack id")?;
            let path = self.staged(&layout::pack(&id));
            let mut out = std::io::BufWriter::with_capacity(1 << 20, dir.create_new(&path)?);
            let header = pack::header();
            out.write_all(&header).map_err(|e| Error::io("write", &path, e))?;
            self.current = Some(NewPack { id, path, out, offset: header.len() as u64, entries: Vec::new() });
        }
        let Some(p) = self.current.as_mut() else { return Ok(()) };
        p.out.write_all(frame).map_err(|e| Error::io("write", &p.path, e))?;
        p.entries.push(PackEntry { offset: p.offset, ..*entry });
        p.offset += frame.len() as u64;
        if p.offset >= self.vault.options.pack_target_size || p.entries.len() >= pack::MAX_PACK_ENTRIES as usize {
            self.finish_current()?;
        }
        Ok(())
    }

    /// Writes the trailer, flushes the pack and stages its index file.
    fn finish_current(&mut self) -> Result<()> {
        use std::io::Write;
        let Some(NewPack { id, path, mut out, offset, entries }) = self.current.take() else { return Ok(()) };
        let trailer = pack::encode_trailer(&entries, offset);
        out.write_all(&trailer).map_err(|e| Error::io("write", &path, e))?;
        let file = out.into_inner().map_err(|e| Error::io("write", &path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("flush", &path, e))?;
        let idx = pack::encode_idx(&trailer);
        self.vault.dir().write_flushed(&self.staged(&layout::chunk_index(&id)), &idx)?;
        self.written.push((id, offset + trailer.len() as u64 + idx.len() as u64));
        Ok(())
    }

    /// Publishes the new packs durably, their index files after them;
    /// returns each new pack's id and bytes.
    pub(crate) fn publish(mut self) -> Result<Vec<(String, u64)>> {
        self.finish_current()?;
        let packs: Vec<(String, std::path::PathBuf)> =
            self.written.iter().map(|(id, _)| (layout::pack(id), self.staged(&layout::pack(id)))).collect();
        self.vault.store.publish(&packs, 4)?;
        let idx: Vec<(String, std::path::PathBuf)> = self
            .written
            .iter()
            .map(|(id, _)| (layout::chunk_index(id), self.staged(&layout::chunk_index(id))))
            .collect();
        self.vault.store.publish(&idx, 8)?;
        Ok(std::mem::take(&mut self.written))
    }
}

impl Drop for FrameCopier<'_> {
    fn drop(&mut self) {
        drop(self.current.take());
        let _ = self.vault.remove_staging(&self.name);
    }
}
