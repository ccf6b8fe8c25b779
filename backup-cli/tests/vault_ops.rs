//! One suite of vault operations, run alike on every store a vault can
//! live in: a local folder, Azure Blob (Azurite) and S3 (moto's server),
//! both of which `scripts/test` starts and names in `VMB_AZURITE` and
//! `VMB_S3`. Each test is one body; `on_every_store!` runs it on each
//! store as `<test>::local`, `<test>::azurite` and `<test>::s3`.
//!
//! Covered: a backup killed mid-flight whose finished packs the next
//! backup adopts; damage (a lost chunk index file, a flipped byte in a
//! pack) found by verify's pack scan, rebuilt by repair, and read past by
//! an allow-damaged restore; prune, and verify telling a pruned point
//! from a lost manifest; gc rewriting partly dead packs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use backup_core::{RemoteOptions, Vault, VaultOptions, VerifyOptions, testing, verify};
use testkit::{Rng, s};

const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");
/// The block size the backups use (the default).
const BLOCK: usize = 64 << 10;

/// Where a test's vault lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Azurite,
    S3,
}

/// A test's vault on one store, its scratch folder, and how the command
/// line reaches it (for a remote vault: its endpoint and this host's cache).
struct Place {
    kind: Kind,
    dir: tempfile::TempDir,
    /// The vault's folder or URL.
    vault: String,
    endpoint: Option<String>,
}

impl Place {
    /// A fresh place for `test` on `kind`, or None when the store is not
    /// running (testkit::skip says why, and fails the test in CI).
    fn new(kind: Kind, test: &str) -> Option<Place> {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = |var: &str, scheme: &str| -> Option<(String, Option<String>)> {
            if !cfg!(feature = "object-store") {
                testkit::skip(test, "built without the object-store feature");
                return None;
            }
            match std::env::var(var) {
                Ok(ep) if !ep.is_empty() => {
                    let mut r = [0u8; 6];
                    fs::File::open("/dev/urandom")
                        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r))
                        .expect("random");
                    let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
                    Some((format!("{scheme}://vmbackup/{test}-{tag}"), Some(ep)))
                }
                _ => {
                    testkit::skip(test, &format!("{var} is not set (scripts/test starts the store and sets it)"));
                    None
                }
            }
        };
        let (vault, endpoint) = match kind {
            Kind::Local => (dir.path().join("vault").display().to_string(), None),
            Kind::Azurite => remote("VMB_AZURITE", "az")?,
            Kind::S3 => remote("VMB_S3", "s3")?,
        };
        let place = Place { kind, dir, vault, endpoint };
        place.ok(&["init", &place.vault]);
        Some(place)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// This host's local folder of the vault: the vault itself, or its cache.
    fn local_folder(&self) -> PathBuf {
        match self.kind {
            Kind::Local => PathBuf::from(&self.vault),
            _ => self.path("cache"),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args);
        if let Some(ep) = &self.endpoint {
            c.arg("--cache").arg(self.path("cache")).arg("--endpoint").arg(ep);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run vmbackup")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{:?}: vmbackup {args:?} failed: {}{}",
            self.kind,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("one JSON object")
    }

    /// A backup of one image as VM `vm`, with small packs.
    fn backup(&self, vm: &str, image: &Path) -> serde_json::Value {
        self.json(&[
            "backup",
            "--vault",
            &self.vault,
            "--vm",
            vm,
            "--disk",
            s(image),
            "--json",
            "--pack-target-size",
            "256K",
        ])
    }

    /// The vault opened in this process, as another host would (its own cache).
    fn open(&self) -> Vault {
        let mut remote = RemoteOptions::default();
        remote.cache = Some(self.path("other-host"));
        remote.endpoint = self.endpoint.clone();
        Vault::open_location(&self.vault, VaultOptions::default(), &remote).expect("open the vault")
    }

    /// Restores a VM's disk of a point (latest if None) to `out`; the output.
    fn restore(&self, vm: &str, point: Option<&str>, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["restore", "--vault", &self.vault, "--vm", vm, "--disk", "disk.img", "--to", s(out)];
        if let Some(p) = point {
            args.extend(["--point", p]);
        }
        args.extend(extra);
        self.run(&args)
    }
}

