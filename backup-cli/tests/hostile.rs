//! A hostile vault, a careless operator: each test reproduces one attack of
//! the red-team pass (issue "a hostile vault, a careless operator, a
//! signal") against the `vmbackup` binary, then checks the safe outcome:
//! a clear error, nothing outside the vault touched, no hang past a stated
//! time, memory under a stated bound.
//!
//! Every command here runs with a 60 s timeout and a 4 GiB address-space
//! limit (`RLIMIT_AS`): an attack that made vmbackup hang or allocate
//! gigabytes fails the test instead of the machine.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::s;

mod common;
use common::{BIN, json, ok};

/// How long any hostile command may run.
const LIMIT: Duration = Duration::from_secs(60);
/// The address space any hostile command may use.
const MEMORY: u64 = 4 << 30;

/// Runs `vmbackup ARGS` bounded in time and memory; fails the test if it
/// hangs, or dies of a signal (an abort from a failed allocation).
fn bounded(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only this child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: MEMORY, rlim_max: MEMORY };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn vmbackup");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            use std::os::unix::process::ExitStatusExt;
            assert!(
                status.signal().is_none(),
                "vmbackup {args:?} died of signal {:?}: {}",
                status.signal(),
                String::from_utf8_lossy(&out.stderr)
            );
            return Output { status, ..out };
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("vmbackup {args:?} hung for more than {} s", LIMIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs each of `commands` on `vault`, bounded: whatever they report,
/// none may hang or abort.
fn each_bounded(vault: &Path, commands: &[&[&str]]) {
    for args in commands {
        let mut a = args.to_vec();
        a.extend(["--vault", s(vault)]);
        bounded(&a);
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(s(path)).expect("cstr");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// The vault's config, as a forger reads it.
fn config(vault: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(vault.join("config")).expect("config")).expect("json")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A vault with one VM "web" of one 1 MiB disk backed up once.
fn vault_with_point(d: &Path) -> (PathBuf, PathBuf, String) {
    let vault = d.join("vault");
    let image = d.join("root.img");
    fs::write(&image, testkit::random(1 << 20, 7)).expect("image");
    ok(&["init", s(&vault)]);
    let out = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&image), "--json"]);
    let point = out["point"].as_str().expect("point").to_string();
    (vault, image, point)
}

/// The MAC key of host records in a vault without encryption, derived from
/// its config as anyone who can read the vault can: a forger's best case.
fn host_record_key(vault: &Path) -> [u8; 32] {
    let config = config(vault);
    let hex = config["chunk_key"].as_str().expect("chunk_key");
    let key: Vec<u8> = (0..64).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
    let key: [u8; 32] = key.try_into().expect("32 bytes");
    let mac = blake3::derive_key("vmbackup 2026-11-25 manifest mac", &key);
    blake3::derive_key("vmbackup 2026-12-03 host record mac", &mac)
}

/// Writes a kept-snapshot record with a valid MAC, as a forger who read
/// the config can.
fn forge_record(vault: &Path, vm: &str, point: &str, record: &serde_json::Value) {
    let config = config(vault);
    let vault_id = config["vault_id"].as_str().expect("id");
    let json = serde_json::to_vec_pretty(record).expect("json");
    let aad = [
        b"vmbackup host record\0".as_slice(),
        b"kept snapshot\0",
        vault_id.as_bytes(),
        b"\0",
        vm.as_bytes(),
        b"\0",
        point.as_bytes(),
    ]
    .concat();
    let mac = blake3::keyed_hash(&host_record_key(vault), &[&aad[..], &json].concat());
    let mut bytes = json;
    bytes.extend_from_slice(format!("\nmac {}\n", mac.to_hex()).as_bytes());
    write_record(vault, vm, point, &bytes);
}

/// Writes a kept-snapshot record as plain JSON, as the red team did.
fn forge_plain_record(vault: &Path, vm: &str, point: &str, record: &serde_json::Value) {
    write_record(vault, vm, point, &serde_json::to_vec_pretty(record).expect("json"));
}

fn write_record(vault: &Path, vm: &str, point: &str, bytes: &[u8]) {
    let dir = vault.join("snapshots").join(vm);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join(format!("{point}.json")), bytes).expect("write record");
}

fn record(vm: &str, point: &str, expires: &str, disks: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "vm": vm, "point": point, "job": "20000101T000000Z-abcdef", "provider": "image-files 0.1.0",
        "taken": "2000-01-01T00:00:00Z", "expires": expires, "disks": disks,
    })
}

