//! Runs an engine call off the calling thread, with the GIL released, while
//! the calling thread reports progress and watches for Ctrl-C.
//!
//! The calling thread waits on a channel in slices of [`TICK`]. Between
//! slices it takes the GIL, runs Python's signal handlers
//! (`PyErr_CheckSignals`: Ctrl-C raises `KeyboardInterrupt` there) and, at
//! most every [`THROTTLE`], calls `progress(done_bytes, total_bytes)`. A
//! Python exception from either trips the job's `CancelToken`; the job then
//! stops at its next check, commits nothing, and the Python exception is
//! raised rather than the core's `Cancelled`.
//!
//! The last call, `progress(total, total)`, is a rendezvous: the engine
//! thread that finishes the last bytes waits until the calling thread has
//! made that call. A backup checks its cancel token after the transfer and
//! before it commits, so an exception from that last call still cancels
//! the backup.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_core::{CancelToken, Progress};
use pyo3::prelude::*;

use crate::errors::{new_error, to_py};

/// How long the calling thread waits with the GIL released before it looks
/// at signals and progress again: the latency of Ctrl-C.
const TICK: Duration = Duration::from_millis(20);
/// The least time between two progress calls.
const THROTTLE: Duration = Duration::from_millis(100);

/// A message from the engine to the calling thread.
enum Event {
    /// The last bytes are done; report them, then answer on the sender.
    Final(Sender<()>),
}

/// The engine's progress, counted for the calling thread to read.
struct Reporter {
    total: AtomicU64,
    done: AtomicU64,
    started: AtomicBool,
    final_sent: AtomicBool,
    /// Whether a Python callback waits for the rendezvous.
    rendezvous: bool,
    events: Mutex<Sender<Event>>,
}

impl Progress for Reporter {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
        self.started.store(true, Ordering::SeqCst);
    }

    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let total = self.total.load(Ordering::SeqCst);
        if self.rendezvous && total > 0 && done >= total && !self.final_sent.swap(true, Ordering::SeqCst) {
            let (ack, acked) = channel();
            let sent = self.events.lock().unwrap_or_else(|p| p.into_inner()).send(Event::Final(ack));
            if sent.is_ok() {
                // Err only when the calling thread dropped the answer
                // sender without sending: nothing left to wait for.
                let _ = acked.recv();
            }
        }
    }
}

/// What the calling thread knows while the job runs.
struct Watch<'a> {
    callback: Option<&'a Py<PyAny>>,
    reporter: &'a Reporter,
    cancel: &'a CancelToken,
    /// The first Python exception: raised once the job ended.
    error: Option<PyErr>,
    last_call: Option<Instant>,
    last_values: Option<(u64, u64)>,
}

impl Watch<'_> {
    fn fail(&mut self, e: PyErr) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        self.cancel.cancel();
    }

    /// Checks for signals and calls the callback when it is due (or when
    /// `force`d for the last bytes). Needs the GIL.
    fn tick(&mut self, py: Python<'_>, force: bool) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = py.check_signals() {
            self.fail(e);
            return;
        }
        let Some(cb) = self.callback else { return };
        if !self.reporter.started.load(Ordering::SeqCst) {
            return;
        }
        let values = (self.reporter.done.load(Ordering::SeqCst), self.reporter.total.load(Ordering::SeqCst));
        let due = force || self.last_call.is_none_or(|t| t.elapsed() >= THROTTLE);
        if !due || self.last_values == Some(values) {
            return;
        }
        self.last_call = Some(Instant::now());
        self.last_values = Some(values);
        if let Err(e) = cb.call1(py, values) {
            self.fail(e);
        }
    }
}

/// Runs `job` on a worker thread with the GIL released and returns its
/// result; see the module doc.
///
/// # Errors
/// The Python exception raised by `progress` or by a signal handler (such
/// as `KeyboardInterrupt`), else the job's error as its Python exception.
pub(crate) fn run<T, F>(py: Python<'_>, progress: Option<Py<PyAny>>, job: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce(Arc<dyn Progress>, CancelToken) -> backup_core::Result<T> + Send,
{
    let cancel = CancelToken::new();
    let (tx, rx) = channel();
    let reporter = Arc::new(Reporter {
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        started: AtomicBool::new(false),
        final_sent: AtomicBool::new(false),
        rendezvous: progress.is_some(),
        events: Mutex::new(tx),
    });
    // The callback is only borrowed, so that it is dropped here, with the
    // GIL held; the receiver moves in (it is not `Sync`).
    let outcome = py.detach(|| {
        let rx = rx;
        std::thread::scope(|s| {
            let handle = {
                let reporter: Arc<dyn Progress> = reporter.clone();
                let cancel = cancel.clone();
                std::thread::Builder::new().name("vmbackup-job".into()).spawn_scoped(s, move || job(reporter, cancel))
            };
            let handle = match handle {
                Ok(h) => h,
                Err(e) => return Outcome::Spawn(e),
            };
            let mut watch = Watch {
                callback: progress.as_ref(),
                reporter: &reporter,
                cancel: &cancel,
                error: None,
                last_call: None,
                last_values: None,
            };
            wait(&rx, &handle, &mut watch);
            let result = handle.join();
            Outcome::Joined(result, watch.error)
        })
    });
    match outcome {
        Outcome::Spawn(e) => Err(e.into()),
        Outcome::Joined(_, Some(pyerr)) => Err(pyerr),
        Outcome::Joined(Ok(Ok(v)), None) => Ok(v),
        Outcome::Joined(Ok(Err(e)), None) => Err(to_py(py, e)),
        Outcome::Joined(Err(panic), None) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(new_error(py, "VmBackupError", (format!("internal error in the vmbackup engine: {what}"),), &[]))
        }
    }
}

enum Outcome<T> {
    Spawn(std::io::Error),
    Joined(std::thread::Result<backup_core::Result<T>>, Option<PyErr>),
}

/// The calling thread's loop: wait a tick without the GIL, then take it
/// for signals and progress, until the job's thread has ended.
fn wait<T>(rx: &Receiver<Event>, handle: &std::thread::ScopedJoinHandle<'_, T>, watch: &mut Watch<'_>) {
    loop {
        let event = rx.recv_timeout(TICK);
        let finished = handle.is_finished();
        match event {
            Ok(Event::Final(ack)) => {
                Python::attach(|py| watch.tick(py, true));
                let _ = ack.send(());
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                if !finished {
                    Python::attach(|py| watch.tick(py, false));
                }
            }
        }
        if finished {
            return;
        }
    }
}

/// A restore's options reporting to a job's progress and stopped by its
/// cancel token (what `run` hands its closure).
pub(crate) fn restore_options(progress: Arc<dyn Progress>, cancel: CancelToken) -> backup_core::RestoreOptions {
    let mut o = backup_core::RestoreOptions::default();
    o.progress = progress;
    o.cancel = cancel;
    o
}
