//! A real guest under a real libvirtd: the ground the libvirt provider
//! stands on, checked with vmbackup's own NBD client.
//!
//! `scripts/test-guest.sh` builds the guest from Debian packages (the
//! distribution kernel, busybox-static, the real qemu-ga); libvirtd
//! (`scripts/libvirtd.sh`, started by `scripts/test`) boots it as a
//! persistent TCG domain with a qcow2 disk and an agent channel. The test
//! drives libvirt with `virsh` (a harness: the provider will use the C
//! library) and checks what the provider relies on:
//! - the agent answers, reports the guest OS, freezes and thaws the guest
//!   (running the guest's fsfreeze hook), and runs commands (`guest-exec`);
//! - a checkpoint plus a pull-mode backup job exports a point-in-time view
//!   of the disk over NBD on a unix socket, which `NbdDevice` reads in full;
//! - an incremental job from that checkpoint exports the dirty bitmap as
//!   `qemu:dirty-bitmap:NAME`, and `NbdDevice::changed_since` sees the
//!   blocks the guest wrote, and no more than a few times as many.
//!
//! Needs root, libvirtd and the guest's packages; with `VMB_REQUIRE_ALL`
//! (CI) their absence fails the test instead of skipping it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup_core::{BlockDevice, NbdAddress, NbdDevice, NbdOptions, bitmap_token};
use testkit::guest::{agent, boot, cli, guest_sh, guest_spawn, virsh};
use testkit::{s, sh};

