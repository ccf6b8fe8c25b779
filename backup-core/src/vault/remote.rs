//! A vault on object storage: `az://CONTAINER/PREFIX` (Azure Blob) or
//! `s3://BUCKET/PREFIX` (S3), for fleets where many hosts back up into one
//! store and deduplicate across all of them. Built with the cargo feature
//! `object-store`; without it a URL is refused with a clear error.
//!
//! ## Layout
//!
//! The store holds exactly the local layout under PREFIX, object for file:
//!
//! ```text
//! PREFIX/config                 as a local vault's
//! PREFIX/packs/<pack id>.pack   chunks; the id is 128 random bits, so writers never collide
//! PREFIX/index/<pack id>.idx    uploaded after its pack: an index file names a pack that exists
//! PREFIX/segments/<ab>/<id>     index segments, by content id
//! PREFIX/points/<vm>/<id>       manifests, written last with a create-only put
//! PREFIX/vms/<vm>.json          what `prepare` did to each VM (written through)
//! PREFIX/gc/<time>-<rand>.json  gc marks: packs and segments condemned (see below)
//! ```
//!
//! A local cache folder (default `$XDG_CACHE_HOME/vmbackup/<digest of the
//! URL>`, else `~/.cache/vmbackup/...`; [`RemoteOptions::cache`] overrides)
//! is a local vault folder that mirrors what this host needs: `config`,
//! every `index/*.idx` (fetched once; each refresh lists `index/` and
//! fetches only the new ones, and drops those whose pack is gone),
//! manifests (listed and fetched when points are listed), segments as they
//! are read or written, plus what stays local: `lock`, `tmp/` (backup
//! staging), `jobs/` and `snapshots/`. The cache's `flock` guards the cache
//! only; hosts coordinate through the store alone, without a lock server.
//!
//! ## Writing
//!
//! A backup holds a lease in the store while it runs (`vault/lease.rs`).
//! Each worker fills a pack in memory, as the list of its frames' buffers
//! (the compressed payloads are the engine's own buffers, handed to
//! `object_store` without a copy). A pack is uploaded as soon as it
//! closes, then its index file, several at once: at most [`UPLOAD_BUDGET`]
//! bytes of closed packs are in flight, so memory stays below that plus
//! one pack per worker, and no pack touches the local disk. Segments are
//! staged in the cache folder as on a local vault. On commit the backup
//! uploads the last packs and its segments, checks that the point may be committed
//! (below), then writes the manifest with a create-only put, so two points
//! never share a name. Restore and verify read the
//! frames they need with ranged GETs of stretches of a pack (see
//! `vault/run_reader.rs`).
//!
//! ## Garbage collection across hosts: two phases and a grace period
//!
//! gc on a remote vault never deletes what it judges dead in the same run.
//! Each run first *sweeps*: for every mark older than the grace period it
//! lists the manifests anew and deletes the marked packs and segments that
//! still no point references, then the mark. It then *marks*: the packs
//! (with no chunk any point references) and segments (that no point names)
//! last written more than the grace period ago, not yet marked, go into a
//! new mark object `gc/<time>-<rand>.json`. Partly dead packs are
//! rewritten as on a local vault; the old copy is then marked like a dead
//! pack (`gc/shared.rs`). Packs a backup in flight has uploaded are spared
//! by its lease (`vault/lease.rs`).
//!
//! A backup never relies on a condemned object: when its cache is
//! refreshed, packs named by a mark are no longer deduplicated against
//! (their chunks are stored anew; they stay readable until swept) and
//! marked segments leave the cache. Just before writing
//! its manifest it re-checks, against the store: (1) no pack holding a
//! chunk of the point, and no segment it names, is in a mark, and (2) each
//! of them that another backup wrote still exists. If either fails the
//! point is not committed and the error says why; a rerun (whose refresh
//! no longer trusts those objects) commits. Why that is enough: an object
//! marked before the check is refused by (1), or, when its sweep already
//! ran, by (2); one marked after the check is swept at the earliest a grace
//! period later, and the manifest written a moment after the check then
//! names it, so the sweep's fresh listing of manifests spares it. The grace
//! period must therefore exceed the time from a backup's check to its
//! manifest (a second or two) plus the clock skew between hosts; the
//! default is an hour. Segments are named by their content, so a new point
//! may need a segment that is marked (the same block map as a pruned
//! point's): the backup uses it while the mark is younger than half the
//! grace period recorded in it (the sweep is then at least half a grace
//! period away, and the manifest spares it); past that it fails, saying
//! so, until a gc has swept the mark, after which a rerun stores the
//! segment anew.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::store::Store;
use super::store::cached::CachedStore;
use super::store::local::LocalStore;
use super::{PointManifest, Vault, VaultOptions, beneath, files, layout};
use crate::error::{Error, Result};
use crate::model::{ContentId, random_hex, validate_name};

