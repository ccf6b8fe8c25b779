//! The vault handle and the operations on it: backup, list, restore,
//! verify.

use std::ffi::c_char;
use std::path::Path;

use backup_core::{
    BackupOptions, Consistency, ConsistentProvider, ImageFileProvider, KdfParams, KeySource, RemoteOptions,
    RestoreOptions, RestoreStats, SlotKind, Vault, VaultOptions, VerifyOptions, Vm, VmDisk,
};

use crate::host::{HostProvider, HostTarget, vmb_provider, vmb_write_target};
use crate::job::{settings, vmb_job};
use crate::point::{vmb_point, vmb_point_list, vmb_verify_report};
use crate::status::{Failure, FfiResult, arg_out, arg_ref, arg_str, ffi, ffi_free, utf8, vmb_status, write_out};

/// An open vault. Thread-safe: one handle may be used by several threads at
/// once (backups of different VMs, restores, listings); the vault's own
/// locks order what must be ordered, also between processes.
pub struct vmb_vault {
    /// Shared with the disk readers opened on it, which may outlive the
    /// handle.
    pub(crate) vault: std::sync::Arc<Vault>,
}

/// What a restore of one disk did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmb_restore_stats {
    /// Set by the caller before the call: `sizeof(struct vmb_restore_stats)`, or 0 for
    /// the first layout (0.1); the library fills that much and sets it to
    /// the bytes it wrote. See "Extensible structs" in the header's rules.
    pub struct_size: u32,
    /// The disk's size.
    pub size: u64,
    /// Bytes of data written.
    pub bytes_written: u64,
    /// Bytes of zeros (holes in a sparse file, `write_zeros` for a host).
    pub bytes_zero: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl From<RestoreStats> for vmb_restore_stats {
    fn from(s: RestoreStats) -> Self {
        vmb_restore_stats {
            struct_size: 0,
            size: s.size,
            bytes_written: s.bytes_written,
            bytes_zero: s.bytes_zero,
            seconds: s.seconds,
        }
    }
}

/// Creates a vault in `path` (a new or empty folder) and opens it. `path`
/// may also be a URL, `az://CONTAINER/PREFIX` or `s3://BUCKET/PREFIX`
/// (in a library built with the `object-store` feature, else
/// `VMB_ERR_INVALID_ARGUMENT`), with the default cache folder and the
/// endpoint and credentials of the environment (see `vmb_vault_init_url`).
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_init(path: *const c_char, out: *mut *mut vmb_vault) -> vmb_status {
    ffi! {
        make_vault(path, "path", &vmb_vault_options::default(), out, |p, o, r| Vault::init_location(p, o, r))
    }
}

/// Opens the vault in `path`, or at a URL as `vmb_vault_init` takes.
///
/// # Safety
/// As `vmb_vault_init`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_open(path: *const c_char, out: *mut *mut vmb_vault) -> vmb_status {
    ffi! {
        make_vault(path, "path", &vmb_vault_options::default(), out, |p, o, r| Vault::open_location(p, o, r))
    }
}

/// The remote options of a `vmb_vault_options`.
fn remote_options(cache: *const c_char, endpoint: *const c_char) -> FfiResult<RemoteOptions> {
    let mut o = RemoteOptions::default();
    if !cache.is_null() {
        o.cache = Some(std::path::PathBuf::from(arg_str!(cache, "cache")));
    }
    if !endpoint.is_null() {
        o.endpoint = Some(arg_str!(endpoint, "endpoint").to_string());
    }
    Ok(o)
}

/// Creates a vault on object storage and opens it: `url` is
/// `az://CONTAINER/PREFIX` (Azure Blob; credentials from
/// `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY`, or the
/// emulator with `AZURE_STORAGE_USE_EMULATOR=true`) or `s3://BUCKET/PREFIX`
/// (`AWS_*` variables). `cache` is the local cache folder, NULL for the
/// default (under `$XDG_CACHE_HOME` or `~/.cache/vmbackup`); `endpoint` the
/// store's endpoint (an emulator's `http://127.0.0.1:10000`), NULL for the
/// cloud's or the environment's. A library built without the
/// `object-store` feature answers `VMB_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `url` is NULL or NUL-terminated; `cache` and `endpoint` are NULL or
/// NUL-terminated; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_init_url(
    url: *const c_char,
    cache: *const c_char,
    endpoint: *const c_char,
    out: *mut *mut vmb_vault,
) -> vmb_status {
    ffi! {
        let options = vmb_vault_options { cache, endpoint, ..vmb_vault_options::default() };
        make_vault(url, "url", &options, out, Vault::init_url)
    }
}

