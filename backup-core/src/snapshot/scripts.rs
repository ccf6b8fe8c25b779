//! Pre- and post-snapshot scripts, configured the way users of Linux VM
//! backup already write them (`VMSnapshotScriptPluginConfig.json`).
//!
//! ```json
//! {
//!   "pluginName": "ScriptRunner",
//!   "preScriptLocation": "/etc/vmbackup/pre.sh",
//!   "postScriptLocation": "/etc/vmbackup/post.sh",
//!   "preScriptParams": ["--flush"],
//!   "postScriptParams": [],
//!   "preScriptNoOfRetries": 0,
//!   "postScriptNoOfRetries": 0,
//!   "timeoutInSeconds": 30,
//!   "continueBackupOnFailure": true,
//!   "fsFreezeEnabled": true,
//!   "ScriptsExecutionPollTimeSeconds": 2
//! }
//! ```
//!
//! | field | default | range |
//! |---|---|---|
//! | `pluginName` | `"ScriptRunner"` | any string (kept, not interpreted) |
//! | `preScriptLocation`, `postScriptLocation` | none | an absolute path, or `""` for none |
//! | `preScriptParams`, `postScriptParams` | `[]` | strings; empty strings are dropped |
//! | `preScriptNoOfRetries`, `postScriptNoOfRetries` | 0 | 0 to 10 |
//! | `timeoutInSeconds` | 30 | 1 to 1800, per attempt |
//! | `continueBackupOnFailure` | true | boolean |
//! | `fsFreezeEnabled` | true | boolean |
//! | `ScriptsExecutionPollTimeSeconds` | 2 | 1 to 5 |
//!
//! Field names match case-insensitively; unknown fields are ignored, so a
//! file written for another tool still loads. A value of the wrong type or
//! out of range is refused with an error naming the field.
//!
//! Two flaws of the scheme this copies are fixed: a retry really runs the
//! script again (a fresh process per attempt), and a script past its timeout
//! (or whose job is cancelled) is killed with everything it started: each
//! script leads a session of its own, and the runner keeps track of the
//! script's descendants while it runs (a child that calls `setsid` leaves
//! the session, not the tree), so at the end it kills the session and every
//! descendant it saw, stopping them first so that none forks away. The poll interval is the longest
//! the runner sleeps between checks; it notices a script's end at once when
//! the script closes its output.
//!
//! The configuration file and the scripts must be regular files owned by
//! the user running the backup and not writable by group or others, and so
//! must every folder on their path, up to `/` (owned by root or that user;
//! a folder writable by others passes only with its sticky bit set, as
//! `/tmp`, where no one else may rename what is in it). The path is
//! resolved once, links included, and every component of the resolved
//! path is checked, as OpenSSH and sudo do: no one but root and the user
//! can then swap a script or a folder for another program before it runs.
//! Checked when the file is loaded and again right before each script
//! runs. Each attempt's output (stdout and stderr, interleaved) is kept,
//! its last [`OUTPUT_LIMIT`] bytes, for the point's log.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The default timeout of one script attempt.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout a configuration may ask for, in seconds.
pub const MAX_SCRIPT_TIMEOUT_SECS: u64 = 1800;
/// The most retries a configuration may ask for.
pub const MAX_SCRIPT_RETRIES: u32 = 10;
/// How many bytes of each attempt's output are kept (the last ones).
pub const OUTPUT_LIMIT: usize = 64 << 10;

/// Pre/post scripts and how they run. Load one with
/// [`ScriptsConfig::load`]; hosts and tests may also start from
/// [`Default`] and set fields (a [`Duration`] timeout may then be shorter
/// than the file format's one second).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScriptsConfig {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    /// `pluginName`: kept for the log, not interpreted.
    pub plugin_name: String,
    /// `preScriptLocation`: run before the snapshot.
    pub pre_script: Option<PathBuf>,
    /// `postScriptLocation`: run after it, always once the pre-script ran.
    pub post_script: Option<PathBuf>,
    /// `preScriptParams`.
    pub pre_params: Vec<String>,
    /// `postScriptParams`.
    pub post_params: Vec<String>,
    /// `preScriptNoOfRetries`: attempts after the first.
    pub pre_retries: u32,
    /// `postScriptNoOfRetries`: attempts after the first.
    pub post_retries: u32,
    /// `timeoutInSeconds`: per attempt.
    pub timeout: Duration,
    /// `continueBackupOnFailure`: fall back to a weaker consistency when a
    /// script fails, instead of failing the job.
    pub continue_on_failure: bool,
    /// `fsFreezeEnabled`: freeze the listed file systems around the snapshot.
    pub fs_freeze_enabled: bool,
    /// `ScriptsExecutionPollTimeSeconds`: the longest sleep between checks
    /// on a running script.
    pub poll_interval: Duration,
}