/// Bytes of closed packs held in memory by a backup's parallel uploads, at
/// most (packs are 32 MiB by default, so 8 at once); the packs being filled
/// add one per worker.
pub const UPLOAD_BUDGET: u64 = 256 << 20;

/// The largest gc mark read.
const MAX_MARK_LEN: u64 = 64 << 20;

/// How a remote vault is reached and cached (see the module doc of
/// `vault::remote`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// The local cache folder; None for the default under the user's cache
    /// folder, named by a digest of the URL.
    pub cache: Option<PathBuf>,
    /// The store's endpoint (an emulator's `http://127.0.0.1:10000`, an
    /// S3-compatible server); None for the cloud's own, or the one the
    /// environment names.
    pub endpoint: Option<String>,
}

/// Whether a vault location is a URL of a remote vault (`az://`, `s3://`)
/// rather than a local path.
///
/// ```
/// assert!(backup_core::is_vault_url("az://backups/fleet"));
/// assert!(!backup_core::is_vault_url("/var/backups/vault"));
/// ```
pub fn is_vault_url(location: &str) -> bool {
    location.starts_with("az://") || location.starts_with("s3://")
}

/// What a vault shared through an object store needs besides its store:
/// its URL, and the packs gc marks condemn.
pub(crate) struct Remote {
    url: String,
    /// Packs a gc mark names, as of the last refresh: still read (a point
    /// committed just before the mark may need them until the sweep spares
    /// them), never deduplicated against.
    condemned: std::sync::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

#[cfg(feature = "object-store")]
fn connect(url: &str, options: &RemoteOptions) -> Result<Box<dyn Store>> {
    Ok(Box::new(super::store::object::ObjectBackend::connect(url, options.endpoint.as_deref())?))
}

#[cfg(not(feature = "object-store"))]
fn connect(url: &str, _options: &RemoteOptions) -> Result<Box<dyn Store>> {
    Err(Error::invalid(
        format!("vault url {url}"),
        "this build has no object storage support (build with the cargo feature object-store)",
    ))
}

/// The default cache folder of a URL.
fn default_cache(url: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => {
                return Err(Error::invalid(
                    format!("cache folder of vault {url}"),
                    "neither XDG_CACHE_HOME nor HOME is set: name a cache folder",
                ));
            }
        },
    };
    let digest = blake3::hash(url.trim_end_matches('/').as_bytes()).to_hex();
    Ok(base.join("vmbackup").join(&digest[..24]))
}

/// The file in a cache folder naming the vault it caches.
const CACHE_OF: &str = "cache-of";

/// A gc mark: what one gc run condemned, and when.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub created: jiff::Timestamp,
    /// The grace period of the gc that wrote it, in seconds: no sweep
    /// removes what it names before `created` plus this.
    #[serde(default)]
    pub grace_secs: u64,
    pub packs: Vec<String>,
    pub segments: Vec<String>,
}

impl Mark {
    /// A mark as stored (`gc/NAME.json`): its JSON, with every pack and
    /// segment it names a plain name (the sweep builds store keys from
    /// them, so a forged mark must not name anything else).
    pub(crate) fn parse(bytes: &[u8], object: &str) -> Result<Mark> {
        let mark: Mark = serde_json::from_slice(bytes).map_err(|e| Error::corrupt(object, e.to_string()))?;
        for name in mark.packs.iter().chain(&mark.segments) {
            validate_name("gc mark entry", name).map_err(|e| Error::corrupt(object, e.to_string()))?;
        }
        Ok(mark)
    }
}