#[test]
fn a_real_guest_under_libvirt_is_frozen_by_its_agent_and_backed_up_by_pull_jobs() {
    let Some((g, _dir)) = boot("a_real_guest_under_libvirt_is_frozen_by_its_agent_and_backed_up_by_pull_jobs") else {
        return;
    };
    let (uri, dom) = (g.uri.as_str(), g.name.as_str());

    // The agent: what prepare will record.
    let info = agent(uri, dom, serde_json::json!({"execute": "guest-info"})).expect("guest-info");
    assert!(info["version"].as_str().is_some_and(|v| !v.is_empty()), "{info}");
    let enabled = |cmd: &str| {
        info["supported_commands"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x["name"] == cmd && x["enabled"] == true))
    };
    assert!(enabled("guest-fsfreeze-freeze") && enabled("guest-exec"), "{info}");
    let os = agent(uri, dom, serde_json::json!({"execute": "guest-get-osinfo"})).expect("osinfo");
    assert!(os["kernel-release"].as_str().is_some_and(|k| k.contains("amd64")), "{os}");

    // A freeze through the agent runs the guest's hook, and thaws.
    virsh(uri, &["domfsfreeze", dom]).expect("freeze");
    virsh(uri, &["domfsthaw", dom]).expect("thaw");
    let hook = guest_sh(uri, dom, "cat /var/log/fsfreeze-hook.log");
    assert!(hook.contains("freeze") && hook.contains("thaw"), "{hook}");

    // A checkpoint and a full pull backup: the whole disk over NBD.
    let work = g.dir.join("work");
    fs::create_dir(&work).expect("mkdir");
    sh("chown", &["libvirt-qemu:libvirt-qemu", s(&work)]).expect("chown the work folder to QEMU's user");
    let sock = work.join("nbd.sock");
    let checkpoint = |name: &str| {
        let p = g.dir.join(format!("{name}.xml"));
        fs::write(&p, format!("<domaincheckpoint><name>{name}</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>"))
            .expect("checkpoint xml");
        p
    };
    let backup = |incremental: Option<&str>| {
        let p = g.dir.join("backup.xml");
        let inc = incremental.map(|c| format!("<incremental>{c}</incremental>")).unwrap_or_default();
        fs::write(
            &p,
            format!(
                "<domainbackup mode='pull'>{inc}<server transport='unix' socket='{}'/><disks>\
                 <disk name='vda' backup='yes' type='file' exportname='vda' exportbitmap='vmb-vda'>\
                 <scratch file='{}'/></disk></disks></domainbackup>",
                s(&sock),
                s(&work.join("vda.scratch"))
            ),
        )
        .expect("backup xml");
        p
    };
    let cp1 = checkpoint("vmb.1");
    virsh(uri, &["backup-begin", dom, s(&backup(None)), s(&cp1)]).expect("full backup job");
    let addr = NbdAddress::parse(&format!("nbd+unix:///vda?socket={}", s(&sock))).expect("uri");
    let full = NbdDevice::open(&addr, &NbdOptions::default()).expect("open the export");
    assert_eq!(full.size(), 128 << 20);
    let mut sector = vec![0u8; 4096];
    full.read_at(1024, &mut sector).expect("read");
    assert_eq!(&sector[56..58], &[0x53, 0xEF], "the ext4 superblock's magic, read through the export");
    drop(full);
    virsh(uri, &["domjobabort", dom]).expect("end the job");

    // The guest writes 1 MiB; the incremental export's bitmap shows it.
    guest_sh(uri, dom, "dd if=/dev/urandom of=/data/new bs=64k count=16 2>/dev/null && sync");
    let cp2 = checkpoint("vmb.2");
    let t = Instant::now();
    while virsh(uri, &["backup-begin", dom, s(&backup(Some("vmb.1"))), s(&cp2)]).is_err() {
        // The first job's end may still be settling.
        assert!(t.elapsed() < Duration::from_secs(30), "the incremental job never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let inc = NbdDevice::open(&addr, &NbdOptions::default().with_bitmap("vmb-vda")).expect("open with the bitmap");
    let changed = inc.changed_since(&bitmap_token("vmb-vda"), 0..inc.size()).expect("extents").expect("the bitmap");
    let dirty: u64 = changed.iter().map(|r| r.end - r.start).sum();
    // The write, plus what ext4 and its journal touched: far less than
    // the 128 MiB disk.
    assert!((1 << 20..=32 << 20).contains(&dirty), "{dirty} dirty bytes for a 1 MiB write: {changed:?}");
    drop(inc);
    virsh(uri, &["domjobabort", dom]).expect("end the job");
    let list = virsh(uri, &["checkpoint-list", dom, "--name"]).expect("checkpoints");
    assert!(list.contains("vmb.1") && list.contains("vmb.2"), "{list}");
}

#[test]
fn the_libvirt_provider_backs_up_a_running_guest_full_then_only_what_it_wrote() {
    let Some((g, _dir)) = boot("the_libvirt_provider_backs_up_a_running_guest_full_then_only_what_it_wrote") else {
        return;
    };
    let mut provider = backup_core::LibvirtProvider::new(g.name.clone());
    provider.uri = g.uri.clone();
    provider.work_dir = g.dir.join("work");
    let (vm, skipped) = provider.vm("guest").expect("the domain's disks");
    assert_eq!(vm.disks.len(), 1, "{skipped:?}");
    assert_eq!(vm.disks[0].name, "vda");
    let vault = backup_core::Vault::init(g.dir.join("vault")).expect("init");
    let options = backup_core::BackupOptions::default();

    let full = backup_core::backup(&vault, &provider, &vm, &options).expect("full backup");
    let d = &full.point.disks[0];
    assert!(d.change_token.as_deref().is_some_and(|t| t.starts_with("libvirt-checkpoint:vmbackup.")), "{d:?}");
    assert!(full.prepared.is_some(), "the first backup prepares the VM");

    guest_sh(&g.uri, &g.name, "dd if=/dev/urandom of=/data/new bs=64k count=16 2>/dev/null && sync");
    let inc = backup_core::backup(&vault, &provider, &vm, &options).expect("incremental backup");
    let st = &inc.point.disks[0].stats;
    assert!(st.change_detection.contains("cbt"), "{st:?}");
    // Only the dirty blocks are read: the write and what ext4 touched.
    assert!((1 << 20..=32 << 20).contains(&st.bytes_read), "read {} bytes for a 1 MiB write: {st:?}", st.bytes_read);

    // Nothing is left behind: no job, no work folder, at most the kept checkpoints.
    let job = virsh(&g.uri, &["domjobinfo", &g.name]).expect("jobinfo");
    assert!(job.contains("None"), "{job}");
    assert!(fs::read_dir(&provider.work_dir).map(|d| d.count()).unwrap_or(0) == 0, "a work folder is left");
    let cps = virsh(&g.uri, &["checkpoint-list", &g.name, "--name"]).expect("checkpoints");
    assert_eq!(cps.lines().filter(|l| l.starts_with("vmbackup.")).count(), 2, "{cps}");

    // The incremental point restores to a file system that holds the write.
    let out = g.dir.join("restored.img");
    backup_core::restore_disk_to_path(&vault, &inc.point, "vda", &out, &backup_core::RestoreOptions::default())
        .expect("restore");
    let fsck = testkit::output("e2fsck", &["-fy", s(&out)]);
    assert!(fsck.status.code().is_some_and(|c| c <= 1), "{}", testkit::text(&fsck));
    let stat = sh("debugfs", &["-R", "stat /data/new", s(&out)]).expect("debugfs");
    assert!(stat.contains("Size: 1048576"), "{stat}");

    // The same from the command line: `backup --libvirt DOMAIN`.
    let bin =
        std::env::current_exe().expect("test binary").parent().and_then(Path::parent).expect("target").join("vmbackup");
    assert!(bin.exists(), "{} is built with the workspace's tests", bin.display());
    let cli_vault = g.dir.join("cli-vault");
    testkit::run(s(&bin), &["init", s(&cli_vault)]);
    let backup = || {
        let work = g.dir.join("work");
        testkit::json(
            s(&bin),
            &["backup", "--vault", s(&cli_vault), "--libvirt", &g.name, "--connect", &g.uri, "--json"],
        )
        .tap(|_| assert!(fs::read_dir(&work).map(|d| d.count()).unwrap_or(0) == 0))
    };
    let first = backup();
    assert_eq!(first["vm"], g.name.as_str(), "the VM is named after the domain: {first}");
    guest_sh(&g.uri, &g.name, "dd if=/dev/urandom of=/data/cli bs=64k count=8 2>/dev/null && sync");
    let second = backup();
    let detection = second["disks"][0]["change_detection"].as_str().unwrap_or_default().to_string();
    assert!(detection.contains("cbt"), "{second}");

    // `schedule` takes libvirt domains in its VMs file: a day later, the
    // missed run is made up with an incremental of the domain.
    let (policy, vms) = (g.dir.join("policy.toml"), g.dir.join("vms.json"));
    fs::write(
        &policy,
        "timezone = \"UTC\"\n[schedule]\nfrequency = \"daily\"\ntimes = [\"02:00\"]\n[retention]\nkeep_last = 5\n",
    )
    .expect("policy");
    let entry = serde_json::json!({"name": g.name, "libvirt": g.name, "connect": g.uri, "consistency": "fs"});
    fs::write(&vms, serde_json::json!({ "vms": [entry] }).to_string()).expect("vms");
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(30)).expect("time").to_string();
    let out = testkit::run(
        s(&bin),
        &["schedule", "--vault", s(&cli_vault), "--policy", s(&policy), "--vms", s(&vms), "--once", "--now", &later],
    );
    assert!(out.contains("committed point"), "{out}");
    let list = testkit::json(s(&bin), &["list", "--vault", s(&cli_vault), "--json"]);
    let points = list["points"].as_array().expect("points");
    assert_eq!(points.len(), 3, "{list}");
    let newest = points.iter().max_by_key(|p| p["time"].as_str().unwrap_or_default().to_string()).expect("newest");
    assert_eq!(newest["consistency"], "filesystem", "{newest}");
    assert_eq!(newest["disks"][0]["change_detection"], "cbt", "{newest}");
}

