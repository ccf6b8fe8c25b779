//! Leases: how a backup in flight on a shared vault tells gc on other
//! hosts that the packs it has uploaded, which no manifest names yet, are
//! not dead.
//!
//! A backup into an object store uploads each pack, with its index file,
//! as soon as the pack closes, long before the manifest that will name it.
//! gc condemns a pack that no point needs once it was written more than
//! the grace period ago, and a full backup of a large disk can outlast
//! the grace period. So the backup holds a lease, `leases/<name>.json`:
//! written before its first upload, rewritten every [`RENEW_EVERY`] by a
//! thread of its own, removed when the backup ends. gc spares every pack
//! written since the start of a live lease (one the store says was
//! rewritten within the grace period), less [`CLOCK_SKEW`] for the hosts'
//! clocks. A lease whose host died stops being rewritten, is no longer
//! live after the grace period, and the next gc removes it. A lease that
//! cannot be read spares every pack while it is live.
//!
//! A grace period shorter than [`RENEW_EVERY`] lets a lease lapse between
//! two renewals; the pre-commit check (`vault::remote`) then refuses a
//! point whose own packs gc marked, and the rerun stores them anew.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::layout;
use super::store::Store;
use crate::error::{Error, Result};
use crate::model::random_hex;

/// How often a held lease is rewritten.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(60);

/// How far the clock of a backup's host may be ahead of the store's
/// without gc condemning that backup's first packs.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How long after its last rewrite a lease still says that its backup may
/// be in flight, to a reader that only needs a hint (verify): three
/// renewals, plus the clocks' skew.
pub(crate) const IN_FLIGHT_WINDOW: Duration = Duration::from_secs(3 * 60 + 5 * 60);

/// The largest lease read.
const MAX_LEASE_LEN: u64 = 4096;

/// What a lease says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    /// When the backup started, by its host's clock.
    started: jiff::Timestamp,
    /// The host and process holding it, for whoever lists the leases.
    host: String,
    pid: u32,
}

/// A lease held by this process, rewritten on a thread of its own until
/// dropped; dropping it removes it from the store.
pub(crate) struct HeldLease {
    store: Arc<dyn Store>,
    key: String,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl HeldLease {
    /// Writes a new lease and starts renewing it.
    pub(crate) fn take(store: Arc<dyn Store>) -> Result<HeldLease> {
        Self::take_renewing(store, RENEW_EVERY)
    }

    /// [`take`](Self::take), renewing every `interval`.
    fn take_renewing(store: Arc<dyn Store>, interval: Duration) -> Result<HeldLease> {
        let lease = Lease { started: jiff::Timestamp::now(), host: host_name(), pid: std::process::id() };
        let name = format!("{}-{}", lease.started.strftime("%Y%m%dT%H%M%SZ"), random_hex(8, "a lease name")?);
        let key = layout::lease(&name);
        let bytes = bytes::Bytes::from(serde_json::to_vec(&lease).map_err(|e| Error::invalid("lease", e.to_string()))?);
        store.put(&key, bytes.clone())?;
        let (stop, stopped) = mpsc::channel::<()>();
        let (s, k) = (store.clone(), key.clone());
        let renewer = std::thread::Builder::new()
            .name("vmbackup-lease".into())
            .spawn(move || {
                // A failed renewal is retried at the next; if the lease
                // lapses, the pre-commit check catches what gc marked.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let _ = s.put(&k, bytes.clone());
                }
            })
            .map_err(|e| Error::io("start a thread to renew", store.describe(&key), e))?;
        Ok(HeldLease { store, key, stop: Some(stop), renewer: Some(renewer) })
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let _ = self.store.delete(&self.key);
    }
}

/// What the leases in a store say to a gc.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// Packs written at or after this time belong to a backup in flight.
    pub spare_since: Option<SystemTime>,
    /// Leases no longer live (their holder died): to remove.
    pub stale: Vec<String>,
}

/// Reads the leases of a store; `cutoff` is now less the grace period.
/// Store timestamps may be cut to the second (HTTP dates), so a grace
/// period should exceed [`RENEW_EVERY`] by more than a second.
pub(crate) fn read(store: &dyn Store, cutoff: SystemTime) -> Result<Leases> {
    let listed: Vec<_> =
        store.list(layout::LEASES)?.into_iter().filter(|o| layout::lease_of(&o.key).is_some()).collect();
    let (live, stale): (Vec<_>, Vec<_>) = listed.into_iter().partition(|o| o.modified >= cutoff);
    let keys: Vec<String> = live.iter().map(|o| o.key.clone()).collect();
    let mut spare_since: Option<SystemTime> = None;
    for got in store.get_many(&keys, MAX_LEASE_LEN)? {
        // Removed since the listing: its backup ended.
        let Some(bytes) = got else { continue };
        let since = match serde_json::from_slice::<Lease>(&bytes) {
            Ok(lease) => SystemTime::from(lease.started).checked_sub(CLOCK_SKEW).unwrap_or(SystemTime::UNIX_EPOCH),
            Err(_) => SystemTime::UNIX_EPOCH,
        };
        spare_since = Some(spare_since.map_or(since, |s| s.min(since)));
    }
    Ok(Leases { spare_since, stale: stale.into_iter().map(|o| o.key).collect() })
}

