//! `vmbackup` with an encrypted vault: `init --encrypt`, the key options
//! every command takes (environment, passphrase file, key file), clear
//! errors for a missing or wrong key, and `key add|remove|list`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::{Rng, s};

const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");

/// Runs vmbackup with `passphrase` in $VMBACKUP_PASSPHRASE (none: unset).
fn run(passphrase: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("VMBACKUP_PASSPHRASE").env_remove("VMBACKUP_NEW_PASSPHRASE");
    if let Some(p) = passphrase {
        c.env("VMBACKUP_PASSPHRASE", p);
    }
    c.output().expect("run vmbackup")
}

fn ok(passphrase: Option<&str>, args: &[&str]) -> String {
    let out = run(passphrase, args);
    assert!(
        out.status.success(),
        "vmbackup {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs a command that must fail with exit code `code`; returns its stderr.
fn fails(passphrase: Option<&str>, args: &[&str], code: i32) -> String {
    let out = run(passphrase, args);
    assert_eq!(out.status.code(), Some(code), "vmbackup {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stderr).expect("utf-8")
}

fn packs(vault: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(vault.join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .map(|p| (p.clone(), fs::read(&p).expect("read")))
        .collect()
}

#[test]
fn an_encrypted_vault_round_trips_with_the_passphrase_from_the_environment_or_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, img) = (d.join("vault"), d.join("root.img"));
    let mut data = Rng(1).bytes(2 << 20);
    fs::write(&img, &data).expect("image");
    let pw = Some("hunter2 but longer");
    let init = ok(pw, &["init", s(&vault), "--encrypt"]);
    assert!(init.contains("initialized encrypted vault"), "{init}");
    ok(pw, &["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)]);
    data[1 << 20] ^= 0xff;
    fs::write(&img, &data).expect("image");
    ok(pw, &["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)]);

    let pf = d.join("passphrase");
    fs::write(&pf, "hunter2 but longer\n").expect("passphrase file");
    let out = d.join("restored.img");
    ok(
        None,
        &[
            "restore",
            "--vault",
            s(&vault),
            "--vm",
            "web",
            "--disk",
            "root.img",
            "--passphrase-file",
            s(&pf),
            "--to",
            s(&out),
        ],
    );
    assert!(fs::read(&out).expect("restored") == data, "restored image differs");
    ok(None, &["verify", "--vault", s(&vault), "--passphrase-file", s(&pf)]);

    // No key (stdin is not a terminal here, so no prompt) and a wrong one:
    // clear errors, and nothing is written.
    let before = packs(&vault);
    let e = fails(None, &["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)], 1);
    assert!(e.contains("is encrypted: give its passphrase or key file"), "{e}");
    let e = fails(Some("hunter3"), &["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img)], 1);
    assert!(e.contains("wrong passphrase or key"), "{e}");
    assert!(packs(&vault) == before);
    let e = fails(None, &["init", s(&d.join("v2")), "--encrypt"], 2);
    assert!(e.contains("--encrypt needs a key"), "{e}");
}

#[test]
fn key_add_remove_and_list_rewrite_only_the_config_and_keep_the_last_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (vault, img, key) = (d.join("vault"), d.join("root.img"), d.join("vault.key"));
    fs::write(&img, Rng(2).bytes(1 << 20)).expect("image");
    // init makes the key file when it does not exist.
    ok(None, &["init", s(&vault), "--encrypt", "--key-file", s(&key)]);
    assert_eq!(fs::read_to_string(&key).expect("key file").trim().len(), 64);
    ok(None, &["backup", "--vault", s(&vault), "--vm", "web", "--disk", s(&img), "--key-file", s(&key)]);
    let before = packs(&vault);

    let out = run(None, &["key", "add", "--vault", s(&vault), "--key-file", s(&key)]);
    assert!(!out.status.success(), "key add without a new key must fail");
    let mut add = Command::new(BIN);
    add.args(["key", "add", "--vault", s(&vault), "--key-file", s(&key)])
        .env_remove("VMBACKUP_PASSPHRASE")
        .env("VMBACKUP_NEW_PASSPHRASE", "second");
    assert!(add.output().expect("run").status.success());
    let list: serde_json::Value =
        serde_json::from_str(&ok(Some("second"), &["key", "list", "--vault", s(&vault), "--json"])).expect("json");
    let slots = list["slots"].as_array().expect("slots");
    assert_eq!(slots.len(), 2, "{list}");
    assert_eq!(slots[0]["kind"], "key-file");
    assert_eq!(slots[1]["kind"], "passphrase");
    assert_eq!(slots[1]["kdf"]["memory_kib"], 65536);
    let first = slots[0]["id"].as_str().expect("id").to_string();
    let second = slots[1]["id"].as_str().expect("id").to_string();

    ok(Some("second"), &["key", "remove", "--vault", s(&vault), &first]);
    let e = fails(None, &["verify", "--vault", s(&vault), "--key-file", s(&key)], 1);
    assert!(e.contains("wrong passphrase or key"), "{e}");
    let e = fails(Some("second"), &["key", "remove", "--vault", s(&vault), &second], 2);
    assert!(e.contains("last key slot"), "{e}");
    ok(Some("second"), &["verify", "--vault", s(&vault)]);
    assert!(packs(&vault) == before, "key changes touched the packs");
    let text = ok(Some("second"), &["key", "list", "--vault", s(&vault)]);
    assert!(text.contains(&second) && !text.contains(&first), "{text}");
}