/// The URL a location names, if it is one.
fn url_of(location: &Path) -> Option<&str> {
    location.to_str().filter(|s| is_vault_url(s))
}

impl Vault {
    /// Opens the vault at a path or a URL (see [`is_vault_url`]); a path
    /// that is not UTF-8 is a path.
    ///
    /// # Errors
    /// As [`open_with`](Self::open_with) and [`open_url`](Self::open_url).
    pub fn open_location(location: impl AsRef<Path>, options: VaultOptions, remote: &RemoteOptions) -> Result<Vault> {
        match url_of(location.as_ref()) {
            Some(url) => Self::open_url(url, options, remote),
            None => Self::open_with(location, options),
        }
    }

    /// Creates a vault at a path or a URL (see [`is_vault_url`]); a path
    /// that is not UTF-8 is a path.
    ///
    /// # Errors
    /// As [`init_with`](Self::init_with) and [`init_url`](Self::init_url).
    pub fn init_location(location: impl AsRef<Path>, options: VaultOptions, remote: &RemoteOptions) -> Result<Vault> {
        match url_of(location.as_ref()) {
            Some(url) => Self::init_url(url, options, remote),
            None => Self::init_with(location, options),
        }
    }

    /// Opens a vault on object storage (`az://CONTAINER/PREFIX`,
    /// `s3://BUCKET/PREFIX`), with its local cache folder.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad URL or a build without the
    /// `object-store` feature; [`Error::NotAVault`] when the store holds no
    /// config there; errors reaching the store, naming the object.
    pub fn open_url(url: &str, options: VaultOptions, remote: &RemoteOptions) -> Result<Vault> {
        let url = url.trim_end_matches('/');
        let store = connect(url, remote)?;
        let config = store
            .get(layout::CONFIG, super::MAX_CONFIG_LEN)?
            .ok_or_else(|| Error::NotAVault { path: PathBuf::from(url) })?;
        let cache = match &remote.cache {
            Some(c) => c.clone(),
            None => default_cache(url)?,
        };
        prepare_cache(&cache, url, &config)?;
        let mut vault = Vault::open_with(&cache, options)?;
        let local = LocalStore::new(beneath::VaultDir::open_root(&cache)?);
        vault.store = Arc::new(CachedStore::new(store, local));
        vault.remote = Some(Arc::new(Remote { url: url.to_string(), condemned: Default::default() }));
        // An immutable vault on S3 locks what it writes (store::s3_lock).
        let settings = serde_json::from_slice::<super::Config>(&config)
            .map_err(|e| Error::corrupt(format!("vault config {url}/{}", layout::CONFIG), e.to_string()))?
            .settings;
        vault.store.lock_writes(settings.immutable_days);
        Ok(vault)
    }

    /// Creates a vault on object storage. The container or bucket must
    /// exist; the prefix must hold no vault.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the prefix holds a vault config; as
    /// [`open_url`](Self::open_url).
    pub fn init_url(url: &str, options: VaultOptions, remote: &RemoteOptions) -> Result<Vault> {
        let url = url.trim_end_matches('/');
        let store = connect(url, remote)?;
        if store.get(layout::CONFIG, super::MAX_CONFIG_LEN)?.is_some() {
            return Err(Error::AlreadyExists { path: PathBuf::from(url) });
        }
        // The config is made exactly as a local vault's, in a scratch folder.
        let scratch = std::env::temp_dir().join(format!(
            "vmbackup-init-{}-{}",
            std::process::id(),
            random_hex(8, "a scratch folder")?
        ));
        let made = Vault::init_with(&scratch, options.clone()).and_then(|_| files::read(&scratch.join(layout::CONFIG)));
        let _ = std::fs::remove_dir_all(&scratch);
        if !store.put_new(layout::CONFIG, made?.into())? {
            return Err(Error::AlreadyExists { path: PathBuf::from(url) });
        }
        Self::open_url(url, options, remote)
    }

    /// Whether the vault is on object storage.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Where the vault is: its URL, or its folder.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(r) => r.url.clone(),
            None => self.root.display().to_string(),
        }
    }

    pub(crate) fn remote(&self) -> Option<&Remote> {
        self.remote.as_deref()
    }
}