/// `value.tap(f)`: runs `f` on a value and hands the value on.
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&Self)) -> Self {
        f(&self);
        self
    }
}
impl<T> Tap for T {}

/// A file of a restored ext4 image, read with debugfs.
fn image_file(image: &Path, path: &str) -> String {
    sh("debugfs", &["-R", &format!("cat {path}"), s(image)]).expect("debugfs")
}

/// Restores a point's disk and checks its file system with `e2fsck -fn`
/// (nothing repaired: clean or not).
fn restore_clean(vault: &backup_core::Vault, point: &backup_core::PointManifest, disk: &str, out: &Path) {
    backup_core::restore_disk_to_path(vault, point, disk, out, &backup_core::RestoreOptions::default())
        .expect("restore");
    let fsck = testkit::output("e2fsck", &["-fn", s(out)]);
    assert_eq!(fsck.status.code(), Some(0), "point {} is not clean: {}", point.id, testkit::text(&fsck));
}

/// Host-side scripts config whose scripts leave a mark in the guest.
fn guest_scripts(dir: &Path) -> PathBuf {
    let d = dir.join("scripts");
    fs::create_dir(&d).expect("mkdir");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).expect("chmod");
    let script = |name: &str, body: &str| {
        let p = d.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).expect("chmod");
        p
    };
    let pre = script("pre.sh", "echo \"pre $*\" >> /root/pre-marker && echo \"pre ran: $*\" && sync");
    let post = script("post.sh", "echo post >> /root/post-marker && echo post ran");
    let config = d.join("VMSnapshotScriptPluginConfig.json");
    fs::write(
        &config,
        serde_json::json!({
            "pluginName": "ScriptRunner",
            "preScriptLocation": s(&pre),
            "postScriptLocation": s(&post),
            "preScriptParams": ["app1"],
            "timeoutInSeconds": 60,
            "continueBackupOnFailure": false,
            "fsFreezeEnabled": true
        })
        .to_string(),
    )
    .expect("config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod");
    config
}

