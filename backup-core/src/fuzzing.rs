//! Entry points for fuzzing the parsers of bytes that come from outside:
//! vault objects (pack frames, pack trailers, chunk index files, index
//! segments, manifests, the vault config and its key slots, sealed
//! objects), policy files, scripts configs, NBD messages and an NBD
//! server's side of a whole exchange, (feature `object-store`) remote gc
//! marks, and (feature `libvirt`) libvirt domain XML, as read and as
//! rewritten for a restored domain, and guest agent replies.
//! Thin wrappers over the private parsers, used by the cargo-fuzz targets
//! in `fuzz/` and by the stable smoke test `tests/fuzz_smoke.rs`. Not part
//! of the API: it may change at any time.
//!
//! Every function takes arbitrary bytes and returns whether they parsed;
//! none may panic, loop forever or allocate without bound.

use std::path::Path;

use crate::vault::{crypto, manifest, pack, segment};

/// A frame header at offset 16 and, when it parses, the whole frame
/// (crc check and decompression).
pub fn pack_frame(data: &[u8]) -> bool {
    match pack::parse_frame_header(data, 16, "fuzz pack") {
        Ok(entry) => {
            let end = data.len().min(pack::FRAME_HEADER_LEN + entry.stored_len as usize);
            pack::decode_frame(&data[..end], &entry, "fuzz pack", None).is_ok()
        }
        Err(_) => false,
    }
}

/// A pack's header, and its trailer and footer as found at the end of
/// `data` (the checks `Vault::read_trailer` makes on a pack file).
pub fn pack_trailer(data: &[u8]) -> bool {
    let header_ok = pack::check_header(data, "fuzz pack").is_ok();
    if data.len() < pack::FOOTER_LEN {
        return false;
    }
    let (rest, footer) = data.split_at(data.len() - pack::FOOTER_LEN);
    let Ok((offset, count, crc)) = pack::parse_footer(footer, "fuzz pack") else { return false };
    let tlen = u64::from(count) * pack::ENTRY_LEN as u64;
    if offset.checked_add(tlen) != Some(rest.len() as u64) {
        return false;
    }
    header_ok && pack::parse_entries(&rest[offset as usize..], count, crc, "fuzz pack").is_ok()
}

/// A chunk index file (`index/<pack>.idx`).
pub fn chunk_index(data: &[u8]) -> bool {
    pack::parse_idx(data, "fuzz index").is_ok()
}

/// An index segment.
pub fn index_segment(data: &[u8]) -> bool {
    segment::decode(data, "fuzz segment").is_ok()
}

/// The fixed MAC key of [`manifest`] and [`manifest_json`].
const FUZZ_MAC_KEY: [u8; 32] = [7; 32];

/// A manifest file as stored (JSON line, MAC line), checked against a
/// fixed key: exercises the MAC and line parsing.
pub fn manifest(data: &[u8]) -> bool {
    manifest::decode(data, &FUZZ_MAC_KEY, "fuzz manifest").is_ok()
}

/// A manifest's JSON line given a valid MAC, so that the JSON parser and
/// the field checks behind the MAC are reached too.
pub fn manifest_json(data: &[u8]) -> bool {
    let Ok(json) = std::str::from_utf8(data) else { return false };
    if json.contains('\n') {
        return false;
    }
    let mac = blake3::keyed_hash(&FUZZ_MAC_KEY, json.as_bytes());
    let file = format!("{json}\nmac {}\n", mac.to_hex());
    match manifest::decode(file.as_bytes(), &FUZZ_MAC_KEY, "fuzz manifest") {
        Ok(m) => {
            // What restore and verify do with a point's disks next.
            for d in &m.disks {
                let _ = d.blocks();
                if d.entries_per_segment > 0 {
                    for s in 0..d.segments.len() {
                        let _ = d.segment_range(s);
                    }
                }
            }
            true
        }
        Err(_) => false,
    }
}

/// A policy file (TOML).
pub fn policy(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    match crate::Policy::from_toml_str(text) {
        Ok(p) => {
            // What the scheduler does with a policy next.
            let _ = p.summary();
            let _ = p.next_runs(jiff::Timestamp::UNIX_EPOCH, 3);
            true
        }
        Err(_) => false,
    }
}

