//! Files out of a point from C: a vault mounted read-only
//! (`vmb_vault_mount`), a guest disk's volumes (`vmb_guest_disk_*`), a
//! guest file system's entries and files (`vmb_guest_fs_*`), and which
//! points hold a file (`vmb_vault_find_files`).

use std::ffi::{CString, c_char, c_int, c_void};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use backup_core::{FileEntry, FileKind, GuestDisk, GuestFs, MountSelection, MountedVault};

use crate::point::vmb_point;
use crate::status::{Failure, FfiResult, arg_out, arg_ref, arg_str, ffi, ffi_free, vmb_status, write_out};
use crate::vault::vmb_vault;

/// A NULL-or-UTF-8 string argument.
fn opt_str<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL; the C contract is a NUL-terminated string alive for
    // the call.
    let c = unsafe { std::ffi::CStr::from_ptr(p) };
    crate::status::utf8(c, what).map(Some)
}

fn cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

/// A vault mounted read-only as `VM/POINT/DISK.img` (FUSE), until
/// `vmb_mount_unmount`.
pub struct vmb_mount {
    mounted: Option<MountedVault>,
}

/// Mounts the points of `vault` at `mountpoint` (an empty folder): all of
/// them (`vm` NULL), a VM's (`point` NULL), or one point (an id, a prefix,
/// or "latest"). Reads are served by a thread of this process, checked as
/// they are made; a damaged range fails that read with `EIO`. The mount
/// holds the vault's shared lock. Needs `/dev/fuse` (and `fusermount3`).
///
/// # Errors
/// `VMB_ERR_NOT_FOUND` for an unknown VM or point; `VMB_ERR_IO` when the
/// kernel refuses the mount; `VMB_ERR_INVALID_ARGUMENT` for a point
/// without a VM.
///
/// # Safety
/// Pointers are NULL (where allowed) or live/NUL-terminated/writable as
/// their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_mount(
    vault: *const vmb_vault,
    mountpoint: *const c_char,
    vm: *const c_char,
    point: *const c_char,
    out: *mut *mut vmb_mount,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let at = arg_str!(mountpoint, "mountpoint");
        let selection = MountSelection { vm: opt_str(vm, "vm")?.map(String::from), point: opt_str(point, "point")?.map(String::from) };
        let out = arg_out!(out, "out");
        let mounted = MountedVault::mount(v.vault.clone(), Path::new(at), &selection)?;
        write_out!(out, Box::into_raw(Box::new(vmb_mount { mounted: Some(mounted) })));
        Ok(())
    }
}

/// Whether the mount is still in place (false once someone else unmounted
/// it); false for NULL.
///
/// # Safety
/// `mount` is NULL or a live mount.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_mount_is_mounted(mount: *const vmb_mount) -> bool {
    if mount.is_null() {
        return false;
    }
    // SAFETY: not NULL, and live by the C contract.
    unsafe { &*mount }.mounted.as_ref().is_some_and(MountedVault::is_mounted)
}

/// Unmounts and frees the mount, releasing the vault's lock. NULL is
/// VMB_OK. When the kernel refuses (a file in it is open: `VMB_ERR_IO`),
/// the handle is freed all the same and the mount goes when its last file
/// closes.
///
/// # Safety
/// `mount` is NULL or a mount from `vmb_vault_mount`, not used again.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_mount_unmount(mount: *mut vmb_mount) -> vmb_status {
    ffi! {
        if mount.is_null() {
            return Ok(());
        }
        // SAFETY: from `Box::into_raw`, freed once (the C contract).
        let mut m = unsafe { Box::from_raw(mount) };
        if let Some(mounted) = m.mounted.take() {
            mounted.unmount()?;
        }
        Ok(())
    }
}

