//! The `vmbackup` command as a user runs it: exit codes, JSON output,
//! restore to a file and a folder, verify of a damaged vault, the demo, and
//! a 1 TiB sparse image whose backup follows its data.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::{Command, Output, Stdio};

use testkit::{Rng, s};

mod common;
use common::{BIN, json, ok, run};

/// Bytes of these files that are in the page cache (`fincore`).
fn cached_bytes(files: &[std::path::PathBuf]) -> u64 {
    let mut args = vec!["--bytes", "--noheadings", "--raw", "--output", "RES"];
    args.extend(files.iter().map(|f| s(f)));
    testkit::run("fincore", &args).lines().map(|l| l.trim().parse::<u64>().expect("fincore RES")).sum()
}

/// The vault's pack files.
fn packs(vault: &std::path::Path) -> Vec<std::path::PathBuf> {
    walk(&vault.join("packs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "pack")).collect()
}

/// A backup writes packs around the page cache unless `--buffered-io`; a
/// restore reads them through it unless `--direct-io`. Every way gives
/// the same bytes and reads the others' packs.
#[test]
fn packs_use_the_page_cache_only_as_asked_and_every_way_gives_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    let img = d.join("root.img");
    fs::write(&img, [Rng(7).bytes(2 << 20), b"some text ".repeat(100_000), vec![0; 1 << 20]].concat()).expect("img");
    ok(&["init", s(&vault)]);
    let first = json(&["backup", "--vault", s(&vault), "--vm", "v", "--disk", s(&img), "--json"]);
    let full = packs(&vault);
    let written: u64 = full.iter().map(|p| fs::metadata(p).expect("pack").len()).sum();
    assert!(written > 2 << 20, "the full backup wrote {written} bytes of packs");
    assert_eq!(cached_bytes(&full), 0, "a backup writes its packs around the page cache");

    let latest = d.join("latest.img");
    ok(&["restore", "--direct-io", "--vault", s(&vault), "--vm", "v", "--disk", "root.img", "--to", s(&latest)]);
    assert!(fs::read(&latest).expect("latest") == fs::read(&img).expect("img"));
    assert_eq!(cached_bytes(&full), 0, "a --direct-io restore reads packs around the page cache");

    let f = OpenOptions::new().write(true).open(&img).expect("open");
    f.write_all_at(&Rng(8).bytes(70_000), 1 << 20).expect("change");
    ok(&["--buffered-io", "backup", "--vault", s(&vault), "--vm", "v", "--disk", s(&img)]);
    let added: Vec<_> = packs(&vault).into_iter().filter(|p| !full.contains(p)).collect();
    assert!(!added.is_empty() && cached_bytes(&added) > 0, "--buffered-io writes packs through the page cache");

    let p1 = d.join("p1.img");
    let id = first["point"].as_str().expect("id");
    ok(&["restore", "--vault", s(&vault), "--vm", "v", "--point", id, "--disk", "root.img", "--to", s(&p1)]);
    assert!(cached_bytes(&full) > 0, "a restore reads packs through the page cache");
    let mut want = fs::read(&img).expect("img");
    want[1 << 20..(1 << 20) + 70_000].copy_from_slice(&Rng(7).bytes(2 << 20)[1 << 20..(1 << 20) + 70_000]);
    assert!(fs::read(&p1).expect("p1") == want, "the first point restores as it was");
    ok(&["--direct-io", "restore", "--vault", s(&vault), "--vm", "v", "--disk", "root.img", "--to", s(&latest)]);
    assert!(fs::read(&latest).expect("latest") == fs::read(&img).expect("img"));
    assert!(ok(&["--direct-io", "verify", "--vault", s(&vault)]).starts_with("ok"));

    let both = run(&["--buffered-io", "--direct-io", "list", "--vault", s(&vault)]);
    assert_eq!(both.status.code(), Some(2), "--buffered-io and --direct-io ask opposite things");
}

#[test]
fn backup_list_restore_verify_round_trip_with_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    let (a, b) = (d.join("root.img"), d.join("data.img"));
    fs::write(&a, Rng(1).bytes(3 << 20)).expect("a");
    fs::write(&b, [b"x".repeat(1 << 20), vec![0; 1 << 20]].concat()).expect("b");
    ok(&["init", s(&vault)]);
    let first = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&a), "--disk", s(&b), "--json"]);
    for key in ["point", "vm", "consistency", "bytes_read", "bytes_stored", "seconds", "disks"] {
        assert!(first.get(key).is_some(), "backup JSON lacks {key}: {first}");
    }
    assert_eq!(first["vm"], "web");
    assert_eq!(first["consistency"], "crash");
    assert_eq!(first["disks"].as_array().map(Vec::len), Some(2));
    for key in ["name", "size", "bytes_read", "bytes_stored", "seconds"] {
        assert!(first["disks"][0].get(key).is_some(), "disk JSON lacks {key}");
    }

    let f = OpenOptions::new().write(true).open(&a).expect("open");
    f.write_all_at(b"new data", 2 << 20).expect("change");
    let second = json(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&a), "--disk", s(&b), "--json"]);
    assert!(second["bytes_stored"].as_u64() < Some(200_000), "incremental stored {}", second["bytes_stored"]);

    let list = json(&["list", "--vault", s(&vault), "--vm", "web", "--json"]);
    let points = list["points"].as_array().expect("points");
    assert_eq!(points.len(), 2);
    assert_eq!(points[0]["point"], first["point"]);
    assert!(ok(&["list", "--vault", s(&vault)]).contains("web"));
    // A typo in a VM's name fails, rather than listing nothing or
    // verifying nothing as "ok".
    for args in [["list", "--vault", s(&vault), "--vm", "wbe"], ["verify", "--vault", s(&vault), "--vm", "wbe"]] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("points of vm wbe not found"), "{args:?}: {err}");
    }

    let p1 = first["point"].as_str().expect("id");
    let one = d.join("one.img");
    ok(&["restore", "--vault", s(&vault), "--vm", "web", "--point", p1, "--disk", "root.img", "--to", s(&one)]);
    assert_eq!(fs::read(&one).expect("read"), Rng(1).bytes(3 << 20));
    let all = d.join("all");
    ok(&["restore", "--vault", s(&vault), "--vm", "web", "--to", s(&all)]);
    assert_eq!(fs::read(all.join("root.img")).expect("a"), fs::read(&a).expect("a"));
    assert_eq!(fs::read(all.join("data.img")).expect("b"), fs::read(&b).expect("b"));
    let by_index = d.join("idx.img");
    ok(&["restore", "--vault", s(&vault), "--vm", "web", "--disk", "1", "--to", s(&by_index)]);
    assert_eq!(fs::read(&by_index).expect("b"), fs::read(&b).expect("b"));

    assert!(ok(&["verify", "--vault", s(&vault)]).starts_with("ok"));
    ok(&["verify", "--vault", s(&vault), "--vm", "web", "--point", p1]);

    // Damage a pack: verify exits 1 and names the disk and range.
    let pack = fs::read_dir(vault.join("packs")).expect("packs").next().expect("a pack").expect("entry").path();
    let mut bytes = fs::read(&pack).expect("pack");
    bytes[200] ^= 1;
    fs::write(&pack, bytes).expect("write");
    let out = run(&["verify", "--vault", s(&vault)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    // The damaged chunk is the pack's first, of whichever disk that was.
    let named = |disk: &str| text.contains(&format!(" disk {disk} bytes "));
    assert!(text.contains("vm web point ") && (named("root.img") || named("data.img")), "{text}");
    assert!(text.contains("crc32 mismatch"), "{text}");
    let out = run(&["verify", "--vault", s(&vault), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(report["ok"], false);
    let first = &report["report"]["problems"][0];
    assert!(first["what"].as_str().is_some_and(|w| w.contains("crc32 mismatch")), "{report}");
    assert_eq!(first["tampered"], false, "damage by chance is not tampering: {report}");
}

#[test]
fn bad_usage_exits_2_and_failures_exit_1_with_what_and_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert_eq!(run(&["backup", "--vault", s(d)]).status.code(), Some(2), "missing --vm and --disk");
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    let out = run(&["list", "--vault", s(&d.join("nowhere"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"), "{}", String::from_utf8_lossy(&out.stderr));
    let vault = d.join("v");
    ok(&["init", s(&vault)]);
    let out = run(&["init", s(&vault)]);
    assert_eq!(out.status.code(), Some(1), "init over a vault");
    let img = d.join("x.img");
    fs::write(&img, b"data").expect("img");
    let out = run(&["backup", "--vault", s(&vault), "--vm", "w", "--disk", s(&img), "--block-size", "100K"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["backup", "--vault", s(&vault), "--vm", "../up", "--disk", s(&img)]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["backup", "--vault", s(&vault), "--vm", "w", "--disk", s(&img), "--audit-rate", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit rate"));
    let out = run(&["backup", "--vault", s(&vault), "--vm", "w", "--disk", s(&d.join("missing.img"))]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.img"), "{stderr}");
    // The operating system's message, once: it ends the engine's error and is its source too.
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    let out = run(&["restore", "--vault", s(&vault), "--vm", "w", "--to", s(&d.join("r"))]);
    assert_eq!(out.status.code(), Some(1), "no points yet");
}

#[test]
fn the_demo_runs_the_whole_job() {
    if Command::new("mke2fs").arg("-V").stderr(Stdio::null()).status().is_err() {
        testkit::skip("the_demo_runs_the_whole_job", "mke2fs is not installed (scripts/test installs e2fsprogs)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = ok(&["demo", s(&dir.path().join("demo"))]);
    assert!(text.contains("identical to the source, e2fsck -fn clean"), "{text}");
    assert!(text.contains("ok: 2 points"), "{text}");
}

/// Runs vmbackup; returns its output and peak resident memory in bytes.
fn run_measured(args: &[&str]) -> (Output, u64) {
    let child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    child.wait_with_output_and_rusage(pid)
}

trait WaitRusage {
    fn wait_with_output_and_rusage(self, pid: libc::pid_t) -> (Output, u64);
}

impl WaitRusage for std::process::Child {
    fn wait_with_output_and_rusage(mut self, pid: libc::pid_t) -> (Output, u64) {
        use std::io::Read;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut o) = self.stdout.take() {
            o.read_to_end(&mut stdout).expect("stdout");
        }
        if let Some(mut e) = self.stderr.take() {
            e.read_to_end(&mut stderr).expect("stderr");
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into the two out-parameters, which live
        // for the call; the pid is our own unwaited child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
        let status = std::os::unix::process::ExitStatusExt::from_raw(status);
        (Output { status, stdout, stderr }, usage.ru_maxrss as u64 * 1024)
    }
}

#[test]
fn a_1_tib_sparse_image_with_1_gib_of_data_backs_up_by_its_data_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let img = d.join("huge.img");
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(&img).expect("create");
    f.set_len(1 << 40).expect("1 TiB");
    // 1 GiB of data in 16 extents of 64 MiB spread over the whole TiB.
    for i in 0..16u64 {
        let chunk = Rng(i + 1).bytes(64 << 20);
        f.write_all_at(&chunk, i * (1 << 36) + 12345 * 4096).expect("write");
    }
    drop(f);
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let (out, peak) = run_measured(&["backup", "--vault", s(&vault), "--vm", "huge", "--disk", s(&img), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let read = j["bytes_read"].as_u64().expect("bytes_read");
    assert_eq!(j["disks"][0]["size"].as_u64(), Some(1 << 40));
    // Only the data (rounded out to blocks) is read: the holes never are.
    assert!(((1 << 30)..=(1 << 30) + 32 * 65536).contains(&read), "read {read} bytes");
    assert!(peak < 256 << 20, "peak memory {} MiB", peak >> 20);
    eprintln!("1 TiB sparse: read {} MiB, peak memory {} MiB, {} s", read >> 20, peak >> 20, j["seconds"]);

    // An incremental of the unchanged image reads the data again, stores
    // only metadata, in bounded memory too.
    let (out, peak) = run_measured(&["backup", "--vault", s(&vault), "--vm", "huge", "--disk", s(&img), "--json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["bytes_new"].as_u64(), Some(0));
    assert!(peak < 256 << 20, "peak memory {} MiB", peak >> 20);
}

#[test]
fn a_reader_that_went_away_ends_the_output_quietly_instead_of_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    let img = dir.path().join("root.img");
    fs::write(&img, Rng(9).bytes(1 << 20)).expect("image");
    ok(&["init", s(&vault)]);
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)]);
    // `vmbackup list | head -0`: the pipe's reader is gone before a byte is written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(BIN)
        .args(["list", "--vault", s(&vault)])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run vmbackup");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `vmbackup cat` gives a point's disk, whole or a range, as it was backed
/// up; damage is an error naming the disk's bytes, never returned as data.
#[test]
fn cat_reads_a_point_whole_or_a_range_and_refuses_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    let img = d.join("root.img");
    let first_data = [Rng(3).bytes(1 << 20), vec![0; 1 << 20], b"text ".repeat(50_000)].concat();
    fs::write(&img, &first_data).expect("img");
    ok(&["init", s(&vault)]);
    let first = json(&["backup", "--vault", s(&vault), "--vm", "v", "--disk", s(&img), "--json"]);
    let f = OpenOptions::new().write(true).open(&img).expect("open");
    f.write_all_at(&Rng(4).bytes(100_000), 1_500_000).expect("change");
    ok(&["backup", "--vault", s(&vault), "--vm", "v", "--disk", s(&img)]);

    let cat = |args: &[&str]| {
        let out = run(&[&["cat", "--vault", s(&vault), "--vm", "v", "--disk", "root.img"], args].concat());
        assert!(out.status.success(), "cat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert!(cat(&[]) == fs::read(&img).expect("img"), "the latest point is the image as it is now");
    let id = first["point"].as_str().expect("id");
    assert!(cat(&["--point", id]) == first_data, "the first point is the image as it was");
    assert_eq!(cat(&["--point", id, "--offset", "1M", "--length", "64K"]), vec![0; 64 << 10]);
    let range = cat(&["--offset", "1499990", "--length", "100020"]);
    assert!(range == fs::read(&img).expect("img")[1_499_990..1_600_010], "a range across blocks");
    assert!(cat(&["--offset", &first_data.len().to_string()]).is_empty(), "at the end: nothing");

    let past = run(&["cat", "--vault", s(&vault), "--vm", "v", "--disk", "0", "--offset", "1G"]);
    assert!(!past.status.success());
    assert!(String::from_utf8_lossy(&past.stderr).contains("past the end of disk root.img"), "{past:?}");
    let none = run(&["cat", "--vault", s(&vault), "--vm", "v", "--disk", "swap"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("not found"), "{none:?}");

    // Damage every pack in its middle (the first point names every chunk of
    // the first pack): the read fails and says where.
    for pack in walk(&vault.join("packs")) {
        let f = OpenOptions::new().read(true).write(true).open(&pack).expect("pack");
        let len = f.metadata().expect("len").len();
        f.write_all_at(b"XXXXXXXXXXXXXXXX", len / 2).expect("damage");
    }
    let bad = run(&["cat", "--vault", s(&vault), "--vm", "v", "--point", id, "--disk", "root.img"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "damaged data must fail the read");
    assert!(err.contains("disk root.img of point") && err.contains("bytes "), "{err}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// libvirt is loaded only by the commands that need a domain: the binary
/// does not link it (the sixty libraries it pulls in cost every command
/// 12 MiB when it did), and when libvirt cannot be loaded, `backup
/// --libvirt` says which library and why.
#[test]
fn libvirt_is_loaded_only_when_a_domain_is_asked_for() {
    let out = Command::new("readelf").args(["--dynamic", BIN]).output().expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf: {}", String::from_utf8_lossy(&out.stderr));
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("(NEEDED)"), "readelf printed no needed library: {dynamic}");
    assert!(!dynamic.contains("libvirt"), "vmbackup links libvirt:\n{dynamic}");

    let dir = tempfile::tempdir().expect("tempdir");
    let vault = dir.path().join("vault");
    ok(&["init", s(&vault)]);
    // A libvirt.so.0 that is not a library, found first.
    let libs = dir.path().join("lib");
    fs::create_dir(&libs).expect("lib folder");
    fs::write(libs.join("libvirt.so.0"), "not a library").expect("write the library");
    let out = Command::new(BIN)
        .env("LD_LIBRARY_PATH", &libs)
        .args(["backup", "--vault", s(&vault), "--libvirt", "some-domain"])
        .output()
        .expect("run vmbackup");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "backup --libvirt without a loadable libvirt succeeded: {err}");
    assert!(err.contains("cannot load libvirt") && err.contains("libvirt.so.0"), "{err}");
    assert!(err.contains("some-domain"), "the error does not name the domain: {err}");
}