/// Runs a test body on each store.
macro_rules! on_every_store {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn local() {
                if let Some(p) = Place::new(Kind::Local, stringify!($name)) {
                    super::$name(&p);
                }
            }
            #[test]
            fn azurite() {
                if let Some(p) = Place::new(Kind::Azurite, stringify!($name)) {
                    super::$name(&p);
                }
            }
            #[test]
            fn s3() {
                if let Some(p) = Place::new(Kind::S3, stringify!($name)) {
                    super::$name(&p);
                }
            }
        }
    };
}

/// The ids of the finished packs (with an index file) in backups' staging
/// folders under `tmp/` of a local folder.
fn staged_packs(folder: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(folder.join("tmp")).into_iter().flatten().flatten() {
        if let Ok(idx) = fs::read_dir(e.path().join("index")) {
            out.extend(idx.flatten().filter_map(|f| f.file_name().to_str()?.strip_suffix(".idx").map(str::to_string)));
        }
    }
    out
}

/// The ids of the packs a backup uploaded as they closed: their index
/// files, moved into the cache once uploaded (a remote vault's local
/// folder is its cache; a local vault publishes only at commit).
fn uploaded_packs(folder: &Path) -> Vec<String> {
    let idx = fs::read_dir(folder.join("index")).into_iter().flatten().flatten();
    idx.filter_map(|f| f.file_name().to_str()?.strip_suffix(".idx").map(str::to_string)).collect()
}

