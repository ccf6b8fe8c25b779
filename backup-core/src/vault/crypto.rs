//! Encryption at rest: the master key, the key slots that wrap it, and the
//! sealing of every object the vault stores.
//!
//! A vault made with a key ([`VaultOptions::key`](super::VaultOptions)) is
//! encrypted: its config says `format_version` 2 and holds, instead of a key
//! in clear, an `encryption` object:
//!
//! ```text
//! "encryption": {
//!   "cipher": "aes-256-gcm/blake3-subkey",
//!   "key_check": "<64 hex>",     keyed BLAKE3 of the vault id under a key derived from the master key
//!   "slots": [                    one or more; each wraps the same master key
//!     {"id": "<8 hex>", "kind": "passphrase", "created": "...",
//!      "kdf": {"algorithm": "argon2id", "version": 19, "memory_kib": 65536,
//!              "iterations": 3, "parallelism": 1, "salt": "<32 hex>"},
//!      "wrapped": "<hex of a sealed master key>"},
//!     {"id": "<8 hex>", "kind": "key-file", "created": "...", "wrapped": "<hex>"}
//!   ]
//! }
//! ```
//!
//! ## Keys
//!
//! The master key is 32 random bytes made at init; it never leaves the
//! process in clear. Every key the vault uses is derived from it with
//! `blake3::derive_key` under its own context string: the chunk-id key
//! (keyed BLAKE3 of a chunk's plaintext, so dedup works inside a vault and
//! an id says nothing outside it), the segment-id key, the manifest MAC key,
//! the sealing key and the key-check key. A slot's key-encryption key is
//! Argon2id of the passphrase (salt and parameters in the slot; default 64
//! MiB, 3 passes, 1 lane) or `derive_key("vmbackup 2026-11-25 key file",
//! contents)` of a key file (at least 32 bytes; `vmbackup key add
//! --new-key-file` writes 32 random bytes as hex). A slot's `wrapped` is the
//! master key sealed under that key (below), with the vault id and slot id
//! as associated data, so a slot copied from another vault does not open.
//! Adding or removing a slot rewrites only the config.
//!
//! ## Sealing
//!
//! ```text
//! sealed = nonce [u8; 24] | ciphertext | tag [u8; 16]          40 bytes more than the plaintext
//! subkey = keyed BLAKE3 (key: the sealing key) of nonce[0..12]
//! ciphertext, tag = AES-256-GCM (key: subkey, nonce: nonce[12..24], aad) of the plaintext
//! ```
//!
//! The nonce is 24 random bytes per object. AES-256-GCM was picked over
//! XChaCha20-Poly1305 by measurement (BENCHMARKS.md, "Encryption at rest"):
//! with AES-NI and carry-less multiplication, RustCrypto's `aes-gcm` 0.11
//! seals and opens 64 KiB about three times as fast as
//! `chacha20poly1305` 0.10 with AVX2 on this machine. Plain AES-GCM with
//! random 96-bit nonces must stay well under 2^32 messages per key (a
//! repeated nonce leaks the authentication key), and a vault of 64 KiB
//! chunks reaches 2^32 at 256 TiB: so each object gets its own key, derived
//! from the first half of its nonce, and the second half is the GCM nonce.
//! Two objects share a (key, nonce) pair only if all 192 random bits repeat,
//! the same margin as XChaCha20's extended nonce; the derivation costs one
//! BLAKE3 block and one AES key schedule per object, under 1% of sealing a
//! 64 KiB chunk. A frame is self-contained (its key does not depend on its
//! pack), so gc copies sealed frames between packs unchanged.
//!
//! What is sealed, and its associated data (each starts with a context
//! string, so an object of one kind never opens as another):
//!
//! | object                 | stored as                                   | associated data                        |
//! |------------------------|---------------------------------------------|----------------------------------------|
//! | chunk frame payload    | frame codec byte with bit 7 set (`pack`)    | chunk id, codec, raw length            |
//! | index segment          | `"VMBSEAL\0"` then sealed segment bytes     | segment id                             |
//! | manifest               | `"VMBSEAL\0"` then sealed manifest file     | vault id, VM, point id                 |
//! | `vms/<vm>.json`        | `"VMBSEAL\0"` then sealed JSON              | vault id, VM                           |
//! | key slot               | hex in the config                           | vault id, slot id                      |
//!
//! Chunks are compressed before they are sealed. A sealed object that does
//! not authenticate, or an unsealed one in an encrypted vault, is
//! [`Error::Tampered`]; a frame whose crc32 fails is still
//! [`Error::Corrupt`] (accidental damage), since the crc is checked first.
//!
//! ## What stays in clear
//!
//! Names and sizes: VM names (folders `points/<vm>/`, `jobs/<vm>/`,
//! `snapshots/<vm>/`, files `vms/<vm>.json`), point ids (which start with the
//! snapshot time), the number and sizes of packs, segments and manifests,
//! file times, and the chunk index files (chunk ids, which are keyed hashes,
//! and lengths). The job logs under `jobs/` and the snapshot records under
//! `snapshots/` are written by the job layer in clear: they hold disk
//! names, the paths of disk images and of kept clones, error messages and
//! byte counts, but never disk data or a key.

