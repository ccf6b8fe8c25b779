//! Files out of a point without restoring it: `vmbackup mount` (a
//! read-only FUSE file system of the vault's points).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use testkit::{Rng, s};

mod common;
use common::{BIN, Mount, ok};

/// Whether FUSE mounts work here; prints why not (a skip, or a failure in
/// CI).
fn fuse(test: &str) -> bool {
    if !Path::new("/dev/fuse").exists() {
        testkit::skip(test, "no /dev/fuse");
        return false;
    }
    if !testkit::have("fusermount3") {
        testkit::skip(test, "no fusermount3 (Debian package fuse3)");
        return false;
    }
    true
}

/// A disk image of `len` bytes: random data with holes, and text.
fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = rng.bytes(len);
    data[len / 4..len / 2].fill(0);
    let text = rng.text(200);
    data[..text.len().min(len / 8)].copy_from_slice(&text.as_bytes()[..text.len().min(len / 8)]);
    data
}

#[test]
fn a_mounted_vault_shows_every_point_read_only_and_equal_to_its_restore() {
    if !fuse("mount") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let (root, data) = (d.join("root.img"), d.join("data"));
    let first = image(1, 3 << 20);
    fs::write(&root, &first).expect("image");
    fs::write(&data, image(2, 1 << 20)).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&root), "--disk", s(&data)]);
    let mut second = first.clone();
    second[(2 << 20) + 17] ^= 0x5a;
    fs::write(&root, &second).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&root), "--disk", s(&data)]);
    ok(&["backup", "--vault", s(&vault), "--vm", "db", "--disk", s(&data)]);

    let at = d.join("mnt");
    let mut cmd = Command::new(BIN);
    cmd.args(["mount", "--vault", s(&vault), s(&at)]);
    let mount = Mount::start(cmd, &at, "db");
    let mut points: Vec<_> =
        fs::read_dir(at.join("web")).expect("vm folder").map(|e| e.expect("entry").path()).collect();
    points.sort();
    assert_eq!(points.len(), 2, "{points:?}");
    for point in &points {
        let id = point.file_name().expect("point id").to_string_lossy().to_string();
        let mut names: Vec<_> =
            fs::read_dir(point).expect("point folder").map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        assert_eq!(names, ["data.img", "root.img"], "point {id}");
        for (disk, file) in [("root.img", "root.img"), ("data", "data.img")] {
            let restored = d.join(format!("{id}-{disk}"));
            ok(&["restore", "--vault", s(&vault), "--vm", "web", "--point", &id, "--disk", disk, "--to", s(&restored)]);
            let cmp = testkit::output("cmp", &[s(&point.join(file)), s(&restored)]);
            assert!(
                cmp.status.success(),
                "point {id} disk {disk}: the mount differs from restore: {}",
                testkit::text(&cmp)
            );
        }
    }
    // Point ids made in the same second do not sort by time: find the newer.
    let seen: Vec<_> = points.iter().map(|p| fs::read(p.join("root.img")).expect("read")).collect();
    let newer = seen.iter().position(|b| *b == second).expect("the second point's disk is in the mount");
    assert!(seen[1 - newer] == first, "the first point's disk is in the mount");

    // Nothing in it can be written, made or removed.
    let disk = points[newer].join("root.img");
    let write = fs::OpenOptions::new().write(true).open(&disk);
    assert!(write.is_err(), "opening a mounted disk for writing must fail");
    let made = fs::File::create(points[newer].join("new"));
    assert_eq!(made.err().and_then(|e| e.raw_os_error()), Some(libc::EROFS));
    assert!(fs::remove_file(&disk).is_err(), "removing a mounted disk must fail");
    assert!(fs::read(&disk).expect("read") == second, "the disk changed");

    // The mount holds the shared lock: gc (exclusive) waits, then gives up.
    let gc = testkit::output(BIN, &["--lock-timeout", "1", "gc", "--vault", s(&vault)]);
    assert!(!gc.status.success() && testkit::text(&gc).contains("locked"), "{}", testkit::text(&gc));

    // SIGTERM unmounts it and exits cleanly.
    let (status, err) = mount.stop();
    assert!(status.success(), "vmbackup mount: {status}: {err}");
    assert!(err.contains("unmounted"), "{err}");
    assert!(!Mount::is_mounted(&at), "still mounted after SIGTERM");
    assert_eq!(fs::read_dir(&at).expect("mountpoint").count(), 0, "the mountpoint is not empty");
    ok(&["gc", "--vault", s(&vault)]);
}

