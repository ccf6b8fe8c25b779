//! Bringing a VM back from a point under libvirt (feature `libvirt`):
//! - [`restore_to_domain`]: every disk restored in parallel into a pool
//!   folder, and a new domain defined from the point's saved XML with a new
//!   name, UUID, MAC addresses and disk paths;
//! - [`instant_restore`]: the new domain starts at once on qcow2 overlays
//!   whose backing is the point, served by this process over NBD, while
//!   libvirt's block pull moves the data into the overlays; then the
//!   export stops and the domain stands on local disks only;
//! - [`boot_verify`]: the point boots in a throwaway domain with no
//!   network on discarded overlays, is judged by its guest agent (and an
//!   optional in-guest test), and the verdict is kept beside the point.
//!
//! The domain the point was taken from is never touched: a target with its
//! UUID is refused. Everything temporary lives in a work folder named
//! after this process or the new domain, and a later run removes what a
//! killed run left (or, for an instant recovery, resumes it).

mod boot_verify;
mod domain_def;
mod exports;
mod instant;
mod to_domain;
mod xml_tree;

use std::path::{Path, PathBuf};

pub use boot_verify::{BootVerifyOptions, boot_verify};
pub use instant::{InstantOptions, InstantReport, instant_restore};
pub use to_domain::{DomainRestore, restore_to_domain};

use crate::error::{Error, Result};
use crate::libvirt::alive;
use crate::libvirt::domains::Libvirt;
use crate::libvirt::handle::Domain;
use crate::model::validate_name;
use crate::vault::PointManifest;

/// The kind of [`VmConfiguration`](crate::VmConfiguration) a libvirt point
/// carries.
pub(crate) const DOMAIN_XML_KIND: &str = "libvirt-domain-xml";

/// The image format of restored disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// qcow2: sparse anywhere, snapshots and bitmaps (the default).
    #[default]
    Qcow2,
    /// A raw, sparse file.
    Raw,
}

impl ImageFormat {
    /// `qcow2` or `raw`: libvirt's name and the file's extension.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }

    /// Parses `qcow2` or `raw`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> Result<ImageFormat> {
        match s {
            "qcow2" => Ok(ImageFormat::Qcow2),
            "raw" => Ok(ImageFormat::Raw),
            other => Err(Error::invalid("image format", format!("{other:?} (qcow2 or raw)"))),
        }
    }
}

/// Where and how a point becomes a libvirt domain.
///
/// ```
/// let t = backup_core::DomainTarget::new("web-restored");
/// assert_eq!(t.uri, "qemu:///system");
/// assert_eq!(t.pool, std::path::Path::new("/var/lib/libvirt/images"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DomainTarget {
    /// The new domain's name.
    pub name: String,
    /// The libvirt connection (default `qemu:///system`).
    pub uri: String,
    /// The folder the disks go to, as `NAME-DISK.FORMAT` (default
    /// `/var/lib/libvirt/images`).
    pub pool: PathBuf,
    /// The restored disks' format (default qcow2; an instant recovery's
    /// overlays are always qcow2).
    pub format: ImageFormat,
    /// Replace a domain of that name (and its files in the pool); never
    /// the domain the point was taken from.
    pub replace: bool,
    /// Start the domain once it is defined (an instant recovery always
    /// does).
    pub start: bool,
    /// Where export sockets and other temporary files live (default
    /// `/var/tmp/vmbackup-libvirt`).
    pub work_dir: PathBuf,
}

impl DomainTarget {
    /// A target named `name` with the defaults above.
    pub fn new(name: impl Into<String>) -> DomainTarget {
        DomainTarget {
            name: name.into(),
            uri: "qemu:///system".into(),
            pool: PathBuf::from("/var/lib/libvirt/images"),
            format: ImageFormat::Qcow2,
            replace: false,
            start: false,
            work_dir: PathBuf::from("/var/tmp/vmbackup-libvirt"),
        }
    }

    /// The file of a disk of the new domain.
    pub fn disk_path(&self, disk: &str, format: ImageFormat) -> PathBuf {
        self.pool.join(format!("{}-{disk}.{}", self.name, format.name()))
    }
}