use aes_gcm::aead::{AeadInOut, KeyInit};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::model::{hex, unhex};

/// The magic that opens a sealed segment, manifest or VM record.
pub(crate) const SEAL_MAGIC: [u8; 8] = *b"VMBSEAL\0";
/// Bytes a sealed object adds to its plaintext: nonce and tag.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The cipher named in the config.
const CIPHER: &str = "aes-256-gcm/blake3-subkey";
/// The smallest key file accepted.
const MIN_KEY_FILE_LEN: usize = 32;

/// The cost of the Argon2id derivation of a passphrase slot's key.
///
/// The default (64 MiB, 3 passes, 1 lane) follows RFC 9106's second
/// recommended option; tests may pass cheaper ones through
/// [`KdfParams::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { memory_kib: 64 << 10, iterations: 3, parallelism: 1 }
    }
}

impl KdfParams {
    /// Parameters of your own: cheaper ones for tests, dearer ones for
    /// more safety.
    ///
    /// ```
    /// let cheap = backup_core::KdfParams::new(64, 1, 1);
    /// assert_eq!(cheap.memory_kib, 64);
    /// ```
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> KdfParams {
        KdfParams { memory_kib, iterations, parallelism }
    }

    /// The most memory a slot may ask for: 4 GiB. A config is read from the
    /// vault before anything in it is authenticated, so its costs are
    /// bounded: a forged slot must not make opening the vault abort or hang.
    pub const MAX_MEMORY_KIB: u32 = 4 << 20;
    /// The most passes a slot may ask for.
    pub const MAX_ITERATIONS: u32 = 64;
    /// The most lanes a slot may ask for.
    pub const MAX_PARALLELISM: u32 = 64;

    fn argon2(&self) -> Result<argon2::Argon2<'static>> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(Error::invalid(
                "argon2id parameters",
                format!(
                    "memory {} KiB, {} passes, {} lanes: beyond this build's limits ({} KiB, {} passes, {} lanes)",
                    self.memory_kib,
                    self.iterations,
                    self.parallelism,
                    Self::MAX_MEMORY_KIB,
                    Self::MAX_ITERATIONS,
                    Self::MAX_PARALLELISM
                ),
            ));
        }
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| Error::invalid("argon2id parameters", e.to_string()))?;
        Ok(argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params))
    }
}

/// How to unlock an encrypted vault, or the key a new one is made with.
#[derive(Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// A passphrase (stretched with Argon2id).
    Passphrase(Zeroizing<String>),
    /// A file whose whole contents are the key (at least 32 bytes).
    KeyFile(std::path::PathBuf),
}

impl KeySource {
    /// A passphrase.
    pub fn passphrase(p: impl Into<String>) -> KeySource {
        KeySource::Passphrase(Zeroizing::new(p.into()))
    }

    /// A key file.
    pub fn key_file(path: impl Into<std::path::PathBuf>) -> KeySource {
        KeySource::KeyFile(path.into())
    }

    fn kind(&self) -> SlotKind {
        match self {
            KeySource::Passphrase(_) => SlotKind::Passphrase,
            KeySource::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            KeySource::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
        }
    }
}

/// Writes a new key file: 32 random bytes as 64 hex digits and a newline,
/// readable by its owner only. Refuses to replace a file.
///
/// # Errors
/// The file exists or cannot be written.
pub fn generate_key_file(path: impl AsRef<std::path::Path>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.as_ref();
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut())
        .map_err(|e| Error::io("get random bytes for key file", path, std::io::Error::other(e)))?;
    let mut text = Zeroizing::new(hex(key.as_ref()));
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create key file", path, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io("write key file", path, e))
}

/// The kind of a key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    /// Opened by a passphrase.
    Passphrase,
    /// Opened by a key file.
    KeyFile,
}

impl std::fmt::Display for SlotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotKind::Passphrase => "passphrase",
            SlotKind::KeyFile => "key-file",
        })
    }
}

