//! The remote vault's gc protocol across hosts, against Azurite (see
//! `scripts/azurite.sh`; `scripts/test` sets `VMB_AZURITE`): a backup that
//! deduplicates against a pack which another host's gc condemns while the
//! backup runs must not commit; its rerun stores the chunks anew and
//! commits; the sweep then removes the condemned pack and every point
//! still restores.
#![cfg(feature = "object-store")]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use backup_core::*;

fn azurite(test: &str) -> Option<String> {
    match std::env::var("VMB_AZURITE") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            testkit::skip(test, "VMB_AZURITE is not set (scripts/test starts Azurite and sets it)");
            None
        }
    }
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    testkit::Rng(seed).bytes(n)
}

/// One simulated host: its own cache folder.
fn host(endpoint: &str, cache: &Path) -> RemoteOptions {
    let mut o = RemoteOptions::default();
    o.cache = Some(cache.to_path_buf());
    o.endpoint = Some(endpoint.to_string());
    o
}

fn options() -> VaultOptions {
    let mut o = VaultOptions::default();
    o.pack_target_size = 1 << 20;
    o
}

/// gc with no grace period, run as if the soft-delete days of every point
/// pruned so far were over (15 days from now).
fn grace0() -> GcOptions {
    let mut o = GcOptions::default();
    o.grace = std::time::Duration::ZERO;
    o.now = Some(std::time::SystemTime::now() + std::time::Duration::from_secs(15 * 86_400));
    o
}

/// Runs a gc on another host the first time the backup reports progress:
/// after the backup loaded its chunk index, before it commits.
struct GcMidway {
    other: Mutex<Option<Vault>>,
    done: AtomicBool,
    report: Mutex<Option<Result<GcReport>>>,
}

impl Progress for GcMidway {
    fn start(&self, _total: u64) {
        if !self.done.swap(true, Ordering::SeqCst)
            && let Some(v) = self.other.lock().expect("lock").take()
        {
            *self.report.lock().expect("lock") = Some(gc(&v, &grace0()));
        }
    }
}

#[test]
fn a_backup_never_commits_against_a_pack_condemned_while_it_ran() {
    let Some(ep) = azurite("gc protocol") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut r = [0u8; 4];
    getrandom_bytes(&mut r);
    let url = format!("az://vmbackup/gcprotocol-{:02x}{:02x}{:02x}{:02x}", r[0], r[1], r[2], r[3]);
    let a = Vault::init_url(&url, options(), &host(&ep, &d.join("host-a"))).expect("init");
    let old = random(3 << 20, 5);
    let img = d.join("a.img");
    std::fs::write(&img, &old).expect("image");
    let provider = ImageFileProvider::new();
    let vm_a = Vm::from_images("a", &[&img]).expect("vm");
    let p1 = backup(&a, &provider, &vm_a, &BackupOptions::default()).expect("first backup").point;
    std::fs::write(&img, random(3 << 20, 6)).expect("image");
    backup(&a, &provider, &vm_a, &BackupOptions::default()).expect("second backup");
    // The first point goes: its packs hold no chunk a point needs.
    let policy = Policy::from_toml_str(
        "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 1\n",
    )
    .expect("policy");
    let plan = prune_plan(&a, &policy.retention, jiff::Timestamp::now(), &PruneOptions::default()).expect("plan");
    assert_eq!(prune(&a, &plan).expect("prune").removed.len(), 1);

    // Host B backs up VM b holding exactly the pruned point's data: it
    // deduplicates against those packs, which host C's gc marks meanwhile.
    let b = Vault::open_url(&url, options(), &host(&ep, &d.join("host-b"))).expect("open b");
    let c = Vault::open_url(&url, options(), &host(&ep, &d.join("host-c"))).expect("open c");
    let img_b = d.join("b.img");
    std::fs::write(&img_b, &old).expect("image");
    let vm_b = Vm::from_images("b", &[&img_b]).expect("vm");
    let midway =
        Arc::new(GcMidway { other: Mutex::new(Some(c)), done: AtomicBool::new(false), report: Mutex::new(None) });
    let mut o = BackupOptions::default();
    o.progress = midway.clone();
    o.retries = 0;
    let refused = backup(&b, &provider, &vm_b, &o).expect_err("a point naming a condemned pack must not commit");
    let marked = midway.report.lock().expect("lock").take().expect("gc ran").expect("gc");
    assert!(marked.packs_marked >= 3, "{marked:?}");
    assert!(refused.to_string().contains("gc marked pack"), "{refused}");
    assert!(b.points(Some("b")).expect("points").is_empty(), "the refused point is visible");

    // The point's segment is the pruned point's, also marked (and, with a
    // grace period of 0, past its young half): the rerun is refused too,
    // until a gc sweeps the mark.
    let refused = backup(&b, &provider, &vm_b, &o).expect_err("a point naming a condemned segment must not commit");
    assert!(refused.to_string().contains("gc marked index segment"), "{refused}");
    let swept = gc(&b, &grace0()).expect("sweep");
    assert_eq!(swept.packs_removed, marked.packs_marked, "{swept:?}");
    assert_eq!(swept.segments_removed, marked.segments_marked, "{swept:?}");
    // Now the rerun stores the chunks and the segment anew, and commits.
    let again = backup(&b, &provider, &vm_b, &o).expect("rerun");
    assert_eq!(again.point.stats.totals.bytes_deduplicated, 0, "the rerun deduplicated against condemned packs");
    assert!(verify(&b, &VerifyOptions::default()).expect("verify").ok());
    let out = d.join("b.restored");
    let point = b.find_point("b", "latest").expect("point");
    restore_disk_to_path(&b, &point, "b.img", &out, &RestoreOptions::default()).expect("restore");
    assert!(std::fs::read(&out).expect("restored") == old, "vm b restored differently");
    assert!(a.find_point("a", &p1.id).is_err(), "the pruned point is back");
}

