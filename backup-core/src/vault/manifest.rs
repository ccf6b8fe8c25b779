//! Recovery point manifests: the small record, written last, that makes a
//! point exist.
//!
//! A manifest is stored at `points/<vm>/<point id>` as two lines:
//!
//! ```text
//! {"format":1,"id":"20261125T130512Z-3fa9c1","vm":"web",...}   the manifest as one line of JSON
//! mac <64 hex digits>                                          keyed BLAKE3 of the JSON line
//! ```
//!
//! The MAC key is derived from the vault key, so a manifest changed or
//! copied from another vault is detected on read. The fields are those of
//! [`PointManifest`]. In an encrypted vault the file holds these two lines
//! sealed (`crypto`), with the vault id, VM and point id as associated data.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Consistency, ContentId, OsType};

/// The manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// What the engine did for one disk: the one definition of each backup
/// statistic. The C ABI (`vmb_backup_stats`), Python (`BackupStats`) and
/// the command line's `--json` use these names with these meanings, for a
/// disk and, added up as [`PointStats`] says, for a point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DiskStats {
    /// Bytes of the disk covered (its size).
    pub bytes_scanned: u64,
    /// Bytes read from the device.
    pub bytes_read: u64,
    /// Bytes in all-zero blocks and holes, never stored.
    pub bytes_zero: u64,
    /// Bytes in blocks equal to the previous point's (by id or by change
    /// tracking).
    pub bytes_unchanged: u64,
    /// Bytes in blocks whose content was not in the previous point.
    pub bytes_new: u64,
    /// Of the new bytes, those the vault already held (dedup).
    pub bytes_deduplicated: u64,
    /// Bytes this disk added to the vault: chunk frames and index segments.
    pub bytes_stored: u64,
    /// Wall-clock seconds for this disk.
    pub seconds: f64,
    /// How changes were found: "none" (first backup), "compare" (read and
    /// compared), "cbt" (change tracking used), or "cbt distrusted: why".
    /// For a point: its disks' values, each once, in disk order, joined by
    /// ", ".
    pub change_detection: String,
    /// Blocks that change tracking called clean which were re-read to audit it.
    pub audited_blocks: u64,
    /// Bytes change tracking reported as changed (0 without it): what an
    /// incremental's reads are measured against.
    #[serde(default)]
    pub bytes_dirty: u64,
}

impl DiskStats {
    /// Adds another disk's figures (times are not added).
    pub fn add(&mut self, o: &DiskStats) {
        self.bytes_scanned += o.bytes_scanned;
        self.bytes_read += o.bytes_read;
        self.bytes_zero += o.bytes_zero;
        self.bytes_unchanged += o.bytes_unchanged;
        self.bytes_new += o.bytes_new;
        self.bytes_deduplicated += o.bytes_deduplicated;
        self.bytes_stored += o.bytes_stored;
        self.audited_blocks += o.audited_blocks;
        self.bytes_dirty += o.bytes_dirty;
    }
}

/// One disk of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// The disk's name within its VM.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its block size in bytes.
    pub block_size: u32,
    /// Blocks per index segment.
    pub entries_per_segment: u32,
    /// The index segments, in order.
    pub segments: Vec<ContentId>,
    /// BLAKE3 over size, block size and the segment ids: checked by verify.
    pub root: ContentId,
    /// The change token of the snapshot this disk was read from.
    pub change_token: Option<String>,
    /// How the snapshot of this disk was taken.
    pub snapshot_method: String,
    /// What the engine did.
    pub stats: DiskStats,
}

impl DiskRecord {
    /// The number of blocks.
    pub fn blocks(&self) -> u64 {
        // A decoded manifest never has block size 0 (`decode` refuses it);
        // `max` keeps a hand-made record from dividing by zero.
        self.size.div_ceil(u64::from(self.block_size.max(1)))
    }

