//! The definition of a domain made from a point: the point's saved domain
//! XML with a new name, no UUID (libvirt makes one), no MAC addresses
//! (libvirt makes new ones), the restored disks' paths, and console files
//! of its own, so that it runs beside the original without sharing
//! anything with it. A throwaway domain (boot verification) also loses its
//! network and host devices and shows its screen to nothing but libvirt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ImageFormat;
use super::xml_tree::{Element, Node};

/// What a disk of the new domain stands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DiskSource {
    /// A restored image file.
    File { path: PathBuf, format: ImageFormat },
    /// A qcow2 overlay whose backing is an NBD export of the point on a
    /// unix socket; the guest pauses when the export fails.
    Overlay { path: PathBuf, socket: PathBuf, export: String },
}

/// How to make the new domain.
#[derive(Debug, Clone)]
pub(crate) struct NewDomain<'a> {
    pub name: &'a str,
    /// By the disk's target (`vda`): disks of the point.
    pub disks: &'a BTreeMap<String, DiskSource>,
    /// Where file-backed serial ports and consoles write.
    pub console_dir: &'a Path,
    /// No network, no host devices, screen for libvirt only.
    pub throwaway: bool,
}

/// The rewritten XML, and what was changed beyond the obvious (for the
/// job's log).
pub(crate) fn rewrite(xml: &str, new: &NewDomain<'_>) -> Result<(String, Vec<String>), String> {
    let mut dom = Element::parse(xml).map_err(|e| format!("the point's domain XML does not parse: {e}"))?;
    if dom.name != "domain" {
        return Err(format!("the point's XML is a <{}>, not a <domain>", dom.name));
    }
    let mut notes = Vec::new();
    dom.child_or_add("name").set_text(new.name);
    dom.retain_elements(|e| e.name != "uuid");
    if let Some(genid) = dom.child_mut("genid") {
        // A new generation id tells the guest it is a copy.
        genid.children.clear();
    }
    if let Some(os) = dom.child_mut("os")
        && os.child("nvram").is_some()
    {
        notes.push("its UEFI variables were not in the point: it starts with a fresh copy of the template".into());
        os.retain_elements(|e| e.name != "nvram");
    }
    let devices = dom.child_or_add("devices");
    let mut seen = Vec::new();
    let mut dropped = Vec::new();
    devices.retain_elements(|e| match e.name.as_str() {
        "disk" if e.attr("device").unwrap_or("disk") == "disk" => {
            let target = e.child("target").and_then(|t| t.attr("dev")).unwrap_or_default().to_string();
            match new.disks.get(&target) {
                Some(source) => {
                    set_disk(e, source);
                    seen.push(target);
                    true
                }
                None => {
                    dropped.push(target);
                    false
                }
            }
        }
        "interface" if new.throwaway => false,
        "interface" => {
            e.retain_elements(|c| c.name != "mac");
            true
        }
        "hostdev" | "redirdev" | "filesystem" | "smartcard" | "shmem" if new.throwaway => false,
        // The throwaway domain's console goes to a file the verdict keeps;
        // a console that only mirrors the serial port is made again by
        // libvirt.
        "console" if new.throwaway && e.child("target").and_then(|t| t.attr("type")).is_none_or(|t| t == "serial") => {
            false
        }
        "serial" | "console" if new.throwaway => {
            e.set_attr("type", "file");
            e.retain_elements(|c| c.name != "source" && c.name != "log");
            console_file(e, new);
            true
        }
        "serial" | "console" | "parallel" | "channel" => {
            console_file(e, new);
            true
        }
        "graphics" => {
            graphics(e, new.throwaway);
            true
        }
        _ => true,
    });
    for d in dropped {
        notes.push(format!("disk {d} is not in the point: the new domain has no {d}"));
    }
    if let Some(missing) = new.disks.keys().find(|k| !seen.contains(k)) {
        return Err(format!("disk {missing} of the point is not a disk of its saved domain XML"));
    }
    if new.throwaway && devices.child("serial").is_none() {
        let mut serial = Element::new("serial");
        serial.set_attr("type", "file");
        serial.child_or_add("target").set_attr("port", "0");
        console_file(&mut serial, new);
        devices.children.push(Node::Element(serial));
    }
    if new.throwaway && devices.child("graphics").is_none() {
        let mut g = Element::new("graphics");
        g.set_attr("type", "vnc");
        graphics(&mut g, true);
        devices.children.push(Node::Element(g));
    }
    let has_agent = devices.elements().any(|e| {
        e.name == "channel" && e.child("target").and_then(|t| t.attr("name")) == Some("org.qemu.guest_agent.0")
    });
    if !has_agent {
        let mut ch = Element::new("channel");
        ch.set_attr("type", "unix");
        let t = ch.child_or_add("target");
        t.set_attr("type", "virtio");
        t.set_attr("name", "org.qemu.guest_agent.0");
        devices.children.push(Node::Element(ch));
        notes.push("it had no guest agent channel: one was added".into());
    }
    Ok((dom.to_xml(), notes))
}