/// What `vmbackup key list` shows of a slot: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeySlotInfo {
    /// The slot's id (8 hex digits).
    pub id: String,
    /// Passphrase or key file.
    pub kind: SlotKind,
    /// When it was added.
    pub created: jiff::Timestamp,
    /// The Argon2id cost of a passphrase slot.
    pub kdf: Option<KdfParams>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotKdf {
    algorithm: String,
    version: u32,
    #[serde(flatten)]
    params: KdfParams,
    salt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Slot {
    id: String,
    kind: SlotKind,
    created: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<SlotKdf>,
    wrapped: String,
}

impl Slot {
    pub(crate) fn info(&self) -> KeySlotInfo {
        KeySlotInfo {
            id: self.id.clone(),
            kind: self.kind,
            created: self.created,
            kdf: self.kdf.as_ref().map(|k| k.params),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

/// The `encryption` object of an encrypted vault's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Encryption {
    cipher: String,
    key_check: String,
    pub(crate) slots: Vec<Slot>,
}

/// The master key, wiped from memory when dropped.
pub(crate) type MasterKey = Zeroizing<[u8; 32]>;

fn random<const N: usize>(what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::io("get random bytes for", what, std::io::Error::other(e)))?;
    Ok(b)
}

fn derive(context: &str, master: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(context, master)
}

fn key_check(master: &[u8; 32], vault_id: &str) -> String {
    let k = Zeroizing::new(derive("vmbackup 2026-11-25 key check", master));
    blake3::keyed_hash(&k, vault_id.as_bytes()).to_hex().to_string()
}

fn slot_aad(vault_id: &str, slot_id: &str) -> Vec<u8> {
    [b"vmbackup key slot\0", vault_id.as_bytes(), b"\0", slot_id.as_bytes()].concat()
}

/// The key-encryption key of a slot for a key source.
/// The largest key file read: a key is 32 bytes, a generous one a few KiB.
const MAX_KEY_FILE_LEN: u64 = 64 << 10;

/// A key file's exact bytes, a trailing newline included (a file made by
/// [`generate_key_file`] ends with one: it is part of the key, so a copy
/// must keep it).
fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io("read key file", path, e))?;
    let mut out = Vec::new();
    f.take(MAX_KEY_FILE_LEN + 1).read_to_end(&mut out).map_err(|e| Error::io("read key file", path, e))?;
    if out.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(Error::invalid(
            format!("key file {}", path.display()),
            format!("more than {MAX_KEY_FILE_LEN} bytes: not a key file"),
        ));
    }
    Ok(out)
}

fn slot_key(source: &KeySource, kdf: Option<&SlotKdf>, where_: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match source {
        KeySource::Passphrase(p) => {
            let kdf = kdf.ok_or_else(|| Error::corrupt(where_, "passphrase slot without kdf parameters"))?;
            if kdf.algorithm != "argon2id" || kdf.version != 0x13 {
                return Err(Error::corrupt(
                    where_,
                    format!("key slot kdf {} version {} (this build knows argon2id 19)", kdf.algorithm, kdf.version),
                ));
            }
            let salt = unhex(&kdf.salt).ok_or_else(|| Error::corrupt(where_, "key slot salt is not hex"))?;
            kdf.params
                .argon2()
                .map_err(|e| Error::corrupt(where_, e.to_string()))?
                .hash_password_into(p.as_bytes(), &salt, kek.as_mut())
                .map_err(|e| Error::invalid("passphrase", e.to_string()))?;
        }
        KeySource::KeyFile(path) => {
            let contents = Zeroizing::new(read_key_file(path)?);
            if contents.len() < MIN_KEY_FILE_LEN {
                return Err(Error::invalid(
                    format!("key file {}", path.display()),
                    format!(
                        "{} bytes; a key file needs at least {MIN_KEY_FILE_LEN} (its exact bytes are the key, a trailing newline included)",
                        contents.len()
                    ),
                ));
            }
            *kek = blake3::derive_key("vmbackup 2026-11-25 key file", &contents);
        }
    }
    Ok(kek)
}

impl Encryption {
    /// A new master key and its first slot.
    pub(crate) fn create(vault_id: &str, source: &KeySource, kdf: KdfParams) -> Result<(Encryption, MasterKey)> {
        let master = Zeroizing::new(random::<32>("the master key")?);
        let mut enc = Encryption { cipher: CIPHER.into(), key_check: key_check(&master, vault_id), slots: Vec::new() };
        enc.add_slot(vault_id, &master, source, kdf)?;
        Ok((enc, master))
    }

