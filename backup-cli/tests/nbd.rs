//! `vmbackup backup` of NBD disks with a dirty bitmap, and `vmbackup
//! export`, against the real `qemu-img`, `qemu-io` and `qemu-nbd` (skipped,
//! with the reason printed, when they are missing).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use testkit::{Kill, have, run, s, wait_for_socket as wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");

fn backup_json(vault: &Path, disk: &str) -> serde_json::Value {
    let out = run(BIN, &["backup", "--vault", s(vault), "--vm", "q", "--disk", disk, "--bitmap", "b0", "--json"]);
    serde_json::from_str(&out).expect("json")
}

#[test]
fn backup_of_an_nbd_disk_with_a_bitmap_then_export_the_point() {
    for t in ["qemu-img", "qemu-io", "qemu-nbd"] {
        if !have(t) {
            testkit::skip("an NBD test", &format!("{t} is not installed"));
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = d.join("d.qcow2");
    let vault = d.join("vault");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&image), "32M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 4M", s(&image)]);
    run("qemu-img", &["bitmap", "--add", s(&image), "b0"]);
    run(BIN, &["init", s(&vault)]);
    let sock = d.join("q.sock");
    let disk = format!("sda=nbd+unix:///?socket={}", sock.display());
    let serve = || {
        let c = Command::new("qemu-nbd")
            .args(["-r", "-t", "-e", "4", "-f", "qcow2", "-B", "b0", "--socket", s(&sock), s(&image)])
            .spawn()
            .expect("qemu-nbd");
        wait_for(&sock);
        Kill(c)
    };
    {
        let _nbd = serve();
        let j = backup_json(&vault, &disk);
        assert_eq!(j["disks"][0]["change_detection"], "none");
        assert_eq!(j["consistency"], "crash");
    }
    run("qemu-img", &["bitmap", "--clear", s(&image), "b0"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x55 8M 64k", s(&image)]);
    {
        let _nbd = serve();
        let j = backup_json(&vault, &disk);
        assert_eq!(j["disks"][0]["change_detection"], "cbt");
        let read = j["disks"][0]["bytes_read"].as_u64().expect("bytes_read");
        // The changed block, and the default 1% audit of clean blocks.
        assert!((64 << 10..=512 << 10).contains(&read), "read {read} bytes for 64 KiB changed");
    }
    // --bitmap without NBD disks is bad usage.
    let st = Command::new(BIN)
        .args(["backup", "--vault", s(&vault), "--vm", "x", "--disk", s(&image), "--bitmap", "b0"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(st.code(), Some(1));

    let esock = d.join("export.sock");
    let mut child = Command::new(BIN)
        .args(["export", "--vault", s(&vault), "--vm", "q", "--disk", "sda", "--socket", s(&esock)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("export");
    let mut uri = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut uri).expect("uri line");
    let export = Kill(child);
    let out = run("qemu-img", &["compare", "-f", "qcow2", s(&image), uri.trim()]);
    assert!(out.contains("identical"), "{out}");
    drop(export);
    // A remote address needs --allow-remote.
    let o = Command::new(BIN)
        .args(["export", "--vault", s(&vault), "--vm", "q", "--disk", "0", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not loopback"));
}

#[test]
fn backup_through_qmp_of_a_qemu_storage_daemon_node() {
    for t in ["qemu-img", "qemu-io", "qemu-storage-daemon"] {
        if !have(t) {
            testkit::skip("an NBD test", &format!("{t} is not installed"));
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let image = d.join("d.qcow2");
    let vault = d.join("vault");
    run("qemu-img", &["create", "-q", "-f", "qcow2", s(&image), "16M"]);
    run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x11 0 2M", s(&image)]);
    run(BIN, &["init", s(&vault)]);
    let qmp = d.join("qmp.sock");
    let _qsd = Kill(
        Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,filename={},node-name=f0", s(&image)))
            .args(["--blockdev", "driver=qcow2,file=f0,node-name=disk0"])
            .arg("--chardev")
            .arg(format!("socket,path={},server=on,wait=off,id=m", s(&qmp)))
            .args(["--monitor", "chardev=m"])
            .spawn()
            .expect("qemu-storage-daemon"),
    );
    wait_for(&qmp);
    let backup = || -> serde_json::Value {
        let out = run(
            BIN,
            &["backup", "--vault", s(&vault), "--vm", "q", "--disk", "root=disk0", "--qmp", s(&qmp), "--json"],
        );
        serde_json::from_str(&out).expect("json")
    };
    let j = backup();
    assert_eq!(j["disks"][0]["bytes_read"], 2 << 20);
    let j = backup();
    assert_eq!(j["disks"][0]["change_detection"], "cbt");
    assert_eq!(j["disks"][0]["bytes_read"].as_u64().map(|r| r <= 256 << 10), Some(true), "{j}"); // the 1% audit may add a block
}