/// Makes the cache folder ready for a vault's config: a folder made for
/// another vault (or an older vault at the same URL) is emptied of what it
/// cached, if it says it is a cache; any other non-empty folder is refused.
fn prepare_cache(cache: &Path, url: &str, config: &[u8]) -> Result<()> {
    let marker = cache.join(CACHE_OF);
    let non_empty = std::fs::read_dir(cache).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && !marker.exists() {
        return Err(Error::invalid(
            format!("cache folder {} of vault {url}", cache.display()),
            "it is not empty and is no vmbackup cache (no cache-of file): name an empty or new folder",
        ));
    }
    files::mkdirs(cache)?;
    for d in layout::FOLDERS {
        files::mkdirs(&cache.join(d))?;
    }
    let current = std::fs::read(cache.join(layout::CONFIG)).ok();
    if current.as_deref() != Some(config) {
        // Another vault's cache: what it cached does not belong to this one.
        for d in [layout::INDEX, layout::SEGMENTS, layout::POINTS, layout::VMS, layout::MARKS] {
            let p = cache.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| Error::io("clear cache folder", &p, e))?;
            }
            files::mkdirs(&p)?;
        }
    }
    let local = LocalStore::new(beneath::VaultDir::open_root(cache)?);
    local.write_cached(layout::CONFIG, config)?;
    local.write_cached(CACHE_OF, format!("{url}\n").as_bytes())?;
    let lock = cache.join(layout::LOCK);
    if !lock.exists() {
        std::fs::write(&lock, b"").map_err(|e| Error::io("create", &lock, e))?;
    }
    Ok(())
}