fn mtime_ns(p: &Path) -> i128 {
    let m = fs::metadata(p).expect("stat");
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

#[test]
fn a_forged_snapshot_record_never_deletes_a_file_outside_the_vault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, point) = vault_with_point(d);
    let victim = d.join("victim");
    fs::write(&victim, b"precious").expect("victim");
    let disks =
        serde_json::json!([{ "name": "root.img", "path": victim, "size": 8, "modified_ns": mtime_ns(&victim) }]);
    // Expired, in plain JSON as the red team wrote it.
    forge_plain_record(&vault, "web", &point, &record("web", &point, "2001-01-01T00:00:00Z", disks.clone()));
    let out = bounded(&["release-expired", "--vault", s(&vault)]);
    assert_eq!(fs::read(&victim).expect("victim is still there"), b"precious", "{}", stderr(&out));
    // Expired, with a valid MAC: the strongest forgery of a plain vault.
    forge_record(&vault, "web", &point, &record("web", &point, "2001-01-01T00:00:00Z", disks.clone()));
    let out = bounded(&["release-expired", "--vault", s(&vault), "--json"]);
    assert_eq!(fs::read(&victim).expect("victim is still there"), b"precious", "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    assert!(text.contains("vmbackup mark") || text.contains("refusing"), "the refusal is named: {text}");

    // A record that names another VM than its folder ("../../..").
    forge_record(
        &vault,
        "web",
        "20000101T000000Z-000001",
        &record("../../..", "20000101T000000Z-000001", "2001-01-01T00:00:00Z", disks),
    );
    let out = bounded(&["release-expired", "--vault", s(&vault)]);
    assert!(victim.exists(), "{}", stderr(&out));
    // An ordinary backup runs release too.
    let out = bounded(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&d.join("root.img"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&victim).expect("victim"), b"precious");
}

