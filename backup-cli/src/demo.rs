//! `vmbackup demo`: the main job on a sample VM, step by step.
//!
//! Two disks hold real ext4 file systems made with `mke2fs -d` from
//! generated files. The demo backs them up, changes files inside them with
//! `debugfs` (no mount, so no root needed), backs up again, restores both
//! points, compares them bit for bit with the images as they were, checks
//! the restored file systems with `e2fsck -fn`, and verifies the vault.
//!
//! The live part (`--live-guest`, which `scripts/demo` passes when it runs
//! as root) boots the test guest under libvirt, backs it up twice while a
//! writer inside it keeps writing, application-consistent through its
//! agent, and restores and checks both points.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use backup_core::{BackupOptions, ImageFileProvider, RestoreOptions, Vault, VerifyOptions, Vm};

use crate::human;

use crate::output::outln;

/// A small deterministic generator, so every demo makes the same files.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
    }
}

const WORDS: [&str; 16] = [
    "backup", "disk", "block", "vault", "snapshot", "restore", "chunk", "segment", "kernel", "service", "request",
    "latency", "user", "session", "commit", "journal",
];

fn log_text(rng: &mut Rng, lines: usize, tag: &str) -> String {
    let mut s = String::new();
    for i in 0..lines {
        let _ = write!(s, "2026-11-25T10:{:02}:{:02}Z {tag}[{}]:", (i / 60) % 60, i % 60, 1000 + rng.next() % 9000);
        for _ in 0..(6 + rng.next() % 10) {
            s.push(' ');
            s.push_str(WORDS[(rng.next() % 16) as usize]);
        }
        s.push('\n');
    }
    s
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
    }
    fs::write(path, data).with_context(|| format!("write {}", path.display()))
}