/// Opens a vault on object storage (as `vmb_vault_init_url` says).
///
/// # Safety
/// As `vmb_vault_init_url`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_open_url(
    url: *const c_char,
    cache: *const c_char,
    endpoint: *const c_char,
    out: *mut *mut vmb_vault,
) -> vmb_status {
    ffi! {
        let options = vmb_vault_options { cache, endpoint, ..vmb_vault_options::default() };
        make_vault(url, "url", &options, out, Vault::open_url)
    }
}

/// The key of an encrypted vault: a passphrase or a key file (set one, the
/// other NULL), and the Argon2id cost of a passphrase slot that
/// `vmb_vault_init_with_key` makes. Zero-initialize it for the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmb_key {
    /// The size of this struct as the caller's header declares it:
    /// `sizeof(struct vmb_key)`, or 0 for the first layout (0.1). Fields
    /// added by a later version are appended; see "Extensible structs" in
    /// the header's rules.
    pub struct_size: u32,
    /// The passphrase, NUL-terminated UTF-8, or NULL. The library keeps no
    /// copy of it after the call.
    pub passphrase: *const c_char,
    /// The path of a key file (at least 32 bytes; its whole contents are the
    /// key), or NULL.
    pub key_file: *const c_char,
    /// Argon2id memory in KiB for a new passphrase slot; 0: 65536 (64 MiB).
    pub kdf_memory_kib: u32,
    /// Argon2id passes for a new passphrase slot; 0: 3.
    pub kdf_iterations: u32,
}

impl Default for vmb_vault_options {
    fn default() -> Self {
        vmb_vault_options {
            struct_size: 0,
            key: std::ptr::null(),
            cache: std::ptr::null(),
            endpoint: std::ptr::null(),
            lock_timeout_seconds: 0.0,
            direct_io: false,
            buffered_io: false,
        }
    }
}

/// Vault options carrying a key.
fn key_options(key: &vmb_key) -> FfiResult<VaultOptions> {
    let mut options = VaultOptions::default();
    options.key = match (key.passphrase.is_null(), key.key_file.is_null()) {
        (false, true) => Some(KeySource::passphrase(arg_str!(key.passphrase, "key->passphrase"))),
        (true, false) => Some(KeySource::key_file(arg_str!(key.key_file, "key->key_file"))),
        (true, true) => return Err(Failure::invalid("key: set passphrase or key_file")),
        (false, false) => return Err(Failure::invalid("key: set passphrase or key_file, not both")),
    };
    let d = KdfParams::default();
    options.kdf = KdfParams::new(
        if key.kdf_memory_kib == 0 { d.memory_kib } else { key.kdf_memory_kib },
        if key.kdf_iterations == 0 { d.iterations } else { key.kdf_iterations },
        d.parallelism,
    );
    Ok(options)
}

/// Creates an encrypted vault in `path` (a new or empty folder, or a vault
/// URL as `vmb_vault_init` takes), with
/// `key` as its first key slot, and opens it. Every chunk, index segment
/// and manifest is sealed (AES-256-GCM) before it is written.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `key` is NULL or readable, its strings
/// NULL or NUL-terminated; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_init_with_key(
    path: *const c_char,
    key: *const vmb_key,
    out: *mut *mut vmb_vault,
) -> vmb_status {
    ffi! {
        let _ = arg_ref!(key, "key"); // a key is required here: NULL is an error, not "no key"
        let options = vmb_vault_options { key, ..vmb_vault_options::default() };
        make_vault(path, "path", &options, out, |p, o, r| Vault::init_location(p, o, r))
    }
}

