//! The libvirt XML the provider reads (a domain's disks) and writes (a
//! checkpoint and a pull-mode backup job).

use std::path::Path;

/// A disk of a domain that can be backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DomainDisk {
    /// The guest's name for it (`vda`): the disk's name in points.
    pub target: String,
    /// The file or block device behind it.
    pub source: String,
    /// `file` or `block`.
    pub kind: String,
    /// The image format (`qcow2`, `raw`), when the XML says.
    pub format: Option<String>,
}

/// Disks of a domain that are not backed up: (target, why).
pub type SkippedDisks = Vec<(String, String)>;

/// The disks of a domain's XML that can be backed up, and the others with
/// why they are skipped (CD-ROMs and floppies, shareable and read-only
/// disks, network disks, disks without a source).
///
/// # Errors
/// XML that does not parse, or is not a domain.
pub fn parse_disks(xml: &str) -> Result<(Vec<DomainDisk>, SkippedDisks), String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("the domain XML does not parse: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(format!("the XML is a <{}>, not a <domain>", root.tag_name().name()));
    }
    let mut disks = Vec::new();
    let mut skipped = Vec::new();
    let devices = root.children().filter(|n| n.has_tag_name("devices"));
    for disk in devices.flat_map(|d| d.children().filter(|n| n.has_tag_name("disk"))) {
        let child = |name: &str| disk.children().find(|n| n.has_tag_name(name));
        let Some(target) = child("target").and_then(|t| t.attribute("dev")).map(str::to_string) else {
            continue;
        };
        let device = disk.attribute("device").unwrap_or("disk");
        let kind = disk.attribute("type").unwrap_or("file");
        let source = child("source").and_then(|s| s.attribute("file").or_else(|| s.attribute("dev")));
        let why = if device != "disk" {
            Some(format!("it is a {device}"))
        } else if child("shareable").is_some() {
            Some("it is shareable".to_string())
        } else if child("readonly").is_some() {
            Some("it is read-only".to_string())
        } else if kind != "file" && kind != "block" {
            Some(format!("its type is {kind} (file and block disks are backed up)"))
        } else if source.is_none() {
            Some("it has no source".to_string())
        } else {
            None
        };
        match (why, source) {
            (Some(why), _) => skipped.push((target, why)),
            (None, Some(source)) => disks.push(DomainDisk {
                target,
                source: source.to_string(),
                kind: kind.to_string(),
                format: child("driver").and_then(|d| d.attribute("type")).map(str::to_string),
            }),
            (None, None) => {}
        }
    }
    Ok((disks, skipped))
}

/// The name of the bitmap a job exports for a disk.
pub(crate) fn export_bitmap(target: &str) -> String {
    format!("vmbackup-{target}")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

/// A checkpoint of `disks` named `name` (a bitmap for each).
pub(crate) fn checkpoint_xml(name: &str, disks: &[DomainDisk]) -> String {
    let mut x = format!("<domaincheckpoint><name>{}</name><disks>", escape(name));
    for d in disks {
        x.push_str(&format!("<disk name='{}' checkpoint='bitmap'/>", escape(&d.target)));
    }
    x.push_str("</disks></domaincheckpoint>");
    x
}

/// A pull-mode backup job serving NBD on the unix socket `socket`, with
/// scratch files in `dir`: each disk with the checkpoint it is incremental
/// from (exporting that disk's bitmap), or None to read it in full (a new
/// disk, or no usable checkpoint).
pub(crate) fn backup_xml(socket: &Path, dir: &Path, disks: &[(DomainDisk, Option<String>)]) -> String {
    let mut x = String::from("<domainbackup mode='pull'>");
    x.push_str(&format!("<server transport='unix' socket='{}'/><disks>", escape(&socket.to_string_lossy())));
    for (d, since) in disks {
        let mode = match since {
            Some(c) => format!(
                "backupmode='incremental' incremental='{}' exportbitmap='{}'",
                escape(c),
                escape(&export_bitmap(&d.target))
            ),
            None => "backupmode='full'".to_string(),
        };
        x.push_str(&format!(
            "<disk name='{t}' backup='yes' type='file' exportname='{t}' {mode}><scratch file='{s}'/></disk>",
            t = escape(&d.target),
            s = escape(&dir.join(format!("{}.scratch", d.target)).to_string_lossy()),
        ));
    }
    x.push_str("</disks></domainbackup>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'><name>web</name><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/vms/web.qcow2'/><target dev='vda' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/data'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><source file='/isos/debian.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
      <disk type='file' device='disk'><source file='/vms/shared.img'/><target dev='vdc' bus='virtio'/><shareable/></disk>
      <disk type='file' device='disk'><source file='/vms/ro.img'/><target dev='vdd' bus='virtio'/><readonly/></disk>
      <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vde' bus='virtio'/></disk>
    </devices></domain>"#;

    #[test]
    fn disks_come_from_the_domain_xml_and_the_others_say_why_not() {
        let (disks, skipped) = parse_disks(DOMAIN).expect("parses");
        let targets: Vec<_> =
            disks.iter().map(|d| (d.target.as_str(), d.source.as_str(), d.format.as_deref())).collect();
        assert_eq!(targets, [("vda", "/vms/web.qcow2", Some("qcow2")), ("vdb", "/dev/vg/data", Some("raw"))]);
        let why: Vec<_> = skipped.iter().map(|(t, w)| format!("{t}: {w}")).collect();
        assert_eq!(
            why,
            [
                "sda: it is a cdrom",
                "vdc: it is shareable",
                "vdd: it is read-only",
                "vde: its type is network (file and block disks are backed up)"
            ]
        );
        assert!(parse_disks("<domaincheckpoint/>").is_err());
        assert!(parse_disks("<domain").is_err());
    }

    #[test]
    fn job_xml_names_every_disk_and_escapes_what_it_quotes() {
        let (disks, _) = parse_disks(DOMAIN).expect("parses");
        let c = checkpoint_xml("vmbackup.1", &disks);
        assert_eq!(
            c,
            "<domaincheckpoint><name>vmbackup.1</name><disks><disk name='vda' checkpoint='bitmap'/>\
             <disk name='vdb' checkpoint='bitmap'/></disks></domaincheckpoint>"
        );
        let b = backup_xml(
            Path::new("/w/it's.sock"),
            Path::new("/w"),
            &[(disks[0].clone(), Some("vmbackup.0".into())), (disks[1].clone(), None)],
        );
        assert!(
            b.contains("backupmode='incremental' incremental='vmbackup.0' exportbitmap='vmbackup-vda'><scratch file='/w/vda.scratch'/>"),
            "{b}"
        );
        // A disk with no checkpoint (hot-added) is read in full, exporting no bitmap.
        assert!(b.contains("exportname='vdb' backupmode='full'><scratch"), "{b}");
        assert!(b.contains("socket='/w/it&apos;s.sock'"), "{b}");
        roxmltree::Document::parse(&b).expect("well-formed");
        roxmltree::Document::parse(&c).expect("well-formed");
    }
}