/// A volume of a guest disk. Its strings live as long as the disk handle.
#[repr(C)]
pub struct vmb_volume {
    /// How paths name it: "p1", "vg/lv", or "disk".
    pub name: *const c_char,
    /// What it holds: "ext4", "xfs", "vfat", "LVM2_member", "swap",
    /// "unknown".
    pub fs_type: *const c_char,
    /// Its size in bytes.
    pub size: u64,
    /// Its label (or GPT partition name); NULL when it has none.
    pub label: *const c_char,
    /// Whether its files can be read (`vmb_guest_fs_open`).
    pub has_files: bool,
}

/// One disk of a point, its partitions and LVM volumes found.
pub struct vmb_guest_disk {
    disk: GuestDisk,
    strings: Vec<(CString, CString, Option<CString>)>,
}

/// Opens disk `disk` (its name) of `point` and finds its volumes: GPT or
/// MBR partitions, LVM logical volumes (read by vmbackup, never by the
/// host's LVM), or the whole disk. Holds the vault's shared lock until
/// closed.
///
/// ```c
/// struct vmb_guest_disk *gd = NULL;
/// if (vmb_guest_disk_open(vault, point, "vda", &gd) == VMB_OK) {
///     size_t n = vmb_guest_disk_volume_count(gd);
///     for (size_t i = 0; i < n; i++) {
///         struct vmb_volume v;
///         if (vmb_guest_disk_volume(gd, i, &v) == VMB_OK)
///             printf("%s %s %llu %s\n", v.name, v.fs_type, (unsigned long long)v.size, v.label ? v.label : "");
///     }
///     vmb_guest_disk_close(gd);
/// }
/// ```
///
/// # Errors
/// `VMB_ERR_NOT_FOUND` for an unknown disk; `VMB_ERR_GUEST` for a
/// partition table or LVM metadata that cannot be read.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_disk_open(
    vault: *const vmb_vault,
    point: *const vmb_point,
    disk: *const c_char,
    out: *mut *mut vmb_guest_disk,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let p = arg_ref!(point, "point");
        let disk = p.disk_named(arg_str!(disk, "disk"))?;
        let out = arg_out!(out, "out");
        let gd = GuestDisk::open(v.vault.clone(), &p.manifest, disk)?;
        let strings = gd
            .volumes()
            .iter()
            .map(|v| (cstring(&v.name), cstring(v.fs.name()), v.label.as_deref().map(cstring)))
            .collect();
        write_out!(out, Box::into_raw(Box::new(vmb_guest_disk { disk: gd, strings })));
        Ok(())
    }
}

/// How many volumes the disk has; 0 for NULL.
///
/// # Safety
/// `disk` is NULL or a live guest disk.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_disk_volume_count(disk: *const vmb_guest_disk) -> usize {
    if disk.is_null() {
        return 0;
    }
    // SAFETY: not NULL, and live by the C contract.
    unsafe { &*disk }.strings.len()
}

/// Fills `*out` with volume `index` (from 0).
///
/// # Errors
/// `VMB_ERR_INVALID_ARGUMENT` for an index past the last volume.
///
/// # Safety
/// Pointers are NULL or live/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_disk_volume(
    disk: *const vmb_guest_disk,
    index: usize,
    out: *mut vmb_volume,
) -> vmb_status {
    ffi! {
        let d = arg_ref!(disk, "disk");
        let out = arg_out!(out, "out");
        let v = crate::status::nth(d.disk.volumes(), index, "volume", "disk")?;
        let (name, fs, label) = &d.strings[index];
        write_out!(out, vmb_volume {
            name: name.as_ptr(),
            fs_type: fs.as_ptr(),
            size: v.size,
            label: label.as_ref().map_or(std::ptr::null(), |l| l.as_ptr()),
            has_files: v.fs.has_files(),
        });
        Ok(())
    }
}

/// Closes a guest disk. NULL is ignored. File systems opened from it stay
/// usable until closed.
///
/// # Safety
/// `disk` is NULL or a disk from `vmb_guest_disk_open`, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_disk_close(disk: *mut vmb_guest_disk) {
    ffi_free! {
        if !disk.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(disk) });
        }
    }
}

