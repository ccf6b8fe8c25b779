//! Adoption of what a dead backup staged: a backup killed mid-flight (a
//! SIGKILL, a power cut) leaves its staging folder `tmp/backup-<pid>-<rand>/`
//! behind, with the packs it had finished. The next backup publishes those
//! packs, so that it deduplicates against them instead of reading and
//! storing the same chunks again.
//!
//! A session holds an exclusive `flock` on `<staging>/lock` for as long as
//! it lives (the file appears under that name already locked: it is locked
//! under a temporary name and then renamed), and the kernel drops the lock
//! when the process dies, however it dies. A new session tries the lock of
//! every other staging folder without waiting: one it gets belongs to a
//! dead session. Of that folder, only finished packs are taken, each after
//! a full check (header, footer, trailer crc, and every frame's crc and
//! keyed hash against its id); the pack being filled when the process died
//! has no trailer and is dropped, as are segments (cheap to remake). The
//! folder is then removed. A staging folder without a lock file (made by an
//! older build) is left to gc. A backup into a remote vault builds its
//! packs in memory and uploads each as it closes, with its index file, so
//! a killed one leaves its finished packs in the store already, where the
//! next backup's index refresh finds them; a staging folder in a remote
//! vault's cache (left by an older build) is adopted by uploading its
//! packs. Adoption runs under the vault's shared lock,
//! like any backup, so gc (exclusive) never sees it half done; two sessions
//! adopting at once are kept apart by the folder's own lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{Vault, layout, pack};
use crate::error::{Error, Result};
use crate::model::ContentId;

/// The name of a session's lock file inside its staging folder.
pub(super) const SESSION_LOCK: &str = "lock";

/// What an adoption took over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Adopted {
    pub packs: u64,
    pub bytes: u64,
}

/// Takes an exclusive flock without waiting: Ok(true) when taken.
fn try_flock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(e) }
}

/// Creates `<dir>/lock` already locked: locked under a temporary name
/// first, so that no other session can find it unlocked.
pub(super) fn lock_session(vault: &Vault, dir: &Path) -> Result<File> {
    let tmp = dir.join(".lock.new");
    let f = vault.dir().create_new(&tmp)?;
    if !try_flock(&f).map_err(|e| Error::io("lock", &tmp, e))? {
        return Err(Error::io("lock", &tmp, std::io::Error::from(std::io::ErrorKind::WouldBlock)));
    }
    vault.dir().rename(&tmp, &dir.join(SESSION_LOCK))?;
    Ok(f)
}

/// Whether a backup may be between publishing a pack and publishing that
/// pack's chunk index file: a session of this host is alive in the vault's
/// staging folder (its lock is held), or, on a shared store, some host's
/// lease was rewritten lately. A lease that cannot be listed says no.
pub(crate) fn backup_in_flight(vault: &Vault) -> bool {
    let tmp = vault.path().join(layout::TMP);
    let names = vault.dir().list(&tmp).unwrap_or_default();
    let here = names.into_iter().filter(|n| n.starts_with("backup-")).any(|name| {
        let Ok(lock) = vault.dir().open(&tmp.join(&name).join(SESSION_LOCK)) else { return false };
        // Taken: the session is dead; dropping `lock` lets it go at once.
        matches!(try_flock(&lock), Ok(false))
    });
    here || (vault.is_remote() && {
        let cutoff = std::time::SystemTime::now().checked_sub(super::lease::IN_FLIGHT_WINDOW);
        cutoff.is_some_and(|c| super::lease::any_live(vault.store(), c).unwrap_or(false))
    })
}

/// Publishes the finished packs of every dead session's staging folder and
/// removes the folder. Best effort: a folder that cannot be handled is left
/// for gc, and never fails the backup that found it.
pub(super) fn adopt_abandoned(vault: &Vault, own: Option<&Path>) -> Adopted {
    let mut total = Adopted::default();
    let tmp = vault.path().join(layout::TMP);
    let Ok(names) = vault.dir().list(&tmp) else { return total };
    for name in names.into_iter().filter(|n| n.starts_with("backup-")) {
        let dir = tmp.join(&name);
        if Some(dir.as_path()) == own {
            continue;
        }
        let Ok(lock) = vault.dir().open(&dir.join(SESSION_LOCK)) else { continue };
        if !matches!(try_flock(&lock), Ok(true)) {
            continue; // alive
        }
        if let Ok(a) = adopt_folder(vault, &dir) {
            total.packs += a.packs;
            total.bytes += a.bytes;
            let _ = vault.dir().remove_dir_all(&dir);
        }
        drop(lock);
    }
    total
}

fn adopt_folder(vault: &Vault, dir: &Path) -> Result<Adopted> {
    let mut a = Adopted::default();
    let names = match vault.dir().list(&dir.join(layout::PACKS)) {
        Ok(n) => n,
        Err(_) => return Ok(a),
    };
    for name in names {
        let key = format!("{}{name}", layout::PACKS);
        let Some(id) = layout::pack_of(&key) else { continue };
        let path = dir.join(&key);
        let Ok(trailer) = check_pack(vault, &path) else { continue };
        if vault.store().head(&key)?.is_some() {
            continue;
        }
        let len = vault.dir().stat(&path).map(|m| m.len).unwrap_or(0);
        let idx_key = layout::chunk_index(id);
        let idx_path = dir.join(format!("{id}.idx.adopt"));
        let _ = vault.dir().remove_file(&idx_path);
        vault.dir().write_flushed(&idx_path, &pack::encode_idx(&trailer))?;
        // The pack, then its index file, as a backup publishes them.
        vault.store().publish(&[(key.clone(), path)], 1)?;
        vault.store().publish(&[(idx_key, idx_path)], 1)?;
        a.packs += 1;
        a.bytes += len;
    }
    Ok(a)
}

/// Checks a staged pack whole; returns its trailer and footer bytes.
fn check_pack(vault: &Vault, path: &Path) -> Result<Vec<u8>> {
    let object = format!("staged pack {}", path.display());
    let bytes = vault.dir().read(path, pack::MAX_PACK_LEN)?;
    pack::check_header(&bytes, &object)?;
    if bytes.len() < pack::PACK_HEADER_LEN + pack::FOOTER_LEN {
        return Err(Error::corrupt(object, "truncated"));
    }
    let footer_at = bytes.len() - pack::FOOTER_LEN;
    let (toff, count, crc) = pack::parse_footer(&bytes[footer_at..], &object)?;
    pack::check_trailer_bounds(toff, count, bytes.len() as u64, &object)?;
    let entries = pack::parse_entries(&bytes[toff as usize..footer_at], count, crc, &object)?;
    for e in &entries {
        let start = usize::try_from(e.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(e.frame_len() as usize);
        let frame = bytes.get(start..end).ok_or_else(|| Error::corrupt(&object, "frame past the trailer"))?;
        let data = pack::decode_frame(frame, e, &object, vault.sealer())?;
        if ContentId(*blake3::keyed_hash(vault.keys_chunk(), &data).as_bytes()) != e.id {
            return Err(Error::corrupt(object, format!("chunk {} does not hash to its id", e.id)));
        }
    }
    Ok(bytes[toff as usize..].to_vec())
}