#[test]
fn a_forged_record_in_an_encrypted_vault_is_refused_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image, victim) = (d.join("vault"), d.join("root.img"), d.join("victim"));
    fs::write(&image, testkit::random(1 << 20, 3)).expect("image");
    fs::write(&victim, b"precious").expect("victim");
    let key = d.join("vault.key");
    ok(&["init", s(&vault), "--encrypt", "--key-file", s(&key)]);
    let out =
        json(&["backup", "--vault", s(&vault), "--key-file", s(&key), "--vm", "web", "--disk", s(&image), "--json"]);
    let point = out["point"].as_str().expect("point").to_string();
    // In clear, as the old format was: not sealed, so refused.
    let rec = record(
        "web",
        &point,
        "2001-01-01T00:00:00Z",
        serde_json::json!([{ "name": "root.img", "path": victim, "size": 8, "modified_ns": mtime_ns(&victim) }]),
    );
    fs::create_dir_all(vault.join("snapshots/web")).expect("mkdir");
    fs::write(vault.join(format!("snapshots/web/{point}.json")), serde_json::to_vec(&rec).expect("json"))
        .expect("write");
    let out = bounded(&["backup", "--vault", s(&vault), "--key-file", s(&key), "--vm", "web", "--disk", s(&image)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(victim.exists());
    let out = bounded(&["release-expired", "--vault", s(&vault), "--key-file", s(&key)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &stderr(&out);
    assert!(text.contains("tampered") || text.contains("not sealed"), "{text}");
    assert!(victim.exists());
}

#[test]
fn a_forged_record_never_makes_restore_return_another_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image, point) = vault_with_point(d);
    // The attacker's file of the same size, and a root-only secret.
    let fake = d.join("fake");
    fs::write(&fake, vec![0xEE; 1 << 20]).expect("fake");
    let disks =
        serde_json::json!([{ "name": "root.img", "path": fake, "size": 1 << 20, "modified_ns": mtime_ns(&fake) }]);
    let out = d.join("out.img");
    // In plain JSON as the red team wrote it, then with a valid MAC.
    for forge in [forge_plain_record, forge_record] {
        forge(&vault, "web", &point, &record("web", &point, "2099-01-01T00:00:00Z", disks.clone()));
        let r = bounded(&[
            "restore",
            "--vault",
            s(&vault),
            "--vm",
            "web",
            "--point",
            &point,
            "--disk",
            "root.img",
            "--to",
            s(&out),
            "--json",
        ]);
        assert!(r.status.success(), "{}", stderr(&r));
        assert!(!stderr(&r).contains("restored from the snapshot tier"), "no snapshot tier claimed: {}", stderr(&r));
        assert!(
            fs::read(&out).expect("restored") == fs::read(&image).expect("image"),
            "restored from the vault, not the fake"
        );
    }
    let v = bounded(&["verify", "--vault", s(&vault)]);
    assert!(v.status.success(), "{}", stderr(&v));

    // A fake in-flight point naming a 0600 secret: refused, nothing made.
    let secret = d.join("secret");
    fs::write(&secret, vec![0x55; 4096]).expect("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let fake_point = "20990101T000000Z-abcdef";
    let disks =
        serde_json::json!([{ "name": "root.img", "path": secret, "size": 4096, "modified_ns": mtime_ns(&secret) }]);
    let leak = d.join("leak.img");
    for forge in [forge_plain_record, forge_record] {
        forge(&vault, "web", fake_point, &record("web", fake_point, "2099-01-01T00:00:00Z", disks.clone()));
        let r = bounded(&[
            "restore",
            "--vault",
            s(&vault),
            "--vm",
            "web",
            "--point",
            fake_point,
            "--disk",
            "root.img",
            "--to",
            s(&leak),
        ]);
        assert!(!r.status.success());
        assert!(!leak.exists(), "nothing was copied out: {}", stderr(&r));
    }
    // And what a restore writes is private to its user.
    assert_eq!(fs::metadata(&out).expect("stat").mode() & 0o777, 0o600);
}

#[test]
fn restore_never_writes_through_a_link_planted_at_its_temporary_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image, _) = vault_with_point(d);
    let target = d.join("target");
    fs::create_dir(&target).expect("mkdir");
    let secret = d.join("secret");
    fs::write(&secret, b"root's secret").expect("secret");
    // The name the old build used, and the same with any suffix.
    std::os::unix::fs::symlink(&secret, target.join(".root.img.restoring")).expect("symlink");
    let r = bounded(&["restore", "--vault", s(&vault), "--vm", "web", "--to", &format!("{}/", s(&target))]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(fs::read(&secret).expect("secret"), b"root's secret");
    assert!(fs::read(target.join("root.img")).expect("restored") == fs::read(&image).expect("image"));
}

#[test]
fn restore_refuses_special_files_and_writes_into_a_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, image, _) = vault_with_point(d);
    // A character device like /dev/null (made here, so that a regression
    // cannot break the machine's own), and a FIFO.
    let mut specials = vec![d.join("fifo")];
    mkfifo(&specials[0]);
    if !is_root() {
        testkit::skip(
            "restore_refuses_special_files_and_writes_into_a_folder",
            "mknod of a character device needs root",
        );
    } else {
        let null = d.join("null");
        let c = std::ffi::CString::new(s(&null)).expect("cstr");
        // SAFETY: a NUL-terminated path; makedev(1, 3) is /dev/null's.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) }, 0);
        specials.push(null);
    }
    for sp in &specials {
        let r = bounded(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "root.img", "--to", s(sp)]);
        assert!(!r.status.success(), "{}", stderr(&r));
        assert!(!fs::symlink_metadata(sp).expect("stat").is_file(), "{} became a regular file", sp.display());
        assert!(stderr(&r).contains("restore target"), "{}", stderr(&r));
    }
    // --disk D --to DIR writes DIR/D, and an existing folder is no error.
    let out = d.join("into");
    fs::create_dir(&out).expect("mkdir");
    let r = bounded(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "root.img", "--to", s(&out)]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(fs::read(out.join("root.img")).expect("restored") == fs::read(&image).expect("image"));
}

