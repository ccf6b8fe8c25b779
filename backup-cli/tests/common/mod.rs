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