/// A guest file system opened read-only. Thread-safe: calls are served one
/// at a time.
pub struct vmb_guest_fs {
    fs: Mutex<GuestFs>,
}

/// What a directory entry is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum vmb_file_kind {
    /// A regular file.
    VMB_FILE_REGULAR = 0,
    /// A folder.
    VMB_FILE_DIR = 1,
    /// A symbolic link.
    VMB_FILE_SYMLINK = 2,
    /// A device, FIFO or socket.
    VMB_FILE_OTHER = 3,
}

/// A file, folder or link in a guest file system. Its strings live only
/// during the callback that receives it.
#[repr(C)]
pub struct vmb_file_entry {
    /// Its absolute path in the guest ("/etc/fstab").
    pub path: *const c_char,
    /// What it is.
    pub kind: vmb_file_kind,
    /// Its size in bytes.
    pub size: u64,
    /// Its permission bits, with set-uid, set-gid and sticky (07777).
    pub mode: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its modification time: seconds since 1970 (UTC)...
    pub mtime_sec: i64,
    /// ...and nanoseconds.
    pub mtime_nsec: u32,
    /// Where a link points; NULL for anything else.
    pub target: *const c_char,
}

/// Called for each entry; return 0 to go on, anything else to stop (the
/// call then returns `VMB_ERR_CANCELLED`).
pub type vmb_entry_fn = Option<unsafe extern "C" fn(entry: *const vmb_file_entry, ctx: *mut c_void) -> c_int>;

/// Hands `e` to `f` as a `vmb_file_entry`; Err when `f` asked to stop.
fn call_entry(
    f: unsafe extern "C" fn(*const vmb_file_entry, *mut c_void) -> c_int,
    ctx: *mut c_void,
    e: &FileEntry,
) -> FfiResult {
    // SAFETY: the host's callback, called as its type says with an entry
    // whose strings live until it returns.
    with_entry(e, |entry| unsafe { f(entry, ctx) })
}

impl vmb_guest_fs {
    fn lock(&self) -> FfiResult<std::sync::MutexGuard<'_, GuestFs>> {
        self.fs
            .lock()
            .map_err(|_| Failure::new(vmb_status::VMB_ERR_PANIC, "the file system was poisoned by an earlier panic"))
    }
}

/// Opens the file system of volume `volume` ("p1", "vg/lv", "disk") of a
/// guest disk, read-only. FAT needs no privileges; ext2/3/4 and XFS are
/// mounted by the kernel (read-only, journal not replayed) and need root.
///
/// # Errors
/// `VMB_ERR_NOT_FOUND` for an unknown volume; `VMB_ERR_GUEST` for a volume
/// without a file system read here, or ext4/XFS without root.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated/writable as their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_fs_open(
    disk: *const vmb_guest_disk,
    volume: *const c_char,
    out: *mut *mut vmb_guest_fs,
) -> vmb_status {
    ffi! {
        let d = arg_ref!(disk, "disk");
        let volume = arg_str!(volume, "volume");
        let out = arg_out!(out, "out");
        let fs = d.disk.open_fs(volume)?;
        write_out!(out, Box::into_raw(Box::new(vmb_guest_fs { fs: Mutex::new(fs) })));
        Ok(())
    }
}

/// Calls `each` for every entry of folder `path` (sorted by name; a path
/// that is not a folder: for it alone), or, with `recursive`, for `path`
/// and everything under it, parents first. Links are never followed.
///
/// # Errors
/// `VMB_ERR_NOT_FOUND` for a missing path; `VMB_ERR_CANCELLED` when the
/// callback stopped it.
///
/// # Safety
/// Pointers are NULL or live/NUL-terminated as their types say; `each` is
/// a valid function; `ctx` is passed to it as is.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_fs_list(
    fs: *const vmb_guest_fs,
    path: *const c_char,
    recursive: bool,
    each: vmb_entry_fn,
    ctx: *mut c_void,
) -> vmb_status {
    ffi! {
        let f = arg_ref!(fs, "fs");
        let path = Path::new(arg_str!(path, "path"));
        let Some(each) = each else { return Err(Failure::null("each")) };
        let fs = f.lock()?;
        if recursive {
            let mut stopped = None;
            let r = fs.walk(path, &mut |e| {
                call_entry(each, ctx, e).map_err(|f| {
                    stopped = Some(f);
                    backup_core::Error::Cancelled { what: "listing".into() }
                })
            });
            if let Some(f) = stopped {
                return Err(f);
            }
            r?;
        } else {
            for e in fs.list(path)? {
                call_entry(each, ctx, &e)?;
            }
        }
        Ok(())
    }
}