#[test]
fn gc_never_follows_a_linked_folder_inside_the_vault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, _) = vault_with_point(d);
    let outside = d.join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("backup-123-old"), b"not the vault's").expect("write");
    // Old enough for gc's grace period.
    let old = std::ffi::CString::new(s(&outside.join("backup-123-old"))).expect("cstr");
    let times = [libc::timespec { tv_sec: 0, tv_nsec: 0 }; 2];
    // SAFETY: a NUL-terminated path and two timespecs.
    unsafe { libc::utimensat(libc::AT_FDCWD, old.as_ptr(), times.as_ptr(), 0) };
    // A link inside tmp/: removed itself, never what it points to.
    std::os::unix::fs::symlink(&outside, vault.join("tmp").join("evil")).expect("symlink");
    let r = bounded(&["gc", "--vault", s(&vault), "--grace", "0"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(outside.join("backup-123-old").exists());
    // tmp/ itself a link: refused by name, nothing deleted.
    fs::remove_dir_all(vault.join("tmp")).expect("rm tmp");
    std::os::unix::fs::symlink(&outside, vault.join("tmp")).expect("symlink");
    let r = bounded(&["gc", "--vault", s(&vault), "--grace", "0"]);
    assert!(outside.join("backup-123-old").exists(), "gc deleted a file outside the vault");
    assert!(!r.status.success());
    assert!(stderr(&r).contains("link"), "{}", stderr(&r));
}

#[test]
fn a_job_log_never_names_a_file_for_prune_to_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, point) = vault_with_point(d);
    let victim = d.join("x.jsonl");
    fs::write(&victim, b"keep").expect("victim");
    let logs = vault.join("jobs/web");
    let real = fs::read_dir(&logs).expect("logs").flatten().next().expect("a log").path();
    let mut lines = Vec::new();
    for line in fs::read_to_string(&real).expect("log").lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("json");
        if v.get("time").is_some() {
            v["time"] = "2000-01-01T00:00:00Z".into();
        }
        if v["event"] == "start" {
            v["job"] = "../../../x".into();
        }
        if v["event"] == "end" {
            v["point"] = "20000101T000000Z-000000".into();
        }
        lines.push(v.to_string());
    }
    let forged = logs.join("20000101T000000Z-abcdef.jsonl");
    fs::write(&forged, lines.join("\n") + "\n").expect("forge");
    let policy = d.join("policy.toml");
    fs::write(&policy, "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"01:00\"]\n[retention]\nkeep_last = 1\njob_logs = { days = 1 }\n").expect("policy");
    let r = bounded(&["prune", "--vault", s(&vault), "--policy", s(&policy)]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(fs::read(&victim).expect("outside file is there"), b"keep");
    assert!(!forged.exists(), "the forged log itself is what prune removes");
    assert!(vault.join("points/web").join(&point).exists());
}

/// The vault's only pack and its chunk index file.
fn the_pack(vault: &Path) -> (PathBuf, PathBuf) {
    let pack = fs::read_dir(vault.join("packs")).expect("packs").flatten().next().expect("a pack").path();
    let id = pack.file_stem().and_then(|n| n.to_str()).expect("id").to_string();
    (pack, vault.join("index").join(format!("{id}.idx")))
}

#[test]
fn a_pack_footer_claiming_four_billion_chunks_is_refused_within_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, _) = vault_with_point(d);
    let (pack, idx) = the_pack(&vault);
    // A sparse pack whose length matches a footer of 2^32-1 entries.
    let f = fs::OpenOptions::new().write(true).open(&pack).expect("open");
    let count: u32 = u32::MAX;
    let toff: u64 = 16;
    let len = toff + u64::from(count) * 56 + 24;
    f.set_len(len).expect("sparse");
    let mut footer = Vec::new();
    footer.extend_from_slice(&toff.to_le_bytes());
    footer.extend_from_slice(&count.to_le_bytes());
    footer.extend_from_slice(&0u32.to_le_bytes());
    footer.extend_from_slice(b"VMBPEND\0");
    use std::os::unix::fs::FileExt;
    f.write_all_at(&footer, len - 24).expect("footer");
    fs::remove_file(&idx).expect("rm idx"); // so that the footer is read
    each_bounded(&vault, &[&["verify"], &["repair"], &["gc", "--grace", "0"], &["list"]]);
    let r = bounded(&["verify", "--vault", s(&vault)]);
    assert!(!r.status.success());
    assert!(stdout(&r).contains("more than a pack may hold"), "{}", stdout(&r));
}

#[test]
fn a_trailer_entry_claiming_four_gigabytes_is_refused_within_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, _) = vault_with_point(d);
    let (pack, idx) = the_pack(&vault);
    // The first entry's stored_len (bytes 44..48 of an entry) in the index
    // file and in the pack's own trailer, with their crcs recomputed: only
    // the bound can catch it.
    let forge = |bytes: &mut Vec<u8>, entries_at: usize| {
        bytes[entries_at + 44..entries_at + 48].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[entries_at..n - 24]);
        bytes[n - 12..n - 8].copy_from_slice(&crc.to_le_bytes());
    };
    let mut i = fs::read(&idx).expect("idx");
    forge(&mut i, 8);
    fs::write(&idx, &i).expect("write");
    let mut p = fs::read(&pack).expect("pack");
    let n = p.len();
    let toff = u64::from_le_bytes(p[n - 24..n - 16].try_into().expect("8 bytes")) as usize;
    forge(&mut p, toff);
    fs::write(&pack, &p).expect("write");
    let out = d.join("out.img");
    let r = bounded(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "root.img", "--to", s(&out)]);
    assert!(!r.status.success());
    assert!(!out.exists());
    let v = bounded(&["verify", "--vault", s(&vault)]);
    assert!(!v.status.success());
    assert!(stdout(&v).contains("impossible lengths"), "{}", stdout(&v));
}