/// Opens the vault in `path` with a key: an encrypted vault needs one
/// (`VMB_ERR_KEY_REQUIRED` from `vmb_vault_open`, `VMB_ERR_WRONG_KEY` when
/// it opens no key slot; both before any other work). A vault without
/// encryption is refused with `VMB_ERR_WRONG_KEY` (a caller who brings a key
/// expects encryption). `key` NULL is `vmb_vault_open`.
///
/// # Safety
/// As `vmb_vault_init_with_key`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_open_with_key(
    path: *const c_char,
    key: *const vmb_key,
    out: *mut *mut vmb_vault,
) -> vmb_status {
    ffi! {
        let options = vmb_vault_options { key, ..vmb_vault_options::default() };
        make_vault(path, "path", &options, out, |p, o, r| Vault::open_location(p, o, r))
    }
}

/// How `vmb_vault_init_with_options` and `vmb_vault_open_with_options`
/// make or open a vault. Zero-initialize it for the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmb_vault_options {
    /// The size of this struct as the caller's header declares it:
    /// `sizeof(struct vmb_vault_options)`, or 0 for the first layout (0.1). Fields
    /// added by a later version are appended; see "Extensible structs" in
    /// the header's rules.
    pub struct_size: u32,
    /// The key of an encrypted vault (as `vmb_vault_init_with_key` and
    /// `vmb_vault_open_with_key` take it), or NULL for none.
    pub key: *const vmb_key,
    /// For a vault URL: the local cache folder, or NULL for the default.
    pub cache: *const c_char,
    /// For a vault URL: the store's endpoint, or NULL for the cloud's or
    /// the environment's.
    pub endpoint: *const c_char,
    /// Seconds an operation waits for a lock another process holds before
    /// `VMB_ERR_LOCKED`; 0 for the default, 60.
    pub lock_timeout_seconds: f64,
    /// Read packs for restores around the page cache (`O_DIRECT`), as
    /// backups write them by default; false: through the cache.
    pub direct_io: bool,
    /// Write packs through the page cache; false (the default): around it
    /// (`O_DIRECT`), so that a backup neither evicts what the host keeps
    /// cached nor pays to fill it with data nobody reads soon. Added after
    /// 0.1: callers built against 0.1 get the default.
    pub buffered_io: bool,
}

/// The vault and remote options a `vmb_vault_options` asks for.
fn options_of(o: &vmb_vault_options) -> FfiResult<(VaultOptions, RemoteOptions)> {
    let mut options = if o.key.is_null() {
        VaultOptions::default()
    } else {
        key_options(&crate::extensible::arg_in!(o.key, "options->key"))?
    };
    let t = o.lock_timeout_seconds;
    if !(t.is_finite() && (0.0..=1e9).contains(&t)) {
        return Err(Failure::invalid(format!("options->lock_timeout_seconds {t} is not from 0 to 1e9")));
    }
    if t > 0.0 {
        options.lock_timeout = std::time::Duration::from_secs_f64(t);
    }
    options.direct_io = o.direct_io;
    options.buffered_io = o.buffered_io;
    Ok((options, remote_options(o.cache, o.endpoint)?))
}

/// The body of every `vmb_vault_init*` and `vmb_vault_open*` call: `path`
/// (named `what` in errors) and `options` given to `make`, one of
/// `Vault`'s constructors, and the vault handed out through `out`.
fn make_vault(
    path: *const c_char,
    what: &str,
    options: &vmb_vault_options,
    out: *mut *mut vmb_vault,
    make: fn(&str, VaultOptions, &RemoteOptions) -> backup_core::Result<Vault>,
) -> FfiResult {
    let path = arg_str!(path, what);
    let out = arg_out!(out, "out");
    let (options, remote) = options_of(options)?;
    let vault = make(path, options, &remote)?;
    write_out!(out, Box::into_raw(Box::new(vmb_vault { vault: std::sync::Arc::new(vault) })));
    Ok(())
}

