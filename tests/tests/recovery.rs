//! A VM brought back from a point under a real libvirtd, with the real
//! guest of the libvirt tests (`testkit::guest`):
//! - restored as a new domain, which boots to its init and holds the
//!   point's files while the original runs on, untouched;
//! - instantly recovered: the domain runs at once on overlays over
//!   vmbackup's export, keeps what the guest writes through the move, is
//!   paused when vmbackup is killed and resumed by a rerun, and ends on
//!   local disks only with nothing temporary left;
//! - boot-verified: a good point passes, a point whose init is broken
//!   fails naming the kernel's panic, and a Ctrl-C or a kill leaves no
//!   throwaway domain behind.
//!
//! Needs root, libvirtd and the guest's packages; with `VMB_REQUIRE_ALL`
//! (CI) their absence fails the tests instead of skipping them.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::guest::{Guest, agent, boot, boot_with, cli, guest_sh, virsh};
use testkit::s;

/// How long the recovered guest's agent may take to answer after
/// `instant-restore` starts (README: "Bringing a VM back"); it boots in
/// about 25 s under TCG here.
const AGENT_BOUND: Duration = Duration::from_secs(120);

/// Waits until `f` holds, at most `limit`; whether it did.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

fn pings(uri: &str, dom: &str) -> bool {
    agent(uri, dom, serde_json::json!({"execute": "guest-ping"})).is_ok()
}

/// A domain the test made, removed on drop with its checkpoints.
fn owned(g: &Guest, name: &str) -> Guest {
    Guest { uri: g.uri.clone(), name: name.to_string(), dir: g.dir.clone() }
}

fn backup_cli(g: &Guest, vault: &Path) -> serde_json::Value {
    let bin = cli();
    if !vault.exists() {
        testkit::run(s(&bin), &["init", s(vault)]);
    }
    testkit::json(s(&bin), &["backup", "--vault", s(vault), "--libvirt", &g.name, "--connect", &g.uri, "--json"])
}