#[test]
fn an_application_consistent_chain_through_the_agent_while_the_guest_writes() {
    let test = "an_application_consistent_chain_through_the_agent_while_the_guest_writes";
    let Some((g, _dir)) = boot(test) else { return };
    let (uri, dom) = (g.uri.clone(), g.name.clone());
    let mut provider = backup_core::LibvirtProvider::new(dom.clone());
    provider.uri = uri.clone();
    provider.work_dir = g.dir.join("work");
    provider.guest_scripts = Some(guest_scripts(&g.dir));
    provider.min_consistency = backup_core::Consistency::Application;
    let (vm, _) = provider.vm("app").expect("the domain's disks");
    let vault = backup_core::Vault::init(g.dir.join("vault")).expect("init");
    let mut options = backup_core::BackupOptions::default();
    options.consistency = backup_core::Consistency::Application;

    // A writer inside the guest that never stops.
    guest_spawn(
        &uri,
        &dom,
        "i=0; while true; do dd if=/dev/urandom of=/data/w.$((i % 4)) bs=64k count=8 2>/dev/null; i=$((i+1)); sleep 0.2; done",
    );
    for round in 0..3 {
        let r = backup_core::backup(&vault, &provider, &vm, &options).expect("backup");
        let p = &r.point;
        assert_eq!(p.consistency, backup_core::Consistency::Application, "round {round}: {:?}", r.warnings);
        let log = r.warnings.join("\n");
        assert!(log.contains("pre-script /etc/vmbackup/pre-script attempt 1 of 1: succeeded"), "{log}");
        assert!(log.contains("pre ran: app1"), "the pre-script's output is in the job log: {log}");
        assert!(log.contains("through its agent for") && log.contains("frozen window"), "{log}");
        assert!(log.contains("post ran"), "{log}");
        if round == 0 {
            let prep = r.prepared.as_ref().expect("the first backup prepares");
            let changes = prep.changes.join("\n");
            assert!(changes.contains("guest agent") && changes.contains("freeze enabled, exec enabled"), "{changes}");
            assert!(changes.contains("installed the pre-script"), "{changes}");
            assert!(changes.contains("installed the scripts configuration"), "{changes}");
            let record = vault.vm_record("app").expect("record").expect("written");
            assert_eq!(record.prepare.changes, prep.changes, "prepare is recorded in the vault");
            let cfg = p.configuration.as_ref().expect("the domain XML is stored with the point");
            assert_eq!(cfg.kind, "libvirt-domain-xml");
            assert!(cfg.text.contains(&format!("<name>{dom}</name>")), "{}", cfg.text);
        } else {
            assert!(r.prepared.is_none(), "the same agent and scripts: not prepared again");
            let st = &p.disks[0].stats;
            assert_eq!(st.change_detection, "cbt", "{st:?}");
            // Reads beyond the audit sample: at most twice the dirty bytes.
            let audited = st.audited_blocks * u64::from(p.disks[0].block_size);
            assert!(st.bytes_dirty > 0 && st.bytes_read - audited <= 2 * st.bytes_dirty, "{st:?}");
        }
        let img = g.dir.join(format!("restored-{round}.img"));
        restore_clean(&vault, p, "vda", &img);
        let marker = image_file(&img, "/root/pre-marker");
        // The pre-script of this point ran before its freeze: one line per
        // point so far, its own included.
        assert_eq!(marker.lines().count(), round + 1, "point {round}: {marker:?}");
        let hook = image_file(&img, "/var/log/fsfreeze-hook.log");
        assert!(hook.lines().filter(|l| l.ends_with(" freeze")).count() > round, "{hook}");
        fs::remove_file(&img).expect("rm");
    }

    // Installing again finds everything in place.
    use backup_core::SnapshotProvider;
    let again = provider.prepare(&vm).expect("prepare again");
    assert!(again.changes.iter().filter(|c| c.contains("already installed")).count() == 3, "{:?}", again.changes);

    // Shut down cleanly through the agent: the next point reads the disk in
    // place, crash-consistent, still incremental from the qcow2 bitmaps.
    let _ = virsh(&uri, &["shutdown", &dom, "--mode", "agent"]);
    let t = Instant::now();
    while !virsh(&uri, &["domstate", &dom]).unwrap_or_default().contains("shut off") {
        assert!(t.elapsed() < Duration::from_secs(120), "the guest never shut down");
        std::thread::sleep(Duration::from_millis(500));
    }
    provider.min_consistency = backup_core::Consistency::Crash;
    let off = backup_core::backup(&vault, &provider, &vm, &options).expect("backup of the shut-off domain");
    assert_eq!(off.point.consistency, backup_core::Consistency::Crash);
    assert!(off.warnings.iter().any(|w| w.contains("is shut off")), "{:?}", off.warnings);
    let d = &off.point.disks[0];
    assert_eq!(d.snapshot_method, "libvirt-offline-incremental", "{:?}", off.warnings);
    assert_eq!(d.stats.change_detection, "cbt", "{:?}", d.stats);
    assert!(d.stats.bytes_read < 32 << 20, "{:?}", d.stats);
    let restored_off = g.dir.join("restored-off.img");
    restore_clean(&vault, &off.point, "vda", &restored_off);
    // The disk no longer changes: the point is that disk, bit for bit,
    // though most of it came from the points before (the qcow2 bitmaps).
    let disk_now = g.dir.join("disk-now.img");
    sh("qemu-img", &["convert", "-f", "qcow2", "-O", "raw", s(&g.dir.join("guest.qcow2")), s(&disk_now)])
        .expect("qemu-img");
    assert!(
        fs::read(&restored_off).expect("read") == fs::read(&disk_now).expect("read"),
        "the shut-off point differs from its disk"
    );
    assert!(fs::read_dir(&provider.work_dir).map(|d| d.count()).unwrap_or(0) == 0, "a work folder is left");
    // And with a point that must be at least file-system-consistent, a
    // shut-off domain fails instead.
    provider.min_consistency = backup_core::Consistency::FileSystem;
    assert!(backup_core::backup(&vault, &provider, &vm, &options).is_err());
}

