//! The model shared by every stage: VMs and their disks, consistency levels,
//! content ids, and the progress and cancel hooks a host plugs in.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The guest operating system of a VM; it decides which consistency
/// mechanisms apply (VSS on Windows, scripts and fsfreeze on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsType {
    /// A Linux guest.
    Linux,
    /// A Windows guest.
    Windows,
    /// Anything else, or not known.
    #[default]
    Other,
}

impl FromStr for OsType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "linux" => Ok(OsType::Linux),
            "windows" => Ok(OsType::Windows),
            "other" | "" => Ok(OsType::Other),
            _ => Err(Error::invalid("os type", format!("{s:?} is not linux, windows or other"))),
        }
    }
}

/// One disk of a VM: its name (unique within the VM) and where the provider
/// finds it (a path, a URI, or a host's own handle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    /// The disk's name, unique within its VM.
    pub name: String,
    /// Where the provider finds it; its meaning is the provider's.
    pub location: String,
}

/// A virtual machine as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The VM's name, unique within a vault.
    pub name: String,
    /// The guest operating system.
    pub os: OsType,
    /// Its disks, in order.
    pub disks: Vec<VmDisk>,
}

/// A VM's configuration as its hypervisor describes it (a libvirt
/// domain's XML), stored with a point so that a restore can re-create the
/// VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfiguration {
    /// What the text is: `libvirt-domain-xml`.
    pub kind: String,
    /// The configuration itself.
    pub text: String,
}

impl Vm {
    /// A VM whose disks are the given image files, named after their file
    /// names.
    ///
    /// # Errors
    /// A bad VM name, a path without a file name, or two disks with the
    /// same name.
    pub fn from_images<P: AsRef<std::path::Path>>(name: &str, images: &[P]) -> Result<Vm> {
        let mut disks = Vec::with_capacity(images.len());
        for image in images {
            let path = image.as_ref();
            let disk_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::invalid("disk path", format!("{} has no UTF-8 file name", path.display())))?;
            let location =
                path.to_str().ok_or_else(|| Error::invalid("disk path", format!("{} is not UTF-8", path.display())))?;
            disks.push(VmDisk { name: disk_name.to_string(), location: location.to_string() });
        }
        let vm = Vm { name: name.to_string(), os: OsType::Other, disks };
        vm.validate()?;
        Ok(vm)
    }

    /// Checks the VM's name and its disks' names.
    ///
    /// # Errors
    /// A name that could escape the vault folder, an empty VM, or two disks
    /// with the same name.
    pub fn validate(&self) -> Result<()> {
        validate_name("vm name", &self.name)?;
        if self.disks.is_empty() {
            return Err(Error::invalid("vm", format!("vm {} has no disks", self.name)));
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.disks {
            validate_name("disk name", &d.name)?;
            if !seen.insert(d.name.as_str()) {
                return Err(Error::invalid("disk name", format!("vm {} has two disks named {}", self.name, d.name)));
            }
        }
        Ok(())
    }
}

/// Checks that a VM or disk name is safe to use as a file name in the vault:
/// 1 to 200 bytes, no `/`, `\`, NUL or control characters, not `.` or `..`,
/// not starting with `.`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the rule broken.
///
/// ```
/// use backup_core::validate_name;
/// assert!(validate_name("vm name", "web-01").is_ok());
/// assert!(validate_name("vm name", "../etc").is_err());
/// ```
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if name.chars().any(|c| c.is_control()) {
        Some("it contains a control character or NUL")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::invalid(what, format!("{name:?}: {why}"))),
        None => Ok(()),
    }
}

/// How consistent a snapshot is, from weakest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The disks as they were at one instant, as after a power cut.
    Crash,
    /// File systems were frozen (flushed, no writes) around the snapshot.
    #[serde(rename = "filesystem")]
    FileSystem,
    /// Applications flushed their state (VSS, pre/post scripts) and file
    /// systems were frozen.
    Application,
}

impl Consistency {
    /// The short name used on the command line and in JSON: `crash`,
    /// `filesystem`, `application`.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Crash => "crash",
            Consistency::FileSystem => "filesystem",
            Consistency::Application => "application",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Consistency {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "crash" | "crash-consistent" => Ok(Consistency::Crash),
            "fs" | "filesystem" | "file-system" | "file-system-consistent" => Ok(Consistency::FileSystem),
            "app" | "application" | "application-consistent" => Ok(Consistency::Application),
            _ => Err(Error::invalid("consistency", format!("{s:?} is not one of app, fs, crash"))),
        }
    }
}

/// A 32-byte content id: keyed BLAKE3 of a chunk's plaintext, or of an
/// index segment's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex characters.
    ///
    /// # Errors
    /// Anything that is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let bytes = unhex(s)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| Error::invalid("content id", format!("{s:?} is not 64 hex digits")))?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes);
        Ok(ContentId(id))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ContentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ContentId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Lower-case hex of bytes.
/// `n` random bytes as hex: unique names for staging files, packs and
/// gc marks. `what` says what they name, for the error.
pub(crate) fn random_hex(n: usize, what: &str) -> Result<String> {
    let mut r = vec![0u8; n];
    getrandom::fill(&mut r).map_err(|e| Error::io("get random bytes for", what, std::io::Error::other(e)))?;
    Ok(hex(&r))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Bytes of a hex string, or None when it is not hex.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A flag that a host sets to stop a running job. Cheap to clone; all
/// clones share the flag. The engine checks it between blocks.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every job holding a clone of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        if self.is_cancelled() { Err(Error::Cancelled { what: what.to_string() }) } else { Ok(()) }
    }
}

/// Progress of a job, reported by the engine. Every method has a
/// do-nothing default; implementations must be cheap, because they are
/// called from the engine's worker threads, several at once.
pub trait Progress: Send + Sync {
    /// The job starts; `total` bytes will be processed in all.
    fn start(&self, total: u64) {
        let _ = total;
    }
    /// `bytes` more were processed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// A message a user should see (a fallback taken, a disk distrusted).
    fn warn(&self, message: &str) {
        let _ = message;
    }
    /// The job ended, well or not.
    fn finish(&self) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Seconds since the Unix epoch of now.
pub(crate) fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}