/// Whether a lease in the store was rewritten at or after `cutoff`: a
/// backup of some host may be in flight (between uploading a pack and its
/// chunk index file, say).
pub(crate) fn any_live(store: &dyn Store, cutoff: SystemTime) -> Result<bool> {
    Ok(store.list(layout::LEASES)?.iter().any(|o| layout::lease_of(&o.key).is_some() && o.modified >= cutoff))
}

/// This host's name, for a lease's reader.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[cfg(all(test, feature = "object-store"))]
mod tests {
    use super::*;
    use crate::vault::remote::test_store;
    use crate::vault::{Codec, Vault, VaultOptions, VaultSink};
    use crate::{GcOptions, gc};

    /// A new vault in Azurite (`VMB_AZURITE`, set by scripts/test) at
    /// `BASE-RANDOM` whose packs close at 64 KiB, with the folder of its
    /// cache; None (skipped) without Azurite.
    fn vault_of_small_packs(test: &str, base: &str) -> Option<(tempfile::TempDir, Vault)> {
        let endpoint = test_store::endpoint("VMB_AZURITE", test)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = test_store::host(&endpoint, &dir.path().join("cache"));
        let options = VaultOptions { pack_target_size: 64 << 10, ..VaultOptions::default() };
        let vault = Vault::init_url(&test_store::url(base), options, &remote).expect("init");
        Some((dir, vault))
    }

    /// Stores `n` chunks of 100 kB (a pack each) in a backup that then
    /// fails: the packs are uploaded, and no point names them.
    fn upload_unnamed_packs(vault: &Vault, n: u32) {
        let session = vault.begin_backup().expect("session");
        for i in 0..n {
            let data: Vec<u8> = (0..100_000u32).map(|j| (j.wrapping_mul(2_654_435_761) ^ i) as u8).collect();
            let id = session.chunk_id(&data);
            session.put_chunk(&id, Codec::Raw, data.len() as u32, data.into()).expect("put chunk");
        }
    }

    /// A backup that uploaded packs and then failed leaves them, named by
    /// no point. While another backup's lease is live, gc spares them
    /// (they might be its own); once no lease is live, gc marks them, and
    /// removes a lease that is no longer renewed. Against Azurite
    /// (`VMB_AZURITE`, set by scripts/test). The grace period is 3 s, 15
    /// renewals: with 1 s, Azurite's timestamps, cut to the second, once
    /// made gc take the live lease for a lapsed one.
    #[test]
    fn a_live_lease_spares_packs_uploaded_before_a_manifest_and_a_lapsed_one_is_removed() {
        let Some((_dir, vault)) = vault_of_small_packs("leases", "az://vmbackup/lease") else { return };
        let store = vault.store_handle();
        let packs = || store.list(layout::PACKS).expect("list packs").len() as u64;
        let in_flight = HeldLease::take_renewing(store.clone(), Duration::from_millis(200)).expect("lease");
        upload_unnamed_packs(&vault, 8);
        let uploaded = packs();
        assert!(uploaded >= 4, "only {uploaded} packs uploaded before the manifest");
        std::thread::sleep(Duration::from_millis(3500));
        let options = GcOptions { grace: Duration::from_secs(3), ..GcOptions::default() };
        let r = gc(&vault, &options).expect("gc under a live lease");
        assert_eq!(r.packs_marked, 0, "gc marked packs while a backup's lease was live: {r:?}");
        assert!(r.protected >= uploaded, "{r:?}");
        drop(in_flight);
        let dead = layout::lease("dead-host");
        let lease = Lease { started: jiff::Timestamp::now(), host: "dead".into(), pid: 1 };
        store.put(&dead, serde_json::to_vec(&lease).expect("json").into()).expect("put lease");
        std::thread::sleep(Duration::from_millis(3500));
        let r = gc(&vault, &options).expect("gc with a lapsed lease");
        assert_eq!(r.packs_marked, uploaded, "{r:?}");
        assert!(store.head(&dead).expect("head").is_none(), "gc left a lapsed lease");
        assert!(store.list(layout::LEASES).expect("list leases").is_empty());
    }

    /// A pack whose chunk index file is missing: verify says so, unless a
    /// backup may be publishing it, which on a shared store a live lease of
    /// any host says (here this process's, with no session of its own
    /// alive, as another host's would look). Against Azurite.
    #[test]
    fn verify_spares_a_missing_index_file_while_a_lease_is_live() {
        let Some((_dir, vault)) = vault_of_small_packs("leases and verify", "az://vmbackup/lease-verify") else {
            return;
        };
        upload_unnamed_packs(&vault, 4);
        // Verify loads the packs into the vault's index (a pack it has not
        // seen has its index file rebuilt from its trailer on loading).
        assert!(crate::verify(&vault, &crate::VerifyOptions::default()).expect("verify").ok());
        let store = vault.store_handle();
        let idx = store.list(layout::INDEX).expect("list").into_iter().next().expect("an index file").key;
        store.delete(&idx).expect("delete the index file");
        let lease = HeldLease::take(store.clone()).expect("lease");
        let report = crate::verify(&vault, &crate::VerifyOptions::default()).expect("verify");
        assert!(report.ok(), "a backup may be publishing that index file: {:?}", report.problems);
        drop(lease);
        let report = crate::verify(&vault, &crate::VerifyOptions::default()).expect("verify");
        let said = format!("{:?}", report.problems);
        assert!(!report.ok() && said.contains(&idx), "{said}");
    }
}