/// Creates a vault in `path` (a new or empty folder, or a vault URL as
/// `vmb_vault_init` takes) with `options` (NULL for the defaults) and opens
/// it; with `options->key` it is encrypted, as `vmb_vault_init_with_key`
/// makes it.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `options` is NULL or readable, its
/// pointers NULL or valid as their fields say; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_init_with_options(
    path: *const c_char,
    options: *const vmb_vault_options,
    out: *mut *mut vmb_vault,
) -> vmb_status {
    ffi! {
        let options = if options.is_null() { vmb_vault_options::default() } else { crate::extensible::arg_in!(options, "options") };
        make_vault(path, "path", &options, out, |p, o, r| Vault::init_location(p, o, r))
    }
}

/// Opens the vault in `path` (a folder or a vault URL) with `options` (NULL
/// for the defaults): the one call that takes every option the shorter
/// `vmb_vault_open*` calls take.
///
/// # Safety
/// As `vmb_vault_init_with_options`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_open_with_options(
    path: *const c_char,
    options: *const vmb_vault_options,
    out: *mut *mut vmb_vault,
) -> vmb_status {
    ffi! {
        let options = if options.is_null() { vmb_vault_options::default() } else { crate::extensible::arg_in!(options, "options") };
        make_vault(path, "path", &options, out, |p, o, r| Vault::open_location(p, o, r))
    }
}

/// Bytes of a key slot's id with its NUL: 8 hex digits.
pub const VMB_SLOT_ID_LEN: usize = 9;

/// What opens a key slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum vmb_slot_kind {
    /// A passphrase.
    VMB_SLOT_PASSPHRASE = 0,
    /// A key file.
    VMB_SLOT_KEY_FILE = 1,
}

/// Copies a slot id, NUL-terminated, into a caller's buffer of
/// `VMB_SLOT_ID_LEN` bytes.
fn write_slot_id(id: &str, out: *mut c_char) -> FfiResult {
    let bytes = id.as_bytes();
    if bytes.len() + 1 > VMB_SLOT_ID_LEN {
        return Err(Failure::invalid(format!("key slot id {id} is longer than VMB_SLOT_ID_LEN")));
    }
    // SAFETY: `out` is not NULL (checked by the caller with arg_out!) and
    // the C contract is a writable buffer of VMB_SLOT_ID_LEN bytes; the
    // copy writes at most that many.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len());
        out.add(bytes.len()).write(0);
    }
    Ok(())
}

/// How many key slots an encrypted vault has (0 for a vault without
/// encryption).
///
/// # Safety
/// `vault` is NULL or a live vault; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_key_slot_count(vault: *const vmb_vault, out: *mut usize) -> vmb_status {
    ffi! {
        let vault = arg_ref!(vault, "vault");
        let out = arg_out!(out, "out");
        let n = vault.vault.key_slots()?.len();
        write_out!(out, n);
        Ok(())
    }
}

/// Key slot `index` (from 0, in the order they were added): its id into
/// `slot_id` (a buffer of `VMB_SLOT_ID_LEN` bytes) and what opens it into
/// `kind` (NULL when not wanted). `VMB_ERR_INVALID_ARGUMENT` past the last.
///
/// # Safety
/// `vault` is NULL or a live vault; `slot_id` is NULL or a writable buffer
/// of `VMB_SLOT_ID_LEN` bytes; `kind` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_key_slot(
    vault: *const vmb_vault,
    index: usize,
    slot_id: *mut c_char,
    kind: *mut vmb_slot_kind,
) -> vmb_status {
    ffi! {
        let vault = arg_ref!(vault, "vault");
        let slot_id = arg_out!(slot_id, "slot_id");
        let slots = vault.vault.key_slots()?;
        let slot = slots.get(index).ok_or_else(|| {
            Failure::invalid(format!("key slot {index}: the vault has {} key slots", slots.len()))
        })?;
        write_slot_id(&slot.id, slot_id)?;
        if !kind.is_null() {
            let k = match slot.kind {
                SlotKind::Passphrase => vmb_slot_kind::VMB_SLOT_PASSPHRASE,
                SlotKind::KeyFile => vmb_slot_kind::VMB_SLOT_KEY_FILE,
            };
            write_out!(kind, k);
        }
        Ok(())
    }
}

