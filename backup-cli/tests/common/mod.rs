//! The `vmbackup` binary under test, run as a user runs it (shared by the
//! command-line test files; `testkit` has the general helpers).
#![allow(dead_code)] // each test file uses some of these

use std::process::Output;

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_vmbackup");

/// Runs `vmbackup ARGS`, whatever its exit status.
pub fn run(args: &[&str]) -> Output {
    testkit::output(BIN, args)
}

/// Runs `vmbackup ARGS`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    testkit::run(BIN, args)
}

/// Runs `vmbackup ARGS`, which must succeed and print one JSON value.
pub fn json(args: &[&str]) -> serde_json::Value {
    testkit::json(BIN, args)
}

/// A running `vmbackup mount`: stopped with SIGTERM on [`Mount::stop`] or
/// drop (then unmounted by force if it did not unmount itself).
pub struct Mount {
    pub child: std::process::Child,
    pub at: std::path::PathBuf,
}

impl Mount {
    /// Starts `cmd` (a `vmbackup mount` command, mounting at `at`) and
    /// waits until `at` shows `expect` (a path inside it).
    pub fn start(mut cmd: std::process::Command, at: &std::path::Path, expect: &str) -> Mount {
        std::fs::create_dir_all(at).expect("mountpoint");
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("start vmbackup mount");
        let mut m = Mount { child, at: at.to_path_buf() };
        let start = std::time::Instant::now();
        while !at.join(expect).exists() {
            if let Ok(Some(status)) = m.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = m.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("vmbackup mount exited ({status}) before {expect} appeared: {err}");
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(60), "{expect} did not appear in the mount");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        m
    }

    /// Sends SIGTERM and waits: its exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.stop_now()
    }

    fn stop_now(&mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill with a valid pid and signal has no memory effects.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().expect("wait for vmbackup mount");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status, err)
    }

    /// Whether the kernel lists it as mounted.
    pub fn is_mounted(at: &std::path::Path) -> bool {
        let at = std::fs::canonicalize(at).unwrap_or_else(|_| at.to_path_buf());
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&*at.to_string_lossy()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop_now();
        }
        if Mount::is_mounted(&self.at) {
            let _ = testkit::sh("fusermount3", &["-u", "-z", &self.at.to_string_lossy()]);
        }
    }
}