/// Called with each piece of a file's content, in order; return 0 to go
/// on, anything else to stop (the call then returns `VMB_ERR_CANCELLED`).
pub type vmb_data_fn = Option<unsafe extern "C" fn(data: *const u8, len: usize, ctx: *mut c_void) -> c_int>;

/// Reads file `path` (links followed inside the guest only), handing its
/// content to `each` in pieces of at most 1 MiB.
///
/// # Errors
/// `VMB_ERR_NOT_FOUND`; `VMB_ERR_GUEST` for a read that failed (naming the
/// vault's damaged bytes when that is why); `VMB_ERR_CANCELLED`.
///
/// # Safety
/// As `vmb_guest_fs_list`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_fs_read(
    fs: *const vmb_guest_fs,
    path: *const c_char,
    each: vmb_data_fn,
    ctx: *mut c_void,
) -> vmb_status {
    ffi! {
        let f = arg_ref!(fs, "fs");
        let path_str = arg_str!(path, "path");
        let Some(each) = each else { return Err(Failure::null("each")) };
        let fs = f.lock()?;
        let mut input = fs.open(Path::new(path_str))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input.read(&mut buf).map_err(|e| Failure::new(vmb_status::VMB_ERR_GUEST, format!("cannot read {path_str} in {}: {e}", fs.place())))?;
            if n == 0 {
                return Ok(());
            }
            // SAFETY: the host's callback, called as its type says; the
            // bytes live until it returns.
            if unsafe { each(buf.as_ptr(), n, ctx) } != 0 {
                return Err(Failure::new(vmb_status::VMB_ERR_CANCELLED, "the callback stopped the read"));
            }
        }
    }
}

/// What `vmb_guest_fs_extract` copied.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct vmb_extract_report {
    /// Regular files written.
    pub files: u64,
    /// Folders made.
    pub dirs: u64,
    /// Links made.
    pub links: u64,
    /// Devices, FIFOs and sockets left out.
    pub skipped: u64,
    /// Bytes of content written.
    pub bytes: u64,
}

/// Copies `path` (a file, link, or folder with all under it; "/" for the
/// whole file system) into folder `to` (made if missing), keeping modes,
/// times and, as root, owners. Nothing is overwritten and no name lands
/// outside `to`. `report` may be NULL.
///
/// # Errors
/// `VMB_ERR_IO` for the host's side (a file already there among them);
/// `VMB_ERR_GUEST` for a name that would leave `to`; `VMB_ERR_NOT_FOUND`.
///
/// # Safety
/// Pointers are NULL (where allowed) or live/NUL-terminated/writable as
/// their types say.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_fs_extract(
    fs: *const vmb_guest_fs,
    path: *const c_char,
    to: *const c_char,
    report: *mut vmb_extract_report,
) -> vmb_status {
    ffi! {
        let f = arg_ref!(fs, "fs");
        let path = arg_str!(path, "path");
        let to = arg_str!(to, "to");
        let r = f.lock()?.extract(Path::new(path), Path::new(to))?;
        if !report.is_null() {
            write_out!(report, vmb_extract_report { files: r.files, dirs: r.dirs, links: r.links, skipped: r.skipped, bytes: r.bytes });
        }
        Ok(())
    }
}