/// A pre/post scripts config (VMSnapshotScriptPluginConfig.json).
pub fn scripts_config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    crate::ScriptsConfig::from_json(text, Path::new("<fuzz>")).is_ok()
}

/// NBD messages a client or server reads from the other side: a request
/// header, a block-status payload, an error chunk payload; and an NBD URI.
pub fn nbd(data: &[u8]) -> bool {
    use crate::nbd::proto;
    let mut ok = false;
    if let Ok(b) = <&[u8; 28]>::try_from(data.get(..28).unwrap_or(&[])) {
        ok |= proto::parse_request(b).is_ok();
    }
    let want = data.first().map_or(0, |b| u64::from(*b) << 20);
    ok |= proto::parse_block_status(data, want).is_ok();
    ok |= proto::parse_error_chunk(data).is_ok();
    if let Ok(text) = std::str::from_utf8(data) {
        ok |= crate::NbdAddress::parse(text).is_ok();
    }
    ok
}

/// A libvirt domain's XML, as the provider reads its disks from it.
#[cfg(feature = "libvirt")]
pub fn domain_xml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    crate::libvirt::parse_disks(text).is_ok()
}

/// Guest agent replies: the bytes split at their first NUL into the
/// `guest-info` and `guest-get-osinfo` replies (`{"return": ...}`), read as
/// prepare reads them.
#[cfg(feature = "libvirt")]
pub fn agent_replies(data: &[u8]) -> bool {
    let (a, b) = match data.iter().position(|&x| x == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let value = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok().map(|v| v["return"].clone());
    let (info, os) = (value(a), value(b));
    let parsed = info.is_some();
    let i = crate::libvirt::GuestAgentInfo::from_replies(
        &info.unwrap_or(serde_json::Value::Null),
        &os.unwrap_or(serde_json::Value::Null),
    );
    let _ = (i.summary(), i.freeze_consistency());
    parsed
}

/// The bytes of the key file [`vault_config`] opens key slots with (a key
/// file needs no Argon2, so a slot costs one AEAD open). A seed corpus
/// makes an encrypted vault with them.
pub const FUZZ_KEY_FILE: [u8; 32] = [9; 32];

/// [`FUZZ_KEY_FILE`] written once to a temporary file that is unlinked at
/// once and read through `/proc/self/fd` while this process holds it open,
/// so that no fuzzing process leaves a file behind; None when it cannot be.
fn fuzz_key() -> Option<&'static crate::KeySource> {
    use std::os::fd::AsRawFd;
    static KEY: std::sync::OnceLock<Option<(std::fs::File, crate::KeySource)>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmbackup-fuzz-key-{}", std::process::id()));
        std::fs::write(&path, FUZZ_KEY_FILE).ok()?;
        let held = std::fs::File::open(&path);
        let _ = std::fs::remove_file(&path);
        let held = held.ok()?;
        let key = crate::KeySource::key_file(format!("/proc/self/fd/{}", held.as_raw_fd()));
        Some((held, key))
    })
    .as_ref()
    .map(|(_, key)| key)
}

/// A vault's config file: its JSON and format version, its chunk key or
/// its key slots, read with no key and opened with [`FUZZ_KEY_FILE`].
pub fn vault_config(data: &[u8]) -> bool {
    let root = Path::new("/fuzz-vault");
    let plain = crate::vault::parse_config(data, None, root).map(|(c, _)| c.check_value()).is_ok();
    let keyed = fuzz_key().is_some_and(|k| crate::vault::parse_config(data, Some(k), root).is_ok());
    plain || keyed
}

/// The fixed key of [`sealed`].
const FUZZ_SEAL_KEY: [u8; 32] = [11; 32];
/// The associated data [`sealed`] opens files with.
const FUZZ_AAD: &[u8] = b"vmbackup fuzz";

/// Sealed bytes as [`sealed`] opens them: `plaintext` sealed with its key
/// (for seed corpora).
pub fn seal_for_corpus(plaintext: &[u8]) -> Vec<u8> {
    crypto::seal_file(&crypto::Sealer::new(&FUZZ_SEAL_KEY), FUZZ_AAD, plaintext).unwrap_or_default()
}