/// Adds a key slot to an encrypted vault: `key` opens it too from now on
/// (its `kdf_*` fields give a passphrase slot's cost). Only the vault's
/// config is rewritten; no data is re-encrypted. The new slot's id goes to
/// `slot_id` (a buffer of `VMB_SLOT_ID_LEN` bytes), unless it is NULL.
/// `VMB_ERR_INVALID_ARGUMENT` for a vault without encryption.
///
/// # Safety
/// `vault` is NULL or a live vault; `key` is NULL or readable, its strings
/// NULL or NUL-terminated; `slot_id` is NULL or a writable buffer of
/// `VMB_SLOT_ID_LEN` bytes.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_add_key(
    vault: *const vmb_vault,
    key: *const vmb_key,
    slot_id: *mut c_char,
) -> vmb_status {
    ffi! {
        let vault = arg_ref!(vault, "vault");
        let key = key_options(&crate::extensible::arg_in!(key, "key"))?;
        let Some(source) = key.key.as_ref() else { return Err(Failure::invalid("key: set passphrase or key_file")) };
        let info = vault.vault.add_key_with_kdf(source, key.kdf)?;
        if !slot_id.is_null() {
            write_slot_id(&info.id, slot_id)?;
        }
        Ok(())
    }
}

/// Removes a key slot by its id; refuses the vault's last one
/// (`VMB_ERR_INVALID_ARGUMENT`), which would lock everyone out for good.
/// `VMB_ERR_NOT_FOUND` for an unknown id.
///
/// # Safety
/// `vault` is NULL or a live vault; `slot_id` is NULL or NUL-terminated.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_remove_key(vault: *const vmb_vault, slot_id: *const c_char) -> vmb_status {
    ffi! {
        let vault = arg_ref!(vault, "vault");
        let slot_id = arg_str!(slot_id, "slot_id");
        vault.vault.remove_key(slot_id)?;
        Ok(())
    }
}

/// Closes a vault. NULL is ignored. No call may be using it.
///
/// # Safety
/// `vault` is NULL or a vault from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_free(vault: *mut vmb_vault) {
    ffi_free! {
        if !vault.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(vault) });
        }
    }
}

/// `count` UTF-8 strings from a C array.
fn str_array<'a>(items: *const *const c_char, count: usize, what: &str) -> FfiResult<Vec<&'a str>> {
    if count == 0 {
        return Err(Failure::invalid(format!("{what}: the list is empty")));
    }
    if items.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL; the C contract is an array of `count` pointers that
    // stays alive during the call.
    let items = unsafe { std::slice::from_raw_parts(items, count) };
    items
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let what = format!("{what}[{i}]");
            if p.is_null() {
                return Err(Failure::null(&what));
            }
            // SAFETY: not NULL; a NUL-terminated string by contract.
            utf8(unsafe { std::ffi::CStr::from_ptr(*p) }, &what)
        })
        .collect()
}

/// A backup's options from a job, and the weakest consistency it accepts.
pub(crate) fn backup_options(job: *const vmb_job) -> (BackupOptions, Consistency) {
    let s = settings(job);
    let mut o = BackupOptions::default();
    o.consistency = s.consistency;
    o.block_size = s.block_size;
    o.instant_restore_days = s.instant_restore_days;
    o.progress = s.progress;
    o.cancel = s.cancel;
    (o, s.min_consistency)
}

pub(crate) fn hand_out_point(out: *mut *mut vmb_point, manifest: backup_core::PointManifest) -> FfiResult {
    if !out.is_null() {
        let p = vmb_point::new(manifest)?.into_raw();
        // SAFETY: not NULL; writable by the C contract.
        unsafe { out.write(p) };
    }
    Ok(())
}

