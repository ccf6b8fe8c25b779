//! The command's output on stdout. `println!` panics when the reader has
//! gone away (`vmbackup list | head`); [`outln!`] instead ends the command
//! quietly with status 0, as ripgrep and the other Unix tools do, and any
//! other write error ends it with a message and status 1. Output is
//! printed once the work it reports is done (a point is committed before
//! its id is printed), so stopping there loses nothing.

/// `println!` to stdout, ending the process when stdout is gone.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::output::write_failed(e);
        }
    }};
}

pub(crate) use outln;

/// Ends the process after stdout failed.
pub(crate) fn write_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("vmbackup: error: cannot write to standard output: {e}");
    std::process::exit(1);
}