/// Closes a guest file system (unmounting what was mounted for it). NULL
/// is ignored.
///
/// # Safety
/// `fs` is NULL or a file system from `vmb_guest_fs_open`, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_guest_fs_close(fs: *mut vmb_guest_fs) {
    ffi_free! {
        if !fs.is_null() {
            // SAFETY: from `Box::into_raw`, freed once (the C contract).
            drop(unsafe { Box::from_raw(fs) });
        }
    }
}

/// Where `vmb_vault_find_files` found a file; strings live only during the
/// callback.
#[repr(C)]
pub struct vmb_found_file {
    /// The point's id.
    pub point: *const c_char,
    /// The disk's name.
    pub disk: *const c_char,
    /// The volume ("p1", "vg/lv", "disk").
    pub volume: *const c_char,
    /// The file.
    pub entry: vmb_file_entry,
}

/// Called for each file found; return 0 to go on, anything else to stop.
pub type vmb_found_fn = Option<unsafe extern "C" fn(found: *const vmb_found_file, ctx: *mut c_void) -> c_int>;

/// Calls `each` for every file, folder or link in every point of `vm`
/// (oldest first) whose path matches `pattern`: `*` and `?` wildcards,
/// against the whole path when the pattern has a `/`, else the name.
///
/// # Errors
/// As `vmb_guest_disk_open` and `vmb_guest_fs_open` (ext4 and XFS need
/// root); `VMB_ERR_CANCELLED` when the callback stopped it.
///
/// # Safety
/// As `vmb_guest_fs_list`.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_vault_find_files(
    vault: *const vmb_vault,
    vm: *const c_char,
    pattern: *const c_char,
    each: vmb_found_fn,
    ctx: *mut c_void,
) -> vmb_status {
    ffi! {
        let v = arg_ref!(vault, "vault");
        let vm = arg_str!(vm, "vm");
        let pattern = arg_str!(pattern, "pattern");
        let Some(each) = each else { return Err(Failure::null("each")) };
        for found in backup_core::find_files(&v.vault, vm, pattern)? {
            let (point, disk, volume) = (cstring(&found.point), cstring(&found.disk), cstring(&found.volume));
            // The entry, built as for a listing, then wrapped.
            let trampoline = |e: *const vmb_file_entry| {
                // SAFETY: `e` is the entry call_entry built, alive during this call.
                let entry = unsafe { std::ptr::read(e) };
                let f = vmb_found_file { point: point.as_ptr(), disk: disk.as_ptr(), volume: volume.as_ptr(), entry };
                // SAFETY: the host's callback, called as its type says.
                unsafe { each(&f, ctx) }
            };
            with_entry(&found.entry, trampoline)?;
        }
        Ok(())
    }
}

/// Builds the C entry for `e` (its strings alive during the call) and
/// hands it to `f`; a non-zero return is Err (`VMB_ERR_CANCELLED`).
fn with_entry(e: &FileEntry, f: impl FnOnce(*const vmb_file_entry) -> c_int) -> FfiResult {
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(e.path.as_os_str().as_bytes()).unwrap_or_default();
    let target = e.target.as_ref().map(|t| CString::new(t.as_os_str().as_bytes()).unwrap_or_default());
    let entry = vmb_file_entry {
        path: path.as_ptr(),
        kind: match e.kind {
            FileKind::File => vmb_file_kind::VMB_FILE_REGULAR,
            FileKind::Dir => vmb_file_kind::VMB_FILE_DIR,
            FileKind::Symlink => vmb_file_kind::VMB_FILE_SYMLINK,
            FileKind::Other => vmb_file_kind::VMB_FILE_OTHER,
        },
        size: e.size,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime_sec: e.mtime.as_second(),
        mtime_nsec: e.mtime.subsec_nanosecond().max(0) as u32,
        target: target.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
    };
    if f(&entry) != 0 {
        return Err(Failure::new(vmb_status::VMB_ERR_CANCELLED, "the callback asked to stop"));
    }
    Ok(())
}