/// Backs up a VM whose disks are raw image files (one disk per path, named
/// after the file name). Where the files' file system has reflinks they are
/// cloned for the snapshot; elsewhere they are read in place and the VM
/// must stay stopped (a change during the backup fails it with
/// `VMB_ERR_SOURCE_CHANGED`).
///
/// `job` may be NULL (default settings, no progress, no cancel). `out` may
/// be NULL when the new point is not wanted; else it receives a point the
/// caller frees with `vmb_point_free`.
///
/// # Safety
/// `vault` is NULL or live; `images` is NULL or an array of `count`
/// strings; `job` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_backup_images(
    vault: *const vmb_vault,
    vm: *const c_char,
    images: *const *const c_char,
    count: usize,
    job: *const vmb_job,
    out: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let name = arg_str!(vm, "vm name");
        let paths = str_array(images, count, "images")?;
        let vm = Vm::from_images(name, &paths.iter().map(Path::new).collect::<Vec<_>>())?;
        let (options, min) = backup_options(job);
        // No scripts and no freeze: it settles what was achieved against
        // what was asked for, and warns or fails below the minimum.
        let provider = ConsistentProvider::new(ImageFileProvider::new())
            .with_min_consistency(min)
            .with_cancel(options.cancel.clone());
        let report = backup_core::backup(&v.vault, &provider, &vm, &options)?;
        hand_out_point(out, report.point)
    }
}

/// Backs up a VM whose snapshots the host takes through `provider` and whose
/// disks it serves through `vmb_disk_ops` tables added in the provider's
/// `snapshot` callback. `disks` names the VM's `count` disks; the snapshot
/// must add each of them exactly once.
///
/// The provider's callbacks run on the calling thread; the disks' callbacks
/// run on the library's worker threads, several at once. Everything is
/// released (`release`, every disk's `destroy`) before this returns.
///
/// `job` and `out` as in `vmb_vault_backup_images`.
///
/// # Safety
/// `vault` is NULL or live; `disks` is NULL or an array of `count` strings;
/// `provider` is NULL or a readable table following `vmb_provider`'s rules;
/// `job` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_backup_host(
    vault: *const vmb_vault,
    vm: *const c_char,
    disks: *const *const c_char,
    count: usize,
    provider: *const vmb_provider,
    job: *const vmb_job,
    out: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let name = arg_str!(vm, "vm name");
        let names = str_array(disks, count, "disks")?;
        let (options, min) = backup_options(job);
        let provider = HostProvider::new(crate::extensible::arg_in!(provider, "provider"), min)?;
        let vm = Vm {
            name: name.to_string(),
            os: backup_core::OsType::Other,
            disks: names
                .iter()
                .map(|n| VmDisk {
                    name: n.to_string(),
                    location: n.to_string(),
                })
                .collect(),
        };
        vm.validate()?;
        let report = backup_core::backup(&v.vault, &provider, &vm, &options)?;
        hand_out_point(out, report.point)
    }
}

/// The names of the VMs a vault holds points of, sorted. Immutable:
/// accessors are thread-safe. Freed with `vmb_vm_list_free`.
pub struct vmb_vm_list {
    names: Vec<std::ffi::CString>,
}

/// Lists the VMs the vault holds points of, sorted by name. Free the list
/// with `vmb_vm_list_free`.
///
/// # Safety
/// `vault` is NULL or live; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_list_vms(vault: *const vmb_vault, out: *mut *mut vmb_vm_list) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let out = arg_out!(out, "out");
        let mut vms = v.vault.vms()?;
        vms.sort();
        let names = vms.iter().map(|n| crate::status::c_string(n, "vm name")).collect::<FfiResult<Vec<_>>>()?;
        write_out!(out, Box::into_raw(Box::new(vmb_vm_list { names })));
        Ok(())
    }
}

/// The number of VMs in the list.
///
/// # Safety
/// `list` is NULL or a live list; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vm_list_len(list: *const vmb_vm_list, out: *mut usize) -> vmb_status {
    ffi! {
        let l = arg_ref!(list, "list");
        let out = arg_out!(out, "out");
        write_out!(out, l.names.len());
        Ok(())
    }
}

/// The name of VM `index` (lives as long as the list).
///
/// # Safety
/// `list` is NULL or a live list; `out` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vm_list_get(
    list: *const vmb_vm_list,
    index: usize,
    out: *mut *const c_char,
) -> vmb_status {
    ffi! {
        let l = arg_ref!(list, "list");
        let out = arg_out!(out, "out");
        let name = crate::status::nth(&l.names, index, "vm", "list")?;
        write_out!(out, name.as_ptr());
        Ok(())
    }
}