fn set_disk(disk: &mut Element, source: &DiskSource) {
    disk.set_attr("type", "file");
    disk.retain_elements(|c| !matches!(c.name.as_str(), "source" | "backingStore" | "auth" | "encryption"));
    let (path, format) = match source {
        DiskSource::File { path, format } => (path, format.name()),
        DiskSource::Overlay { path, .. } => (path, "qcow2"),
    };
    let driver = disk.child_or_add("driver");
    driver.set_attr("name", "qemu");
    driver.set_attr("type", format);
    let mut src = Element::new("source");
    src.set_attr("file", &path.display().to_string());
    let mut at = 0;
    if let DiskSource::Overlay { socket, export, .. } = source {
        // The guest stops on an error rather than see one: a failed
        // export pauses it, and nothing it reads is made up.
        driver.set_attr("error_policy", "stop");
        driver.set_attr("rerror_policy", "stop");
        let mut backing = Element::new("backingStore");
        backing.set_attr("type", "network");
        let mut format = Element::new("format");
        format.set_attr("type", "raw");
        let mut bsrc = Element::new("source");
        bsrc.set_attr("protocol", "nbd");
        bsrc.set_attr("name", export);
        let mut host = Element::new("host");
        host.set_attr("transport", "unix");
        host.set_attr("socket", &socket.display().to_string());
        // QEMU reconnects (retrying every few seconds) when the export
        // comes back: a rerun after a killed vmbackup resumes the guest.
        let mut reconnect = Element::new("reconnect");
        reconnect.set_attr("delay", "5");
        bsrc.children = vec![Node::Element(host), Node::Element(reconnect)];
        backing.children = vec![Node::Element(format), Node::Element(bsrc)];
        at =
            disk.children.iter().position(|c| matches!(c, Node::Element(e) if e.name == "driver")).map_or(0, |i| i + 1);
        disk.children.insert(at, Node::Element(backing));
    } else {
        driver.remove_attr("error_policy");
        driver.remove_attr("rerror_policy");
        if let Some(i) = disk.children.iter().position(|c| matches!(c, Node::Element(e) if e.name == "driver")) {
            at = i + 1;
        }
    }
    disk.children.insert(at, Node::Element(src));
}

fn console_file(dev: &mut Element, new: &NewDomain<'_>) {
    let tag = dev.name.clone();
    let port = dev.child("target").and_then(|t| t.attr("port")).unwrap_or("0").to_string();
    match dev.attr("type") {
        Some("file") => {
            let path = new.console_dir.join(format!("{}-{tag}{port}.log", new.name));
            dev.child_or_add("source").set_attr("path", &path.display().to_string());
        }
        // A socket path of the original domain: libvirt makes one per
        // domain when none is given.
        Some("unix") => dev.retain_elements(|c| c.name != "source"),
        _ => {}
    }
}