#[test]
fn a_mount_of_one_point_fails_its_damaged_reads_and_says_where() {
    if !fuse("mount damage") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let root = d.join("root.img");
    fs::write(&root, image(3, 2 << 20)).expect("image");
    ok(&["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&root)]);
    // Flip a byte in the middle of every pack.
    for pack in common_walk(&vault.join("packs")) {
        let mut bytes = fs::read(&pack).expect("pack");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&pack, bytes).expect("pack");
    }
    let at = d.join("mnt");
    let mut cmd = Command::new(BIN);
    cmd.args(["mount", "--vault", s(&vault), "--vm", "web", "--point", "latest", s(&at)]);
    let mount = Mount::start(cmd, &at, "web");
    let point = fs::read_dir(at.join("web")).expect("vm").next().expect("one point").expect("entry").path();
    let read = fs::read(point.join("root.img"));
    assert_eq!(read.err().and_then(|e| e.raw_os_error()), Some(libc::EIO), "a damaged read must fail");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, err) = mount.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains("a read failed") && err.contains("disk root.img") && err.contains("bytes"), "{err}");
}

/// Every file under `dir`.
fn common_walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() { files.extend(common_walk(&p)) } else { files.push(p) }
    }
    files
}

/// Compares each entry of `expected` with the same name in `actual` (the
/// folders themselves are not compared: `actual` is a target folder).
fn same_contents(expected: &Path, actual: &Path, folder_times: bool) -> usize {
    let names = |p: &Path| {
        let mut n: Vec<_> = fs::read_dir(p).expect("read_dir").map(|e| e.expect("entry").file_name()).collect();
        n.sort();
        n
    };
    assert_eq!(names(actual), names(expected), "{} holds other names than {}", actual.display(), expected.display());
    names(expected)
        .iter()
        .map(|n| testkit::same_tree(&expected.join(n), &actual.join(n), folder_times).unwrap_or_else(|e| panic!("{e}")))
        .sum()
}

/// The loop devices that have a file (`loop3`).
fn attached_loops() -> std::collections::BTreeSet<String> {
    fs::read_dir("/sys/block")
        .expect("/sys/block")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.starts_with("loop"))
        .filter(|n| fs::read_to_string(format!("/sys/block/{n}/size")).is_ok_and(|s| s.trim() != "0"))
        .collect()
}

/// The loop devices whose file lies under `dir` (`loop3`).
fn loops_backed_by(dir: &Path) -> Vec<String> {
    attached_loops()
        .into_iter()
        .filter(|n| {
            fs::read_to_string(format!("/sys/block/{n}/loop/backing_file"))
                .is_ok_and(|f| Path::new(f.trim()).starts_with(dir))
        })
        .collect()
}

/// The guest-file reader's private folders under the temporary folder.
fn private_folders() -> std::collections::BTreeSet<String> {
    fs::read_dir(std::env::temp_dir())
        .expect("tmp")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.starts_with("vmbackup-files-"))
        .collect()
}

/// No guest file system, loop device (beyond those attached `before`) or
/// private folder (beyond those there `before`) is left.
fn nothing_left(before: &(std::collections::BTreeSet<String>, std::collections::BTreeSet<String>)) {
    let mounts: Vec<_> = fs::read_to_string("/proc/self/mounts")
        .expect("mounts")
        .lines()
        .filter(|l| l.contains("vmbackup-files-"))
        .filter(|l| !before.1.iter().any(|old| l.contains(old.as_str())))
        .map(String::from)
        .collect();
    assert!(mounts.is_empty(), "guest file systems still mounted: {mounts:?}");
    // A loop device auto-clears a moment after its file system goes.
    let start = std::time::Instant::now();
    let mut left: Vec<_> = attached_loops().difference(&before.0).cloned().collect();
    while !left.is_empty() && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = attached_loops().difference(&before.0).cloned().collect();
    }
    assert!(left.is_empty(), "loop devices left attached: {left:?}");
    let tmp: Vec<_> = private_folders().difference(&before.1).cloned().collect();
    assert!(tmp.is_empty(), "private folders left: {tmp:?}");
}