fn tool(name: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(name)
        .args(args)
        .output()
        .with_context(|| format!("run {name} (install e2fsprogs: the README's first command does it)"))?;
    if !out.status.success() {
        bail!(
            "{name} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fills `src` with a guest's files: configs, logs, binaries, a database.
fn make_system_tree(src: &Path, rng: &mut Rng) -> Result<()> {
    for i in 0..40 {
        write(
            &src.join(format!("etc/service{i}.conf")),
            format!("name = service{i}\nport = {}\nworkers = 4\n", 8000 + i),
        )?;
    }
    for i in 0..6 {
        write(&src.join(format!("var/log/app{i}.log")), log_text(rng, 20_000, &format!("app{i}")))?;
    }
    for i in 0..8 {
        write(&src.join(format!("usr/bin/tool{i}")), rng.bytes(1 << 20))?;
    }
    for i in 0..200 {
        write(&src.join(format!("home/user/notes/note{i:03}.txt")), log_text(rng, 40, "note"))?;
    }
    Ok(())
}

fn make_data_tree(src: &Path, rng: &mut Rng) -> Result<()> {
    // A database file: pages of records, compressible but not trivially.
    let mut db = Vec::with_capacity(12 << 20);
    while db.len() < 12 << 20 {
        db.extend_from_slice(
            format!(
                "{:016x}|customer-{:08}|balance={:10}|",
                rng.next(),
                rng.next() % 100_000_000,
                rng.next() % 1_000_000
            )
            .as_bytes(),
        );
    }
    write(&src.join("db/main.db"), &db)?;
    for i in 0..4 {
        write(&src.join(format!("media/photo{i}.jpg")), rng.bytes(3 << 20))?;
    }
    for i in 0..50 {
        write(&src.join(format!("projects/p{i:02}/README")), log_text(rng, 100, "readme"))?;
    }
    Ok(())
}

fn mkfs(src: &Path, image: &Path, size_mib: u64) -> Result<()> {
    let size = format!("{size_mib}M");
    tool("mke2fs", &["-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", path_str(src)?, path_str(image)?, &size])?;
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Changes files inside an ext4 image with debugfs: the guest at work.
fn churn(image: &Path, work: &Path, rng: &mut Rng, system: bool) -> Result<String> {
    fs::create_dir_all(work)?;
    let mut cmds = String::new();
    let mut said = Vec::new();
    if system {
        // Logs grow: rewritten with lines appended.
        for i in 0..2 {
            let text = log_text(rng, 3_000, &format!("app{i}-new"));
            let f = work.join(format!("app{i}.log"));
            write(&f, &text)?;
            let _ = writeln!(cmds, "rm /var/log/app{i}.log\nwrite {} /var/log/app{i}.log", path_str(&f)?);
        }
        // A tool is upgraded.
        let f = work.join("tool3");
        write(&f, rng.bytes(1 << 20))?;
        let _ = writeln!(cmds, "rm /usr/bin/tool3\nwrite {} /usr/bin/tool3", path_str(&f)?);
        // Old notes are deleted.
        for i in 0..50 {
            let _ = writeln!(cmds, "rm /home/user/notes/note{i:03}.txt");
        }
        said.push("system: 2 logs rewritten, 1 binary replaced, 50 notes deleted".to_string());
    } else {
        let f = work.join("report.pdf");
        write(&f, rng.bytes(2 << 20))?;
        let _ = writeln!(cmds, "mkdir /reports\nwrite {} /reports/q4.pdf", path_str(&f)?);
        for i in 0..10 {
            let _ = writeln!(cmds, "rm /projects/p{i:02}/README\nrmdir /projects/p{i:02}");
        }
        said.push("data: a 2 MiB report added, 10 project folders deleted".to_string());
    }
    let script = work.join("cmds");
    write(&script, &cmds)?;
    tool("debugfs", &["-w", "-f", path_str(&script)?, path_str(image)?])?;
    Ok(said.join("; "))
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn step(n: u32, what: &str) {
    outln!("\n[{n}] {what}");
}

/// Runs the demo in `dir` (a new temporary folder when None); then, given
/// a guest folder and a libvirt URI, its live part.
pub fn run(dir: Option<PathBuf>, live_guest: Option<(PathBuf, String)>) -> Result<()> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("vmbackup-demo-{}", std::process::id())),
    };
    ensure!(
        !dir.exists() || fs::read_dir(&dir)?.next().is_none(),
        "{} is not empty; give the demo a new folder",
        dir.display()
    );
    fs::create_dir_all(&dir)?;
    let started = Instant::now();
    outln!("vmbackup demo in {}", dir.display());
    let mut rng = Rng(0x5eed_0fde);

    step(1, "make a sample VM: two disks holding ext4 file systems with real files (mke2fs -d)");
    let vmdir = dir.join("vm");
    let system = vmdir.join("system.img");
    let data = vmdir.join("data.img");
    make_system_tree(&dir.join("src/system"), &mut rng)?;
    make_data_tree(&dir.join("src/data"), &mut rng)?;
    fs::create_dir_all(&vmdir)?;
    mkfs(&dir.join("src/system"), &system, 256)?;
    mkfs(&dir.join("src/data"), &data, 128)?;
    outln!("    {}: 256 MiB, {}: 128 MiB", system.display(), data.display());

    step(2, "create a vault");
    let vault = Vault::init(dir.join("vault"))?;
    outln!("    {} (id {})", vault.path().display(), vault.id());

    let vm = Vm::from_images("demo-vm", &[&system, &data])?;
    let provider = ImageFileProvider::new();
    let options = BackupOptions::default();

    step(3, "full backup");
    let first = backup_core::backup(&vault, &provider, &vm, &options)?;
    for w in &first.warnings {
        outln!("    note: {w}");
    }
    crate::print_point_summary(&first.point);
    let kept = dir.join("as-of-first-backup");
    fs::create_dir_all(&kept)?;
    for img in [&system, &data] {
        let to = kept.join(img.file_name().context("image name")?);
        tool("cp", &["--sparse=always", path_str(img)?, path_str(&to)?])?;
    }

    step(4, "the guest works: change files inside both disks (debugfs)");
    outln!("    {}", churn(&system, &dir.join("work/system"), &mut rng, true)?);
    outln!("    {}", churn(&data, &dir.join("work/data"), &mut rng, false)?);

    step(5, "incremental backup: only changed blocks are stored");
    let second = backup_core::backup(&vault, &provider, &vm, &options)?;
    crate::print_point_summary(&second.point);

    step(6, "restore both points and compare them bit for bit with the disks as they were");
    for (point, source) in [(&first.point, &kept), (&second.point, &vmdir)] {
        let to = dir.join("restored").join(&point.id);
        let t = Instant::now();
        let stats = backup_core::restore_vm(&vault, point, &to, &RestoreOptions::default())?;
        let bytes: u64 = stats.iter().map(|s| s.size).sum();
        let secs = t.elapsed().as_secs_f64();
        for s in &stats {
            let restored = to.join(&s.disk);
            ensure!(
                same_bytes(&restored, &source.join(&s.disk))?,
                "restored disk {} of point {} differs from its source",
                s.disk,
                point.id
            );
            tool("e2fsck", &["-fn", path_str(&restored)?])
                .with_context(|| format!("e2fsck of restored disk {}", s.disk))?;
        }
        outln!(
            "    point {}: {} restored in {secs:.2} s ({}/s), identical to the source, e2fsck -fn clean",
            point.id,
            human(bytes),
            human((bytes as f64 / secs.max(1e-9)) as u64)
        );
    }

    step(7, "verify the whole vault: every chunk re-read, crc-checked and re-hashed");
    let report = backup_core::verify(&vault, &VerifyOptions::default())?;
    ensure!(report.ok(), "verify found problems: {:?}", report.problems);
    outln!("    ok: {} points, {} chunks, {} packs", report.points, report.chunks, report.packs);

    let full = first.point.stats.bytes_added;
    let incr = second.point.stats.bytes_added;
    outln!(
        "\ndone in {:.1} s: the full backup added {}, the incremental {} ({:.1}% of the full); everything restored bit for bit.",
        started.elapsed().as_secs_f64(),
        human(full),
        human(incr),
        100.0 * incr as f64 / full.max(1) as f64
    );
    match live_guest {
        None => Ok(()),
        #[cfg(feature = "libvirt")]
        Some((guest, uri)) => live(&dir, &guest, &uri, 8),
        #[cfg(not(feature = "libvirt"))]
        Some(_) => bail!("the live part needs the libvirt feature"),
    }
}

/// virsh against `uri`; its output, or an error with what it said.
#[cfg(feature = "libvirt")]
fn virsh(uri: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-q", "-c", uri];
    all.extend_from_slice(args);
    tool("virsh", &all)
}

/// A guest agent command through virsh; its `return` value.
#[cfg(feature = "libvirt")]
fn agent(uri: &str, domain: &str, cmd: serde_json::Value) -> Result<serde_json::Value> {
    let out = virsh(uri, &["qemu-agent-command", domain, &cmd.to_string(), "--timeout", "30"])?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("the agent's reply")?;
    Ok(v["return"].clone())
}

/// The demo's domain: destroyed and undefined at the end, whatever happens.
#[cfg(feature = "libvirt")]
struct DemoDomain {
    uri: String,
    name: String,
}

#[cfg(feature = "libvirt")]
impl Drop for DemoDomain {
    fn drop(&mut self) {
        let _ = virsh(&self.uri, &["destroy", &self.name]);
        let _ = virsh(&self.uri, &["undefine", &self.name, "--checkpoints-metadata"]);
    }
}

/// The frozen window a job log reports, in milliseconds.
#[cfg(feature = "libvirt")]
fn frozen_ms(warnings: &[String]) -> Option<String> {
    let w = warnings.iter().find(|w| w.contains("frozen window"))?;
    let at = w.find("frozen window ")? + "frozen window ".len();
    Some(w[at..].trim_end_matches(')').to_string())
}

/// The live part: the test guest (built by `scripts/test-guest.sh` into
/// `guest`) booted under libvirt at `uri`, backed up twice while it writes,
/// application-consistent through its agent; both points restored and
/// checked.
#[cfg(feature = "libvirt")]
pub fn live(dir: &Path, guest: &Path, uri: &str, first_step: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let started = Instant::now();
    let mut n = first_step;
    let mut next = |what: &str| {
        step(n, what);
        n += 1;
    };
    next("boot a real Linux guest under libvirt: Debian's kernel, busybox and the real qemu-ga, as a TCG domain");
    let name = format!("vmbackup-demo-{}", std::process::id());
    let g = path_str(guest)?;
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
         <features><acpi/></features><os><type arch='x86_64' machine='pc'>hvm</type><kernel>{g}/vmlinuz</kernel>\
         <initrd>{g}/initrd.img</initrd><cmdline>root=/dev/vda rw init=/sbin/init console=ttyS0 quiet</cmdline></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{g}/guest.qcow2'/><target dev='vda' bus='virtio'/></disk>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <serial type='file'><source path='{g}/console.log'/><target port='0'/></serial></devices></domain>"
    );
    let xml_path = dir.join("demo-domain.xml");
    write(&xml_path, xml)?;
    virsh(uri, &["define", path_str(&xml_path)?])?;
    let domain = DemoDomain { uri: uri.to_string(), name: name.clone() };
    virsh(uri, &["start", &name])?;
    let t = Instant::now();
    while agent(uri, &name, serde_json::json!({"execute": "guest-ping"})).is_err() {
        ensure!(t.elapsed().as_secs() < 240, "the guest's agent did not answer within 240 s");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    outln!("    domain {name} is up; its agent answered after {:.0} s", t.elapsed().as_secs_f64());

    next("the guest works: a writer inside it rewrites files every 0.2 s; pre/post scripts for the guest");
    agent(
        uri,
        &name,
        serde_json::json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c",
            "i=0; while true; do dd if=/dev/urandom of=/data/w.$((i % 8)) bs=64k count=8 2>/dev/null; i=$((i+1)); sleep 0.2; done"],
            "capture-output": false}}),
    )?;
    let scripts = dir.join("guest-scripts");
    fs::create_dir_all(&scripts)?;
    fs::set_permissions(&scripts, fs::Permissions::from_mode(0o700))?;
    let script = |file: &str, body: &str| -> Result<PathBuf> {
        let p = scripts.join(file);
        write(&p, format!("#!/bin/sh\n{body}\n"))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
        Ok(p)
    };
    let pre = script("pre.sh", "echo \"$(date) flushed the app\" >> /root/app-flushed && sync && echo app quiesced")?;
    let post = script("post.sh", "echo app resumed")?;
    let config = scripts.join("VMSnapshotScriptPluginConfig.json");
    write(
        &config,
        serde_json::json!({"preScriptLocation": path_str(&pre)?, "postScriptLocation": path_str(&post)?,
            "timeoutInSeconds": 30, "continueBackupOnFailure": true, "fsFreezeEnabled": true})
        .to_string(),
    )?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600))?;

    let vault = Vault::init(dir.join("live-vault"))?;
    let mut provider = backup_core::LibvirtProvider::new(name.clone());
    provider.uri = uri.to_string();
    provider.guest_scripts = Some(config);
    let (vm, _) = provider.vm("demo-guest")?;
    let mut options = BackupOptions::default();
    options.consistency = backup_core::Consistency::Application;
    let mut points = Vec::new();
    for (i, what) in
        ["full backup of the running guest", "incremental backup while it keeps writing"].iter().enumerate()
    {
        next(&format!("{what}: in-guest pre-script, agent freeze around the checkpoint, thaw, post-script"));
        let r = backup_core::backup(&vault, &provider, &vm, &options)?;
        if let Some(prep) = &r.prepared {
            for c in &prep.changes {
                outln!("    prepared: {c}");
            }
        }
        let d = &r.point.disks[0].stats;
        outln!(
            "    point {}: {}-consistent, guest frozen {}; read {} of {} ({} marked dirty), added {} to the vault in {:.2} s",
            r.point.id,
            r.point.consistency,
            frozen_ms(&r.warnings).unwrap_or_else(|| "not at all".into()),
            human(d.bytes_read),
            human(d.bytes_scanned),
            if i == 0 { "first backup: none".to_string() } else { human(d.bytes_dirty) },
            human(r.point.stats.bytes_added),
            r.seconds
        );
        points.push(r.point);
    }

    next("restore both points and check them: e2fsck -fn clean, the pre-script's mark inside");
    for p in &points {
        let to = dir.join("live-restored").join(&p.id);
        let t = Instant::now();
        let stats = backup_core::restore_vm(&vault, p, &to, &RestoreOptions::default())?;
        let restored = to.join(&stats[0].disk);
        tool("e2fsck", &["-fn", path_str(&restored)?]).with_context(|| format!("e2fsck of point {}", p.id))?;
        let marks = tool("debugfs", &["-R", "cat /root/app-flushed", path_str(&restored)?])?;
        ensure!(!marks.trim().is_empty(), "point {} lacks the pre-script's mark", p.id);
        outln!(
            "    point {}: {} restored in {:.2} s, e2fsck -fn clean, {} pre-script run(s) recorded inside",
            p.id,
            human(stats[0].size),
            t.elapsed().as_secs_f64(),
            marks.lines().count()
        );
    }
    drop(domain);
    outln!("\nlive part done in {:.1} s; the domain is gone.", started.elapsed().as_secs_f64());
    Ok(())
}