impl Vault {
    /// Writes a new gc mark (create-only, under a name of its time and
    /// random digits).
    pub(crate) fn put_mark(&self, mark: &Mark) -> Result<()> {
        let name = format!("{}-{}.json", mark.created.strftime("%Y%m%dT%H%M%SZ"), random_hex(6, "a gc mark")?);
        let bytes = serde_json::to_vec(mark).map_err(|e| Error::invalid("gc mark", e.to_string()))?;
        let key = layout::mark(&name);
        if !self.store().put_new(&key, bytes.into())? {
            return Err(Error::io(
                "create",
                self.describe(&key),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        Ok(())
    }

    /// Removes a gc mark that was swept.
    pub(crate) fn remove_mark(&self, name: &str) -> Result<()> {
        validate_name("gc mark", name)?;
        self.store().delete(&layout::mark(name))
    }
}

impl Remote {
    /// The packs gc marks condemn, as of the last refresh.
    pub(crate) fn condemned(&self) -> HashSet<String> {
        self.condemned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a backup may deduplicate against a pack: no gc mark names it.
    pub(crate) fn dedup_allowed(&self, pack: &str) -> bool {
        !self.condemned.lock().unwrap_or_else(|p| p.into_inner()).contains(pack)
    }

    /// Every gc mark in the store (each fetched once into the cache).
    pub(crate) fn marks(&self, vault: &Vault) -> Result<Vec<(String, Mark)>> {
        let store = vault.store();
        let keys: Vec<String> =
            store.list(layout::MARKS)?.into_iter().map(|o| o.key).filter(|k| layout::mark_of(k).is_some()).collect();
        let mut out = Vec::new();
        for (key, got) in keys.iter().zip(store.get_many(&keys, MAX_MARK_LEN)?) {
            // A mark swept since the listing is gone: nothing to heed.
            let (Some(bytes), Some(name)) = (got, layout::mark_of(key)) else { continue };
            out.push((name.to_string(), Mark::parse(&bytes, &format!("gc mark {}", store.describe(key)))?));
        }
        Ok(out)
    }

    /// Notes the packs the gc marks condemn, so that no backup
    /// deduplicates against them, and drops the segments they condemn
    /// from the cache, so that a backup stores them anew. Returns whether
    /// the condemned packs changed.
    pub(crate) fn sync_marks(&self, vault: &Vault) -> Result<bool> {
        let marks = self.marks(vault)?;
        let now: HashSet<String> = marks.iter().flat_map(|(_, m)| m.packs.iter().cloned()).collect();
        let changed = {
            let mut condemned = self.condemned.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *condemned != now;
            *condemned = now;
            changed
        };
        let segments: Vec<String> = marks
            .iter()
            .flat_map(|(_, m)| &m.segments)
            .filter_map(|s| ContentId::from_hex(s).ok())
            .map(|id| layout::segment(&id))
            .collect();
        vault.store().uncache(&segments)?;
        Ok(changed)
    }

    /// Checks that a point may be committed (see the module doc), before
    /// its manifest is written with a create-only put. `own_packs`,
    /// `own_segments` and `own_chunks` are those this backup uploaded.
    pub(crate) fn check_commit(
        &self,
        vault: &Vault,
        m: &PointManifest,
        own_packs: &[String],
        own_segments: &[ContentId],
        own_chunks: &HashSet<ContentId>,
    ) -> Result<()> {
        let what = format!("point {} of vm {} in vault {}", m.id, m.vm, self.url);
        let refuse = |why: String| Error::CommitRaced { point: what.clone(), why };
        // What the point depends on besides what this backup uploaded: the
        // packs of the other chunks, by the chunk index as the backup used
        // it (refreshed only for a chunk it does not place).
        let segments: BTreeSet<ContentId> = m.disks.iter().flat_map(|d| d.segments.iter().copied()).collect();
        let mut packs: BTreeSet<String> = BTreeSet::new();
        let mut unplaced = Vec::new();
        for s in &segments {
            for id in vault.read_segment(s)?.into_iter().flatten().filter(|id| !own_chunks.contains(id)) {
                match vault.locate(&id) {
                    Some((_, p, _)) => {
                        packs.insert(p.to_string());
                    }
                    None => unplaced.push(id),
                }
            }
        }
        if !unplaced.is_empty() {
            vault.refresh_index()?;
            for id in unplaced {
                let (_, p, _) = vault.locate(&id).ok_or_else(|| {
                    refuse(format!("chunk {id} of the point is in no pack of the vault (gc removed its pack)"))
                })?;
                packs.insert(p.to_string());
            }
        }
        // (1) Nothing condemned. A segment's mark younger than half its grace
        // period is no obstacle: no sweep acts on it before the manifest,
        // written a moment from now, is there to spare the segment.
        let now = jiff::Timestamp::now();
        let young = |m: &Mark| {
            let age = now.duration_since(m.created).as_secs_f64();
            age < m.grace_secs as f64 / 2.0
        };
        let condemned: HashMap<String, String> = self
            .marks(vault)?
            .into_iter()
            .flat_map(|(name, mark)| {
                let segments = if young(&mark) { Vec::new() } else { mark.segments };
                mark.packs.into_iter().chain(segments).map(move |o| (o, name.clone())).collect::<Vec<_>>()
            })
            .collect();
        // The backup's own packs too: uploaded as they closed, they are
        // spared by its lease, unless that lapsed (a grace period shorter
        // than the lease's renewal).
        for p in packs.iter().chain(own_packs) {
            if let Some(mark) = condemned.get(p) {
                return Err(refuse(format!(
                    "gc marked pack {p}, which holds chunks of the point, for removal ({})",
                    layout::mark(mark)
                )));
            }
        }
        for s in &segments {
            if let Some(mark) = condemned.get(&s.to_hex()) {
                // The sweep will remove it from the store: the cache must
                // not vouch for it then, or the rerun would not upload it.
                vault.store().uncache(&[layout::segment(s)])?;
                return Err(refuse(format!(
                    "gc marked index segment {s} of the point for removal ({}); a segment is named by its \
                     content, so a backup can commit it again once a gc has swept that mark",
                    layout::mark(mark)
                )));
            }
        }
        // (2) What other backups wrote is still there.
        let own_p: HashSet<&String> = own_packs.iter().collect();
        let own_s: HashSet<&ContentId> = own_segments.iter().collect();
        let mut keys: Vec<String> = packs.iter().filter(|p| !own_p.contains(p)).map(|p| layout::pack(p)).collect();
        keys.extend(segments.iter().filter(|s| !own_s.contains(s)).map(layout::segment));
        let found = vault.store().head_many(&keys)?;
        let missing: Vec<&String> = keys.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(k, _)| k).collect();
        if !missing.is_empty() {
            // The cache trusted them: forget them, so that the rerun does not.
            let forget: Vec<String> = missing
                .iter()
                .map(|k| match layout::pack_of(k) {
                    Some(p) => layout::chunk_index(p),
                    None => (*k).clone(),
                })
                .collect();
            vault.store().uncache(&forget)?;
            vault.forget_index();
            return Err(refuse(format!(
                "{} object(s) the point needs are gone from the store (removed by gc), first {}",
                missing.len(),
                vault.describe(missing[0])
            )));
        }
        Ok(())
    }
}

/// What the tests of remote vaults share: the emulators `scripts/test`
/// starts, and URLs and hosts of a test's own.
#[cfg(all(test, feature = "object-store"))]
pub(crate) mod test_store {
    use std::path::Path;

    use super::RemoteOptions;
    use crate::model::random_hex;

    /// The endpoint an environment variable names (`VMB_AZURITE`,
    /// `VMB_S3`), or None with `test` reported as skipped (which fails it
    /// in CI).
    pub(crate) fn endpoint(env: &str, test: &str) -> Option<String> {
        match std::env::var(env) {
            Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
            _ => {
                testkit::skip(test, &format!("{env} is not set (scripts/test starts the emulator and sets it)"));
                None
            }
        }
    }

    /// `BASE-RANDOM`: a vault URL of a test's own.
    pub(crate) fn url(base: &str) -> String {
        format!("{base}-{}", random_hex(6, "a test").expect("random"))
    }

    /// One simulated host: the endpoint, and a cache folder of its own.
    pub(crate) fn host(endpoint: &str, cache: &Path) -> RemoteOptions {
        RemoteOptions { cache: Some(cache.to_path_buf()), endpoint: Some(endpoint.to_string()) }
    }
}

#[cfg(all(test, feature = "object-store"))]
mod tests {
    use super::*;
    use crate::{BackupOptions, ImageFileProvider, Vm, backup};

    /// A mark on a segment a new point needs: no obstacle while younger than
    /// half its grace period, a refusal past that. Against Azurite
    /// (`VMB_AZURITE`, set by scripts/test).
    #[test]
    fn a_young_mark_on_a_segment_lets_the_point_commit_a_ripe_one_does_not() {
        let Some(endpoint) = test_store::endpoint("VMB_AZURITE", "remote gc marks") else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let url = test_store::url("az://vmbackup/young-mark");
        let remote = test_store::host(&endpoint, &d.join("cache"));
        let vault = Vault::init_url(&url, VaultOptions::default(), &remote).expect("init");
        let data: Vec<u8> = (0..1u32 << 18).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
        let provider = ImageFileProvider::new();
        let point = |vm: &str| {
            let img = d.join(format!("{vm}.img"));
            std::fs::write(&img, &data).expect("image");
            backup(&vault, &provider, &Vm::from_images(vm, &[&img]).expect("vm"), &BackupOptions::default())
        };
        let first = point("a").expect("first backup").point;
        let segment = first.disks[0].segments[0].to_hex();
        let store = crate::vault::store::object::ObjectBackend::connect(&url, Some(&endpoint)).expect("store");
        let mark = |created: jiff::Timestamp, name: &str| {
            let m = Mark { created, grace_secs: 3600, packs: Vec::new(), segments: vec![segment.clone()] };
            store.put(&format!("gc/{name}.json"), serde_json::to_vec(&m).expect("json").into()).expect("put mark");
        };
        mark(jiff::Timestamp::now(), "young");
        point("b").expect("a young mark is no obstacle");
        store.delete_many(&["gc/young.json".to_string()]).expect("delete");
        let two_hours_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
        mark(two_hours_ago, "ripe");
        let e = point("c").expect_err("a ripe mark on the point's segment");
        assert!(e.to_string().contains("gc marked index segment") && e.to_string().contains(&url), "{e}");
        assert!(vault.points(Some("c")).expect("points").is_empty());
    }

    /// A marked pack is still read (a point committed just before the mark
    /// may need it until the sweep spares it), but never deduplicated
    /// against.
    #[test]
    fn a_marked_pack_is_read_but_not_deduplicated_against() {
        let Some(endpoint) = test_store::endpoint("VMB_AZURITE", "remote gc marks") else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let url = test_store::url("az://vmbackup/marked-pack");
        let remote = test_store::host(&endpoint, &d.join("cache"));
        let vault = Vault::init_url(&url, VaultOptions::default(), &remote).expect("init");
        let data: Vec<u8> = (0..1u32 << 18).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
        let img = d.join("a.img");
        std::fs::write(&img, &data).expect("image");
        let provider = ImageFileProvider::new();
        let first = backup(&vault, &provider, &Vm::from_images("a", &[&img]).expect("vm"), &BackupOptions::default())
            .expect("backup")
            .point;
        let store = crate::vault::store::object::ObjectBackend::connect(&url, Some(&endpoint)).expect("store");
        let packs: Vec<String> = store
            .list("packs/")
            .expect("list")
            .into_iter()
            .filter_map(|o| o.key.strip_prefix("packs/")?.strip_suffix(".pack").map(str::to_string))
            .collect();
        let m = Mark { created: jiff::Timestamp::now(), grace_secs: 3600, packs, segments: Vec::new() };
        store.put("gc/by-hand.json", serde_json::to_vec(&m).expect("json").into()).expect("put mark");
        // Another host restores the point from the marked packs.
        let other = RemoteOptions { cache: Some(d.join("other")), endpoint: Some(endpoint.clone()) };
        let reader = Vault::open_url(&url, VaultOptions::default(), &other).expect("open");
        let out = d.join("restored.img");
        crate::restore_disk_to_path(&reader, &first, "a.img", &out, &crate::RestoreOptions::default())
            .expect("restore from a marked pack");
        assert!(std::fs::read(&out).expect("restored") == data);
        // A backup of the same data stores it anew.
        let img_b = d.join("b.img");
        std::fs::write(&img_b, &data).expect("image");
        let b = backup(&reader, &provider, &Vm::from_images("b", &[&img_b]).expect("vm"), &BackupOptions::default())
            .expect("backup b");
        assert_eq!(b.point.stats.totals.bytes_deduplicated, 0, "deduplicated against a marked pack");
        assert!(b.point.stats.totals.bytes_new > 0);
    }

    /// The store's lock, asked of the S3 server (`VMB_S3`, set by
    /// scripts/test): a bucket without Object Lock refuses immutable days
    /// (nothing changed); on one with it (`vmbackup-locked`) the vault
    /// becomes immutable, and a backup, each object of which is then
    /// locked, commits; reopened, the vault locks with the days it reads.
    #[test]
    fn immutable_days_need_and_use_the_buckets_object_lock() {
        let Some(endpoint) = test_store::endpoint("VMB_S3", "s3 object lock") else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let remote = |cache: &str| test_store::host(&endpoint, &d.join(cache));
        let days = |n| crate::SettingsChange { immutable_days: Some(n), ..Default::default() };

        let plain = test_store::url("s3://vmbackup/lock-refused");
        let vault = Vault::init_url(&plain, VaultOptions::default(), &remote("plain")).expect("init");
        assert_eq!(vault.store_lock().expect("store lock"), crate::StoreLock::Disabled);
        let e = vault.change_settings(&days(2)).expect_err("no Object Lock");
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains(&plain), "{e}");
        assert_eq!(vault.settings().expect("settings").immutable_days, 0);

        let url = test_store::url("s3://vmbackup-locked/lock");
        let vault = Vault::init_url(&url, VaultOptions::default(), &remote("locked")).expect("init");
        assert_eq!(vault.store_lock().expect("store lock"), crate::StoreLock::Enabled);
        assert_eq!(vault.change_settings(&days(2)).expect("immutable").immutable_days, 2);
        let img = d.join("root.img");
        let data: Vec<u8> = (0..1u32 << 18).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
        std::fs::write(&img, &data).expect("image");
        let vm = Vm::from_images("web", &[&img]).expect("vm");
        let provider = ImageFileProvider::new();
        backup(&vault, &provider, &vm, &BackupOptions::default()).expect("a backup whose objects are locked");
        drop(vault);
        let again = Vault::open_url(&url, VaultOptions::default(), &remote("other")).expect("open");
        backup(&again, &provider, &vm, &BackupOptions::default()).expect("a second host's backup");
        assert_eq!(again.point_ids("web").expect("ids").len(), 2);
    }
}