/// Starts a command with its output discarded (a test that kills it).
fn spawn_quiet(bin: &Path, args: &[String]) -> std::process::Child {
    std::process::Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vmbackup")
}

/// The children of a process (any of its threads).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

#[test]
fn a_killed_vmbackup_a_hot_added_disk_a_lost_checkpoint_a_dead_agent_and_a_shut_off_domain() {
    let test = "a_killed_vmbackup_a_hot_added_disk_a_lost_checkpoint_a_dead_agent_and_a_shut_off_domain";
    let Some((g, _dir)) = boot(test) else { return };
    let (uri, dom) = (g.uri.clone(), g.name.clone());
    let bin = cli();
    let vault_dir = g.dir.join("vault");
    testkit::run(s(&bin), &["init", s(&vault_dir)]);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["backup", "--vault", s(&vault_dir), "--libvirt", &dom, "--connect", &uri, "--json"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let backup = |extra: &[&str]| -> serde_json::Value {
        let a = args(extra);
        testkit::json(s(&bin), &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let warnings = |v: &serde_json::Value| v["warnings"].to_string();
    let work = Path::new("/var/tmp/vmbackup-libvirt");

    // The first backup installs the scripts through the agent and is
    // application-consistent.
    let cfg = guest_scripts(&g.dir);
    let first = backup(&["--guest-scripts", s(&cfg)]);
    assert_eq!(first["consistency"], "application", "{first}");
    assert!(first["prepared"]["changes"].to_string().contains("installed the pre-script"), "{first}");

    // Killed with SIGKILL while the guest is frozen: its guardian thaws it.
    // The guest's hook makes the freeze take 4 s, so the kill lands in it.
    guest_sh(&uri, &dom, "echo 4 > /etc/qemu/freeze-delay");
    let freezes = |log: &str| log.lines().filter(|l| l.ends_with(" freeze")).count();
    let before = freezes(&guest_sh(&uri, &dom, "cat /var/log/fsfreeze-hook.log"));
    let a = args(&["--consistency", "fs"]);
    let mut child = spawn_quiet(&bin, &a);
    let t = Instant::now();
    while children(child.id()).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "vmbackup never started its freeze guardian");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(1));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let t = Instant::now();
    loop {
        // While frozen the agent refuses guest-exec: ask its status first.
        let status = agent(&uri, &dom, serde_json::json!({"execute": "guest-fsfreeze-status"}))
            .unwrap_or_else(|e| serde_json::json!(e));
        if status == "thawed" {
            let log = guest_sh(&uri, &dom, "cat /var/log/fsfreeze-hook.log");
            if freezes(&log) > before && log.trim_end().ends_with(" thaw") {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the guest stayed frozen: {status}");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("guest thawed {:.1} s after vmbackup was killed", t.elapsed().as_secs_f64());
    guest_sh(&uri, &dom, "rm /etc/qemu/freeze-delay");

    // Killed with SIGKILL during the transfer: the backup job and its work
    // folder stay behind, until the next run ends and removes them; that
    // run's incremental holds what the guest wrote.
    guest_sh(&uri, &dom, "dd if=/dev/urandom of=/data/big bs=1M count=48 2>/dev/null && sync");
    let mut child = spawn_quiet(&bin, &a);
    let folder = work.join(format!("{dom}-{}", child.id()));
    let t = Instant::now();
    while !folder.join("nbd.sock").exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the backup job never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let job = virsh(&uri, &["domjobinfo", &dom]).expect("jobinfo");
    assert!(job.contains("Backup"), "the killed run's job is still there: {job}");
    let third = backup(&["--consistency", "fs"]);
    assert!(warnings(&third).contains("ended a backup job"), "{third}");
    assert!(warnings(&third).contains("left by a killed vmbackup"), "{third}");
    assert!(!folder.exists(), "the killed run's work folder is removed");
    assert!(virsh(&uri, &["domjobinfo", &dom]).expect("jobinfo").contains("None"));
    assert_eq!(third["consistency"], "filesystem", "{third}");
    assert_eq!(third["disks"][0]["change_detection"], "cbt", "{third}");
    let read = third["disks"][0]["bytes_read"].as_u64().expect("bytes_read");
    assert!((48 << 20..=96 << 20).contains(&read), "{third}");
    let vault = backup_core::Vault::open(&vault_dir).expect("open");
    let point = vault.latest_point(&dom).expect("points").expect("a point");
    let img = g.dir.join("after-kill.img");
    restore_clean(&vault, &point, "vda", &img);
    assert!(sh("debugfs", &["-R", "stat /data/big", s(&img)]).expect("debugfs").contains("Size: 50331648"));
    fs::remove_file(&img).expect("rm");

    // A disk hot-added: read in full, the other stays incremental; the
    // next backup tracks both.
    let extra = g.dir.join("extra.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", s(&extra), "16M"]).expect("qemu-img");
    virsh(&uri, &["attach-disk", &dom, s(&extra), "vdb", "--driver", "qemu", "--subdriver", "qcow2", "--live"])
        .expect("hot-add a disk");
    let added = backup(&["--consistency", "fs"]);
    assert!(warnings(&added).contains("disk vdb is new since the previous point"), "{added}");
    let disk = |v: &serde_json::Value, name: &str| {
        v["disks"].as_array().and_then(|d| d.iter().find(|x| x["name"] == name).cloned()).expect("disk")
    };
    assert_eq!(disk(&added, "vda")["change_detection"], "cbt", "{added}");
    assert_eq!(disk(&added, "vdb")["snapshot_method"], "libvirt-full", "{added}");
    let both = backup(&["--consistency", "fs"]);
    assert_eq!(disk(&both, "vda")["change_detection"], "cbt", "{both}");
    assert_eq!(disk(&both, "vdb")["change_detection"], "cbt", "{both}");

    // A checkpoint deleted behind vmbackup's back: every block is read, and
    // the output says so.
    let cps = virsh(&uri, &["checkpoint-list", &dom, "--name"]).expect("checkpoints");
    let newest = cps.lines().filter(|l| l.starts_with("vmbackup.")).max().expect("a checkpoint").to_string();
    virsh(&uri, &["checkpoint-delete", &dom, &newest]).expect("delete the checkpoint");
    let lost = backup(&["--consistency", "fs"]);
    assert!(warnings(&lost).contains(&format!("checkpoint {newest} is gone")), "{lost}");
    assert_ne!(disk(&lost, "vda")["change_detection"], "cbt", "{lost}");
    // Every block is read but the holes the allocation map shows.
    let v = disk(&lost, "vda");
    let (read, zero) = (v["bytes_read"].as_u64().unwrap_or(0), v["bytes_zero"].as_u64().unwrap_or(0));
    assert_eq!(Some(read + zero), v["size"].as_u64(), "{lost}");

    // The agent killed inside the guest: crash-consistent, and said; or a
    // failure when at least file-system consistency is required.
    guest_spawn(&uri, &dom, "sleep 1; kill -9 $(pidof qemu-ga)");
    std::thread::sleep(Duration::from_secs(3));
    let a = args(&["--consistency", "fs", "--min-consistency", "fs"]);
    let refused = testkit::output(s(&bin), &a.iter().map(String::as_str).collect::<Vec<_>>());
    let text = testkit::text(&refused);
    assert!(!refused.status.success(), "{text}");
    assert!(text.contains("crash-consistent") && text.contains("no guest agent answers"), "{text}");
    let crash = backup(&["--consistency", "fs"]);
    assert_eq!(crash["consistency"], "crash", "{crash}");
    assert!(warnings(&crash).contains("no guest agent answers"), "{crash}");

    // A shut-off domain (powered off hard; the hot-added disk went with
    // the running domain): read in place, crash-consistent.
    virsh(&uri, &["destroy", &dom]).expect("power off");
    let off = backup(&[]);
    assert_eq!(off["consistency"], "crash", "{off}");
    assert!(warnings(&off).contains("is shut off"), "{off}");
    assert_eq!(off["disks"].as_array().map(Vec::len), Some(1), "{off}");
    let method = disk(&off, "vda")["snapshot_method"].as_str().unwrap_or_default().to_string();
    assert!(method.starts_with("libvirt-offline"), "{off}");
    let point = vault.latest_point(&dom).expect("points").expect("a point");
    let img = g.dir.join("off.img");
    backup_core::restore_disk_to_path(&vault, &point, "vda", &img, &backup_core::RestoreOptions::default())
        .expect("restore");
    let fsck = testkit::output("e2fsck", &["-fy", s(&img)]);
    assert!(fsck.status.code().is_some_and(|c| c <= 1), "{}", testkit::text(&fsck));
    assert!(
        fs::read_dir(work)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&dom)).count())
            .unwrap_or(0)
            == 0
    );
}
