//! A progress bar on stderr when it is a terminal; nothing otherwise.

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