/// The guest disk's script, failing half way (its folder on a 3 MiB
/// tmpfs fills up while it makes the file systems), leaves no loop device
/// attached, and so nothing mounted (every mount it makes is of a loop
/// device over a file in its folder): a full disk in CI once left one.
#[test]
fn a_guest_disk_that_fails_half_way_leaves_no_loop_device() {
    if let Some(why) = testkit::guest_disk_missing() {
        testkit::skip("guest disk clean-up", &why);
        return;
    }
    /// A tmpfs, unmounted on drop.
    struct Tmpfs<'a>(&'a Path);
    impl Drop for Tmpfs<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    fs::create_dir(&small).expect("mountpoint");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=3m", "tmpfs", s(&small)]).status();
    assert!(mounted.is_ok_and(|st| st.success()), "cannot mount a tmpfs at {}", small.display());
    let _tmpfs = Tmpfs(&small);
    let made = testkit::guest_disk("create", &small);
    assert!(made.is_err(), "the guest disk fit in 3 MiB");
    assert_eq!(loops_backed_by(&small), Vec::<String>::new(), "loop devices left after: {made:?}");
}

#[test]
fn guest_files_of_two_points_extract_exactly_find_a_deleted_file_and_open_side_by_side() {
    if let Some(why) = testkit::guest_disk_missing() {
        testkit::skip("guest files", &why);
        return;
    }
    if !fuse("guest files") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    testkit::guest_disk("create", d).unwrap_or_else(|e| panic!("{e}"));
    let before = (attached_loops(), private_folders());
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    let disk = d.join("disk.img");
    let backup = || {
        let out = common::json(&["backup", "--vault", s(&vault), "--vm", "g", "--disk", s(&disk), "--json"]);
        out["point"].as_str().expect("point id").to_string()
    };
    let first = backup();
    testkit::guest_disk("change", d).unwrap_or_else(|e| panic!("{e}"));
    let second = backup();

    // The volumes: partitions, the PV and its logical volumes, with types and labels.
    let ls = common::json(&["files", "ls", "--vault", s(&vault), "--vm", "g", "--point", &first, "--json"]);
    let volumes: Vec<_> = ls["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| {
            format!(
                "{} {} {}",
                v["name"].as_str().unwrap_or("?"),
                v["type"].as_str().unwrap_or("?"),
                v["label"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        volumes,
        [
            "p1 vfat EFI",
            "p2 ext4 root",
            "p3 xfs data",
            "p4 LVM2_member -",
            "vgdata/home unknown -",
            "vgdata/root ext4 lvroot"
        ],
        "{ls}"
    );

    // Every file system of both points, extracted whole, equals what the
    // guest held then: contents, links, modes (set-uid, sticky), owners, times.
    for (n, point) in [(1, &first), (2, &second)] {
        for (volume, name, folder_times) in
            [("p1", "p1", false), ("p2", "p2", true), ("p3", "p3", true), ("vgdata/root", "vgdata_root", true)]
        {
            let out = d.join(format!("out-{n}-{name}"));
            let spec = format!("{volume}:/");
            ok(&["files", "extract", "--vault", s(&vault), "--vm", "g", "--point", point, &spec, "--to", s(&out)]);
            let expected = d.join(format!("expect-{n}")).join(name);
            let count = same_contents(&expected, &out, folder_times);
            assert!(count >= 3, "point {n} volume {volume}: only {count} entries compared");
        }
    }
    // One file, by itself, and its content on stdout.
    let one = d.join("one");
    let spec = "p2:/etc/fstab";
    ok(&["files", "extract", "--vault", s(&vault), "--vm", "g", "--point", &first, spec, "--to", s(&one)]);
    testkit::same_tree(&d.join("expect-1/p2/etc/fstab"), &one.join("fstab"), true).unwrap_or_else(|e| panic!("{e}"));
    let cat = ok(&["files", "cat", "--vault", s(&vault), "--vm", "g", "--point", &second, spec]);
    assert_eq!(cat, fs::read_to_string(d.join("expect-2/p2/etc/fstab")).expect("fstab"));
    // A second extraction overwrites nothing.
    fs::write(one.join("fstab"), "mine").expect("write");
    let again =
        common::run(&["files", "extract", "--vault", s(&vault), "--vm", "g", "--point", &first, spec, "--to", s(&one)]);
    assert!(!again.status.success(), "extract overwrote a file");
    assert_eq!(fs::read_to_string(one.join("fstab")).expect("read"), "mine");
    // A link planted in the target folder is not written through.
    let (trap, elsewhere) = (d.join("trap"), d.join("elsewhere"));
    fs::create_dir_all(&trap).expect("trap");
    fs::create_dir_all(&elsewhere).expect("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, trap.join("etc")).expect("link");
    let trapped = common::run(&["files", "extract", "--vault", s(&vault), "--vm", "g", "p2:/etc", "--to", s(&trap)]);
    assert!(!trapped.status.success(), "extract followed a link out of --to");
    assert_eq!(fs::read_dir(&elsewhere).expect("elsewhere").count(), 0, "a file landed outside --to");
    // A guest's absolute link resolves inside the guest, never on the host.
    let link = ok(&["files", "cat", "--vault", s(&vault), "--vm", "g", "p2:/etc/fstab.link"]);
    assert_eq!(link, cat);

    // find: the file deleted between the points is in the first only; a
    // file added, in the second only.
    let found = |pattern: &str| -> Vec<String> {
        let out = common::json(&["files", "find", "--vault", s(&vault), "--vm", "g", pattern, "--json"]);
        out["found"]
            .as_array()
            .expect("found")
            .iter()
            .map(|f| {
                format!(
                    "{} {}:{} {}",
                    f["point"].as_str().unwrap_or("?"),
                    f["volume"].as_str().unwrap_or("?"),
                    f["entry"]["path"].as_str().unwrap_or("?"),
                    f["entry"]["size"]
                )
            })
            .collect()
    };
    let old_log_size = fs::metadata(d.join("expect-1/p3/logs/old.log")).expect("old.log").len();
    assert_eq!(found("old.log"), [format!("{first} p3:/logs/old.log {old_log_size}")]);
    assert_eq!(found("/etc/*.conf"), [format!("{second} p2:/etc/new.conf 4")]);
    assert_eq!(found("version").len(), 2, "{:?}", found("version"));

    // The two points' volume groups (and XFS file systems) carry the same
    // UUIDs; they open side by side.
    let v = Arc::new(backup_core::Vault::open(&vault).expect("vault"));
    let (a, b) = (v.find_point("g", &first).expect("first"), v.find_point("g", &second).expect("second"));
    let da = backup_core::GuestDisk::open(v.clone(), &a, "disk.img").expect("disk of the first point");
    let db = backup_core::GuestDisk::open(v.clone(), &b, "disk.img").expect("disk of the second point");
    assert_eq!(da.volume("vgdata/root").expect("lv").uuid, db.volume("vgdata/root").expect("lv").uuid);
    let read = |fs: &backup_core::GuestFs, p: &str| {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut fs.open(Path::new(p)).expect("open"), &mut s).expect("read");
        s
    };
    let (la, lb) =
        (da.open_fs("vgdata/root").expect("lv of the first"), db.open_fs("vgdata/root").expect("lv of the second"));
    let (xa, xb) = (da.open_fs("p3").expect("xfs of the first"), db.open_fs("p3").expect("xfs of the second"));
    assert_eq!((read(&la, "/var/version"), read(&lb, "/var/version")), ("lv one\n".into(), "lv two\n".into()));
    assert_eq!(read(&xa, "/logs/2026/app.log"), "a\n");
    assert_eq!(read(&xb, "/logs/2026/app.log"), "a\na\nb\n");
    assert!(xb.stat(Path::new("/logs/old.log")).is_err() && xa.stat(Path::new("/logs/old.log")).is_ok());
    drop((la, lb, xa, xb, da, db));

    // A run killed while it has a guest file system mounted leaves it, its
    // loop device and a dead FUSE mount; the next run clears them.
    let mut killed = Command::new(BIN)
        .args(["files", "cat", "--vault", s(&vault), "--vm", "g", "--point", &first, "vgdata/root:/var/lib/db/table"])
        .stdout(std::process::Stdio::piped()) // never read: it blocks with the file system mounted
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start files cat");
    let mine = format!("vmbackup-files-{}-", killed.id());
    let mounted =
        || fs::read_to_string("/proc/self/mounts").expect("mounts").lines().filter(|l| l.contains(&mine)).count();
    let start = std::time::Instant::now();
    while mounted() < 2 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "files cat never mounted the volume");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed.kill().expect("SIGKILL");
    killed.wait().expect("wait");
    assert_eq!(mounted(), 2, "the killed run's file system and FUSE mount are left");
    ok(&["files", "ls", "--vault", s(&vault), "--vm", "g", "p2:/etc"]);
    nothing_left(&before);
}

/// Runs a shell script (as root), failing the test with its output.
fn shell(script: &str) {
    let out = Command::new("bash").args(["-euc", script]).output().expect("bash");
    assert!(out.status.success(), "{script}\n{}", testkit::text(&out));
}

#[test]
fn mbr_logical_partitions_and_a_disk_without_a_table_are_read() {
    if let Some(why) = testkit::guest_disk_missing() {
        testkit::skip("mbr", &why);
        return;
    }
    if !fuse("mbr") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (mbr, bare) = (d.join("mbr.img"), d.join("bare.img"));
    // An MBR disk: a primary ext4 and, in an extended partition, a logical
    // one (p5); and a disk that is one ext4 file system, no table.
    shell(&format!(
        r#"
        truncate -s 64M {mbr}
        printf 'label: dos\nstart=2048, size=20MiB, type=83\nstart=43008, size=40MiB, type=5\nstart=45056, size=16MiB, type=83\n' | sfdisk -q {mbr}
        for spec in "1 2048 40960 first" "5 45056 32768 logical"; do
          set -- $spec
          dev=$(losetup -f --show --offset $(($2 * 512)) --sizelimit $(($3 * 512)) {mbr})
          mkfs.ext4 -q -L $4 $dev
          m=$(mktemp -d); mount $dev $m; echo "partition $1" > $m/which; umount $m; rmdir $m
          losetup -d $dev
        done
        truncate -s 32M {bare}
        mkfs.ext4 -q -L bare {bare}
        m=$(mktemp -d); mount -o loop {bare} $m; mkdir $m/etc; echo bare > $m/etc/fstab; umount $m; rmdir $m
        "#,
        mbr = s(&mbr),
        bare = s(&bare)
    ));
    let vault = d.join("vault");
    ok(&["init", s(&vault)]);
    ok(&["backup", "--vault", s(&vault), "--vm", "m", "--disk", s(&mbr), "--disk", s(&bare)]);
    let of = |disk: &str| {
        ["--vault".to_string(), s(&vault).to_string(), "--vm".into(), "m".into(), "--disk".into(), disk.into()]
    };
    let files = |disk: &str, rest: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["files".into(), rest[0].into()];
        a.extend(of(disk));
        a.extend(rest[1..].iter().map(|r| r.to_string()));
        a
    };
    let run = |args: Vec<String>| common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ls = run(files("mbr.img", &["ls", "--json"]));
    assert!(ls.status.success(), "{}", testkit::text(&ls));
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).expect("json");
    let got: Vec<_> = v["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|x| {
            format!(
                "{} {} {} {}",
                x["name"].as_str().unwrap_or("?"),
                x["type"].as_str().unwrap_or("?"),
                x["size"],
                x["label"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(got, [format!("p1 ext4 {} first", 20 << 20), format!("p5 ext4 {} logical", 16 << 20)]);
    let cat = run(files("mbr.img", &["cat", "p5:/which"]));
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "partition 5\n", "{}", testkit::text(&cat));
    // A path without a volume names a file on a disk without a table...
    let bare_cat = run(files("bare.img", &["cat", "/etc/fstab"]));
    assert_eq!(String::from_utf8_lossy(&bare_cat.stdout), "bare\n", "{}", testkit::text(&bare_cat));
    let bare_ls = run(files("bare.img", &["ls"]));
    assert!(
        testkit::text(&bare_ls).contains("disk") && testkit::text(&bare_ls).contains("bare"),
        "{}",
        testkit::text(&bare_ls)
    );
    // ...and is refused, with the volumes named, on a disk with one.
    let refused = run(files("mbr.img", &["cat", "/which"]));
    assert!(!refused.status.success());
    assert!(
        testkit::text(&refused).contains("p1:/which") && testkit::text(&refused).contains("p5"),
        "{}",
        testkit::text(&refused)
    );
    // Two disks: --disk is needed, and the error names them.
    let which = common::run(&["files", "ls", "--vault", s(&vault), "--vm", "m"]);
    assert!(!which.status.success() && testkit::text(&which).contains("bare.img"), "{}", testkit::text(&which));
    // A missing file and a volume without files are clear errors.
    let missing = run(files("mbr.img", &["cat", "p1:/nope"]));
    assert!(
        testkit::text(&missing).contains("/nope") && testkit::text(&missing).contains("volume p1"),
        "{}",
        testkit::text(&missing)
    );
}