/// An error of a recovery step.
pub(crate) fn fail(point: &PointManifest, domain: &str, step: &'static str, message: impl std::fmt::Display) -> Error {
    Error::Recovery { vm: point.vm.clone(), domain: domain.to_string(), step, message: message.to_string() }
}

/// The point's saved domain XML.
pub(crate) fn saved_xml<'p>(point: &'p PointManifest, domain: &str, step: &'static str) -> Result<&'p str> {
    match &point.configuration {
        Some(c) if c.kind == DOMAIN_XML_KIND => Ok(&c.text),
        _ => Err(fail(
            point,
            domain,
            step,
            format!(
                "point {} holds no libvirt domain XML (only points backed up with --libvirt do); restore its disks instead",
                point.id
            ),
        )),
    }
}

/// Checks the target's name against what libvirt has: an existing domain
/// is refused without `replace`, and the point's own domain always. The
/// domain to replace, if any.
pub(crate) fn check_target(
    lv: &Libvirt,
    point: &PointManifest,
    target: &DomainTarget,
    xml: &str,
    step: &'static str,
) -> Result<Option<Domain>> {
    validate_name("domain name", &target.name)?;
    let Some(existing) = lv.lookup(&target.name) else { return Ok(None) };
    let original =
        xml_tree::Element::parse(xml).ok().and_then(|d| d.child("uuid").map(|u| u.text().trim().to_string()));
    if original.is_some() && existing.uuid_string().ok() == original {
        return Err(fail(
            point,
            &target.name,
            step,
            "it is the domain the point was taken from, which vmbackup never touches: restore under a new name",
        ));
    }
    if !target.replace {
        return Err(fail(
            point,
            &target.name,
            step,
            format!("a domain {} exists (replace it explicitly)", target.name),
        ));
    }
    Ok(Some(existing))
}

/// The user and group QEMU runs as, when this process can hand sockets
/// to it (root, system instance).
pub(crate) fn qemu_owner(uri: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !uri.contains("/system") {
        return None;
    }
    crate::libvirt::qemu_user()
}

/// Makes a private work folder that QEMU can pass through (0711).
pub(crate) fn work_folder(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create folder", parent, e))?;
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711));
    }
    std::fs::create_dir_all(path).map_err(|e| Error::io("create folder", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| Error::io("set the mode of", path, e))
}

/// Whether `pid` (text, as in a name) is a number whose process is gone.
pub(crate) fn dead_pid(pid: &str) -> bool {
    pid.parse::<i32>().is_ok_and(|p| !alive(p))
}

/// Removes the entries of `dir` named `PREFIX<pid>` (or
/// `PREFIX<pid>.<anything>`) whose process is gone: what a killed run
/// left. What it removed.
pub(crate) fn remove_dead(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        if !rest.split(|c: char| !c.is_ascii_digit()).next().is_some_and(dead_pid) {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The rewrites of a point's domain XML, for `fuzzing::domain_rewrite`:
/// whether both worked, and their output parses again.
pub(crate) fn fuzz_rewrite(xml: &str) -> bool {
    use domain_def::{DiskSource, NewDomain, rewrite};
    let Ok((disks, _)) = crate::libvirt::parse_disks(xml) else { return false };
    let mut files = std::collections::BTreeMap::new();
    let mut overlays = std::collections::BTreeMap::new();
    for d in &disks {
        let path = PathBuf::from(format!("/pool/new-{}.qcow2", d.target));
        files.insert(d.target.clone(), DiskSource::File { path: path.clone(), format: ImageFormat::Qcow2 });
        let socket = PathBuf::from(format!("/run/x/{}.sock", d.target));
        overlays.insert(d.target.clone(), DiskSource::Overlay { path, socket, export: d.target.clone() });
    }
    let restored = NewDomain { name: "new", disks: &files, console_dir: Path::new("/pool"), throwaway: false };
    let throwaway = NewDomain { name: "verify", disks: &overlays, console_dir: Path::new("/w"), throwaway: true };
    [restored, throwaway].iter().all(|n| match rewrite(xml, n) {
        Ok((out, _)) => xml_tree::Element::parse(&out).is_ok(),
        Err(_) => false,
    })
}
