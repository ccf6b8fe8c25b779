//! `vmbackup` against a vault on object storage: Azurite (Microsoft's Azure
//! Storage emulator), which `scripts/test` installs, starts and names in
//! `VMB_AZURITE` (see `scripts/azurite.sh`). Without it each test says why
//! it is skipped. Every test uses its own prefix in the container
//! `vmbackup`, and its own cache folders (one per simulated host).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use testkit::{Rng, s};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");

/// The emulator's endpoint, or None (with the reason printed).
fn azurite(test: &str) -> Option<String> {
    if !cfg!(feature = "object-store") {
        testkit::skip(test, "built without the object-store feature");
        return None;
    }
    match std::env::var("VMB_AZURITE") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            testkit::skip(test, "VMB_AZURITE is not set (scripts/test starts Azurite and sets it)");
            None
        }
    }
}

/// The S3-compatible server's endpoint (moto's, which `scripts/test`
/// starts with `scripts/s3server.sh` and names in `VMB_S3`), or None with
/// the reason printed.
fn s3_server(test: &str) -> Option<String> {
    if !cfg!(feature = "object-store") {
        testkit::skip(test, "built without the object-store feature");
        return None;
    }
    match std::env::var("VMB_S3") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            testkit::skip(test, "VMB_S3 is not set (scripts/test starts an S3 server and sets it)");
            None
        }
    }
}

/// A vault URL of its own for a test, in Azurite's container `vmbackup`.
fn vault_url(test: &str) -> String {
    store_url("az", test)
}

/// A vault URL of its own for a test: `SCHEME://vmbackup/TEST-RANDOM`.
fn store_url(scheme: &str, test: &str) -> String {
    let mut r = [0u8; 6];
    fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut r)).expect("random");
    format!("{scheme}://vmbackup/{test}-{}", r.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A `vmbackup` command for one simulated host (its cache folder) talking
/// to the emulator at `endpoint`.
fn cmd(endpoint: &str, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).arg("--cache").arg(cache).arg("--endpoint").arg(endpoint);
    c
}

fn ok(endpoint: &str, cache: &Path, args: &[&str]) -> String {
    check(cmd(endpoint, cache, args).output().expect("run vmbackup"), args)
}

fn check(out: Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "vmbackup {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(endpoint: &str, cache: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(endpoint, cache, args)).expect("one JSON object")
}

const KEEP_LAST_1: &str =
    "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 1\n";

#[test]
fn init_full_incremental_restore_verify_prune_gc_round_trip() {
    let Some(ep) = azurite("round trip") else { return };
    round_trip(&ep, &vault_url("roundtrip"));
}

#[test]
fn the_same_round_trip_on_s3() {
    let Some(ep) = s3_server("s3 round trip") else { return };
    round_trip(&ep, &store_url("s3", "roundtrip"));
}