on_every_store!(a_killed_backups_finished_packs_are_adopted);
/// A backup killed (SIGKILL) once it has finished a pack leaves it staged,
/// or, on an object store, uploaded already; the next backup publishes
/// what is staged, deduplicates against it all, and the vault verifies and
/// restores bit for bit.
fn a_killed_backups_finished_packs_are_adopted(p: &Place) {
    let image = p.path("disk.img");
    let data = Rng(7).bytes(16 << 20);
    fs::write(&image, &data).expect("image");
    let args = ["backup", "--vault", &p.vault, "--vm", "kv", "--disk", s(&image), "--pack-target-size", "256K"];
    let mut child = p.cmd(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let started = Instant::now();
    let staged = loop {
        let mut staged = staged_packs(&p.local_folder());
        if p.kind != Kind::Local {
            staged.extend(uploaded_packs(&p.local_folder()));
        }
        if !staged.is_empty() {
            let _ = child.kill();
            break staged;
        }
        if child.try_wait().expect("wait").is_some() {
            panic!("{:?}: the backup ended before any pack was staged", p.kind);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{:?}: no pack staged in 2 minutes", p.kind);
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.wait();
    let vault = p.open();
    assert!(vault.points(Some("kv")).expect("points").is_empty(), "{:?}: the killed backup left a point", p.kind);
    let next = p.backup("kv", &image);
    let published = vault.pack_ids().expect("packs");
    for pack in &staged {
        assert!(published.contains(pack), "{:?}: finished pack {pack} was not adopted", p.kind);
    }
    assert!(
        next["bytes_deduplicated"].as_u64().expect("bytes_deduplicated") > 0,
        "{:?}: the next backup did not deduplicate against the adopted packs: {next}",
        p.kind
    );
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
    let out = p.path("restored.img");
    assert!(p.restore("kv", None, &out, &[]).status.success());
    assert!(fs::read(&out).expect("restored") == data, "{:?}: restore differs", p.kind);
}

on_every_store!(damage_is_found_repaired_and_read_past);
/// A lost chunk index file, one that names another pack's chunks, and a
/// flipped byte in a pack: the lost one is rebuilt from its pack's trailer
/// when the index is next loaded; verify's pack scan finds the damaged
/// frame and the wrong index file; repair rebuilds that and drops the
/// damaged chunk from the index; an allow-damaged restore writes every
/// other block; the next backup stores the damaged chunk anew.
fn damage_is_found_repaired_and_read_past(p: &Place) {
    let image = p.path("disk.img");
    let data = Rng(11).bytes(4 << 20);
    fs::write(&image, &data).expect("image");
    p.backup("vm", &image);
    let vault = p.open();
    let objects = testing::objects(&vault);
    let packs = objects.list("packs/").expect("list packs");
    assert!(packs.len() >= 4, "{:?}: {packs:?}", p.kind);
    let id = |key: &str| key.trim_start_matches("packs/").trim_end_matches(".pack").to_string();
    let (lost_idx, damaged, wrong_idx) = (id(&packs[0]), id(&packs[1]), id(&packs[2]));
    objects.delete(&format!("index/{lost_idx}.idx")).expect("delete an index file");
    let other = objects.get(&format!("index/{}.idx", id(&packs[3]))).expect("get").expect("an index file");
    objects.put(&format!("index/{wrong_idx}.idx"), other).expect("put a wrong index file");
    let mut bytes = objects.get(&packs[1]).expect("get").expect("the pack");
    // Into the first frame's payload: past the pack header and frame header.
    bytes[16 + 56 + 100] ^= 0x40;
    objects.put(&packs[1], bytes).expect("put the damaged pack");

    let vault = Vault::open_location(&p.vault, VaultOptions::default(), &{
        let mut r = RemoteOptions::default();
        r.cache = Some(p.path("third-host"));
        r.endpoint = p.endpoint.clone();
        r
    })
    .expect("open");
    let found = verify(&vault, &VerifyOptions::default()).expect("verify");
    assert!(
        found.problems.iter().any(|pr| pr.point.is_none() && pr.what.contains(&damaged)),
        "{:?}: the pack scan did not report pack {damaged}: {:?}",
        p.kind,
        found.problems
    );
    assert!(found.problems.iter().any(|pr| pr.point.is_some()), "{:?}: no point range reported", p.kind);
    assert!(
        found.problems.iter().any(|pr| pr.what.contains(&format!("chunk index file of pack {wrong_idx}"))),
        "{:?}: the wrong index file was not reported: {:?}",
        p.kind,
        found.problems
    );

    let out = p.run(&["repair", "--vault", &p.vault, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("repair JSON");
    assert_eq!(out.status.code(), Some(1), "{:?}: repair must say a point lost data: {report}", p.kind);
    let rebuilt = report["report"]["rebuilt"].as_array().expect("rebuilt");
    assert!(rebuilt.iter().any(|r| r["pack"] == wrong_idx.as_str()), "{:?}: {report}", p.kind);
    assert!(rebuilt.iter().any(|r| r["pack"] == damaged.as_str() && r["dropped"] == 1), "{:?}: {report}", p.kind);
    assert!(objects.get(&format!("index/{lost_idx}.idx")).expect("get").is_some(), "{:?}: not rebuilt", p.kind);

    // Every block but the damaged one comes back.
    let restored = p.path("restored.img");
    let r = p.restore("vm", None, &restored, &["--allow-damaged"]);
    let got = fs::read(&restored).expect("the allow-damaged restore wrote the disk");
    assert_eq!(got.len(), data.len());
    let bad: Vec<usize> = (0..data.len() / BLOCK)
        .filter(|b| got[b * BLOCK..(b + 1) * BLOCK] != data[b * BLOCK..(b + 1) * BLOCK])
        .collect();
    assert_eq!(bad.len(), 1, "{:?}: blocks that differ: {bad:?} ({})", p.kind, String::from_utf8_lossy(&r.stderr));

    // The chunk is stored anew by the next backup, whose point verifies
    // (through a handle opened after the repair, on a host of its own: one
    // opened before keeps the index it loaded, and a cache that holds the
    // wrong index file may miss its rewrite when the store's clock has
    // whole seconds; see the note in store/cached.rs).
    let next = p.backup("vm", &image);
    let vault = Vault::open_location(&p.vault, VaultOptions::default(), &{
        let mut r = RemoteOptions::default();
        r.cache = Some(p.path("fourth-host"));
        r.endpoint = p.endpoint.clone();
        r
    })
    .expect("open");
    assert!(next["bytes_new"].as_u64().expect("bytes_new") >= BLOCK as u64 / 2, "{:?}: {next}", p.kind);
    let mut options = VerifyOptions::default();
    options.vm = Some("vm".into());
    options.point = Some(next["point"].as_str().expect("point").to_string());
    let again = verify(&vault, &options).expect("verify the new point");
    assert!(again.ok(), "{:?}: {:?}", p.kind, again.problems);
}

const KEEP_LAST_1: &str =
    "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 1\n";

on_every_store!(prune_is_told_from_a_lost_manifest);
/// Points removed by prune are not lost manifests, on this host or on
/// another; a manifest deleted behind prune's back is.
fn prune_is_told_from_a_lost_manifest(p: &Place) {
    let image = p.path("disk.img");
    let mut data = Rng(3).bytes(2 << 20);
    let mut points = Vec::new();
    for round in 0..3u8 {
        data[usize::from(round) * BLOCK] ^= 0xff;
        fs::write(&image, &data).expect("image");
        points.push(p.backup("vm", &image)["point"].as_str().expect("point").to_string());
    }
    let policy = p.path("policy.toml");
    fs::write(&policy, KEEP_LAST_1).expect("policy");
    let pruned = p.json(&["prune", "--vault", &p.vault, "--policy", s(&policy), "--json"]);
    assert_eq!(pruned["removed"].as_array().expect("removed").len(), 2, "{:?}: {pruned}", p.kind);
    // This host holds the job logs; the other host's verify has none.
    let here = p.json(&["verify", "--vault", &p.vault, "--json"]);
    assert_eq!(here["ok"], true, "{:?}: {here}", p.kind);
    assert!(verify(&p.open(), &VerifyOptions::default()).expect("verify").ok());
    // The newest manifest, deleted behind prune's back, is lost.
    let vault = p.open();
    testing::objects(&vault).delete(&format!("points/vm/{}", points[2])).expect("delete a manifest");
    let lost = p.run(&["verify", "--vault", &p.vault, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&lost.stdout).expect("verify JSON");
    let text = report.to_string();
    assert!(
        !lost.status.success() && text.contains("manifest missing") && text.contains(&points[2]),
        "{:?}: {text}",
        p.kind
    );
    for gone in &points[..2] {
        assert!(!text.contains(gone.as_str()), "{:?}: pruned point {gone} reported: {text}", p.kind);
    }
}

on_every_store!(gc_rewrites_partly_dead_packs);
/// After prune, gc removes dead packs and rewrites partly dead ones (on a
/// shared store: marks them in a first run, removes them in a second);
/// the vault shrinks, verifies, and the kept point restores bit for bit.
fn gc_rewrites_partly_dead_packs(p: &Place) {
    let image = p.path("disk.img");
    let mut data = Rng(5).bytes(4 << 20);
    fs::write(&image, &data).expect("image");
    p.backup("vm", &image);
    // Every other block changes: every pack of the first point is half dead.
    for b in (0..data.len() / BLOCK).step_by(2) {
        data[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&Rng(b as u64 + 100).bytes(BLOCK));
    }
    fs::write(&image, &data).expect("image");
    let kept = p.backup("vm", &image)["point"].as_str().expect("point").to_string();
    let policy = p.path("policy.toml");
    fs::write(&policy, KEEP_LAST_1).expect("policy");
    p.ok(&["prune", "--vault", &p.vault, "--policy", s(&policy)]);
    let vault = p.open();
    let stored = |v: &Vault| -> u64 {
        let objects = testing::objects(v);
        objects
            .list("packs/")
            .expect("list")
            .iter()
            .map(|k| objects.get(k).expect("get").map_or(0, |b| b.len() as u64))
            .sum()
    };
    let before = stored(&vault);
    // The pruned point's days as soft-deleted, over (a rehearsal).
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(15 * 24)).to_string();
    let gc = ["gc", "--vault", &p.vault, "--grace", "0", "--repack-threshold", "0.3", "--now", &later, "--json"];
    let first = p.json(&gc);
    assert!(first["packs_repacked"].as_u64().expect("packs_repacked") > 0, "{:?}: {first}", p.kind);
    if !matches!(p.kind, Kind::Local) {
        assert!(first["packs_marked"].as_u64().expect("packs_marked") > 0, "{:?}: {first}", p.kind);
        assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok(), "between the two phases");
        std::thread::sleep(Duration::from_millis(1100));
        let second = p.json(&gc);
        assert!(second["packs_removed"].as_u64().expect("packs_removed") > 0, "{:?}: {second}", p.kind);
    }
    let after = stored(&vault);
    assert!(after * 4 < before * 3, "{:?}: packs hold {after} bytes after gc, {before} before", p.kind);
    assert!(verify(&vault, &VerifyOptions::default()).expect("verify").ok());
    let out = p.path("restored.img");
    assert!(p.restore("vm", Some(&kept), &out, &[]).status.success());
    assert!(fs::read(&out).expect("restored") == data, "{:?}: restore after gc differs", p.kind);
}