impl Default for ScriptsConfig {
    fn default() -> Self {
        ScriptsConfig {
            source: None,
            plugin_name: "ScriptRunner".into(),
            pre_script: None,
            post_script: None,
            pre_params: Vec::new(),
            post_params: Vec::new(),
            pre_retries: 0,
            post_retries: 0,
            timeout: DEFAULT_SCRIPT_TIMEOUT,
            continue_on_failure: true,
            fs_freeze_enabled: true,
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl ScriptsConfig {
    /// Reads a `VMSnapshotScriptPluginConfig.json` file, after checking
    /// that it and the scripts it names are owned by the current user and
    /// not writable by group or others.
    ///
    /// # Errors
    /// [`Error::UnsafeFile`] for the file or a script;
    /// [`Error::ScriptsConfig`] naming the field at fault; I/O errors.
    pub fn load(path: impl AsRef<Path>) -> Result<ScriptsConfig> {
        let path = path.as_ref();
        check_owner_and_mode(path)?;
        let text = fs::read_to_string(path).map_err(|e| Error::io("read scripts config", path, e))?;
        let config = ScriptsConfig::from_json(&text, path)?;
        config.check_scripts()?;
        Ok(config)
    }

    /// Parses the JSON text of a configuration; `path` names it in errors.
    /// Does not look at the scripts (see [`check_scripts`](Self::check_scripts)).
    ///
    /// # Errors
    /// [`Error::ScriptsConfig`] naming the field at fault.
    pub fn from_json(text: &str, path: &Path) -> Result<ScriptsConfig> {
        let bad =
            |field: &str, why: String| Error::ScriptsConfig { path: path.to_path_buf(), field: field.to_string(), why };
        let root: Value = serde_json::from_str(text).map_err(|e| bad("file", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = root else {
            return Err(bad("file", "the top level is not a JSON object".into()));
        };
        let mut c = ScriptsConfig { source: Some(path.to_path_buf()), ..ScriptsConfig::default() };
        let get = |name: &str| field(&obj, name);
        if let Some(v) = get("pluginName") {
            c.plugin_name = string(v).ok_or_else(|| bad("pluginName", format!("{v} is not a string")))?;
        }
        for (name, slot) in [("preScriptLocation", &mut c.pre_script), ("postScriptLocation", &mut c.post_script)] {
            if let Some(v) = get(name) {
                let s = string(v).ok_or_else(|| bad(name, format!("{v} is not a string")))?;
                if !s.is_empty() {
                    let p = PathBuf::from(&s);
                    if !p.is_absolute() {
                        return Err(bad(name, format!("{s:?} is not an absolute path")));
                    }
                    *slot = Some(p);
                }
            }
        }
        for (name, slot) in [("preScriptParams", &mut c.pre_params), ("postScriptParams", &mut c.post_params)] {
            if let Some(v) = get(name) {
                *slot = params(v).ok_or_else(|| bad(name, format!("{v} is not a list of strings")))?;
            }
        }
        for (name, slot) in
            [("preScriptNoOfRetries", &mut c.pre_retries), ("postScriptNoOfRetries", &mut c.post_retries)]
        {
            if let Some(v) = get(name) {
                *slot = integer(v, 0, MAX_SCRIPT_RETRIES as u64).map_err(|why| bad(name, why))? as u32;
            }
        }
        if let Some(v) = get("timeoutInSeconds") {
            let secs = integer(v, 1, MAX_SCRIPT_TIMEOUT_SECS).map_err(|why| bad("timeoutInSeconds", why))?;
            c.timeout = Duration::from_secs(secs);
        }
        if let Some(v) = get("ScriptsExecutionPollTimeSeconds") {
            let secs = integer(v, 1, 5).map_err(|why| bad("ScriptsExecutionPollTimeSeconds", why))?;
            c.poll_interval = Duration::from_secs(secs);
        }
        for (name, slot) in
            [("continueBackupOnFailure", &mut c.continue_on_failure), ("fsFreezeEnabled", &mut c.fs_freeze_enabled)]
        {
            if let Some(v) = get(name) {
                *slot = boolean(v).ok_or_else(|| bad(name, format!("{v} is not true or false")))?;
            }
        }
        Ok(c)
    }

    /// Whether a pre- or post-script is configured.
    pub fn has_scripts(&self) -> bool {
        self.pre_script.is_some() || self.post_script.is_some()
    }

    /// Checks that the configured scripts are regular files owned by the
    /// current user and not writable by group or others.
    ///
    /// # Errors
    /// [`Error::UnsafeFile`]; I/O errors (a missing script).
    pub fn check_scripts(&self) -> Result<()> {
        for s in self.pre_script.iter().chain(&self.post_script) {
            check_owner_and_mode(s)?;
        }
        Ok(())
    }
}

/// Looks a field up by its exact name, then case-insensitively.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// A list of strings (a single string is taken as a list of one); empty
/// strings are dropped, because the file format's template holds `["", ""]`.
fn params(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::String(s) => Some(if s.is_empty() { Vec::new() } else { vec![s.clone()] }),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().filter(|s| !s.is_empty()).collect()),
        _ => None,
    }
}

/// A whole number in `lo..=hi`, given as a JSON number or a string of
/// digits (configurations written by hand often quote numbers).
fn integer(v: &Value, lo: u64, hi: u64) -> std::result::Result<u64, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        Some(n) => Err(format!("{n} is out of range {lo} to {hi}")),
        None => Err(format!("{v} is not a whole number from {lo} to {hi}")),
    }
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// "uid 1000 (alice)", or "uid 1000" when the name is not known.
fn describe_uid(uid: u32) -> String {
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live, correctly sized local; on
    // success `result` points to `pwd`, whose strings live in `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated
        // string inside `buf`, which is still alive.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        format!("uid {uid} ({})", name.to_string_lossy())
    } else {
        format!("uid {uid}")
    }
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is a plain C struct of integers and pointers, for
    // which all-zero bytes (null pointers) is a valid value.
    unsafe { std::mem::zeroed() }
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses a file that is not a regular file owned by the current user and
/// closed to writes by group and others, or that lies in a folder that
/// someone else could change (see the module doc). Returns the resolved
/// path, the one to run.
pub(crate) fn check_owner_and_mode(path: &Path) -> Result<PathBuf> {
    let real = fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
    let m = fs::symlink_metadata(&real).map_err(|e| Error::io("stat", &real, e))?;
    if !m.is_file() {
        return Err(Error::invalid("script or scripts config", format!("{} is not a regular file", path.display())));
    }
    let me = current_uid();
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(Error::UnsafeFile {
            path: path.to_path_buf(),
            owner: describe_uid(m.uid()),
            mode: m.mode() & 0o7777,
            expected: describe_uid(me),
        });
    }
    // Every folder above it, from the file's own up to `/`.
    let mut child_owner = m.uid();
    for dir in real.ancestors().skip(1) {
        let d = fs::symlink_metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
        let owner_ok = d.uid() == me || d.uid() == 0;
        // Others may write a sticky folder, but not rename or remove what
        // someone else owns in it: safe when its entry on our path is ours.
        let sticky_ok = d.mode() & 0o1000 != 0 && (child_owner == me || child_owner == 0);
        if !d.is_dir() || !owner_ok || (d.mode() & 0o022 != 0 && !sticky_ok) {
            return Err(Error::UnsafeFile {
                path: dir.to_path_buf(),
                owner: describe_uid(d.uid()),
                mode: d.mode() & 0o7777,
                expected: format!(
                    "{} or root, as a folder on the path of {} (no one else may change what runs)",
                    describe_uid(me),
                    path.display()
                ),
            });
        }
        child_owner = d.uid();
    }
    Ok(real)
}

/// How one attempt of a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exited with status 0.
    Succeeded,
    /// Exited with another status, or was killed by a signal.
    Failed(String),
    /// Ran past its timeout; its process group was killed.
    TimedOut,
    /// Could not be started.
    NotStarted(String),
    /// Its job was cancelled; it was killed with everything it started.
    Cancelled,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Succeeded => f.write_str("succeeded"),
            Outcome::Failed(s) => write!(f, "failed ({s})"),
            Outcome::TimedOut => f.write_str("timed out; it was killed with everything it started"),
            Outcome::Cancelled => f.write_str("cancelled; it was killed with everything it started"),
            Outcome::NotStarted(s) => write!(f, "could not start: {s}"),
        }
    }
}