#[test]
fn a_point_restored_as_a_new_domain_boots_with_its_files_and_the_original_runs_on_unchanged() {
    let Some((g, _dir)) = boot("a_point_restored_as_a_new_domain_boots_with_its_files") else { return };
    let bin = cli();
    guest_sh(&g.uri, &g.name, "echo restored-marker > /root/marker && sync");
    let vault = g.dir.join("vault");
    let point = backup_cli(&g, &vault);
    let before = virsh(&g.uri, &["dumpxml", "--inactive", &g.name]).expect("dumpxml");

    let name = format!("{}-restored", g.name);
    let _new = owned(&g, &name);
    let pool = g.dir.join("pool");
    // What a killed restore left: its export folder, an unfinished disk.
    let dead_pid = {
        let mut c = Command::new("true").spawn().expect("spawn");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    let left_dir = Path::new("/var/tmp/vmbackup-libvirt").join(format!("restore-{dead_pid}"));
    let left_file = pool.join(format!(".{name}-vda.qcow2.vmbackup-{dead_pid}"));
    fs::create_dir_all(&left_dir).expect("leftover folder");
    fs::create_dir_all(&pool).expect("pool");
    fs::write(&left_file, b"half a disk").expect("leftover file");
    let out = testkit::run(
        s(&bin),
        &[
            "restore",
            "--vault",
            s(&vault),
            "--vm",
            &g.name,
            "--to-libvirt",
            &name,
            "--pool",
            s(&pool),
            "--start",
            "--connect",
            &g.uri,
        ],
    );
    assert!(out.contains(&format!("domain {name} defined and started")), "{out}");
    assert!(!left_dir.exists() && !left_file.exists(), "a killed restore's leftovers stay");
    // It boots to its init (a marker on its own serial console) and holds
    // the point's files.
    let console = pool.join(format!("{name}-serial0.log"));
    let booted = wait_for(Duration::from_secs(180), || {
        fs::read_to_string(&console).unwrap_or_default().contains("init: guest agent on /dev/vport")
    });
    assert!(booted, "no init marker on {}: {}", console.display(), fs::read_to_string(&console).unwrap_or_default());
    assert!(wait_for(Duration::from_secs(120), || pings(&g.uri, &name)), "the restored guest's agent never answered");
    assert_eq!(guest_sh(&g.uri, &name, "cat /root/marker"), "restored-marker\n");
    let xml = virsh(&g.uri, &["dumpxml", &name]).expect("dumpxml");
    assert!(xml.contains(&format!("{}-vda.qcow2", name)) && !xml.contains("guest.qcow2"), "{xml}");
    let uuid = |x: &str| x.split("<uuid>").nth(1).and_then(|r| r.split('<').next()).unwrap_or_default().to_string();
    assert_ne!(uuid(&xml), uuid(&before), "a new UUID");

    // The original runs on, unchanged.
    assert_eq!(virsh(&g.uri, &["domstate", &g.name]).expect("state").trim(), "running");
    assert_eq!(virsh(&g.uri, &["dumpxml", "--inactive", &g.name]).expect("dumpxml"), before);
    assert!(pings(&g.uri, &g.name));

    // A taken name is refused, and the point's own domain always.
    let again = testkit::output(
        s(&bin),
        &[
            "restore",
            "--vault",
            s(&vault),
            "--vm",
            &g.name,
            "--to-libvirt",
            &name,
            "--pool",
            s(&pool),
            "--connect",
            &g.uri,
        ],
    );
    assert!(!again.status.success() && testkit::text(&again).contains("exists"), "{}", testkit::text(&again));
    let own = testkit::output(
        s(&bin),
        &[
            "restore",
            "--vault",
            s(&vault),
            "--vm",
            &g.name,
            "--to-libvirt",
            &g.name,
            "--pool",
            s(&pool),
            "--replace",
            "--connect",
            &g.uri,
        ],
    );
    assert!(testkit::text(&own).contains("never touches"), "{}", testkit::text(&own));
    assert_eq!(virsh(&g.uri, &["dumpxml", "--inactive", &g.name]).expect("dumpxml"), before);

    // --replace makes it again, raw this time (from Rust).
    let vault = backup_core::Vault::open(&vault).expect("open");
    let point = vault.find_point(&g.name, point["point"].as_str().expect("id")).expect("point");
    let mut target = backup_core::DomainTarget::new(&name);
    target.uri = g.uri.clone();
    target.pool = pool.clone();
    target.format = backup_core::ImageFormat::Raw;
    target.replace = true;
    let r = backup_core::restore_to_domain(&vault, &point, &target, &backup_core::RestoreOptions::default())
        .expect("replace");
    assert_eq!(r.disks, vec![("vda".to_string(), pool.join(format!("{name}-vda.raw")))]);
    assert!(!r.started);
    let xml = virsh(&g.uri, &["dumpxml", "--inactive", &name]).expect("dumpxml");
    assert!(xml.contains("type='raw'") && xml.contains(&format!("{name}-vda.raw")), "{xml}");
    assert_eq!(virsh(&g.uri, &["domstate", &name]).expect("state").trim(), "shut off");
    let image = pool.join(format!("{name}-vda.raw"));
    let marker = testkit::sh("debugfs", &["-R", "cat /root/marker", s(&image)]).expect("debugfs");
    assert_eq!(marker, "restored-marker\n");
}

#[test]
fn an_instant_recovery_runs_at_once_keeps_the_guests_writes_and_resumes_after_a_kill() {
    let test = "an_instant_recovery_runs_at_once_keeps_the_guests_writes";
    let payload = tempfile::tempdir().expect("tempdir");
    fs::write(payload.path().join("blob"), testkit::random(48 << 20, 17)).expect("payload");
    let Some((g, _dir)) = boot_with(test, 160, &[payload.path()]) else { return };
    let bin = cli();
    let vault = g.dir.join("vault");
    backup_cli(&g, &vault);
    // The VM is gone.
    virsh(&g.uri, &["destroy", &g.name]).expect("destroy");
    let name = format!("{}-instant", g.name);
    let _new = owned(&g, &name);
    let pool = g.dir.join("pool");
    let work = Path::new("/var/tmp/vmbackup-libvirt").join(format!("instant-{name}"));
    let overlay = pool.join(format!("{name}-vda.qcow2"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["instant-restore", "--vault", s(&vault), "--vm", &g.name, "--to-libvirt", &name]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(["--pool", s(&pool), "--connect", &g.uri].iter().map(|x| x.to_string()));
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let spawn = |extra: &[&str]| {
        Command::new(&bin).args(args(extra)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
    };

    // Ctrl-C discards a recovery: no domain, no overlay, no work folder.
    let first = spawn(&["--bandwidth", "1"]);
    assert!(
        wait_for(Duration::from_secs(60), || virsh(&g.uri, &["domstate", &name]).is_ok_and(|s| s.contains("running")))
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    let out = first.wait_with_output().expect("wait");
    assert!(!out.status.success(), "{}", testkit::text(&out));
    assert!(virsh(&g.uri, &["domstate", &name]).is_err(), "the domain of a cancelled recovery is left");
    assert!(!overlay.exists() && !work.exists(), "a cancelled recovery left files");

    // The guest runs within the bound while its data still moves (1 MiB/s).
    let t0 = Instant::now();
    let second = spawn(&["--bandwidth", "1"]);
    assert!(wait_for(AGENT_BOUND, || pings(&g.uri, &name)), "no agent within {AGENT_BOUND:?}");
    eprintln!("{test}: the agent answered {:.1} s after instant-restore started", t0.elapsed().as_secs_f64());
    let job = virsh(&g.uri, &["blockjob", &name, "vda", "--raw"]).expect("blockjob");
    assert!(job.contains("Pull"), "the move is over before the guest wrote: {job}");
    guest_sh(
        &g.uri,
        &name,
        "dd if=/dev/urandom of=/root/during bs=64k count=16 2>/dev/null && md5sum /root/during > /root/during.md5 && sync",
    );

    // Killed: the guest is paused at once, and the domain says why.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGKILL) };
    let _ = second.wait_with_output();
    assert!(
        wait_for(Duration::from_secs(20), || virsh(&g.uri, &["domstate", &name]).is_ok_and(|s| s.contains("paused"))),
        "the guest runs on without its export"
    );
    let desc = virsh(&g.uri, &["desc", &name]).expect("desc");
    assert!(desc.contains("vmbackup instant recovery") && desc.contains("run vmbackup instant-restore"), "{desc}");

    // A rerun resumes it and finishes the move.
    let third = spawn(&[]).wait_with_output().expect("rerun");
    let text = testkit::text(&third);
    assert!(third.status.success() && text.contains("(resumed)"), "{text}");
    eprintln!("{test}: {text}");
    assert_eq!(virsh(&g.uri, &["domstate", &name]).expect("state").trim(), "running");
    // Local disks only: no backing file, no export, nothing temporary.
    let info = testkit::run("qemu-img", &["info", "-U", s(&overlay)]);
    assert!(!info.contains("backing file"), "{info}");
    let live = virsh(&g.uri, &["dumpxml", &name]).expect("dumpxml");
    assert!(!live.contains("protocol='nbd'"), "{live}");
    let defined = virsh(&g.uri, &["dumpxml", "--inactive", &name]).expect("dumpxml");
    assert!(!defined.contains("protocol='nbd'") && !defined.contains("error_policy"), "{defined}");
    assert!(!work.exists(), "{} is left", work.display());
    assert!(virsh(&g.uri, &["desc", &name]).expect("desc").contains("No description"));
    // The point's files and the guest's own write, read in the guest.
    let sums = guest_sh(
        &g.uri,
        &name,
        "echo 3 > /proc/sys/vm/drop_caches; md5sum -c /root/during.md5 && find /data -name blob -exec md5sum {} +",
    );
    assert!(sums.contains("/root/during: OK"), "{sums}");
    let host = testkit::run("md5sum", &[s(&payload.path().join("blob"))]);
    assert_eq!(sums.lines().last().and_then(|l| l.split_whitespace().next()), host.split_whitespace().next(), "{sums}");
}

#[test]
fn boot_verification_passes_a_good_point_fails_a_broken_init_and_leaves_nothing() {
    let Some((g, _dir)) = boot("boot_verification_passes_a_good_point_fails_a_broken_init") else { return };
    let bin = cli();
    let vault_path = g.dir.join("vault");
    let good = backup_cli(&g, &vault_path)["point"].as_str().expect("id").to_string();
    let vault = backup_core::Vault::open(&vault_path).expect("open");
    let point = vault.find_point(&g.name, &good).expect("point");
    let leftovers = || {
        let domains = virsh(&g.uri, &["list", "--all", "--name"]).expect("list");
        let mut left: Vec<String> =
            domains.lines().filter(|l| l.starts_with("vmbackup-verify-")).map(str::to_string).collect();
        for e in fs::read_dir("/var/tmp/vmbackup-libvirt").into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = n.strip_prefix("verify-").and_then(|p| p.parse::<i32>().ok()) {
                // SAFETY: signal 0 only checks that the process exists.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    left.push(n);
                }
            }
        }
        left
    };

    // From Rust, with an in-guest test: passed, with console and screenshot.
    let mut options = backup_core::BootVerifyOptions::default();
    options.uri = g.uri.clone();
    options.timeout = Duration::from_secs(180);
    options.script = Some(b"#!/bin/sh\ntest -d /data && echo in-guest-test-ran\n".to_vec());
    let v = backup_core::boot_verify(&vault, &point, &options).expect("boot verification");
    assert!(v.passed, "{v:?}");
    assert_eq!(v.script_exit, Some(0));
    assert!(v.script_output.as_deref().is_some_and(|o| o.contains("in-guest-test-ran")), "{v:?}");
    assert!(v.console.contains("init: guest agent on"), "{}", v.console);
    assert!(v.screenshot.starts_with(b"\x89PNG"), "no PNG screenshot ({} bytes)", v.screenshot.len());
    assert_eq!(vault.boot_verdict(&g.name, &good).expect("read").expect("recorded"), v);
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    // `schedule` boot-verifies after a backup when its policy asks (here
    // with an in-guest test that fails).
    let (policy, vms, test_script) = (g.dir.join("policy.toml"), g.dir.join("vms.json"), g.dir.join("fails.sh"));
    fs::write(&test_script, "#!/bin/sh\necho no-such-thing; exit 3\n").expect("script");
    fs::write(
        &policy,
        format!(
            "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 5\n\
             [boot_verify]\nevery_days = 1\ntimeout_secs = 180\nscript = \"{}\"\n",
            s(&test_script)
        ),
    )
    .expect("policy");
    let entry = serde_json::json!({"name": g.name, "libvirt": g.name, "connect": g.uri, "consistency": "fs"});
    fs::write(&vms, serde_json::json!({ "vms": [entry] }).to_string()).expect("vms");
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(30)).expect("time").to_string();
    let run = testkit::output(
        s(&bin),
        &["schedule", "--vault", s(&vault_path), "--policy", s(&policy), "--vms", s(&vms), "--once", "--now", &later],
    );
    let out = testkit::text(&run);
    assert!(
        out.contains("committed point") && out.contains("FAILED: the in-guest test failed (exit status 3)"),
        "{out}"
    );
    let scheduled = vault.latest_point(&g.name).expect("latest").expect("a point");
    let failing = vault.boot_verdict(&g.name, &scheduled.id).expect("read").expect("recorded");
    assert!(!failing.passed && failing.script_exit == Some(3), "{failing:?}");
    assert!(failing.script_output.as_deref().is_some_and(|o| o.contains("no-such-thing")), "{failing:?}");
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    // Ctrl-C in the middle: nothing is left, nothing recorded.
    let spawn = |p: &str| {
        Command::new(&bin)
            .args(["verify", "--boot", "--vault", s(&vault_path), "--vm", &g.name, "--point", p, "--connect", &g.uri])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let throwaway_runs =
        || virsh(&g.uri, &["list", "--name"]).is_ok_and(|l| l.lines().any(|n| n.starts_with("vmbackup-verify-")));
    let run = spawn(&good);
    assert!(wait_for(Duration::from_secs(60), throwaway_runs), "no throwaway domain started");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let out = run.wait_with_output().expect("wait");
    assert!(testkit::text(&out).contains("cancelled"), "{}", testkit::text(&out));
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    // Killed in the middle: its guardian destroys the domain; the next run
    // removes its folder.
    let run = spawn(&good);
    assert!(wait_for(Duration::from_secs(60), throwaway_runs), "no throwaway domain started");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGKILL) };
    let _ = run.wait_with_output();
    assert!(wait_for(Duration::from_secs(20), || !throwaway_runs()), "the killed run's domain runs on");

    // A point whose init is broken fails, naming why; `list` shows both.
    guest_sh(&g.uri, &g.name, "rm /sbin/init && echo broken > /sbin/init && chmod 755 /sbin/init && sync");
    let bad = backup_cli(&g, &vault_path)["point"].as_str().expect("id").to_string();
    let out = spawn(&bad).wait_with_output().expect("verify");
    let text = testkit::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("boot failed: the guest kernel panicked"), "{text}");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    let list = testkit::json(s(&bin), &["list", "--vault", s(&vault_path), "--vm", &g.name, "--json"]);
    let boot_of = |id: &str| {
        list["points"].as_array().expect("points").iter().find(|p| p["point"] == id).expect("listed")["boot"].clone()
    };
    assert_eq!(boot_of(&bad)["passed"], false, "{list}");
    assert!(boot_of(&bad)["reason"].as_str().is_some_and(|r| r.contains("panicked")), "{list}");
    assert_eq!(boot_of(&good)["passed"], true, "{list}");
    assert_eq!(boot_of(&scheduled.id)["script_exit"], 3, "{list}");
    let table = testkit::run(s(&bin), &["list", "--vault", s(&vault_path), "--vm", &g.name]);
    assert!(table.contains("failed: the guest kernel panicked"), "{table}");
}

