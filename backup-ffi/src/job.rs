//! The job handle: the options of a backup, restore or verify, its progress
//! callback, and the cancel switch another thread may flip.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use backup_core::{CancelToken, Consistency, Progress};

use crate::status::{Failure, FfiResult, arg_out, arg_ref, ffi, ffi_free, vmb_status, write_out};

/// A consistency level: one of the `VMB_CONSISTENCY_*` values.
pub type vmb_consistency = u32;
/// The disks as they were at one instant, as after a power cut.
pub const VMB_CONSISTENCY_CRASH: vmb_consistency = 0;
/// File systems were frozen around the snapshot.
pub const VMB_CONSISTENCY_FILESYSTEM: vmb_consistency = 1;
/// Applications flushed their state (VSS, pre/post scripts) and file systems
/// were frozen.
pub const VMB_CONSISTENCY_APPLICATION: vmb_consistency = 2;

pub(crate) fn consistency_from_c(c: vmb_consistency) -> FfiResult<Consistency> {
    match c {
        VMB_CONSISTENCY_CRASH => Ok(Consistency::Crash),
        VMB_CONSISTENCY_FILESYSTEM => Ok(Consistency::FileSystem),
        VMB_CONSISTENCY_APPLICATION => Ok(Consistency::Application),
        other => Err(Failure::invalid(format!(
            "consistency {other} is not one of VMB_CONSISTENCY_CRASH (0), _FILESYSTEM (1), _APPLICATION (2)"
        ))),
    }
}

pub(crate) fn consistency_to_c(c: Consistency) -> vmb_consistency {
    match c {
        Consistency::Crash => VMB_CONSISTENCY_CRASH,
        Consistency::FileSystem => VMB_CONSISTENCY_FILESYSTEM,
        Consistency::Application => VMB_CONSISTENCY_APPLICATION,
    }
}

/// Progress callback: `done` of `total` bytes are processed. Return 0 to go
/// on, anything else to cancel the job (nothing is committed then).
///
/// Called from the library's worker threads (a rayon pool), **several at
/// once**, and also from the thread that started the job: it must be
/// thread-safe and quick. `done` may be reported out of order by different
/// threads; it only grows within one thread. It must not call back into
/// the library with the same job, and must not throw or `longjmp`.
pub type vmb_progress_fn = Option<unsafe extern "C" fn(userdata: *mut c_void, done: u64, total: u64) -> c_int>;

/// The host's callback and its userdata, handed to worker threads.
#[derive(Clone, Copy)]
pub(crate) struct HostProgress {
    pub callback: unsafe extern "C" fn(*mut c_void, u64, u64) -> c_int,
    pub userdata: *mut c_void,
}

// SAFETY: the header's contract for `vmb_progress_fn` is that the callback
// and its userdata may be used from any thread, several at once.
unsafe impl Send for HostProgress {}
// SAFETY: as above.
unsafe impl Sync for HostProgress {}

struct JobSettings {
    consistency: Consistency,
    min_consistency: Consistency,
    block_size: u32,
    instant_restore_days: u32,
    progress: Option<HostProgress>,
}

/// A job: how a backup, restore or verify runs, and a switch to cancel it.
///
/// One job may be passed to several calls one after another; a job that was
/// cancelled stays cancelled (make a new one). `vmb_job_cancel` is
/// thread-safe; the setters must not race with a call that is using the
/// job.
pub struct vmb_job {
    settings: Mutex<JobSettings>,
    cancel: CancelToken,
}

/// Adapts the host's callback to the engine's [`Progress`].
struct Reporter {
    host: HostProgress,
    cancel: CancelToken,
    // Atomics: the engine reports from several worker threads at once.
    done: AtomicU64,
    total: AtomicU64,
}

impl Reporter {
    fn call(&self, done: u64) {
        let total = self.total.load(Ordering::Relaxed);
        // SAFETY: the callback and userdata come from the host through
        // `vmb_job_set_progress`, whose contract allows calls from any
        // thread.
        let r = unsafe { (self.host.callback)(self.host.userdata, done, total) };
        if r != 0 {
            self.cancel.cancel();
        }
    }
}

impl Progress for Reporter {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.call(0);
    }
    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.call(done);
    }
}

/// What an operation takes from a job (or from no job).
pub(crate) struct RunSettings {
    pub consistency: Consistency,
    pub min_consistency: Consistency,
    pub block_size: u32,
    pub instant_restore_days: u32,
    pub progress: Arc<dyn Progress>,
    pub cancel: CancelToken,
}

pub(crate) fn settings(job: *const vmb_job) -> RunSettings {
    // SAFETY: NULL means no job; otherwise the C contract is a live job
    // from `vmb_job_new`.
    let Some(job) = (unsafe { job.as_ref() }) else {
        return RunSettings {
            consistency: Consistency::Crash,
            min_consistency: Consistency::Crash,
            block_size: backup_core::DEFAULT_BLOCK_SIZE,
            instant_restore_days: 0,
            progress: Arc::new(backup_core::NoProgress),
            cancel: CancelToken::new(),
        };
    };
    let s = job.settings.lock().unwrap_or_else(|p| p.into_inner());
    let progress: Arc<dyn Progress> = match s.progress {
        Some(host) => {
            Arc::new(Reporter { host, cancel: job.cancel.clone(), done: AtomicU64::new(0), total: AtomicU64::new(0) })
        }
        None => Arc::new(backup_core::NoProgress),
    };
    RunSettings {
        consistency: s.consistency,
        min_consistency: s.min_consistency,
        block_size: s.block_size,
        instant_restore_days: s.instant_restore_days,
        progress,
        cancel: job.cancel.clone(),
    }
}