/// One attempt of a script.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub outcome: Outcome,
    /// The last [`OUTPUT_LIMIT`] bytes of its output.
    pub output: String,
    /// How many earlier bytes were dropped.
    pub dropped: u64,
    pub seconds: f64,
}

/// Every attempt of one script.
#[derive(Debug, Clone)]
pub(crate) struct ScriptRun {
    pub stage: &'static str,
    pub path: PathBuf,
    pub attempts: Vec<Attempt>,
}

impl ScriptRun {
    pub fn succeeded(&self) -> bool {
        self.attempts.last().is_some_and(|a| a.outcome == Outcome::Succeeded)
    }

    /// One log line per attempt, with its output.
    pub fn log_lines(&self) -> Vec<String> {
        let n = self.attempts.len();
        self.attempts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut line = format!(
                    "{}-script {} attempt {} of {}: {} after {:.2} s",
                    self.stage,
                    self.path.display(),
                    i + 1,
                    n,
                    a.outcome,
                    a.seconds
                );
                if !a.output.is_empty() {
                    if a.dropped > 0 {
                        line.push_str(&format!("; output (last {} bytes):\n", a.output.len()));
                    } else {
                        line.push_str("; output:\n");
                    }
                    line.push_str(a.output.trim_end());
                }
                line
            })
            .collect()
    }

    /// A short account of the last attempt for an error message.
    pub fn last_detail(&self) -> String {
        match self.attempts.last() {
            None => "it did not run".into(),
            Some(a) => {
                let out = a.output.trim_end();
                let tail = match out.char_indices().rev().nth(2000) {
                    Some((i, _)) => &out[i..],
                    None => out,
                };
                if tail.is_empty() { a.outcome.to_string() } else { format!("{}; output ends: {tail}", a.outcome) }
            }
        }
    }
}

