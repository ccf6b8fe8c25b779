//! What a volume holds, from its first bytes: the file system (or LVM PV,
//! or swap), its label and its UUID, as `blkid` would say.

use super::partitions::ReadAt;

/// What a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext2 (no journal).
    Ext2,
    /// ext3 (a journal, no extents).
    Ext3,
    /// ext4.
    Ext4,
    /// XFS.
    Xfs,
    /// FAT12, FAT16 or FAT32 (an EFI system partition).
    Vfat,
    /// An LVM2 physical volume: its logical volumes are volumes too.
    LvmPv,
    /// Linux swap.
    Swap,
    /// Nothing vmbackup knows.
    Unknown,
}

impl FsType {
    /// The name `blkid` gives it ("ext4", "xfs", "vfat", "LVM2_member",
    /// "swap"), or "unknown".
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::LvmPv => "LVM2_member",
            FsType::Swap => "swap",
            FsType::Unknown => "unknown",
        }
    }

    /// Whether its files can be listed and read.
    pub fn has_files(self) -> bool {
        matches!(self, FsType::Ext2 | FsType::Ext3 | FsType::Ext4 | FsType::Xfs | FsType::Vfat)
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a probe found: the type, the label and the UUID (when it has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub(crate) fs: FsType,
    pub(crate) label: Option<String>,
    pub(crate) uuid: Option<String>,
}

fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let t = String::from_utf8_lossy(&b[..end]).trim_end().to_string();
    (!t.is_empty()).then_some(t)
}

fn uuid(b: &[u8]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Probes the volume that starts at byte `offset` and is `length` long.
pub(crate) fn probe(read_at: &mut ReadAt<'_>, offset: u64, length: u64) -> Result<Probe, String> {
    let n = length.min(8192) as usize;
    if n < 1024 {
        return Ok(Probe { fs: FsType::Unknown, label: None, uuid: None });
    }
    let b = read_at(offset, n)?;
    let n = b.len().min(n);
    let none = |fs| Ok(Probe { fs, label: None, uuid: None });
    if n >= 2048 && b[1080] == 0x53 && b[1081] == 0xef {
        let sb = &b[1024..];
        let compat = u32::from_le_bytes([sb[92], sb[93], sb[94], sb[95]]);
        let incompat = u32::from_le_bytes([sb[96], sb[97], sb[98], sb[99]]);
        // extents, 64bit, flex_bg: ext4; a journal alone: ext3.
        let fs = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            FsType::Ext4
        } else if compat & 0x4 != 0 {
            FsType::Ext3
        } else {
            FsType::Ext2
        };
        return Ok(Probe { fs, label: text(&sb[120..136]), uuid: Some(uuid(&sb[104..120])) });
    }
    if &b[..4] == b"XFSB" {
        return Ok(Probe { fs: FsType::Xfs, label: text(&b[108..120]), uuid: Some(uuid(&b[32..48])) });
    }
    for s in b[..n.min(2048)].chunks_exact(512) {
        if &s[..8] == b"LABELONE" && &s[24..32] == b"LVM2 001" {
            return none(FsType::LvmPv);
        }
    }
    if n >= 4096 && &b[4086..4096] == b"SWAPSPACE2" {
        return Ok(Probe {
            fs: FsType::Swap,
            label: text(&b[1024 + 28..1024 + 44]),
            uuid: Some(uuid(&b[1024 + 12..1024 + 28])),
        });
    }
    if b[510] == 0x55 && b[511] == 0xaa {
        let serial = |at: usize| format!("{:02X}{:02X}-{:02X}{:02X}", b[at + 3], b[at + 2], b[at + 1], b[at]);
        if &b[82..87] == b"FAT32" {
            return Ok(Probe {
                fs: FsType::Vfat,
                label: text(&b[71..82]).filter(|l| l != "NO NAME"),
                uuid: Some(serial(67)),
            });
        }
        if &b[54..57] == b"FAT" {
            return Ok(Probe {
                fs: FsType::Vfat,
                label: text(&b[43..54]).filter(|l| l != "NO NAME"),
                uuid: Some(serial(39)),
            });
        }
    }
    none(FsType::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_of_any_size_probe_without_panicking() {
        for len in [0usize, 511, 1024, 1500, 2047, 2048, 4095, 4096, 9000] {
            let disk = vec![0xffu8; len];
            let mut read = |at: u64, n: usize| -> Result<Vec<u8>, String> {
                let mut b = disk.get(at as usize..).unwrap_or_default().to_vec();
                b.resize(n, 0);
                Ok(b)
            };
            assert_eq!(probe(&mut read, 0, len as u64).expect("probe").fs, FsType::Unknown, "{len} bytes");
        }
    }
}