#[test]
fn fifos_devices_and_links_in_the_vault_never_hang_or_feed_a_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, _) = vault_with_point(d);
    mkfifo(&vault.join("packs").join(format!("{}.pack", "ab".repeat(16))));
    // An index file that is a link to an endless device.
    std::os::unix::fs::symlink("/dev/zero", vault.join("index").join(format!("{}.idx", "cd".repeat(16))))
        .expect("symlink");
    let out = d.join("out.img");
    each_bounded(
        &vault,
        &[
            &["verify"],
            &["restore", "--vm", "web", "--disk", "root.img", "--to", s(&out)],
            &["repair"],
            &["gc", "--grace", "0"],
        ],
    );
    let v = bounded(&["verify", "--vault", s(&vault)]);
    assert!(stdout(&v).contains("not a regular file"), "{}", stdout(&v));
}

#[test]
fn a_config_asking_for_huge_kdf_costs_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    let pass = d.join("pass");
    fs::write(&pass, "correct horse\n").expect("pass");
    ok(&["init", s(&vault), "--encrypt", "--passphrase-file", s(&pass)]);
    let config_path = vault.join("config");
    let original = fs::read(&config_path).expect("config");
    for (field, value) in [("memory_kib", (1u64 << 28) - 1), ("iterations", u64::from(u32::MAX))] {
        let mut config: serde_json::Value = serde_json::from_slice(&original).expect("json");
        let slots = config["encryption"]["slots"].as_array_mut().expect("slots");
        slots[0]["kdf"][field] = value.into();
        fs::write(&config_path, serde_json::to_vec(&config).expect("json")).expect("write");
        let started = Instant::now();
        let r = bounded(&["list", "--vault", s(&vault), "--passphrase-file", s(&pass)]);
        assert!(!r.status.success());
        assert!(stderr(&r).contains("beyond this build's limits"), "{field}: {}", stderr(&r));
        assert!(started.elapsed() < Duration::from_secs(30), "{field}: refused at once");
    }
}

#[test]
fn a_fifo_given_as_a_disk_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let fifo = d.join("disk.fifo");
    mkfifo(&fifo);
    let r = bounded(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&fifo)]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("FIFO"), "{}", stderr(&r));
}

#[test]
fn a_failed_init_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let short = dir.path().join("short.key");
    fs::write(&short, b"12345").expect("key");
    let r = bounded(&["init", s(&vault), "--encrypt", "--key-file", s(&short)]);
    assert!(!r.status.success());
    assert!(!vault.exists(), "init left its folder: {}", stderr(&r));
    ok(&["init", s(&vault)]);
}

#[test]
fn a_vm_whose_manifests_are_all_damaged_is_named_as_damaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, point) = vault_with_point(d);
    fs::write(vault.join("points/web").join(&point), b"garbage\nmac 00\n").expect("damage");
    let r = bounded(&["restore", "--vault", s(&vault), "--vm", "web", "--to", s(&d.join("out"))]);
    assert!(!r.status.success());
    let e = stderr(&r);
    assert!(e.contains("none of its 1 point manifest(s) can be read") && e.contains("mac"), "{e}");
}

#[test]
fn a_key_file_that_lost_its_newline_says_why_it_does_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, key) = (d.join("vault"), d.join("vault.key"));
    ok(&["init", s(&vault), "--encrypt", "--key-file", s(&key)]);
    let bytes = fs::read(&key).expect("key");
    assert_eq!(bytes.last(), Some(&b'\n'), "a generated key file ends with a newline");
    let copy = d.join("copy.key");
    fs::write(&copy, &bytes[..bytes.len() - 1]).expect("copy");
    let r = bounded(&["list", "--vault", s(&vault), "--key-file", s(&copy)]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("trailing newline"), "{}", stderr(&r));
}

#[test]
fn repair_and_verify_agree_on_a_renamed_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, _, _) = vault_with_point(d);
    let (pack, _) = the_pack(&vault);
    fs::rename(&pack, vault.join("packs").join(format!("{}.pack", "ef".repeat(16)))).expect("rename");
    let v = bounded(&["verify", "--vault", s(&vault)]);
    let r = bounded(&["repair", "--vault", s(&vault)]);
    let text = stdout(&r);
    assert_eq!(v.status.success(), r.status.success(), "verify and repair disagree: {text}");
    assert!(r.status.success() && text.contains("nothing lost"), "{text}");
}