/// Frees a VM list. NULL is ignored.
///
/// # Safety
/// `list` is NULL or a list from `vmb_vault_list_vms` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vm_list_free(list: *mut vmb_vm_list) {
    ffi_free! {
        if !list.is_null() {
            // SAFETY: from `Box::into_raw` in `vmb_vault_list_vms`, freed once.
            drop(unsafe { Box::from_raw(list) });
        }
    }
}

/// Lists the points of a VM, oldest first. A VM the vault holds no point
/// of (a typo) is `VMB_ERR_NOT_FOUND`. Free the list with
/// `vmb_point_list_free`.
///
/// # Safety
/// `vault` is NULL or live; `vm` is NULL or NUL-terminated; `out` is NULL
/// or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_list_points(
    vault: *const vmb_vault,
    vm: *const c_char,
    out: *mut *mut vmb_point_list,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let vm = arg_str!(vm, "vm name");
        let out = arg_out!(out, "out");
        backup_core::validate_name("vm name", vm)?;
        let points = v.vault.vm_points(vm)?;
        write_out!(out, Box::into_raw(Box::new(vmb_point_list { points })));
        Ok(())
    }
}

/// Finds a point of a VM by id, by a unique prefix of its id, or `latest`.
/// Free it with `vmb_point_free`.
///
/// # Safety
/// As `vmb_vault_list_points`; `id` is NULL or NUL-terminated.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_find_point(
    vault: *const vmb_vault,
    vm: *const c_char,
    id: *const c_char,
    out: *mut *mut vmb_point,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let vm = arg_str!(vm, "vm name");
        let id = arg_str!(id, "point id");
        let out = arg_out!(out, "out");
        let m = v.vault.find_point(vm, id)?;
        write_out!(out, vmb_point::new(m)?.into_raw());
        Ok(())
    }
}

pub(crate) fn restore_options(job: *const vmb_job) -> RestoreOptions {
    let s = settings(job);
    let mut o = RestoreOptions::default();
    o.progress = s.progress;
    o.cancel = s.cancel;
    o
}

/// Fills the caller's restore stats (NULL: nothing), whose size
/// `crate::extensible::check_out!` accepted before the restore.
pub(crate) fn hand_out_stats(out: *mut vmb_restore_stats, stats: RestoreStats) -> FfiResult {
    crate::extensible::fill_out!(out, vmb_restore_stats::from(stats));
    Ok(())
}

/// Restores the disk named `disk` (a name only: `vmb_point_disk_name`
/// gives the name of disk N) of a point to the file `path`: written sparse under a temporary name beside
/// it and renamed into place when complete. A block device is written in
/// place. `job` may be NULL; `stats` may be NULL.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_restore_disk_to_file(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    path: *const c_char,
    job: *const vmb_job,
    stats: *mut vmb_restore_stats,
) -> vmb_status {
    // SAFETY: the same contract, passed on; the damage count is not asked for.
    unsafe { restore_to_file(vault, point, disk, path, job, stats, None) }
}

/// Both file restores: `damaged_bytes` is Some (possibly NULL) when damage
/// is allowed.
///
/// # Safety
/// As `vmb_vault_restore_disk_to_file_allow_damaged`.
unsafe fn restore_to_file(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    path: *const c_char,
    job: *const vmb_job,
    stats: *mut vmb_restore_stats,
    damaged_bytes: Option<*mut u64>,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let disk = p.disk_named(arg_str!(disk, "disk"))?;
        let path = arg_str!(path, "path");
        crate::extensible::check_out!(stats, "stats");
        let mut options = restore_options(job);
        options.allow_damaged = damaged_bytes.is_some();
        let s = backup_core::restore_disk_to_path(&v.vault, &p.manifest, disk, Path::new(path), &options)?;
        if let Some(out) = damaged_bytes.filter(|p| !p.is_null()) {
            let n: u64 = s.damaged.iter().map(|d| d.range.end - d.range.start).sum();
            // SAFETY: not NULL; writable by the C contract.
            unsafe { out.write(n) };
        }
        hand_out_stats(stats, s)?;
        Ok(())
    }
}

