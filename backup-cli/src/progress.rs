//! A progress bar on stderr when it is a terminal; nothing (or plain lines,
//! for long jobs) otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use backup_core::{NoProgress, Progress};
use indicatif::{ProgressBar, ProgressStyle};

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn warn(&self, message: &str) {
        self.0.suspend(|| eprintln!("warning: {message}"));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A bar labelled `what` if stderr is a terminal, else a silent reporter.
pub fn bar(what: &str) -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(NoProgress);
    }
    let pb = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg:8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    Arc::new(Bar(pb))
}

/// Lines on stderr when it is not a terminal: each message, and the
/// progress at every tenth of the total. Long jobs whose output goes to a
/// log (an instant recovery under a service manager) still show progress.
struct Lines {
    what: String,
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl Progress for Lines {
    fn start(&self, total: u64) {
        self.total.store(total, std::sync::atomic::Ordering::Relaxed);
        self.done.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.total.load(Relaxed).max(1);
        let before = self.done.fetch_add(bytes, Relaxed);
        let (a, b) = (before * 10 / total, (before + bytes) * 10 / total);
        if b > a {
            eprintln!("{}: {}%", self.what, (b * 10).min(100));
        }
    }
    fn warn(&self, message: &str) {
        eprintln!("{message}");
    }
}

/// A bar if stderr is a terminal, else [`Lines`].
pub fn bar_or_lines(what: &str) -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        return bar(what);
    }
    Arc::new(Lines { what: what.to_string(), total: 0.into(), done: 0.into() })
}