/// Sealed objects opened with a fixed key: a sealed file (what an
/// encrypted vault's manifests, segments and records are) and, when the
/// bytes hold a frame header at offset 16, an encrypted pack frame.
pub fn sealed(data: &[u8]) -> bool {
    let sealer = crypto::Sealer::new(&FUZZ_SEAL_KEY);
    let file = crypto::open_file(&sealer, FUZZ_AAD, data, "fuzz sealed").is_ok();
    let frame = match pack::parse_frame_header(data, 16, "fuzz pack") {
        Ok(entry) => {
            let end = data.len().min(pack::FRAME_HEADER_LEN + entry.stored_len as usize);
            pack::decode_frame(&data[..end], &entry, "fuzz pack", Some(&sealer)).is_ok()
        }
        Err(_) => false,
    };
    file || frame
}

/// The bytes an NBD server sends, fed to vmbackup's client: the handshake
/// (magic, flags, option replies for structured replies, metadata contexts
/// and `NBD_OPT_GO`), then the replies to one read and one block status
/// request. The client's own requests go unread into a socket pair.
pub fn nbd_client(data: &[u8]) -> bool {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use crate::nbd::proto::{Stream, Wire};
    // More than a socket's buffer would block the write below.
    if data.len() > 64 << 10 {
        return false;
    }
    let Ok((ours, theirs)) = UnixStream::pair() else { return false };
    if (&theirs).write_all(data).is_err() || theirs.shutdown(std::net::Shutdown::Write).is_err() {
        return false;
    }
    let mut wire = Wire::new(Stream::Unix(ours), std::time::Duration::from_secs(1));
    let contexts = ["base:allocation".to_string(), "qemu:dirty-bitmap:b".to_string()];
    let ok = match crate::nbd::client::handshake(&mut wire, "", &contexts) {
        Ok(neg) => {
            let size = neg.size;
            let mut client = crate::nbd::client::NbdClient::from_parts(wire, neg);
            let mut buf = vec![0u8; size.min(4096) as usize];
            let _ = client.read(0, &mut buf);
            let _ = client.block_status(0, size.min(1 << 20) as u32);
            true
        }
        Err(_) => false,
    };
    // Kept open until the client is done: its writes must not meet a
    // closed peer.
    drop(theirs);
    ok
}

/// A remote vault's gc mark (`gc/NAME.json`), as gc and backups read it.
#[cfg(feature = "object-store")]
pub fn gc_mark(data: &[u8]) -> bool {
    match crate::vault::remote::Mark::parse(data, "fuzz gc mark") {
        Ok(m) => {
            // What a backup checks a mark against.
            let age = jiff::Timestamp::UNIX_EPOCH.duration_since(m.created).as_secs_f64();
            let _ = age < m.grace_secs as f64 / 2.0;
            let _ = std::time::SystemTime::from(m.created);
            true
        }
        Err(_) => false,
    }
}

/// A point's domain XML rewritten for a domain restored from it (and for a
/// throwaway one), as `restore --to-libvirt` and `verify --boot` do.
#[cfg(feature = "libvirt")]
pub fn domain_rewrite(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    crate::recovery::fuzz_rewrite(text)
}

/// `data` as a guest's disk: its partition table, what each partition
/// (or the whole disk) holds, and the logical volumes of any LVM PV on it
/// (all bytes a guest controls). True when a table or a PV was read.
pub fn guest_disk(data: &[u8]) -> bool {
    use crate::guest::fuzz_volumes;
    fuzz_volumes(data)
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn the_fuzz_key_reads_back_and_leaves_no_file() {
        let Some(crate::KeySource::KeyFile(path)) = fuzz_key() else { panic!("no fuzz key") };
        assert_eq!(std::fs::read(path).expect("read through /proc/self/fd"), FUZZ_KEY_FILE);
        let left = std::env::temp_dir().join(format!("vmbackup-fuzz-key-{}", std::process::id()));
        assert!(!left.exists(), "{} left behind", left.display());
    }
}