/// init, a full and an incremental backup, restores of both points on
/// another host, verify, prune, gc in its two phases, and a restore after.
fn round_trip(ep: &str, url: &str) {
    let (ep, url) = (ep.to_string(), url.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let host = d.join("cache");
    let img = d.join("root.img");
    let first = Rng(1).bytes(6 << 20);
    fs::write(&img, &first).expect("image");
    ok(&ep, &host, &["init", &url]);
    let again = cmd(&ep, &host, &["init", &url]).output().expect("run");
    assert!(!again.status.success(), "a second init at the same URL must fail");
    assert!(String::from_utf8_lossy(&again.stderr).contains(&url), "{}", String::from_utf8_lossy(&again.stderr));

    let small = ["--pack-target-size", "1M"];
    let full = json(
        &ep,
        &host,
        &[&["backup", "--vault", &url, "--vm", "web", "--disk", s(&img), "--json"][..], &small].concat(),
    );
    assert_eq!(full["bytes_new"], 6 << 20);
    // Incremental: one block changed, the rest found in the store's index.
    let mut second = first.clone();
    second[3 << 20] ^= 0xff;
    fs::write(&img, &second).expect("image");
    let incr = json(
        &ep,
        &host,
        &[&["backup", "--vault", &url, "--vm", "web", "--disk", s(&img), "--json"][..], &small].concat(),
    );
    assert_eq!(incr["bytes_new"], 64 << 10);

    // Another host (a fresh cache) sees both points and restores each bit for bit.
    let other = d.join("other-cache");
    let list = json(&ep, &other, &["list", "--vault", &url, "--vm", "web", "--json"]);
    let points = list["points"].as_array().expect("points").clone();
    assert_eq!(points.len(), 2, "{list}");
    for (p, want) in points.iter().zip([&first, &second]) {
        let out = d.join(format!("r-{}.img", p["point"].as_str().expect("point id")));
        let id = p["point"].as_str().expect("point id");
        ok(
            &ep,
            &other,
            &["restore", "--vault", &url, "--vm", "web", "--point", id, "--disk", "root.img", "--to", s(&out)],
        );
        assert!(fs::read(&out).expect("restored") == *want, "point {id} restored differently");
    }
    ok(&ep, &other, &["verify", "--vault", &url]);

    // A third backup of wholly new data makes the first two points' packs
    // dead once they are pruned: gc marks them, a later gc removes them.
    let third = Rng(2).bytes(6 << 20);
    fs::write(&img, &third).expect("image");
    ok(&ep, &host, &[&["backup", "--vault", &url, "--vm", "web", "--disk", s(&img)][..], &small].concat());
    let policy = d.join("policy.toml");
    fs::write(&policy, KEEP_LAST_1).expect("policy");
    ok(&ep, &host, &["prune", "--vault", &url, "--policy", s(&policy)]);
    // The pruned points are soft-deleted: another host lists them, gc keeps
    // their data, and one comes back whole on the other host.
    let deleted = json(&ep, &other, &["list", "--vault", &url, "--deleted", "--json"]);
    assert_eq!(deleted["deleted"].as_array().map(Vec::len), Some(2), "{deleted}");
    let held = json(&ep, &host, &["gc", "--vault", &url, "--grace", "0", "--json"]);
    assert_eq!((held["deleted_points_kept"].as_u64(), held["packs_marked"].as_u64()), (Some(2), Some(0)), "{held}");
    let first_id = points[0]["point"].as_str().expect("point id");
    ok(&ep, &other, &["undelete", "--vault", &url, "--vm", "web", "--point", first_id]);
    let out = d.join("undeleted.img");
    ok(
        &ep,
        &host,
        &["restore", "--vault", &url, "--vm", "web", "--point", first_id, "--disk", "root.img", "--to", s(&out)],
    );
    assert!(fs::read(&out).expect("restored") == first, "the undeleted point restored differently");
    ok(&ep, &host, &["delete", "--vault", &url, "--vm", "web", "--point", first_id]);
    // Fifteen days on (a rehearsal), their days are over.
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(15 * 24)).to_string();
    let mark = json(&ep, &host, &["gc", "--vault", &url, "--grace", "0", "--now", &later, "--json"]);
    assert_eq!(mark["deleted_points_purged"], 2, "{mark}");
    assert!(mark["packs_marked"].as_u64().expect("packs_marked") >= 6, "{mark}");
    assert_eq!(mark["packs_removed"], 0, "the first phase only marks: {mark}");
    let sweep = json(&ep, &other, &["gc", "--vault", &url, "--grace", "0", "--json"]);
    assert_eq!(sweep["packs_removed"], mark["packs_marked"], "{sweep}");
    assert!(sweep["segments_removed"].as_u64().expect("segments_removed") >= 1, "{sweep}");
    let report = json(&ep, &other, &["verify", "--vault", &url, "--json"]);
    assert_eq!(report["report"]["problems"].as_array().map(Vec::len), Some(0), "{report}");
    let out = d.join("final.img");
    ok(&ep, &host, &["restore", "--vault", &url, "--vm", "web", "--disk", "root.img", "--to", s(&out)]);
    assert!(fs::read(&out).expect("restored") == third, "the kept point restored differently after gc");
}

