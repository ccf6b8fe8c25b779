//! Errors of the engine: one enum, each variant saying what failed and where.

use std::ops::Range;
use std::path::PathBuf;

/// The result type of every fallible call in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether retrying the same call may succeed. Job logs write it as
/// `retryable`, `permanent` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A condition that may pass: a lock held by another process, a host
    /// callback reporting a transient failure, an interrupted read.
    Retryable,
    /// Retrying the same call fails the same way: bad input, corruption,
    /// a missing object.
    Permanent,
    /// The caller asked the job to stop.
    Cancelled,
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system call on a vault or image file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", "rename", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Reading a disk through its block device failed.
    #[error("cannot read disk {disk} of vm {vm} at byte {offset}{}: {source}", after_attempts(*attempts))]
    DeviceRead {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
        /// The byte offset of the failed read.
        offset: u64,
        /// How many times the read was tried (1 when it was not retried).
        attempts: u32,
        /// The device's error, from the last attempt, as the device gave it
        /// (a host's own error inside it stays reachable).
        source: std::io::Error,
    },
    /// Writing restored data to its target failed.
    #[error("cannot write disk {disk} of vm {vm} to {target} at byte {offset}: {source}")]
    RestoreWrite {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
        /// Where the disk was being written.
        target: String,
        /// The byte offset of the failed write.
        offset: u64,
        /// The target's error.
        source: std::io::Error,
    },
    /// A point was not committed to a vault shared through an object store
    /// because gc (on this host or another) condemned or removed an object
    /// it needs; nothing was committed, and running the backup again
    /// commits (its refresh no longer trusts those objects).
    #[error("cannot commit {point}: {why}; nothing was committed, run the backup again")]
    CommitRaced {
        /// The point, its VM and its vault.
        point: String,
        /// What gc did.
        why: String,
    },
    /// The path holds no vault.
    #[error("{path} is not a vmbackup vault (no readable config file)")]
    NotAVault {
        /// The path given.
        path: PathBuf,
    },
    /// A vault already exists where one was to be created.
    #[error("{path} already holds a vault or other files; init needs an empty or new folder")]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// The vault was written by a format this build does not read.
    #[error("vault {path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The vault.
        path: PathBuf,
        /// The version in its config.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Another process holds the vault's lock.
    #[error("vault {path} is locked by another process ({mode} lock wanted; waited {waited_secs} s)")]
    Locked {
        /// The vault.
        path: PathBuf,
        /// "shared" or "exclusive".
        mode: &'static str,
        /// How long the call waited.
        waited_secs: u64,
    },
    /// An object of the vault is damaged: wrong checksum, wrong hash,
    /// truncated, or unparsable.
    #[error("corrupt {object}: {detail}")]
    Corrupt {
        /// The object and where it is (file, offset).
        object: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A sealed object of an encrypted vault fails authentication, or an
    /// object that must be sealed is not: it was changed, swapped, moved
    /// from another place or another vault, or forged.
    #[error("tampered {object}: {detail}")]
    Tampered {
        /// The object and where it is (file, offset).
        object: String,
        /// What failed.
        detail: String,
    },
    /// The vault is encrypted and no passphrase or key file was given.
    #[error("vault {path} is encrypted: give its passphrase or key file")]
    KeyRequired {
        /// The vault.
        path: PathBuf,
    },
    /// The passphrase or key file given opens none of the vault's key slots.
    #[error("wrong passphrase or key for vault {path}: {detail}")]
    WrongKey {
        /// The vault.
        path: PathBuf,
        /// Which slots were tried.
        detail: String,
    },
    /// A restore met damaged data: the disk's byte range cannot be restored.
    #[error("disk {disk} of vm {vm} point {point}: bytes {}..{} cannot be restored: {detail}", range.start, range.end)]
    DamagedRange {
        /// The VM.
        vm: String,
        /// The point.
        point: String,
        /// The disk.
        disk: String,
        /// The bytes of the disk that are lost.
        range: Range<u64>,
        /// Why.
        detail: String,
    },
    /// Something named does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for ("point 1234 of vm web", "disk data").
        what: String,
    },
    /// An argument is out of range or malformed.
    #[error("invalid {what}: {why}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// The snapshot provider (built in or the host's) failed.
    #[error("{step} of vm {vm} failed: {message}")]
    Provider {
        /// The VM.
        vm: String,
        /// "prepare", "snapshot", "release" or "check".
        step: &'static str,
        /// The provider's message.
        message: String,
        /// Whether the provider says that trying again may work.
        retryable: bool,
    },
    /// Bringing a point back as a libvirt domain (a restore, an instant
    /// recovery, a boot verification) failed.
    #[error("{step} of vm {vm} as domain {domain} failed: {message}")]
    Recovery {
        /// The VM of the point.
        vm: String,
        /// The domain being made (or booted).
        domain: String,
        /// "restore", "instant recovery" or "boot verification", and where.
        step: &'static str,
        /// What went wrong, with libvirt's or QEMU's own message.
        message: String,
    },
    /// A disk's source changed under a backup that could not freeze it.
    #[error("disk {disk} of vm {vm} changed while it was backed up: {detail}")]
    SourceChanged {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
        /// What changed.
        detail: String,
    },
    /// A pre/post scripts configuration file is malformed or has a value
    /// out of range.
    #[error("invalid {field} in scripts config {path}: {why}")]
    ScriptsConfig {
        /// The configuration file (or "<inline>" for one given as text).
        path: PathBuf,
        /// The JSON field at fault, or "file" for the file as a whole.
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// A configuration file or script that the backup would trust is owned
    /// by another user or writable by group or others.
    #[error(
        "refusing {path}: it is owned by {owner} with mode {mode:04o}; it must be owned by {expected} (the user running the backup) and not writable by group or others"
    )]
    UnsafeFile {
        /// The file.
        path: PathBuf,
        /// Its owner ("uid 1000 (alice)").
        owner: String,
        /// Its permission bits.
        mode: u32,
        /// The user running the backup.
        expected: String,
    },
    /// A pre or post script failed on every attempt, and the configuration
    /// says not to continue.
    #[error("{stage}-script {path} of vm {vm} failed after {attempts} attempt(s): {detail}")]
    Script {
        /// The VM.
        vm: String,
        /// "pre" or "post".
        stage: &'static str,
        /// The script.
        path: PathBuf,
        /// How many times it ran.
        attempts: u32,
        /// How the last attempt ended, and the tail of its output.
        detail: String,
    },
    /// An NBD server could not be reached, refused, or broke the protocol.
    #[error("nbd server {peer}: {source}")]
    Nbd {
        /// The server's URI.
        peer: String,
        /// What went wrong (`TimedOut` for a stalled server,
        /// `InvalidData` for a protocol violation).
        source: std::io::Error,
    },
    /// A guest's partition table, volume group or file system inside a
    /// point cannot be read as asked (the vault itself may be sound).
    #[error("{place}: {why}")]
    Guest {
        /// Where: the volume, disk, point and vm.
        place: String,
        /// What is wrong.
        why: String,
    },
    /// The vault's protection settings refuse the change: a setting that
    /// may not be weakened, or (later) a point younger than its immutable
    /// days. Nothing was changed.
    #[error("refused to {action}: {why}")]
    Protected {
        /// What was refused, and where ("turn soft delete off in vault /v").
        action: String,
        /// Which setting refuses it.
        why: String,
    },
    /// The caller cancelled the job; nothing was committed.
    #[error("{what} cancelled; nothing was committed")]
    Cancelled {
        /// The job that stopped.
        what: String,
    },
}

/// " (after N attempts)" for a retried read, nothing for a single one.
fn after_attempts(attempts: u32) -> String {
    if attempts > 1 { format!(" (after {attempts} attempts)") } else { String::new() }
}

impl Error {
    /// Whether the failed call may succeed if tried again.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Locked { .. } | Error::CommitRaced { .. } => ErrorKind::Retryable,
            Error::Provider { retryable, .. } if *retryable => ErrorKind::Retryable,
            Error::Io { source, .. }
            | Error::DeviceRead { source, .. }
            | Error::RestoreWrite { source, .. }
            | Error::Nbd { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                ErrorKind::Retryable
            }
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            _ => ErrorKind::Permanent,
        }
    }

    /// Whether this error says that stored data is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::Tampered { .. } | Error::DamagedRange { .. })
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    pub(crate) fn corrupt(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { object: object.into(), detail: detail.into() }
    }

    pub(crate) fn tampered(object: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Tampered { object: object.into(), detail: detail.into() }
    }

    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into(), why: why.into() }
    }
}