    /// The byte range of the disk covered by segment `i`.
    pub fn segment_range(&self, i: usize) -> std::ops::Range<u64> {
        let seg_bytes = u64::from(self.block_size) * u64::from(self.entries_per_segment);
        let start = (i as u64).saturating_mul(seg_bytes);
        start.min(self.size)..start.saturating_add(seg_bytes).min(self.size)
    }
}

/// Totals of a point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PointStats {
    /// The disks' figures, as [`PointStats::totals_of`] adds them up.
    #[serde(flatten)]
    pub totals: DiskStats,
    /// Bytes this backup added to the vault in all: chunks, segments, pack
    /// trailers, chunk index files and the manifest.
    pub bytes_added: u64,
}

impl PointStats {
    /// A point's totals from its disks: the byte and block counts added up,
    /// `seconds` of the slowest disk (they run in parallel), and
    /// `change_detection` each disk's once, in disk order, joined by ", ".
    pub fn totals_of(disks: &[DiskRecord]) -> DiskStats {
        let mut totals = DiskStats::default();
        let mut methods: Vec<&str> = Vec::new();
        for d in disks {
            totals.add(&d.stats);
            totals.seconds = totals.seconds.max(d.stats.seconds);
            if !methods.contains(&d.stats.change_detection.as_str()) {
                methods.push(&d.stats.change_detection);
            }
        }
        totals.change_detection = methods.join(", ");
        totals
    }
}

/// A recovery point: a VM's disks at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointManifest {
    /// Manifest format version.
    pub format: u32,
    /// The point's id: time of the snapshot and a random suffix.
    pub id: String,
    /// The VM's name.
    pub vm: String,
    /// The VM's operating system.
    pub os: OsType,
    /// When the snapshot was taken (RFC 3339, UTC).
    pub time: jiff::Timestamp,
    /// The consistency asked for.
    pub wanted_consistency: Consistency,
    /// The consistency achieved.
    pub consistency: Consistency,
    /// The previous point of the VM that this one was compared against.
    pub parent: Option<String>,
    /// Where the point can be restored from: "vault", and "snapshot" while
    /// a snapshot is kept for instant restore.
    pub tiers: Vec<String>,
    /// The disks.
    pub disks: Vec<DiskRecord>,
    /// Totals.
    pub stats: PointStats,
    /// The policy rule that made it, if any.
    pub policy_rule: Option<String>,
    /// What a user should know about how it was made.
    pub warnings: Vec<String>,
    /// The VM's configuration at the snapshot, when its provider gave one
    /// (a libvirt domain's XML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<crate::model::VmConfiguration>,
}

