//! Partition tables, read from the first sectors of a disk: GPT (with its
//! backup header when the primary is damaged) and MBR with logical
//! partitions. Sectors are 512 bytes, as on every virtual disk vmbackup
//! reads.

use crate::mount::Extent;

/// The sector size partition tables are counted in.
pub(crate) const SECTOR: u64 = 512;

/// Reads `len` bytes at a byte offset of the disk.
pub(crate) type ReadAt<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>, String> + 'a;

/// Which table a disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR partition table.
    Mbr,
}

/// A partition: its number (1-based: `p1`), where it lies, and its name in
/// the table (GPT only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    pub(crate) number: u32,
    pub(crate) extent: Extent,
    pub(crate) name: Option<String>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// The disk's partitions, or None when it has no partition table (a file
/// system on the whole disk, or nothing known).
///
/// # Errors
/// A table that is there but does not fit the disk, or whose entries fail
/// their checksum in both GPT copies: what is wrong, in words.
pub(crate) fn read(read_at: &mut ReadAt<'_>, disk_size: u64) -> Result<Option<(TableKind, Vec<Partition>)>, String> {
    if disk_size < 2 * SECTOR {
        return Ok(None);
    }
    let mbr = read_at(0, SECTOR as usize)?;
    let lba1 = read_at(SECTOR, SECTOR as usize)?;
    if &lba1[..8] == b"EFI PART" || protective(&mbr) {
        let last = disk_size / SECTOR - 1;
        let primary = gpt_at(read_at, 1, disk_size);
        return match primary {
            Ok(p) => Ok(Some((TableKind::Gpt, p))),
            Err(first) => match gpt_at(read_at, last, disk_size) {
                Ok(p) => Ok(Some((TableKind::Gpt, p))),
                Err(_) => Err(format!("GPT: {first}, and its backup copy is no better")),
            },
        };
    }
    match mbr_partitions(read_at, &mbr, disk_size)? {
        Some(p) => Ok(Some((TableKind::Mbr, p))),
        None => Ok(None),
    }
}

/// An MBR whose only use is to say "GPT here" (type 0xEE).
fn protective(mbr: &[u8]) -> bool {
    mbr[510] == 0x55 && mbr[511] == 0xaa && (0..4).any(|i| mbr[446 + 16 * i + 4] == 0xee)
}

fn gpt_at(read_at: &mut ReadAt<'_>, lba: u64, disk_size: u64) -> Result<Vec<Partition>, String> {
    let h = read_at(lba * SECTOR, SECTOR as usize)?;
    if &h[..8] != b"EFI PART" {
        return Err(format!("no GPT header at sector {lba}"));
    }
    let header_size = u32_at(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Err(format!("header at sector {lba} has size {header_size}"));
    }
    let mut header = h[..header_size].to_vec();
    header[16..20].fill(0);
    if crc32fast::hash(&header) != u32_at(&h, 16) {
        return Err(format!("header at sector {lba} fails its checksum"));
    }
    let entries_lba = u64_at(&h, 72);
    let count = u32_at(&h, 80) as usize;
    let entry_size = u32_at(&h, 84) as usize;
    if !(128..=4096).contains(&entry_size) || count > 16384 || entries_lba.saturating_mul(SECTOR) >= disk_size {
        return Err(format!(
            "header at sector {lba} lists {count} entries of {entry_size} bytes at sector {entries_lba}"
        ));
    }
    let table = read_at(entries_lba * SECTOR, count * entry_size)?;
    if crc32fast::hash(&table) != u32_at(&h, 88) {
        return Err(format!("entries at sector {entries_lba} fail their checksum"));
    }
    let mut parts = Vec::new();
    for (i, e) in table.chunks_exact(entry_size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first || (last + 1).saturating_mul(SECTOR) > disk_size {
            return Err(format!("partition {} spans sectors {first}..={last}, past the disk's end", i + 1));
        }
        let name: Vec<u16> =
            e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
        let name = String::from_utf16_lossy(&name);
        parts.push(Partition {
            number: i as u32 + 1,
            extent: Extent { offset: first * SECTOR, length: (last - first + 1) * SECTOR },
            name: (!name.is_empty()).then_some(name),
        });
    }
    Ok(parts)
}