#[test]
fn a_remote_vault_mounts_and_reads_back_from_another_host() {
    let Some(ep) = azurite("remote mount") else { return };
    if !std::path::Path::new("/dev/fuse").exists() || !testkit::have("fusermount3") {
        testkit::skip("remote mount", "no /dev/fuse or no fusermount3 (Debian package fuse3)");
        return;
    }
    let url = vault_url("mount");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let img = d.join("root.img");
    let data = Rng(7).bytes(5 << 20);
    fs::write(&img, &data).expect("image");
    ok(&ep, &d.join("cache"), &["init", &url]);
    ok(
        &ep,
        &d.join("cache"),
        &["backup", "--vault", &url, "--vm", "web", "--disk", s(&img), "--pack-target-size", "1M"],
    );
    // Another host, with an empty cache: every read comes from the store.
    let at = d.join("mnt");
    let mount = common::Mount::start(
        cmd(&ep, &d.join("other"), &["mount", "--vault", &url, "--vm", "web", s(&at)]),
        &at,
        "web",
    );
    let point = fs::read_dir(at.join("web")).expect("vm").next().expect("a point").expect("entry").path();
    assert!(fs::read(point.join("root.img")).expect("read the mounted disk") == data, "the mounted disk differs");
    let (status, err) = mount.stop();
    assert!(status.success(), "{err}");
}