    /// Wraps the master key for one more key source.
    pub(crate) fn add_slot(
        &mut self,
        vault_id: &str,
        master: &[u8; 32],
        source: &KeySource,
        kdf: KdfParams,
    ) -> Result<KeySlotInfo> {
        if let KeySource::Passphrase(p) = source
            && p.is_empty()
        {
            return Err(Error::invalid("passphrase", "it is empty"));
        }
        let id = hex(&random::<4>("a key slot id")?);
        let slot_kdf = match source {
            KeySource::Passphrase(_) => Some(SlotKdf {
                algorithm: "argon2id".into(),
                version: 0x13,
                params: kdf,
                salt: hex(&random::<16>("a key slot salt")?),
            }),
            KeySource::KeyFile(_) => None,
        };
        let kek = slot_key(source, slot_kdf.as_ref(), "new key slot")?;
        let wrapped = seal(&Sealer::new(&kek), &slot_aad(vault_id, &id), master)?;
        let slot =
            Slot { id, kind: source.kind(), created: crate::model::now(), kdf: slot_kdf, wrapped: hex(&wrapped) };
        let info = slot.info();
        self.slots.push(slot);
        Ok(info)
    }

    /// The master key, from the first slot the source opens.
    ///
    /// # Errors
    /// [`Error::WrongKey`] when no slot opens; [`Error::Corrupt`] for a
    /// damaged config.
    pub(crate) fn unlock(&self, vault_id: &str, source: &KeySource, path: &std::path::Path) -> Result<MasterKey> {
        if self.cipher != CIPHER {
            return Err(Error::corrupt(
                format!("vault config {}", path.join("config").display()),
                format!("cipher {} (this build knows {CIPHER})", self.cipher),
            ));
        }
        let kind = source.kind();
        let slots: Vec<&Slot> = self.slots.iter().filter(|s| s.kind == kind).collect();
        let where_ = format!("vault config {}", path.join("config").display());
        for slot in &slots {
            let kek = slot_key(source, slot.kdf.as_ref(), &where_)?;
            let wrapped = unhex(&slot.wrapped).ok_or_else(|| Error::corrupt(&where_, "key slot is not hex"))?;
            let Ok(master) = open(&Sealer::new(&kek), &slot_aad(vault_id, &slot.id), &wrapped) else { continue };
            let master = Zeroizing::new(
                <[u8; 32]>::try_from(master.as_slice())
                    .map_err(|_| Error::corrupt(&where_, format!("key slot {} holds no 32-byte key", slot.id)))?,
            );
            if key_check(&master, vault_id) != self.key_check {
                return Err(Error::corrupt(
                    &where_,
                    format!(
                        "key slot {} opens, but to a key that fails the key check: the config was changed",
                        slot.id
                    ),
                ));
            }
            return Ok(master);
        }
        Err(Error::WrongKey {
            path: path.to_path_buf(),
            detail: if slots.is_empty() {
                format!("the vault has no {kind} key slot ({} slot(s) of other kinds)", self.slots.len())
            } else if let KeySource::KeyFile(f) = source {
                let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                format!(
                    "key file {} ({len} bytes) opens none of its {} key file slot(s); the key is the file's exact bytes, \
                     a trailing newline included, so a copy that gained or lost one is another key",
                    f.display(),
                    slots.len()
                )
            } else {
                format!("the {kind} opens none of its {} {kind} slot(s)", slots.len())
            },
        })
    }
}

/// An AEAD key for sealing objects.
#[derive(Clone)]
pub(crate) struct Sealer {
    key: [u8; 32],
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 32]) -> Sealer {
        Sealer { key: *key }
    }

    fn cipher(&self, nonce: &[u8; NONCE_LEN]) -> aes_gcm::Aes256Gcm {
        let sub = Zeroizing::new(*blake3::keyed_hash(&self.key, &nonce[..12]).as_bytes());
        aes_gcm::Aes256Gcm::new(&aes_gcm::Key::<aes_gcm::Aes256Gcm>::from(*sub))
    }
}

