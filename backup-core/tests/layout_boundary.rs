//! The vault's layout is known in one place, `backup-core/src/vault/`
//! (`vault::layout` names every object): no other library code builds a
//! vault path or object key, or touches a vault file. This test reads the
//! sources of backup-core, the command line, the C library and the Python
//! module and fails on a line that does.

use std::path::{Path, PathBuf};

/// The vault's folders: a string naming one as a path part builds a vault path.
const FOLDERS: [&str; 12] =
    ["packs", "index", "segments", "points", "vms", "jobs", "snapshots", "verdicts", "gc", "tmp", "pruned", "lock"];

/// What a line must not contain outside `vault/`, and why.
fn offences(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in FOLDERS {
        for pattern in [format!("\"{f}/"), format!("join(\"{f}\")"), format!("/{f}/{{")] {
            if line.contains(&pattern) {
                out.push(format!("builds a vault path with {pattern}"));
            }
        }
    }
    for pattern in [".pack\"", ".idx\"", "vault.dir()", "vault.path().join", "vault().path().join"] {
        if line.contains(pattern) {
            out.push(format!("touches vault files with {pattern}"));
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_code_outside_vault_builds_a_vault_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let vault = root.join("backup-core/src/vault");
    let mut files = Vec::new();
    for dir in ["backup-core/src", "backup-cli/src", "backup-ffi/src", "backup-py/src"] {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), root.display());
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&vault)) {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            // Comments and doc examples say where things are; they build nothing.
            if code.starts_with("//") {
                continue;
            }
            // Unit tests below this line may damage a vault on purpose.
            if code.starts_with("#[cfg(test)]") || code.starts_with("#[cfg(all(test") {
                break;
            }
            for why in offences(line) {
                found.push(format!("{}:{}: {why}: {}", file.display(), n + 1, code));
            }
        }
    }
    assert!(found.is_empty(), "vault paths built outside backup-core/src/vault/:\n{}", found.join("\n"));
}

#[test]
fn the_check_catches_what_it_is_for() {
    assert!(!offences(r#"let p = vault.path().join("packs").join(format!("{id}.pack"));"#).is_empty());
    assert!(!offences(r#"store.delete(&format!("gc/{name}"))?;"#).is_empty());
    assert!(!offences(r#"vault.dir().remove_file(&path)?;"#).is_empty());
    assert!(offences(r#"outln!("{}", json!({ "points": records }));"#).is_empty());
    assert!(offences(r#"let copier = vault.copy_frames("gc")?;"#).is_empty());
}