#[test]
fn two_hosts_back_up_different_vms_into_one_vault_at_once() {
    let Some(ep) = azurite("two hosts") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let url = vault_url("twohosts");
    ok(&ep, &d.join("init-cache"), &["init", &url]);
    // Both images share their first half, so the hosts also deduplicate
    // against each other's packs when one finishes first.
    let shared = Rng(7).bytes(4 << 20);
    let images: Vec<(String, PathBuf, Vec<u8>)> = (0..2u64)
        .map(|i| {
            let data = [shared.clone(), Rng(100 + i).bytes(4 << 20)].concat();
            let path = d.join(format!("vm{i}.img"));
            fs::write(&path, &data).expect("image");
            (format!("vm{i}"), path, data)
        })
        .collect();
    let children: Vec<(Child, Vec<String>)> = images
        .iter()
        .enumerate()
        .map(|(i, (vm, path, _))| {
            let args: Vec<String> =
                ["backup", "--vault", &url, "--vm", vm, "--disk", s(path), "--pack-target-size", "1M"]
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
            let child = cmd(&ep, &d.join(format!("host{i}")), &args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn backup");
            (child, args)
        })
        .collect();
    for (child, args) in children {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(child.wait_with_output().expect("wait"), &args);
    }
    let reader = d.join("reader");
    for (vm, _, data) in &images {
        let out = d.join(format!("{vm}.restored"));
        ok(&ep, &reader, &["restore", "--vault", &url, "--vm", vm, "--disk", &format!("{vm}.img"), "--to", s(&out)]);
        assert!(fs::read(&out).expect("restored") == *data, "vm {vm} restored differently");
    }
    let report = json(&ep, &reader, &["verify", "--vault", &url, "--json"]);
    assert_eq!(report["report"]["problems"].as_array().map(Vec::len), Some(0), "{report}");
}

/// An Azurite of the test's own, so that stopping it disturbs no other test.
struct OwnAzurite {
    script: PathBuf,
    port: String,
    location: PathBuf,
    pid: String,
}

impl OwnAzurite {
    fn start(script: &Path, port: Option<&str>, location: &Path) -> OwnAzurite {
        let mut c = Command::new(script);
        c.arg("start");
        c.arg(port.unwrap_or("-")).arg(location);
        let out = c.output().expect("run azurite.sh");
        assert!(out.status.success(), "azurite.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let var = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("azurite.sh printed no {name}: {text}"))
                .to_string()
        };
        OwnAzurite {
            script: script.to_path_buf(),
            port: var("VMB_AZURITE_PORT"),
            location: location.to_path_buf(),
            pid: var("VMB_AZURITE_PID"),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&self) {
        let _ = Command::new(&self.script).args(["stop", &self.pid]).status();
    }
}

impl Drop for OwnAzurite {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_backup_survives_the_store_going_away_and_coming_back() {
    let Some(_) = azurite("transient fault") else { return };
    let Ok(script) = std::env::var("VMB_AZURITE_SCRIPT") else {
        testkit::skip("transient fault", "VMB_AZURITE_SCRIPT is not set (scripts/test sets it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let location = d.join("azurite");
    let mut store = OwnAzurite::start(Path::new(&script), None, &location);
    let ep = store.endpoint();
    let url = vault_url("fault");
    let host = d.join("cache");
    ok(&ep, &host, &["init", &url]);
    let img = d.join("root.img");
    let data = Rng(11).bytes(48 << 20);
    fs::write(&img, &data).expect("image");
    let args = ["backup", "--vault", &url, "--vm", "web", "--disk", s(&img), "--pack-target-size", "1M"];
    let mut child = cmd(&ep, &host, &args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    // Stop the store in the middle of the uploads: once the backup has put
    // two packs there (packs are uploaded as they close, during the
    // transfer), then start it again on the same port and data folder a
    // moment later.
    let watcher =
        backup_core::Vault::open_url(&url, backup_core::VaultOptions::default(), &remote_host(&ep, &d.join("watcher")))
            .expect("open the vault to watch its packs");
    let uploaded = loop {
        let packs = watcher.pack_ids().expect("list packs").len();
        if packs >= 2 {
            break packs;
        }
        assert!(child.try_wait().expect("wait").is_none(), "the backup ended before it uploaded two packs");
        std::thread::sleep(Duration::from_millis(5));
    };
    store.stop();
    let stopped = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_secs(2));
    store = OwnAzurite::start(Path::new(&script), Some(&store.port.clone()), &store.location.clone());
    let out = child.wait_with_output().expect("wait");
    eprintln!("backup through the fault: {}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    if !out.status.success() {
        // Failed cleanly: a message naming the store, and a rerun commits.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("127.0.0.1") || err.contains(&url), "the error names no object: {err}");
        check(cmd(&ep, &host, &args).output().expect("rerun"), &args);
    }
    // The fault hit the upload: the job had not begun its commit when the
    // store was gone, and the store holds more packs now than then.
    let commit = first_phase_start(&host.join("jobs").join("web"), backup_core::Phase::Commit);
    assert!(
        commit.is_none_or(|t| t > stopped),
        "the store went away at {stopped}, after the commit began at {commit:?}: the test no longer hits the upload"
    );
    let list = json(&ep, &host, &["list", "--vault", &url, "--vm", "web", "--json"]);
    assert_eq!(list["points"].as_array().map(Vec::len), Some(1), "{list}");
    let packs = watcher.pack_ids().expect("list packs").len();
    assert!(packs > uploaded, "{uploaded} packs were uploaded before the fault and {packs} in all");
    eprintln!("store stopped after {uploaded} of {packs} packs were uploaded, before the commit");
    let out = d.join("restored.img");
    ok(&ep, &d.join("reader"), &["restore", "--vault", &url, "--vm", "web", "--disk", "root.img", "--to", s(&out)]);
    assert!(fs::read(&out).expect("restored") == data, "restored differently after the fault");
    drop(store);
}

/// When the first job log in `dir` to reach `phase` started it, by the
/// log's own clock.
fn first_phase_start(dir: &Path, phase: backup_core::Phase) -> Option<jiff::Timestamp> {
    let logs = fs::read_dir(dir).into_iter().flatten().flatten();
    let jobs = logs.filter_map(|e| backup_core::read_job(&e.path()).ok());
    jobs.flat_map(|j| j.phases).filter(|p| p.phase == phase).map(|p| p.started).min()
}

/// One simulated host's remote options: the emulator, its cache folder.
fn remote_host(endpoint: &str, cache: &Path) -> backup_core::RemoteOptions {
    let mut o = backup_core::RemoteOptions::default();
    o.cache = Some(cache.to_path_buf());
    o.endpoint = Some(endpoint.to_string());
    o
}

/// Copies along a chain that takes every store as a source and as a
/// target, plain and encrypted: local (plain) -> Azurite (encrypted) ->
/// S3 (encrypted) -> local (plain); every point restores bit for bit at
/// the end of the chain, and a rerun of each hop moves nothing.
#[test]
fn copies_between_every_kind_of_store_plain_and_encrypted() {
    let Some(az) = azurite("copy chain") else { return };
    let Some(s3) = s3_server("copy chain") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (first, last, img) = (d.join("first"), d.join("last"), d.join("root.img"));
    let (az_url, s3_url) = (vault_url("copychain"), store_url("s3", "copychain"));
    let (az_cache, s3_cache) = (d.join("az-cache"), d.join("s3-cache"));
    let key = d.join("passphrase");
    fs::write(&key, "second site\n").expect("key");
    let vmb = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(BIN).args(args).output().expect("run vmbackup");
        assert!(out.status.success(), "vmbackup {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    vmb(&["init", s(&first)]);
    vmb(&["init", "--encrypt", &az_url, "--endpoint", &az, "--cache", s(&az_cache), "--passphrase-file", s(&key)]);
    vmb(&["init", "--encrypt", &s3_url, "--endpoint", &s3, "--cache", s(&s3_cache), "--passphrase-file", s(&key)]);
    vmb(&["init", s(&last)]);
    let mut data = Rng(9).bytes(3 << 20);
    let mut images = Vec::new();
    for round in 0..2u8 {
        data[usize::from(round) << 20] ^= 0xff;
        fs::write(&img, &data).expect("image");
        vmb(&["backup", "--vault", s(&first), "--vm", "web", "--disk", s(&img), "--json"]);
        images.push(data.clone());
    }
    let hops: [Vec<&str>; 3] = [
        vec![
            "--from",
            s(&first),
            "--to",
            &az_url,
            "--endpoint",
            &az,
            "--cache",
            s(&az_cache),
            "--passphrase-file",
            s(&key),
        ],
        vec![
            "--from",
            &az_url,
            "--from-endpoint",
            &az,
            "--from-cache",
            s(&az_cache),
            "--from-passphrase-file",
            s(&key),
            "--to",
            &s3_url,
            "--endpoint",
            &s3,
            "--cache",
            s(&s3_cache),
            "--passphrase-file",
            s(&key),
        ],
        vec![
            "--from",
            &s3_url,
            "--from-endpoint",
            &s3,
            "--from-cache",
            s(&s3_cache),
            "--from-passphrase-file",
            s(&key),
            "--to",
            s(&last),
        ],
    ];
    for hop in &hops {
        let args = [&["copy", "--points", "all", "--json"][..], hop].concat();
        let done = vmb(&args);
        assert_eq!(done["copied"].as_array().map(Vec::len), Some(2), "{hop:?}: {done}");
        assert!(done["bytes_added"].as_u64().unwrap_or(0) > 3 << 20, "{hop:?}: {done}");
        let again = vmb(&args);
        assert_eq!(
            (again["bytes_added"].as_u64(), again["already_there"].as_array().map(Vec::len)),
            (Some(0), Some(2))
        );
    }
    let list = vmb(&["list", "--vault", s(&last), "--json"]);
    let ids: Vec<&str> =
        list["points"].as_array().expect("points").iter().filter_map(|p| p["point"].as_str()).collect();
    assert_eq!(ids.len(), 2, "{list}");
    for (id, want) in ids.iter().zip(&images) {
        let out = d.join(format!("{id}.img"));
        vmb(&["restore", "--vault", s(&last), "--vm", "web", "--point", id, "--disk", "root.img", "--to", s(&out)]);
        assert!(fs::read(&out).expect("restored") == *want, "point {id} differs at the end of the chain");
    }
    let verify = vmb(&[
        "verify",
        "--vault",
        &s3_url,
        "--endpoint",
        &s3,
        "--cache",
        s(&s3_cache),
        "--passphrase-file",
        s(&key),
        "--json",
    ]);
    assert_eq!(verify["ok"], true, "{verify}");
}

/// The versions under `prefix` of the bucket with their locks, as
/// `scripts/s3-versions.py` (boto3, with the vault's own credentials) gives
/// them; with `delete`, after it tried to delete each locked one for good.
fn s3_versions(endpoint: &str, bucket: &str, prefix: &str, delete: bool) -> Vec<serde_json::Value> {
    let python = std::env::var("VMB_S3_PYTHON").expect("VMB_S3_PYTHON (scripts/s3server.sh sets it)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-versions.py");
    let mut run = Command::new(python);
    run.arg(script).args([endpoint, bucket, prefix]).args(delete.then_some("--delete"));
    let out = run.output().expect("run boto3");
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}

/// An immutable vault on S3: a bucket without Object Lock is refused; on
/// one with it, every object written while the vault is immutable is locked
/// (compliance mode) for its days, a delete of any locked version with the
/// vault's own credentials fails, and the point still restores after.
#[test]
fn an_immutable_vault_on_s3_locks_every_object_it_writes() {
    let Some(ep) = s3_server("s3 object lock") else { return };
    if std::env::var_os("VMB_S3_PYTHON").is_none() {
        testkit::skip("s3 object lock", "VMB_S3_PYTHON is not set (scripts/s3server.sh sets it)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (host, other, img, out) = (d.join("cache"), d.join("other"), d.join("root.img"), d.join("out.img"));
    let data = Rng(23).bytes(3 << 20);
    fs::write(&img, &data).expect("image");

    // A bucket without Object Lock: the vault cannot be made immutable there.
    let plain = store_url("s3", "nolock");
    ok(&ep, &host, &["init", &plain]);
    let refused = cmd(&ep, &host, &["config", "--vault", &plain, "--immutable-days", "3"]).output().expect("run");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("no Object Lock"), "{err}");
    let shown = json(&ep, &host, &["config", "--vault", &plain, "--json"]);
    assert_eq!((shown["immutable_days"].as_u64(), shown["store_lock"].as_str()), (Some(0), Some("disabled")));

    // The bucket `vmbackup-locked` has Object Lock (scripts/s3server.sh).
    let prefix = store_url("s3", "objectlock").trim_start_matches("s3://vmbackup/").to_string();
    let url = format!("s3://vmbackup-locked/{prefix}");
    let cache = d.join("cache-locked");
    ok(&ep, &cache, &["init", &url]);
    let before = s3_versions(&ep, "vmbackup-locked", &prefix, false);
    assert!(before.iter().all(|v| v["mode"].is_null()), "nothing is locked before: {before:?}");
    let shown = json(&ep, &cache, &["config", "--vault", &url, "--immutable-days", "3", "--json"]);
    assert_eq!((shown["immutable_days"].as_u64(), shown["store_lock"].as_str()), (Some(3), Some("enabled")));
    let text = ok(&ep, &cache, &["config", "--vault", &url]);
    assert!(text.contains("locked for 3 days (S3 Object Lock, compliance mode)"), "{text}");
    let small = ["--pack-target-size", "1M"];
    let point = json(
        &ep,
        &cache,
        &[&["backup", "--vault", &url, "--vm", "web", "--disk", s(&img), "--json"][..], &small].concat(),
    );
    let id = point["point"].as_str().expect("point id").to_string();

    let now = jiff::Timestamp::now().as_second() as f64;
    let versions = s3_versions(&ep, "vmbackup-locked", &prefix, true);
    let written_before =
        |v: &serde_json::Value| before.iter().any(|b| b["key"] == v["key"]) && !v["latest"].as_bool().unwrap_or(false);
    let locked: Vec<&serde_json::Value> = versions.iter().filter(|v| !v["mode"].is_null()).collect();
    for v in versions.iter().filter(|v| v["latest"].as_bool() == Some(true)) {
        // Every object the vault holds now was written while it was immutable.
        assert_eq!(v["mode"].as_str(), Some("COMPLIANCE"), "not locked: {v}");
        let until = v["until"].as_f64().expect("a retain-until date");
        assert!((until - now - 3.0 * 86_400.0).abs() < 3600.0, "locked until {until}, now {now}: {v}");
    }
    for v in &locked {
        assert_ne!(v["deleted"].as_str(), Some("yes"), "a locked version was deleted: {v}");
        assert_eq!(v["deleted"].as_str(), Some("AccessDenied"), "{v}");
    }
    let kinds = ["config", "packs/", "index/", "points/web/"];
    for kind in kinds {
        assert!(locked.iter().any(|v| v["key"].as_str().is_some_and(|k| k.starts_with(kind))), "no locked {kind}");
    }
    assert!(versions.iter().filter(|v| v["mode"].is_null()).all(written_before), "{versions:?}");

    // Nothing was lost: another host restores the point bit for bit.
    ok(
        &ep,
        &other,
        &["restore", "--vault", &url, "--vm", "web", "--point", &id, "--disk", "root.img", "--to", s(&out)],
    );
    assert_eq!(fs::read(&out).expect("restored"), data);
    // gc, which removes (delete markers only) and never rewrites a young object, works beside the locks.
    ok(&ep, &cache, &["gc", "--vault", &url]);
}
