//! Gives the shared library its SONAME, so that a host linked against one
//! ABI keeps loading that ABI when a newer, incompatible library is
//! installed beside it.
//!
//! The ABI version is the crate's major version, or `0.MINOR` while the
//! major is 0 (where, as in semver, a minor release may break the ABI):
//! `libvmbackup.so.0.1` for 0.1.x. `scripts/install-c.sh` installs the file
//! under its full version with the two usual links.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let abi = if major == "0" { format!("0.{minor}") } else { major };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libvmbackup.so.{abi}");
    println!("cargo:rerun-if-changed=build.rs");
}