/// Creates a job with default settings: crash consistency, 64 KiB blocks,
/// no progress callback. Free it with `vmb_job_free`.
///
/// # Safety
/// `out` must point to writable memory for one pointer.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_new(out: *mut *mut vmb_job) -> vmb_status {
    ffi! {
        let out = arg_out!(out, "out");
        let job = Box::new(vmb_job {
            settings: Mutex::new(JobSettings {
                consistency: Consistency::Crash,
                min_consistency: Consistency::Crash,
                block_size: backup_core::DEFAULT_BLOCK_SIZE,
                instant_restore_days: 0,
                progress: None,
            }),
            cancel: CancelToken::new(),
        });
        write_out!(out, Box::into_raw(job));
        Ok(())
    }
}

/// Frees a job. NULL is ignored. The job must not be in use by a call.
///
/// # Safety
/// `job` is NULL or a job from `vmb_job_new` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_free(job: *mut vmb_job) {
    ffi_free! {
        if !job.is_null() {
            // SAFETY: from `Box::into_raw` in `vmb_job_new`, freed once.
            drop(unsafe { Box::from_raw(job) });
        }
    }
}

/// Sets the consistency a backup asks of its snapshot provider.
///
/// # Safety
/// `job` is NULL or a live job.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_set_consistency(job: *mut vmb_job, consistency: vmb_consistency) -> vmb_status {
    ffi! {
        let job = arg_ref!(job, "job");
        let c = consistency_from_c(consistency)?;
        job.settings.lock().unwrap_or_else(|p| p.into_inner()).consistency = c;
        Ok(())
    }
}

/// Sets the weakest consistency a backup accepts (`VMB_CONSISTENCY_CRASH`,
/// the default, accepts all): a backup whose snapshot would fall below it
/// fails with `VMB_ERR_PROVIDER` and commits nothing. Above it, a point
/// that got less than `vmb_job_set_consistency` asked for carries a
/// warning saying so (`vmb_point_warning`).
///
/// # Safety
/// `job` is NULL or a live job.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_set_min_consistency(job: *mut vmb_job, consistency: vmb_consistency) -> vmb_status {
    ffi! {
        let job = arg_ref!(job, "job");
        let c = consistency_from_c(consistency)?;
        job.settings.lock().unwrap_or_else(|p| p.into_inner()).min_consistency = c;
        Ok(())
    }
}

/// Sets the block size of a disk's first backup (a power of two from 16 KiB
/// to 4 MiB; a disk keeps its chain's block size after that).
///
/// # Safety
/// `job` is NULL or a live job.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_set_block_size(job: *mut vmb_job, block_size: u32) -> vmb_status {
    ffi! {
        let job = arg_ref!(job, "job");
        backup_core::check_block_size(block_size)?;
        job.settings.lock().unwrap_or_else(|p| p.into_inner()).block_size = block_size;
        Ok(())
    }
}

/// Sets the days a backup keeps its snapshot after the job for instant
/// restore (0, the default, releases it at once; at most 30). Only a
/// snapshot that outlives the job can be kept: reflink clones of image
/// files. Otherwise the backup succeeds with the vault tier only. See
/// `vmb_vault_point_tiers` and `vmb_vault_release_expired`.
///
/// # Safety
/// `job` is NULL or a live job.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_set_instant_restore_days(job: *mut vmb_job, days: u32) -> vmb_status {
    ffi! {
        let job = arg_ref!(job, "job");
        backup_core::check_instant_restore_days(days)?;
        job.settings.lock().unwrap_or_else(|p| p.into_inner()).instant_restore_days = days;
        Ok(())
    }
}

/// Sets (or, with a NULL callback, removes) the progress callback.
/// `userdata` is passed to it untouched and must stay valid while the job
/// runs.
///
/// # Safety
/// `job` is NULL or a live job; `callback` follows `vmb_progress_fn`'s rules.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_set_progress(
    job: *mut vmb_job,
    callback: vmb_progress_fn,
    userdata: *mut c_void,
) -> vmb_status {
    ffi! {
        let job = arg_ref!(job, "job");
        job.settings.lock().unwrap_or_else(|p| p.into_inner()).progress =
            callback.map(|callback| HostProgress { callback, userdata });
        Ok(())
    }
}

/// Asks every call running with this job to stop, as soon as it can;
/// they return `VMB_ERR_CANCELLED` and commit nothing. Thread-safe: may be
/// called from any thread, at any time, while another thread runs the job.
///
/// # Safety
/// `job` is NULL or a live job.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_cancel(job: *const vmb_job) -> vmb_status {
    ffi! {
        arg_ref!(job, "job").cancel.cancel();
        Ok(())
    }
}

/// Whether the job was cancelled (by `vmb_job_cancel` or its progress
/// callback).
///
/// # Safety
/// `job` is NULL or a live job; `out` points to a writable bool.
#[must_use]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmb_job_is_cancelled(job: *const vmb_job, out: *mut bool) -> vmb_status {
    ffi! {
        let job = arg_ref!(job, "job");
        let out = arg_out!(out, "out");
        write_out!(out, job.cancel.is_cancelled());
        Ok(())
    }
}