fn graphics(g: &mut Element, throwaway: bool) {
    if g.attr("autoport") == Some("no") || g.attr("port").is_some_and(|p| p != "-1") {
        g.remove_attr("port");
        g.remove_attr("tlsPort");
        g.set_attr("autoport", "yes");
    }
    if throwaway {
        // Screenshots only: nothing listens.
        for a in ["port", "tlsPort", "autoport", "listen", "websocket", "passwd"] {
            g.remove_attr(a);
        }
        g.retain_elements(|c| c.name != "listen");
        let mut listen = Element::new("listen");
        listen.set_attr("type", "none");
        g.children.push(Node::Element(listen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'><name>web</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>\
        <os><type>hvm</type><nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram></os><devices>\
        <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/web'/><target dev='vda' bus='virtio'/></disk>\
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/b.qcow2'/>\
        <backingStore type='file'><format type='qcow2'/><source file='/img/base.qcow2'/></backingStore><target dev='vdb' bus='virtio'/></disk>\
        <disk type='file' device='disk'><source file='/img/scratch.raw'/><target dev='vdc'/></disk>\
        <disk type='file' device='cdrom'><source file='/iso/d.iso'/><target dev='sda'/></disk>\
        <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/></interface>\
        <serial type='file'><source path='/var/log/web.log'/><target port='0'/></serial>\
        <channel type='unix'><source mode='bind' path='/run/web.agent'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
        <hostdev mode='subsystem' type='pci'/><graphics type='vnc' port='5901' autoport='no' listen='0.0.0.0'/></devices></domain>";

    fn plan(overlay: bool) -> BTreeMap<String, DiskSource> {
        let mut disks = BTreeMap::new();
        for d in ["vda", "vdb"] {
            let path = PathBuf::from(format!("/pool/new-{d}.qcow2"));
            disks.insert(
                d.to_string(),
                if overlay {
                    DiskSource::Overlay { path, socket: format!("/run/x/{d}.sock").into(), export: d.into() }
                } else {
                    DiskSource::File { path, format: ImageFormat::Qcow2 }
                },
            );
        }
        disks
    }

    #[test]
    fn a_restored_domain_shares_nothing_with_its_original() {
        let disks = plan(false);
        let new = NewDomain { name: "web-restored", disks: &disks, console_dir: Path::new("/pool"), throwaway: false };
        let (xml, notes) = rewrite(XML, &new).expect("rewrites");
        let dom = Element::parse(&xml).expect("parses");
        assert_eq!(dom.child("name").expect("name").text(), "web-restored");
        assert!(dom.child("uuid").is_none() && !xml.contains("52:54:00:12:34:56") && !xml.contains("nvram"), "{xml}");
        assert!(
            xml.contains(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/pool/new-vda.qcow2'/>"
            ),
            "{xml}"
        );
        assert!(!xml.contains("base.qcow2") && !xml.contains("scratch") && xml.contains("/iso/d.iso"), "{xml}");
        assert!(xml.contains("/pool/web-restored-serial0.log") && !xml.contains("/run/web.agent"), "{xml}");
        assert!(
            xml.contains("<interface type='network'><source network='default'/>") && xml.contains("hostdev"),
            "{xml}"
        );
        assert!(xml.contains("autoport='yes'") && !xml.contains("5901"), "{xml}");
        assert!(notes.iter().any(|n| n.contains("vdc")) && notes.iter().any(|n| n.contains("UEFI")), "{notes:?}");
    }

    #[test]
    fn a_throwaway_domain_has_no_network_and_stands_on_overlays_that_pause_on_errors() {
        let disks = plan(true);
        let new = NewDomain { name: "verify", disks: &disks, console_dir: Path::new("/w"), throwaway: true };
        let (xml, _) = rewrite(XML, &new).expect("rewrites");
        assert!(!xml.contains("<interface") && !xml.contains("hostdev") && !xml.contains("0.0.0.0"), "{xml}");
        assert!(xml.contains("<listen type='none'/>"), "{xml}");
        assert!(
            xml.contains(
                "<driver name='qemu' type='qcow2' error_policy='stop' rerror_policy='stop'/><source file='/pool/new-vda.qcow2'/>\
                 <backingStore type='network'><format type='raw'/><source protocol='nbd' name='vda'>\
                 <host transport='unix' socket='/run/x/vda.sock'/><reconnect delay='5'/></source></backingStore>"
            ),
            "{xml}"
        );
    }

    #[test]
    fn a_point_disk_missing_from_the_xml_or_xml_that_is_no_domain_is_refused() {
        let mut disks = plan(false);
        disks.insert("vdz".into(), DiskSource::File { path: "/p/z".into(), format: ImageFormat::Raw });
        let new = NewDomain { name: "n", disks: &disks, console_dir: Path::new("/p"), throwaway: false };
        assert!(rewrite(XML, &new).expect_err("vdz").contains("vdz"));
        assert!(rewrite("<network/>", &new).expect_err("not a domain").contains("network"));
        assert!(rewrite("<domain>", &new).is_err());
    }
}
