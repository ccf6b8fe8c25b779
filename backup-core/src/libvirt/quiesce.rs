//! Quiescing a running guest through its agent around the instant of the
//! checkpoint: the in-guest pre-script, the freeze, the checkpoint and
//! backup job, the thaw, the post-script; and the consistency that gives,
//! by the fallback table of `snapshot::consistent` with the agent as the
//! freezer.
//!
//! - Scripts run only when application consistency is asked for and the
//!   guest has a scripts configuration at [`GUEST_CONFIG`] (installed by
//!   `prepare` from the host's `--guest-scripts` file). They run inside the
//!   guest (`guest-exec`) with the host-side scripts module's semantics:
//!   attempts, per-attempt timeout (the program is then killed in the
//!   guest), poll interval, `continueBackupOnFailure`, `fsFreezeEnabled`;
//!   their output goes to the job log. The post-script runs whenever the
//!   pre-script ran, a panic in between included.
//! - The freeze (`virDomainFSFreeze`, which also runs the guest's fsfreeze
//!   hook) covers only the checkpoint and the start of the backup job; the
//!   thaw follows at once and the log says how long the guest was frozen.
//!   Before it, a guardian process is forked that runs
//!   `virsh -c URI domfsthaw DOMAIN` if vmbackup dies (`SIGKILL` included)
//!   or the freeze outlives its timeout: qemu-ga on Linux never thaws by
//!   itself. Without `virsh` there is no guardian, so no freeze.
//! - In a Windows guest the agent's freeze is a VSS snapshot: a freeze that
//!   held is application-consistent there.

use std::ffi::CString;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::agent::{Agent, GuestAgentInfo};
use crate::error::{Error, Result};
use crate::model::{CancelToken, Consistency};
use crate::snapshot::consistent::{FreezeResult, settle};
use crate::snapshot::guardian::{Guardian, ThawAction};
use crate::snapshot::scripts::{Outcome, ScriptRun, ScriptsConfig};

/// Where vmbackup keeps its files in a Linux guest.
pub const GUEST_DIR: &str = "/etc/vmbackup";
/// The scripts configuration in the guest (the host-side file's format,
/// with the guest's script paths).
pub const GUEST_CONFIG: &str = "/etc/vmbackup/VMSnapshotScriptPluginConfig.json";
/// The pre-script in the guest.
pub const GUEST_PRE_SCRIPT: &str = "/etc/vmbackup/pre-script";
/// The post-script in the guest.
pub const GUEST_POST_SCRIPT: &str = "/etc/vmbackup/post-script";

/// What quiescing needs to know.
pub(crate) struct Plan<'a> {
    /// The agent and what it said, or why there is none.
    pub agent: std::result::Result<(Agent<'a>, GuestAgentInfo), String>,
    pub wanted: Consistency,
    pub min: Consistency,
    pub freeze_timeout: Duration,
    pub cancel: &'a CancelToken,
    pub vm: &'a str,
    /// `virsh -c URI domfsthaw DOMAIN`, or why it cannot be run.
    pub thaw_command: std::result::Result<Vec<CString>, String>,
}

/// What quiescing gave, once the snapshot step succeeded.
pub(crate) struct Quiesced {
    /// The consistency achieved, or the error when it is below the minimum
    /// (or a script failed and the job must not continue): then the caller
    /// undoes what the snapshot step made.
    pub level: Result<Consistency>,
    /// Lines for the job log.
    pub log: Vec<String>,
}