/// Seals `plaintext`: nonce, ciphertext, tag.
pub(crate) fn seal(sealer: &Sealer, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let nonce = random::<NONCE_LEN>("a nonce")?;
    let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = sealer
        .cipher(&nonce)
        .encrypt_inout_detached(&gcm_nonce(&nonce), aad, (&mut out[NONCE_LEN..]).into())
        .map_err(|_| Error::invalid("object to seal", format!("{} bytes is too long for AES-GCM", plaintext.len())))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens a sealed object; `Err(())` when it does not authenticate (the
/// caller names the object).
pub(crate) fn open(sealer: &Sealer, aad: &[u8], sealed: &[u8]) -> std::result::Result<Vec<u8>, ()> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(());
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let (body, tag) = sealed[NONCE_LEN..].split_at(sealed.len() - SEAL_OVERHEAD);
    let mut out = body.to_vec();
    let tag = aes_gcm::Tag::try_from(tag).map_err(|_| ())?;
    sealer
        .cipher(&nonce)
        .decrypt_inout_detached(&gcm_nonce(&nonce), aad, out.as_mut_slice().into(), &tag)
        .map_err(|_| ())?;
    Ok(out)
}

/// The GCM nonce: the second half of an object's nonce.
fn gcm_nonce(nonce: &[u8; NONCE_LEN]) -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n.copy_from_slice(&nonce[12..]);
    aes_gcm::Nonce::from(n)
}

/// The keys of an encrypted vault, derived from its master key.
pub(crate) struct Derived {
    pub(crate) chunk: [u8; 32],
    pub(crate) segment: [u8; 32],
    pub(crate) mac: [u8; 32],
    pub(crate) sealer: Sealer,
}

impl Drop for Derived {
    fn drop(&mut self) {
        self.chunk.zeroize();
        self.segment.zeroize();
        self.mac.zeroize();
    }
}

/// Every key the vault uses, each under its own context.
pub(crate) fn derive_keys(master: &[u8; 32]) -> Derived {
    let mut seal_key = Zeroizing::new(derive("vmbackup 2026-11-25 seal", master));
    let sealer = Sealer::new(&seal_key);
    seal_key.zeroize();
    Derived {
        chunk: derive("vmbackup 2026-11-25 chunk id", master),
        segment: derive("vmbackup 2026-11-25 index segment id", master),
        mac: derive("vmbackup 2026-11-25 manifest mac", master),
        sealer,
    }
}

/// A sealed file: the magic, then the sealed bytes.
pub(crate) fn seal_file(sealer: &Sealer, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let sealed = seal(sealer, aad, plaintext)?;
    Ok([&SEAL_MAGIC[..], &sealed].concat())
}

/// Opens a sealed file.
///
/// # Errors
/// [`Error::Tampered`] naming `object` when it is not sealed or does not
/// authenticate.
pub(crate) fn open_file(sealer: &Sealer, aad: &[u8], bytes: &[u8], object: &str) -> Result<Vec<u8>> {
    let Some(body) = bytes.strip_prefix(&SEAL_MAGIC[..]) else {
        return Err(Error::tampered(object, "not sealed, in an encrypted vault"));
    };
    open(sealer, aad, body).map_err(|()| {
        Error::tampered(object, "fails authentication: changed, moved from another place or vault, or forged")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_every_flip_fails() {
        let s = Sealer::new(&[9; 32]);
        let sealed = seal(&s, b"aad", b"plaintext").expect("seals");
        assert_eq!(open(&s, b"aad", &sealed).expect("opens"), b"plaintext");
        assert!(open(&s, b"other aad", &sealed).is_err());
        assert!(open(&Sealer::new(&[8; 32]), b"aad", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open(&s, b"aad", &t).is_err(), "flip at byte {i} went unnoticed");
        }
        assert!(open(&s, b"aad", &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn slots_open_with_their_own_key_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cheap = KdfParams::new(64, 1, 1);
        let (mut enc, master) = Encryption::create("v1", &KeySource::passphrase("right"), cheap).expect("creates");
        let kf = dir.path().join("key");
        generate_key_file(&kf).expect("key file");
        enc.add_slot("v1", &master, &KeySource::key_file(&kf), cheap).expect("adds");
        assert_eq!(*enc.unlock("v1", &KeySource::passphrase("right"), dir.path()).expect("opens"), *master);
        assert_eq!(*enc.unlock("v1", &KeySource::key_file(&kf), dir.path()).expect("opens"), *master);
        assert!(matches!(
            enc.add_slot("v1", &master, &KeySource::passphrase(""), cheap),
            Err(Error::InvalidArgument { .. })
        ));
        let wrong = enc.unlock("v1", &KeySource::passphrase("wrong"), dir.path());
        assert!(matches!(wrong, Err(Error::WrongKey { .. })), "{wrong:?}");
        // The vault id is associated data: the slots do not open for another vault.
        assert!(matches!(enc.unlock("v2", &KeySource::passphrase("right"), dir.path()), Err(Error::WrongKey { .. })));
    }
}