/// As `vmb_vault_restore_disk_to_file`, but a damaged or missing chunk
/// does not stop the restore: its block is written as zeros. The bytes so
/// written go to `damaged_bytes` (0 when nothing was damaged); `verify`
/// or the command line's `restore --allow-damaged` name the ranges.
/// `job`, `stats` and `damaged_bytes` may be NULL.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_restore_disk_to_file_allow_damaged(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    path: *const c_char,
    job: *const vmb_job,
    stats: *mut vmb_restore_stats,
    damaged_bytes: *mut u64,
) -> vmb_status {
    // SAFETY: the same contract, passed on.
    unsafe { restore_to_file(vault, point, disk, path, job, stats, Some(damaged_bytes)) }
}

/// Restores every disk of a point (a whole VM) into the folder `dir`
/// (made when missing), each to a sparse file named after its disk,
/// written under a temporary name and renamed into place when complete.
/// The disks are restored in parallel. `job` may be NULL; `stats` may be
/// NULL, else it receives the disks' figures added up (`seconds`: the
/// whole restore's).
///
/// # Safety
/// `vault` and `point` are NULL or live; `dir` is NULL or NUL-terminated
/// (NULL is refused); `job` is NULL or live; `stats` is NULL or writable.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_restore_vm(
    vault: *const vmb_vault,
    point: *const vmb_point,
    dir: *const c_char,
    job: *const vmb_job,
    stats: *mut vmb_restore_stats,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let dir = arg_str!(dir, "dir");
        crate::extensible::check_out!(stats, "stats");
        let started = std::time::Instant::now();
        let all = backup_core::restore_vm(&v.vault, &p.manifest, Path::new(dir), &restore_options(job))?;
        let mut total = vmb_restore_stats::default();
        for s in all {
            total.size += s.size;
            total.bytes_written += s.bytes_written;
            total.bytes_zero += s.bytes_zero;
        }
        total.seconds = started.elapsed().as_secs_f64();
        crate::extensible::fill_out!(stats, total);
        Ok(())
    }
}

/// Restores the disk named `disk` of a point through the host's `target` callbacks
/// (see `vmb_write_target` for the threads they come from). `job` may be
/// NULL; `stats` may be NULL.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say;
/// `target` follows `vmb_write_target`'s rules.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_restore_disk(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    target: *const vmb_write_target,
    job: *const vmb_job,
    stats: *mut vmb_restore_stats,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let disk = p.disk_named(arg_str!(disk, "disk"))?;
        let target = HostTarget::new(crate::extensible::arg_in!(target, "target"))?;
        crate::extensible::check_out!(stats, "stats");
        let s = backup_core::restore_disk(
            &v.vault,
            &p.manifest,
            disk,
            &target,
            &restore_options(job),
        )?;
        hand_out_stats(stats, s)?;
        Ok(())
    }
}

/// Verifies the whole vault (`vm` and `point_id` NULL), one VM's points
/// (`point_id` NULL) or one point (id, unique prefix or `latest`). Damage
/// does not fail the call: it is listed in the report, which the caller
/// frees with `vmb_verify_report_free`.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_verify(
    vault: *const vmb_vault,
    vm: *const c_char,
    point_id: *const c_char,
    job: *const vmb_job,
    out: *mut *mut vmb_verify_report,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let out = arg_out!(out, "out");
        let mut o = VerifyOptions::default();
        if !vm.is_null() {
            o.vm = Some(arg_str!(vm, "vm name").to_string());
        }
        if !point_id.is_null() {
            o.point = Some(arg_str!(point_id, "point id").to_string());
        }
        let s = settings(job);
        o.progress = s.progress;
        o.cancel = s.cancel;
        let report = backup_core::verify(&v.vault, &o)?;
        write_out!(out, Box::into_raw(Box::new(vmb_verify_report::new(report))));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_vault_handle_may_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<super::vmb_vault>();
    }
}

crate::extensible::extensible!(vmb_restore_stats, seconds: f64);

crate::extensible::extensible!(vmb_key, kdf_iterations: u32);

crate::extensible::extensible!(vmb_vault_options, direct_io: bool);