impl Plan<'_> {
    /// Runs `take` (the checkpoint and backup job) with the guest as
    /// quiet as it can be made.
    ///
    /// # Errors
    /// Nothing was taken: a pre-script failed (and the job must not go
    /// on), the job was cancelled, or `take` failed.
    pub(crate) fn run(&self, take: impl FnOnce() -> Result<()>) -> Result<Quiesced> {
        let mut log = Vec::new();
        let agent = match &self.agent {
            Ok((agent, info)) => Some((agent, info)),
            Err(why) => {
                if self.wanted > Consistency::Crash {
                    log.push(format!("no guest agent answers ({why}): the guest is neither scripted nor frozen"));
                }
                None
            }
        };

        // The scripts: only for application consistency, from the guest.
        let mut scripts: Option<ScriptsConfig> = None;
        let mut scripts_failed: Option<&'static str> = None;
        if self.wanted >= Consistency::Application
            && let Some((agent, info)) = agent
            && !info.is_windows()
        {
            match read_guest_config(agent, info) {
                Ok(Some(c)) if c.has_scripts() => scripts = Some(c),
                Ok(_) => log.push(format!("the guest has no pre/post scripts ({GUEST_CONFIG})")),
                Err(e) => {
                    log.push(format!("the guest's scripts cannot be used: {e}"));
                    scripts_failed = Some("pre");
                }
            }
        }
        let use_scripts = scripts.is_some();
        let continue_on_failure = scripts.as_ref().is_none_or(|s| s.continue_on_failure);

        if let (Some(s), Some((agent, _))) = (&scripts, agent)
            && let Some(path) = &s.pre_script
        {
            let run = run_in_guest(agent, "pre", path, &s.pre_params, s.pre_retries, s, Some(self.cancel));
            log.extend(run.log_lines());
            if self.cancel.is_cancelled() || !run.succeeded() {
                let cancelled = self.cancel.is_cancelled();
                if cancelled || !continue_on_failure {
                    if let Some(post) = self.post(agent, s) {
                        log.extend(post.log_lines());
                    }
                    return Err(if cancelled {
                        Error::Cancelled { what: format!("snapshot of vm {}", self.vm) }
                    } else {
                        script_error(self.vm, &run)
                    });
                }
                scripts_failed = Some("pre");
            }
        }

        // The freeze, the snapshot step, the thaw.
        let freeze_disabled: Option<String> = if self.wanted < Consistency::FileSystem {
            Some("not asked for".into())
        } else if scripts.as_ref().is_some_and(|s| !s.fs_freeze_enabled) {
            Some("fsFreezeEnabled is false in the guest's scripts config".into())
        } else {
            match agent {
                None => Some(match &self.agent {
                    Err(why) => format!("no guest agent answers: {why}"),
                    Ok(_) => "no guest agent".into(),
                }),
                Some((_, info)) if !info.freeze_enabled => Some("the agent has freezing disabled".into()),
                Some(_) => None,
            }
        };
        if let Some(why) = &freeze_disabled
            && self.wanted >= Consistency::FileSystem
        {
            log.push(format!("the guest is not frozen: {why}"));
        }
        let (taken, freeze) = match (freeze_disabled, agent) {
            (Some(why), _) => (catch(take), FreezeResult::Disabled(why)),
            (None, None) => (catch(take), FreezeResult::Disabled("no guest agent".into())),
            (None, Some((agent, _))) => self.frozen(agent, take, &mut log),
        };
        // The post-script, whatever happened since the pre-script.
        if let (Some(s), Some((agent, _))) = (&scripts, agent)
            && let Some(post) = self.post(agent, s)
        {
            log.extend(post.log_lines());
            if !post.succeeded() && scripts_failed.is_none() {
                scripts_failed = Some("post");
                if !continue_on_failure {
                    let err = Error::Provider {
                        vm: self.vm.to_string(),
                        step: "snapshot",
                        message: "the in-guest post-script failed and continueBackupOnFailure is false".into(),
                        retryable: false,
                    };
                    rethrow(taken)?;
                    return Ok(Quiesced { level: Err(err), log });
                }
            }
        }
        rethrow(taken)?;
        let freeze_level = agent.map_or(Consistency::FileSystem, |(_, info)| info.freeze_consistency());
        let level = settle(self.wanted, &freeze, use_scripts, scripts_failed, freeze_level, self.min, self.vm).map(
            |(level, line)| {
                log.extend(line);
                level
            },
        );
        Ok(Quiesced { level, log })
    }

    /// Freezes through the agent (a guardian standing by), runs `take`,
    /// thaws.
    fn frozen<T>(
        &self,
        agent: &Agent<'_>,
        take: impl FnOnce() -> Result<T>,
        log: &mut Vec<String>,
    ) -> (std::thread::Result<Result<T>>, FreezeResult) {
        let command = match &self.thaw_command {
            Ok(c) => c.clone(),
            Err(why) => {
                let why = format!("not frozen: {why}");
                log.push(why.clone());
                return (catch(take), FreezeResult::Failed(why));
            }
        };
        let mut guardian = match Guardian::spawn(ThawAction::Exec(command), self.freeze_timeout) {
            Ok(g) => g,
            Err(e) => {
                let why = format!("not frozen: the freeze guardian did not start: {e}");
                log.push(why.clone());
                return (catch(take), FreezeResult::Failed(why));
            }
        };
        let count = match agent.freeze() {
            Ok(n) => n,
            Err(e) => {
                // qemu-ga thaws what it froze when a freeze fails; the
                // guardian thaws anyway in case libvirt gave up first.
                guardian.thaw_now();
                let why = format!("the guest agent's freeze failed: {e}");
                log.push(why.clone());
                return (catch(take), FreezeResult::Failed(why));
            }
        };
        let frozen_at = Instant::now();
        let taken = catch(take);
        let thaw = agent.thaw();
        let held = frozen_at.elapsed();
        match thaw {
            Ok(_) => guardian.stand_down(),
            Err(e) => {
                log.push(format!("the guest agent's thaw failed ({e}): the guardian thaws it"));
                guardian.thaw_now();
            }
        }
        let secs = held.as_secs_f64();
        if held >= self.freeze_timeout {
            let why = format!("the guest stayed frozen {secs:.3} s, past the freeze timeout");
            log.push(why.clone());
            return (taken, FreezeResult::Failed(why));
        }
        log.push(format!(
            "froze {count} file system(s) of the guest through its agent for {secs:.3} s around the checkpoint (frozen window {:.0} ms)",
            held.as_secs_f64() * 1000.0
        ));
        (taken, FreezeResult::Held)
    }

    fn post(&self, agent: &Agent<'_>, s: &ScriptsConfig) -> Option<ScriptRun> {
        s.post_script.as_ref().map(|path| run_in_guest(agent, "post", path, &s.post_params, s.post_retries, s, None))
    }
}