/// The four entries of an MBR (or EBR) sector: (type, first sector, sectors).
fn mbr_entries(sector: &[u8]) -> [(u8, u64, u64); 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        (e[4], u64::from(u32_at(e, 8)), u64::from(u32_at(e, 12)))
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// MBR partitions, logical ones numbered from 5; None when sector 0 is not
/// a partition table (no signature, or a file system's boot sector).
fn mbr_partitions(read_at: &mut ReadAt<'_>, mbr: &[u8], disk_size: u64) -> Result<Option<Vec<Partition>>, String> {
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Ok(None);
    }
    let entries = mbr_entries(mbr);
    let sane = entries.iter().enumerate().all(|(i, &(kind, start, len))| {
        let status = mbr[446 + 16 * i];
        (status == 0 || status == 0x80) && (kind == 0 || (start > 0 && len > 0))
    });
    // A FAT boot sector has the same signature, and code where the entries go.
    if !sane || entries.iter().all(|e| e.0 == 0) {
        return Ok(None);
    }
    let sectors = disk_size / SECTOR;
    let mut parts = Vec::new();
    for (i, &(kind, start, len)) in entries.iter().enumerate() {
        if kind == 0 {
            continue;
        }
        if start + len > sectors {
            return Err(format!("MBR partition {} spans sectors {start}..{}, past the disk's end", i + 1, start + len));
        }
        if is_extended(kind) {
            logical(read_at, start, sectors, &mut parts)?;
        } else {
            parts.push(Partition {
                number: i as u32 + 1,
                extent: Extent { offset: start * SECTOR, length: len * SECTOR },
                name: None,
            });
        }
    }
    Ok(Some(parts))
}

/// Follows the chain of extended boot records from `base` (a sector).
fn logical(read_at: &mut ReadAt<'_>, base: u64, sectors: u64, parts: &mut Vec<Partition>) -> Result<(), String> {
    let mut ebr = base;
    for number in 5..5 + 128 {
        let sector = read_at(ebr * SECTOR, SECTOR as usize)?;
        if sector[510] != 0x55 || sector[511] != 0xaa {
            return Err(format!("extended boot record at sector {ebr} has no signature"));
        }
        let [(kind, start, len), (next_kind, next, _), ..] = mbr_entries(&sector);
        if kind != 0 {
            let first = ebr + start;
            if first + len > sectors {
                return Err(format!(
                    "logical partition {number} spans sectors {first}..{}, past the disk's end",
                    first + len
                ));
            }
            parts.push(Partition {
                number,
                extent: Extent { offset: first * SECTOR, length: len * SECTOR },
                name: None,
            });
        }
        if !is_extended(next_kind) || next == 0 {
            return Ok(());
        }
        ebr = base + next;
    }
    Err("more than 128 logical partitions (a loop in the extended boot records?)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(disk: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>, String> + '_ {
        move |at, len| Ok(disk[at as usize..at as usize + len].to_vec())
    }

    #[test]
    fn mbr_with_a_logical_partition() {
        let mut disk = vec![0u8; 64 << 10];
        let entry = |s: &mut [u8], i: usize, kind: u8, start: u32, len: u32| {
            let e = &mut s[446 + 16 * i..];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&len.to_le_bytes());
        };
        entry(&mut disk[..512], 0, 0x83, 2, 10);
        entry(&mut disk[..512], 1, 0x05, 20, 40);
        disk[510] = 0x55;
        disk[511] = 0xaa;
        let ebr = &mut disk[20 * 512..21 * 512];
        entry(ebr, 0, 0x83, 1, 5);
        ebr[510] = 0x55;
        ebr[511] = 0xaa;
        let size = disk.len() as u64;
        let (kind, parts) = read(&mut reader(&disk), size).expect("table").expect("some");
        assert_eq!(kind, TableKind::Mbr);
        let got: Vec<_> = parts.iter().map(|p| (p.number, p.extent.offset / 512, p.extent.length / 512)).collect();
        assert_eq!(got, [(1, 2, 10), (5, 21, 5)]);
    }

    #[test]
    fn a_fat_boot_sector_is_not_a_table_and_a_blank_disk_has_none() {
        let mut disk = vec![0u8; 8192];
        let size = disk.len() as u64;
        assert!(read(&mut reader(&disk), size).expect("read").is_none());
        disk[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        for (i, b) in disk[446..510].iter_mut().enumerate() {
            *b = (i * 7 + 13) as u8; // boot code where the entries would be
        }
        disk[510] = 0x55;
        disk[511] = 0xaa;
        assert!(read(&mut reader(&disk), size).expect("read").is_none());
    }
}
