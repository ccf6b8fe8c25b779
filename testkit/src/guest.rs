//! A real guest under the test's libvirtd, shared by the libvirt and
//! recovery tests: `scripts/test-guest.sh` builds it from Debian packages
//! (the distribution kernel, busybox-static, the real qemu-ga) and
//! [`boot`] defines and starts it as a persistent TCG domain with a qcow2
//! disk, an agent channel and its serial console in a file. The helpers
//! drive it with `virsh` and the agent (a harness: the engine uses the C
//! library).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{s, sh};

/// virsh against the test's libvirtd.
pub fn virsh(uri: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["-c", uri];
    all.extend_from_slice(args);
    sh("virsh", &all)
}

/// A guest agent command's `return` value.
pub fn agent(uri: &str, dom: &str, cmd: serde_json::Value) -> Result<serde_json::Value, String> {
    let out = virsh(uri, &["qemu-agent-command", dom, &cmd.to_string(), "--timeout", "30"])?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))?;
    Ok(v["return"].clone())
}

/// Runs a shell command in the guest and waits for it; its stdout.
pub fn guest_sh(uri: &str, dom: &str, script: &str) -> String {
    let pid = agent(
        uri,
        dom,
        serde_json::json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}}),
    )
    .expect("guest-exec")["pid"]
        .as_i64()
        .expect("pid");
    let t = Instant::now();
    loop {
        let st = agent(uri, dom, serde_json::json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}))
            .expect("guest-exec-status");
        if st["exited"] == true {
            assert_eq!(st["exitcode"], 0, "{script}: {st}");
            let out = st["out-data"].as_str().unwrap_or_default();
            return String::from_utf8(base64(out)).expect("utf-8");
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{script} never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Decodes standard base64 (the agent's `out-data`).
pub fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | u32::from(val(*c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The domain, destroyed and undefined on drop (a failed test leaves no VM).
pub struct Guest {
    /// The libvirt connection.
    pub uri: String,
    /// The domain.
    pub name: String,
    /// The guest's folder (kernel, disk, console.log).
    pub dir: PathBuf,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = virsh(&self.uri, &["domjobabort", &self.name]);
        let _ = virsh(&self.uri, &["destroy", &self.name]);
        let _ = virsh(&self.uri, &["undefine", &self.name, "--checkpoints-metadata"]);
    }
}

/// Builds and boots a guest with a 128 MiB disk; None (after
/// [`skip`](crate::skip)) without libvirtd or the guest's packages.
pub fn boot(test: &str) -> Option<(Guest, tempfile::TempDir)> {
    boot_with(test, 128, &[])
}

/// Builds and boots a guest of `size_mib` whose `/data` holds copies of
/// the host folders `data`.
pub fn boot_with(test: &str, size_mib: u32, data: &[&Path]) -> Option<(Guest, tempfile::TempDir)> {
    let Ok(uri) = std::env::var("VMB_LIBVIRT_URI") else {
        crate::skip(test, "VMB_LIBVIRT_URI is not set (scripts/test starts libvirtd and sets it)");
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // QEMU runs as another user: it must reach the guest's files.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository");
    let data: Vec<&str> = data.iter().map(|d| s(d)).collect();
    let built = std::process::Command::new(root.join("scripts/test-guest.sh"))
        .arg(dir.path())
        .arg(size_mib.to_string())
        .env("GUEST_DATA", data.join(" "))
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| if o.status.success() { Ok(()) } else { Err(crate::text(&o)) });
    if let Err(e) = built {
        crate::skip(test, &format!("cannot build the test guest: {e}"));
        return None;
    }
    // Unique per test: the tests of this file run at once in one process.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let name = format!("vmb-test-{}-{n}", std::process::id());
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
         <features><acpi/></features><os><type arch='x86_64' machine='pc'>hvm</type><kernel>{d}/vmlinuz</kernel><initrd>{d}/initrd.img</initrd>\
         <cmdline>root=/dev/vda rw init=/sbin/init console=ttyS0 quiet</cmdline></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{d}/guest.qcow2'/><target dev='vda' bus='virtio'/></disk>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <serial type='file'><source path='{d}/console.log'/><target port='0'/></serial></devices></domain>",
        d = s(dir.path())
    );
    let xml_path = dir.path().join("domain.xml");
    fs::write(&xml_path, xml).expect("xml");
    // Defined, not transient: a shut-off domain stays known to libvirt.
    virsh(&uri, &["define", s(&xml_path)]).expect("define the domain");
    let guest = Guest { uri, name, dir: dir.path().to_path_buf() };
    virsh(&guest.uri, &["start", &guest.name]).expect("start the domain");
    let t = Instant::now();
    while agent(&guest.uri, &guest.name, serde_json::json!({"execute": "guest-ping"})).is_err() {
        let console = fs::read_to_string(guest.dir.join("console.log")).unwrap_or_default();
        assert!(t.elapsed() < Duration::from_secs(180), "the guest agent never answered; console:\n{console}");
        std::thread::sleep(Duration::from_secs(1));
    }
    Some((guest, dir))
}

/// Starts a shell command in the guest without waiting for it.
pub fn guest_spawn(uri: &str, dom: &str, script: &str) {
    agent(
        uri,
        dom,
        serde_json::json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": false}}),
    )
    .expect("guest-exec");
}

/// The `vmbackup` binary built with the workspace's tests.
pub fn cli() -> PathBuf {
    let bin =
        std::env::current_exe().expect("test binary").parent().and_then(Path::parent).expect("target").join("vmbackup");
    assert!(bin.exists(), "{} is built with the workspace's tests", bin.display());
    bin
}