impl PointManifest {
    /// A disk by name, or by index written as a number.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no disk matches.
    pub fn disk(&self, name_or_index: &str) -> Result<&DiskRecord> {
        if let Some(d) = self.disks.iter().find(|d| d.name == name_or_index) {
            return Ok(d);
        }
        if let Some(d) = name_or_index.parse::<usize>().ok().and_then(|i| self.disks.get(i)) {
            return Ok(d);
        }
        Err(Error::NotFound {
            what: format!(
                "disk {name_or_index} in point {} of vm {} (it has: {})",
                self.id,
                self.vm,
                self.disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

/// The root digest of a disk: BLAKE3 over size, block size and segment ids.
pub fn disk_root(size: u64, block_size: u32, segments: &[ContentId]) -> ContentId {
    let mut h = blake3::Hasher::new();
    h.update(b"vmbackup disk root v1");
    h.update(&size.to_le_bytes());
    h.update(&block_size.to_le_bytes());
    for s in segments {
        h.update(&s.0);
    }
    ContentId(*h.finalize().as_bytes())
}

/// Encodes a manifest with its MAC.
///
/// # Errors
/// Only if serialization fails, which it does not for these types.
pub fn encode(m: &PointManifest, mac_key: &[u8; 32]) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(m).map_err(|e| Error::invalid("manifest", e.to_string()))?;
    let mac = blake3::keyed_hash(mac_key, &json);
    let mut out = json;
    out.extend_from_slice(b"\nmac ");
    out.extend_from_slice(mac.to_hex().as_bytes());
    out.push(b'\n');
    Ok(out)
}

/// The largest manifest file read: 64 MiB holds the segment list of a disk
/// of tens of TiB.
pub(crate) const MAX_MANIFEST_LEN: u64 = 64 << 20;

/// Decodes a manifest and checks its MAC.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` for a damaged or forged manifest.
pub fn decode(bytes: &[u8], mac_key: &[u8; 32], object: &str) -> Result<PointManifest> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::corrupt(object, "manifest is not UTF-8"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let (json, mac_line) =
        text.rsplit_once('\n').ok_or_else(|| Error::corrupt(object, "manifest has no mac line (truncated?)"))?;
    let mac_hex =
        mac_line.strip_prefix("mac ").ok_or_else(|| Error::corrupt(object, "manifest's last line is not its mac"))?;
    let expected = blake3::keyed_hash(mac_key, json.as_bytes());
    let found = blake3::Hash::from_hex(mac_hex).map_err(|_| Error::corrupt(object, "manifest mac is not hex"))?;
    // blake3::Hash compares in constant time.
    if expected != found {
        return Err(Error::corrupt(object, "manifest mac mismatch: it was changed, or it comes from another vault"));
    }
    let m: PointManifest =
        serde_json::from_str(json).map_err(|e| Error::corrupt(object, format!("manifest JSON: {e}")))?;
    if m.format != MANIFEST_FORMAT {
        return Err(Error::corrupt(
            object,
            format!("manifest format {} (this build reads {MANIFEST_FORMAT})", m.format),
        ));
    }
    check_geometry(&m).map_err(|why| Error::corrupt(object, why))?;
    Ok(m)
}

/// Refuses what restore and verify could not work with: names that could
/// leave a restore folder, a block size outside the engine's range, a
/// segment list that does not cover the disk. Found by fuzzing (a block
/// size of 0 divided by zero); a MAC-valid manifest is still checked, since
/// the MAC says who wrote it, not that it is sane.
fn check_geometry(m: &PointManifest) -> std::result::Result<(), String> {
    crate::model::validate_name("vm name", &m.vm).map_err(|e| e.to_string())?;
    crate::model::validate_name("point id", &m.id).map_err(|e| e.to_string())?;
    let mut names = std::collections::HashSet::new();
    for d in &m.disks {
        crate::model::validate_name("disk name", &d.name).map_err(|e| e.to_string())?;
        // Two disks of one name would be restored into one file.
        if !names.insert(d.name.as_str()) {
            return Err(format!("disk name {} appears twice", d.name));
        }
        super::check_block_size(d.block_size).map_err(|e| format!("disk {}: {e}", d.name))?;
        if d.entries_per_segment == 0 || d.entries_per_segment > crate::vault::segment::MAX_ENTRIES_PER_SEGMENT {
            return Err(format!("disk {}: {} entries per segment", d.name, d.entries_per_segment));
        }
        let want = d.blocks().div_ceil(u64::from(d.entries_per_segment));
        if d.segments.len() as u64 != want {
            return Err(format!("disk {}: {} index segments listed, its size needs {want}", d.name, d.segments.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_naming_one_disk_twice_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, vec![1u8; 1 << 20]).expect("a");
        std::fs::write(&b, vec![2u8; 1 << 20]).expect("b");
        let vault = crate::Vault::init(dir.path().join("v")).expect("init");
        let vm = crate::Vm::from_images("web", &[&a, &b]).expect("vm");
        let mut m = crate::backup(&vault, &crate::ImageFileProvider::new(), &vm, &crate::BackupOptions::default())
            .expect("backup")
            .point;
        m.disks[1].name = m.disks[0].name.clone();
        let key = [7u8; 32];
        let bytes = encode(&m, &key).expect("encode");
        let e = decode(&bytes, &key, "m").expect_err("two disks of one name");
        assert!(e.to_string().contains("appears twice"), "{e}");
    }
}