/// What one script invocation needs.
pub(crate) struct ScriptSpec<'a> {
    pub stage: &'static str,
    pub path: &'a Path,
    pub params: &'a [String],
    pub retries: u32,
    pub timeout: Duration,
    pub poll_interval: Duration,
    pub vm: &'a str,
    /// Stops the script (and its retries) when cancelled; None for a
    /// script that must run to its end (a post-script resumes the
    /// application).
    pub cancel: Option<crate::model::CancelToken>,
}

/// Runs a script until it succeeds or its attempts are used up. Each
/// attempt is a fresh process; its ownership and mode are checked first.
pub(crate) fn run_script(spec: &ScriptSpec<'_>) -> ScriptRun {
    let mut run = ScriptRun { stage: spec.stage, path: spec.path.to_path_buf(), attempts: Vec::new() };
    for _ in 0..=spec.retries {
        let attempt = match check_owner_and_mode(spec.path) {
            Ok(real) => run_once(spec, &real),
            Err(e) => {
                Attempt { outcome: Outcome::NotStarted(e.to_string()), output: String::new(), dropped: 0, seconds: 0.0 }
            }
        };
        let done = matches!(attempt.outcome, Outcome::Succeeded | Outcome::Cancelled);
        run.attempts.push(attempt);
        if done {
            break;
        }
    }
    run
}

/// A started script; killed with all it started if dropped before it is
/// reaped (a panic in the runner must not leave it behind).
struct Running {
    child: Child,
    reaped: bool,
    /// Every descendant seen so far, with its start time (so that a pid
    /// reused by an unrelated process is never killed).
    seen: std::collections::HashMap<libc::pid_t, u64>,
}

