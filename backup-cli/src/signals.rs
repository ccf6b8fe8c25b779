//! SIGINT and SIGTERM take the cancel path, in every command that runs long.
//!
//! A backup killed by a signal's default action would leave what only its
//! cancel path undoes: a pre-script running and its post-script never run,
//! a reflink clone beside the image, a restore's temporary file. So the
//! long commands install one handler (it only sets a flag: async-signal-
//! safe) that cancels the command's [`CancelToken`] at once. The command then unwinds as a cancel does: scripts are
//! killed and the post-script runs, file systems are thawed, the snapshot
//! is released, nothing is committed, and vmbackup exits with status 1.
//!
//! A second signal while the cancel path runs changes nothing: the thaw and
//! the post-script are worth waiting for. `SIGKILL` cannot be caught; what
//! a killed run leaves is cleaned by the next one (and frozen file systems
//! are thawed by the freeze's guardian process).

use backup_core::CancelToken;
use std::sync::atomic::{AtomicBool, Ordering};

static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// The token the handler cancels, set before the handler is installed.
static TOKEN: std::sync::OnceLock<CancelToken> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    // Atomic stores only (a OnceLock that is already set is read without a
    // lock): async-signal-safe. Cancelling here, not in a polling thread,
    // means no block of work starts after the signal.
    SIGNALLED.store(true, Ordering::SeqCst);
    if let Some(t) = TOKEN.get() {
        t.cancel();
    }
}

/// Whether SIGINT or SIGTERM arrived since [`cancel_on_signals`].
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Installs the handlers and returns a token that is cancelled when
/// SIGINT or SIGTERM arrives.
pub fn cancel_on_signals() -> CancelToken {
    let cancel = TOKEN.get_or_init(CancelToken::new).clone();
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; signal() has no other preconditions.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }
    cancel
}
