//! `include/vmbackup.h` is generated from this crate by a pinned cbindgen and
//! checked in; this test fails when it is stale.
//!
//! Regenerate it with `VMB_BLESS=1 cargo test -p backup-ffi --test header`.

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("backup-ffi/cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");

    let path = crate_dir.join("../include/vmbackup.h");
    if std::env::var_os("VMB_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/vmbackup.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| committed.lines().count().min(generated.lines().count()) + 1, |i| i + 1);
        panic!(
            "include/vmbackup.h is stale (first difference at line {line}).\n\
             Regenerate it with: VMB_BLESS=1 cargo test -p backup-ffi --test header"
        );
    }
}

/// The README's table of status codes is a copy of the enum: keep them equal.
#[test]
fn readme_lists_every_status_code() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("backup-ffi/README.md");
    let mut rows = Vec::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, code, name, ..] = cells.as_slice()
            && let Ok(code) = code.parse::<i32>()
        {
            rows.push((code, name.to_string()));
        }
    }
    let mut expected = Vec::new();
    for code in 0.. {
        let name = vmbackup::vmb_status_str(code);
        // SAFETY: vmb_status_str returns a static NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned();
        if text == "unknown status code" {
            break;
        }
        expected.push(code);
    }
    let codes: Vec<i32> = rows.iter().map(|r| r.0).collect();
    assert_eq!(codes, expected, "README.md status table and vmb_status differ");
    for (code, name) in &rows {
        let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../include/vmbackup.h"))
            .expect("include/vmbackup.h");
        assert!(header.contains(&format!("{name} = {code},")), "README.md says {name} is {code}; the header does not");
    }
}