/// What `/proc/PID/stat` says of a process: (parent, session, start time).
fn proc_stat(pid: libc::pid_t) -> Option<(libc::pid_t, libc::pid_t, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: parse
    // from the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields from 3 on: state ppid pgrp session ... starttime is field 22.
    Some((f.get(1)?.parse().ok()?, f.get(3)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

fn all_pids() -> Vec<libc::pid_t> {
    fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

impl Running {
    /// Adds to `seen` every process now in the script's session or below
    /// any process already seen.
    fn track(&mut self) {
        let Ok(root) = libc::pid_t::try_from(self.child.id()) else { return };
        let procs: Vec<(libc::pid_t, libc::pid_t, libc::pid_t, u64)> =
            all_pids().into_iter().filter_map(|p| proc_stat(p).map(|(pp, sid, t)| (p, pp, sid, t))).collect();
        if let Some((_, _, _, t)) = procs.iter().find(|(p, ..)| *p == root) {
            self.seen.entry(root).or_insert(*t);
        }
        loop {
            let before = self.seen.len();
            for (pid, ppid, sid, start) in &procs {
                if *sid == root || self.seen.contains_key(ppid) {
                    self.seen.entry(*pid).or_insert(*start);
                }
            }
            if self.seen.len() == before {
                break;
            }
        }
    }

    /// Stops, then kills, the script's session and every descendant seen.
    fn kill_all(&mut self) {
        let me = std::process::id() as libc::pid_t;
        for sig in [libc::SIGSTOP, libc::SIGKILL] {
            // Stopped processes fork no more: a second look finds the rest.
            for _ in 0..3 {
                self.track();
                for (pid, start) in &self.seen {
                    if *pid != me && proc_stat(*pid).is_some_and(|(_, _, t)| t == *start) {
                        // SAFETY: kill only sends a signal, to a process
                        // whose start time shows it is the one we saw.
                        unsafe { libc::kill(*pid, sig) };
                    }
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_all();
            let _ = self.child.wait();
        }
    }
}

/// Keeps the last `limit` bytes written to it.
struct Tail {
    buf: Vec<u8>,
    dropped: u64,
    limit: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * self.limit {
            let cut = self.buf.len() - self.limit;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
    }
    fn finish(mut self) -> (String, u64) {
        if self.buf.len() > self.limit {
            let cut = self.buf.len() - self.limit;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
        (String::from_utf8_lossy(&self.buf).into_owned(), self.dropped)
    }
}

fn set_nonblocking(fd: libc::c_int) {
    // SAFETY: fcntl on a descriptor this process owns (the read end of the
    // script's output pipe); F_GETFL/F_SETFL touch only flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Reads what the pipe holds now; the pipe is dropped at end of file.
fn drain(pipe: &mut Option<std::io::PipeReader>, tail: &mut Tail) {
    let mut buf = [0u8; 8192];
    while let Some(p) = pipe.as_mut() {
        match p.read(&mut buf) {
            Ok(0) => *pipe = None,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => *pipe = None,
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

fn run_once(spec: &ScriptSpec<'_>, real: &Path) -> Attempt {
    let started = Instant::now();
    // One pipe for stdout and stderr: the output keeps the order in which
    // the script wrote it (two pipes would be read one after the other).
    let (reader, writer) = match std::io::pipe().and_then(|(r, w)| Ok((r, w.try_clone()?, w))) {
        Ok((r, w1, w2)) => (r, (w1, w2)),
        Err(e) => {
            return Attempt {
                outcome: Outcome::NotStarted(format!("cannot make a pipe: {e}")),
                output: String::new(),
                dropped: 0,
                seconds: started.elapsed().as_secs_f64(),
            };
        }
    };
    let mut cmd = Command::new(real);
    cmd.args(spec.params)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer.0))
        .stderr(Stdio::from(writer.1))
        .env("VMBACKUP_VM", spec.vm)
        .env("VMBACKUP_PHASE", spec.stage);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Attempt {
                outcome: Outcome::NotStarted(e.to_string()),
                output: String::new(),
                dropped: 0,
                seconds: started.elapsed().as_secs_f64(),
            };
        }
    };
    // The write ends now live in the child alone (the Command held our
    // copies): the pipe reaches end of file when the script's last holder
    // of it exits.
    drop(cmd);
    let mut running = Running { child, reaped: false, seen: std::collections::HashMap::new() };
    set_nonblocking(reader.as_raw_fd());
    let mut pipe = Some(reader);
    let mut tail = Tail { buf: Vec::new(), dropped: 0, limit: OUTPUT_LIMIT };
    let deadline = started + spec.timeout;
    let mut step = Duration::from_millis(5);
    let outcome = loop {
        let now = Instant::now();
        let wait = step.min(deadline.saturating_duration_since(now));
        match &pipe {
            Some(p) => {
                let mut fd = libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
                // SAFETY: one live pollfd record.
                unsafe { libc::poll(&mut fd, 1, ms) };
            }
            None => std::thread::sleep(wait),
        }
        drain(&mut pipe, &mut tail);
        running.track();
        if spec.cancel.as_ref().is_some_and(crate::model::CancelToken::is_cancelled) {
            running.kill_all();
            let _ = running.child.wait();
            running.reaped = true;
            drain(&mut pipe, &mut tail);
            break Outcome::Cancelled;
        }
        match running.child.try_wait() {
            Ok(Some(status)) => {
                running.reaped = true;
                drain(&mut pipe, &mut tail);
                // What it left running is left alone: a pre-script may start
                // a lock holder that its post-script ends.
                break if status.success() { Outcome::Succeeded } else { Outcome::Failed(describe_status(status)) };
            }
            Ok(None) => {}
            Err(e) => {
                // Should not happen; do not leave the script running.
                running.kill_all();
                let _ = running.child.wait();
                running.reaped = true;
                break Outcome::Failed(format!("cannot wait for it: {e}"));
            }
        }
        if Instant::now() >= deadline {
            running.kill_all();
            let _ = running.child.wait();
            running.reaped = true;
            drain(&mut pipe, &mut tail);
            break Outcome::TimedOut;
        }
        step = (step * 2).min(spec.poll_interval.max(Duration::from_millis(5)));
    };
    let (output, dropped) = tail.finish();
    Attempt { outcome, output, dropped, seconds: started.elapsed().as_secs_f64() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(text: &str) -> Result<ScriptsConfig> {
        ScriptsConfig::from_json(text, Path::new("/etc/cfg.json"))
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::ScriptsConfig { field, .. } => field,
            other => panic!("expected a scripts config error, got {other}"),
        }
    }

    #[test]
    fn empty_object_gives_the_defaults() {
        let c = parse("{}").expect("valid");
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!((c.pre_retries, c.post_retries), (0, 0));
        assert!(c.continue_on_failure && c.fs_freeze_enabled);
        assert!(!c.has_scripts());
        assert_eq!(c.plugin_name, "ScriptRunner");
    }

    #[test]
    fn the_documented_template_parses() {
        let c = parse(
            r#"{
            "pluginName" : "ScriptRunner",
            "preScriptLocation" : "/opt/pre.sh",
            "postScriptLocation" : "",
            "preScriptParams" : ["a", "", "b"],
            "postScriptParams" : ["", ""],
            "preScriptNoOfRetries" : 2,
            "postScriptNoOfRetries" : "1",
            "timeoutInSeconds" : 1800,
            "continueBackupOnFailure" : false,
            "fsFreezeEnabled" : "False",
            "scriptsExecutionPollTimeSeconds" : 5,
            "somethingElse": {"ignored": true}
        }"#,
        )
        .expect("valid");
        assert_eq!(c.pre_script.as_deref(), Some(Path::new("/opt/pre.sh")));
        assert_eq!(c.post_script, None);
        assert_eq!(c.pre_params, ["a", "b"]);
        assert!(c.post_params.is_empty());
        assert_eq!((c.pre_retries, c.post_retries), (2, 1));
        assert_eq!(c.timeout, Duration::from_secs(1800));
        assert!(!c.continue_on_failure && !c.fs_freeze_enabled);
        assert_eq!(c.poll_interval, Duration::from_secs(5));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_field() {
        for (text, field) in [
            (r#"{"timeoutInSeconds": 0}"#, "timeoutInSeconds"),
            (r#"{"timeoutInSeconds": 1801}"#, "timeoutInSeconds"),
            (r#"{"timeoutInSeconds": -5}"#, "timeoutInSeconds"),
            (r#"{"timeoutInSeconds": 2.5}"#, "timeoutInSeconds"),
            (r#"{"preScriptNoOfRetries": 11}"#, "preScriptNoOfRetries"),
            (r#"{"postScriptNoOfRetries": "many"}"#, "postScriptNoOfRetries"),
            (r#"{"ScriptsExecutionPollTimeSeconds": 0}"#, "ScriptsExecutionPollTimeSeconds"),
            (r#"{"ScriptsExecutionPollTimeSeconds": 6}"#, "ScriptsExecutionPollTimeSeconds"),
            (r#"{"continueBackupOnFailure": 1}"#, "continueBackupOnFailure"),
            (r#"{"fsFreezeEnabled": "yes"}"#, "fsFreezeEnabled"),
            (r#"{"preScriptLocation": "pre.sh"}"#, "preScriptLocation"),
            (r#"{"postScriptLocation": 7}"#, "postScriptLocation"),
            (r#"{"preScriptParams": [1, 2]}"#, "preScriptParams"),
            (r#"{"pluginName": []}"#, "pluginName"),
        ] {
            let e = parse(text).expect_err(text);
            let msg = e.to_string();
            assert!(msg.contains("/etc/cfg.json") && msg.contains(field), "{text}: {msg}");
            assert_eq!(field_of(e), field, "{text}");
        }
    }

    #[test]
    fn bad_json_is_refused_naming_the_file() {
        for text in ["", "{", "[1, 2]", "\"text\"", "{\"timeoutInSeconds\": 30,}"] {
            let e = parse(text).expect_err(text);
            assert!(e.to_string().contains("/etc/cfg.json"), "{e}");
            assert_eq!(field_of(e), "file");
        }
    }

    #[test]
    fn permission_check_refuses_group_or_world_writable_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pre.sh");
        fs::write(&f, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).expect("chmod");
        check_owner_and_mode(&f).expect("owned by me, mode 0700");
        for mode in [0o722, 0o757, 0o777, 0o620] {
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).expect("chmod");
            let e = check_owner_and_mode(&f).expect_err("writable by others");
            let msg = e.to_string();
            assert!(msg.contains(&f.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains(&format!("uid {}", current_uid())), "{msg}");
        }
        assert!(check_owner_and_mode(dir.path()).is_err(), "a folder is not a script");
        assert!(matches!(check_owner_and_mode(&dir.path().join("missing")), Err(Error::Io { .. })));
    }

    #[test]
    fn permission_check_refuses_a_file_owned_by_another_user() {
        if current_uid() != 0 {
            return testkit::skip("permission_check_refuses_a_file_owned_by_another_user", "chown needs root");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("post.sh");
        fs::write(&f, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::chown(&f, Some(65534), None).expect("chown");
        let msg = check_owner_and_mode(&f).expect_err("owned by another user").to_string();
        assert!(msg.contains("uid 65534") && msg.contains("mode 0700"), "{msg}");
    }

    #[test]
    fn load_checks_the_config_and_its_scripts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("pre.sh");
        fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).expect("chmod");
        let cfg = dir.path().join("VMSnapshotScriptPluginConfig.json");
        fs::write(&cfg, format!(r#"{{"preScriptLocation": {:?}}}"#, script.display().to_string())).expect("write");
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = ScriptsConfig::load(&cfg).expect("safe");
        assert_eq!(c.source.as_deref(), Some(cfg.as_path()));
        fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(ScriptsConfig::load(&cfg), Err(Error::UnsafeFile { .. })));
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).expect("chmod");
        fs::set_permissions(&cfg, fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(matches!(ScriptsConfig::load(&cfg), Err(Error::UnsafeFile { .. })));
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).expect("chmod");
        p
    }

    fn spec<'a>(path: &'a Path, retries: u32, timeout: Duration) -> ScriptSpec<'a> {
        ScriptSpec {
            stage: "pre",
            path,
            params: &[],
            retries,
            timeout,
            poll_interval: Duration::from_millis(50),
            vm: "web",
            cancel: None,
        }
    }

    #[test]
    fn output_is_kept_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = script(
            dir.path(),
            "loud.sh",
            "echo start; echo oops >&2; head -c 200000 /dev/zero | tr '\\0' x; echo; echo end $VMBACKUP_VM",
        );
        let run = run_script(&spec(&s, 0, Duration::from_secs(20)));
        assert!(run.succeeded(), "{:?}", run.attempts);
        let a = &run.attempts[0];
        assert_eq!(a.output.len(), OUTPUT_LIMIT);
        assert!(a.dropped > 0);
        assert!(a.output.ends_with("end web\n"), "{}", &a.output[a.output.len() - 20..]);
        assert!(run.log_lines()[0].contains("last 65536 bytes"));
    }

    #[test]
    fn a_folder_on_the_path_that_others_may_change_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("scripts");
        fs::create_dir(&sub).expect("mkdir");
        let s = script(&sub, "pre.sh", "true");
        check_owner_and_mode(&s).expect("a safe path");
        // Writable by others and not sticky: anyone could swap pre.sh.
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = check_owner_and_mode(&s).expect_err("an open folder");
        assert!(e.to_string().contains(&sub.display().to_string()), "{e}");
        // Sticky (as /tmp): others cannot rename what is ours in it.
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o1777)).expect("chmod");
        check_owner_and_mode(&s).expect("a sticky folder holding our own file");
    }

    #[test]
    fn a_script_linked_into_a_folder_another_user_owns_is_refused() {
        if current_uid() != 0 {
            return testkit::skip("a_script_linked_into_a_folder_another_user_owns_is_refused", "chown needs root");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The attack: a user who owns the folder swaps root's pre.sh for a
        // link to a program of theirs.
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        let evil = script(&theirs, "evil.sh", "touch /tmp/pwned");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        let s = dir.path().join("pre.sh");
        std::os::unix::fs::symlink(&evil, &s).expect("symlink");
        let e = check_owner_and_mode(&s).expect_err("resolved into a folder another user owns");
        assert!(e.to_string().contains("uid 65534"), "{e}");
        let run = run_script(&spec(&s, 0, Duration::from_secs(5)));
        assert!(matches!(run.attempts[0].outcome, Outcome::NotStarted(_)), "{:?}", run.attempts);
    }

    /// Whether a process is gone (or a zombie, dead and waiting to be reaped).
    fn dead(pid: libc::pid_t) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(t) => t.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    fn wait_dead(pid: libc::pid_t) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if dead(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_timed_out_script_dies_with_the_children_that_left_its_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pids = dir.path().join("pids");
        let s = script(
            dir.path(),
            "hang.sh",
            &format!("setsid sleep 300 & echo $! > {p}; sleep 300 & echo $! >> {p}; wait", p = pids.display()),
        );
        let run = run_script(&spec(&s, 0, Duration::from_millis(1500)));
        assert_eq!(run.attempts[0].outcome, Outcome::TimedOut);
        let text = fs::read_to_string(&pids).expect("pids");
        for pid in text.lines().map(|l| l.parse::<libc::pid_t>().expect("pid")) {
            assert!(wait_dead(pid), "process {pid} that the script started outlived it");
        }
    }

    #[test]
    fn a_cancelled_script_is_killed_at_once_and_not_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = script(dir.path(), "slow.sh", "sleep 300");
        let cancel = crate::model::CancelToken::new();
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.cancel();
        });
        let started = Instant::now();
        let mut sp = spec(&s, 3, Duration::from_secs(120));
        sp.cancel = Some(cancel);
        let run = run_script(&sp);
        assert_eq!(run.attempts.len(), 1, "a cancel is not retried");
        assert_eq!(run.attempts[0].outcome, Outcome::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_script_that_cannot_start_fails_every_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = run_script(&spec(&dir.path().join("missing.sh"), 2, Duration::from_secs(5)));
        assert!(!run.succeeded());
        assert_eq!(run.attempts.len(), 3);
    }
}