fn getrandom_bytes(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("random");
}

#[test]
fn an_encrypted_vault_on_object_storage_round_trips_and_its_key_slots_live_in_the_store() {
    let Some(ep) = azurite("encrypted remote vault") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut r = [0u8; 4];
    getrandom_bytes(&mut r);
    let url = format!("az://vmbackup/encrypted-{:02x}{:02x}{:02x}{:02x}", r[0], r[1], r[2], r[3]);
    let keyed = |p: &str| {
        let mut o = options().with_key(KeySource::passphrase(p));
        o.kdf = KdfParams::new(1024, 1, 1); // cheap, for the test
        o
    };
    let a = Vault::init_url(&url, keyed("first passphrase"), &host(&ep, &d.join("host-a"))).expect("init");
    assert!(a.is_encrypted());
    let data = random(2 << 20, 11);
    let img = d.join("e.img");
    std::fs::write(&img, &data).expect("image");
    let vm = Vm::from_images("e", &[&img]).expect("vm");
    let point = backup(&a, &ImageFileProvider::new(), &vm, &BackupOptions::default()).expect("backup").point;

    // Another host: no key, a wrong one, then the right one.
    let b_cache = d.join("host-b");
    assert!(matches!(Vault::open_url(&url, options(), &host(&ep, &b_cache)), Err(Error::KeyRequired { .. })));
    assert!(matches!(Vault::open_url(&url, keyed("wrong"), &host(&ep, &b_cache)), Err(Error::WrongKey { .. })));
    let b = Vault::open_url(&url, keyed("first passphrase"), &host(&ep, &b_cache)).expect("open b");
    let out = d.join("restored.img");
    restore_disk_to_path(&b, &point, "0", &out, &RestoreOptions::default()).expect("restore");
    assert!(std::fs::read(&out).expect("read") == data);
    assert!(verify(&b, &VerifyOptions::default()).expect("verify").ok());

    // A slot added on host A is in the store: a third host with a fresh
    // cache opens the vault with it.
    a.add_key(&KeySource::passphrase("second passphrase")).expect("add key");
    let c = Vault::open_url(&url, keyed("second passphrase"), &host(&ep, &d.join("host-c"))).expect("open c");
    assert_eq!(c.key_slots().expect("slots").len(), 2);
    restore_disk_to_path(&c, &point, "0", &d.join("c.img"), &RestoreOptions::default()).expect("restore c");
    assert!(std::fs::read(d.join("c.img")).expect("read") == data);
}