#[test]
fn a_failing_export_during_an_instant_recovery_pauses_the_guest_and_names_the_bytes() {
    let test = "a_failing_export_during_an_instant_recovery_pauses_the_guest";
    let Ok(uri) = std::env::var("VMB_LIBVIRT_URI") else {
        testkit::skip(test, "VMB_LIBVIRT_URI is not set (scripts/test starts libvirtd and sets it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let d = dir.path();
    // A domain with no OS (it sits in the firmware) and 8 MiB of random data.
    let raw = d.join("disk.raw");
    fs::write(&raw, testkit::random(8 << 20, 5)).expect("disk");
    let disk = d.join("disk.qcow2");
    testkit::run("qemu-img", &["convert", "-q", "-f", "raw", "-O", "qcow2", s(&raw), s(&disk)]);
    let name = format!("vmb-test-{}-fail", std::process::id());
    let xml = d.join("domain.xml");
    fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='vda' bus='virtio'/></disk></devices></domain>",
            s(&disk)
        ),
    )
    .expect("xml");
    virsh(&uri, &["define", s(&xml)]).expect("define");
    let source = Guest { uri: uri.clone(), name: name.clone(), dir: d.to_path_buf() };
    let mut provider = backup_core::LibvirtProvider::new(&name);
    provider.uri = uri.clone();
    provider.work_dir = d.join("work");
    let vault = backup_core::Vault::init(d.join("vault")).expect("init");
    let (vm, _) = provider.vm(&name).expect("vm");
    let point =
        backup_core::backup(&vault, &provider, &vm, &backup_core::BackupOptions::default()).expect("backup").point;
    // Damage the middle of every pack.
    let mut damaged = 0;
    for entry in walk(&d.join("vault/packs")) {
        let len = fs::metadata(&entry).expect("stat").len();
        let f = fs::OpenOptions::new().write(true).open(&entry).expect("open pack");
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xa5; 4096], len / 2).expect("damage");
        damaged += 1;
    }
    assert!(damaged > 0, "no packs found");

    let new_name = format!("{name}-instant");
    let _new = owned(&source, &new_name);
    let mut target = backup_core::DomainTarget::new(&new_name);
    target.uri = uri.clone();
    target.pool = d.join("pool");
    target.work_dir = d.join("work");
    let e = backup_core::instant_restore(&vault, &point, &target, &backup_core::InstantOptions::default())
        .expect_err("a damaged point cannot be moved");
    let msg = e.to_string();
    assert!(msg.contains(&format!("domain {new_name}")) && msg.contains("cannot be read"), "{msg}");
    assert!(msg.contains("bytes "), "the error names the byte range: {msg}");
    assert!(virsh(&uri, &["domstate", &new_name]).expect("state").contains("paused"), "the guest runs on");
    assert!(virsh(&uri, &["desc", &new_name]).expect("desc").contains("vmbackup instant recovery"));
}

/// Every file under a folder.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}