fn catch<T>(take: impl FnOnce() -> Result<T>) -> std::thread::Result<Result<T>> {
    std::panic::catch_unwind(AssertUnwindSafe(take))
}

fn rethrow<T>(taken: std::thread::Result<Result<T>>) -> Result<T> {
    match taken {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The guest's scripts configuration, if it has one.
fn read_guest_config(agent: &Agent<'_>, info: &GuestAgentInfo) -> std::result::Result<Option<ScriptsConfig>, String> {
    if !info.files_enabled || !info.exec_enabled {
        return Err("the agent has guest-file-* or guest-exec disabled".into());
    }
    let Some(bytes) = agent.read_file(GUEST_CONFIG)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| format!("{GUEST_CONFIG} in the guest is not UTF-8"))?;
    ScriptsConfig::from_json(&text, Path::new(GUEST_CONFIG)).map(Some).map_err(|e| e.to_string())
}

/// Runs a script in the guest until it succeeds or its attempts are used.
fn run_in_guest(
    agent: &Agent<'_>,
    stage: &'static str,
    path: &Path,
    params: &[String],
    retries: u32,
    s: &ScriptsConfig,
    cancel: Option<&CancelToken>,
) -> ScriptRun {
    let mut run = ScriptRun { stage, path: PathBuf::from(path), attempts: Vec::new() };
    for _ in 0..=retries {
        let a = agent.exec(&path.to_string_lossy(), params, s.timeout, s.poll_interval, cancel);
        let done = matches!(a.outcome, Outcome::Succeeded | Outcome::Cancelled);
        run.attempts.push(a);
        if done {
            break;
        }
    }
    run
}

fn script_error(vm: &str, run: &ScriptRun) -> Error {
    Error::Script {
        vm: vm.to_string(),
        stage: run.stage,
        path: run.path.clone(),
        attempts: run.attempts.len() as u32,
        detail: format!("in the guest: {}", run.last_detail()),
    }
}

/// `virsh -c URI domfsthaw DOMAIN`, with virsh found on `PATH` now (the
/// guardian cannot search after its fork).
pub(crate) fn thaw_command(uri: &str, domain: &str) -> std::result::Result<Vec<CString>, String> {
    virsh_command(uri, "domfsthaw", domain)
}

/// `virsh -q -c URI VERB DOMAIN`, with virsh's full path, ready for a
/// guardian to `execve` (`domfsthaw`, `suspend`, `destroy`).
pub(crate) fn virsh_command(uri: &str, verb: &str, domain: &str) -> std::result::Result<Vec<CString>, String> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let virsh = std::env::split_paths(&path)
        .map(|d| d.join("virsh"))
        .find(|p| p.is_file())
        .ok_or("virsh, which a guardian runs if vmbackup dies, is not installed (libvirt-clients)")?;
    let args = [virsh.to_string_lossy().into_owned(), "-q".into(), "-c".into(), uri.into(), verb.into(), domain.into()];
    args.into_iter().map(|a| CString::new(a).map_err(|_| "a NUL byte in the URI or domain name".to_string())).collect()
}
