//! Consistency around any provider: pre/post scripts and file-system
//! freeze wrapped around an inner provider's snapshot, with the fallback
//! rules of DESIGN.md.
//!
//! The order is the one users of Linux VM backup know: pre-script, freeze
//! (every listed mount), the inner provider's snapshot, thaw (reverse
//! order), post-script. The freeze covers only the inner snapshot step: for
//! [`ImageFileProvider`](super::ImageFileProvider) on a file system with
//! reflinks that is the clone of each image, so writes stall for
//! milliseconds and the transfer reads the clones afterwards. The
//! post-script runs whenever the pre-script ran (a failed pre-script, a
//! failed freeze, a failed or panicking snapshot included), because it is
//! what resumes the application.
//!
//! What is achieved (the level asked for caps it: `crash` runs neither
//! scripts nor freeze, `filesystem` runs no scripts):
//!
//! | scripts | fs freeze | result |
//! |---|---|---|
//! | succeed | succeeds or disabled | application-consistent |
//! | succeed | fails (or the watchdog thawed) | crash-consistent if allowed, else the job fails |
//! | fail, continue on failure | succeeds | file-system-consistent |
//! | fail, continue on failure | disabled or fails | crash-consistent if allowed, else the job fails |
//! | fail, do not continue | any | the job fails, nothing committed |
//! | none configured | succeeds | file-system-consistent |
//! | none configured | disabled or fails | crash-consistent if allowed, else the job fails |
//!
//! "Disabled" is `fsFreezeEnabled: false` or no mounts listed; "fails"
//! includes a freeze the watchdog ended before the snapshot step did.
//! "Allowed" means at or above [`ConsistentProvider::with_min_consistency`]
//! (crash by default). The second row is a choice the table of DESIGN.md
//! leaves open: a freeze that was asked for and did not hold means dirty
//! file-system state may be missing, so the point does not claim more than
//! a power cut would give. Scripts that succeed with no freeze asked for are
//! trusted to have flushed what matters (the first row).

use std::path::PathBuf;
use std::time::Duration;

use super::freeze::{DEFAULT_FREEZE_TIMEOUT, FreezeGuard};
use super::scripts::{ScriptRun, ScriptSpec, ScriptsConfig, run_script};
use super::{PrepareReport, Snapshot, SnapshotProvider};
use crate::error::{Error, Result};
use crate::model::{CancelToken, Consistency, Vm};

/// Wraps a provider with pre/post scripts and a file-system freeze, and
/// reports the consistency really achieved.
///
/// ```no_run
/// use backup_core::*;
/// let provider = ConsistentProvider::new(ImageFileProvider::new())
///     .with_scripts(ScriptsConfig::load("/etc/vmbackup/VMSnapshotScriptPluginConfig.json")?)
///     .with_freeze(["/mnt/guest-root"]);
/// let vault = Vault::open("/srv/vault")?;
/// let vm = Vm::from_images("web", &["/srv/images/root.img"])?;
/// let mut options = BackupOptions::default();
/// options.consistency = Consistency::Application;
/// let report = backup(&vault, &provider, &vm, &options)?;
/// println!("{}", report.point.consistency);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConsistentProvider<P> {
    inner: P,
    scripts: Option<ScriptsConfig>,
    mounts: Vec<PathBuf>,
    freeze_timeout: Duration,
    min_consistency: Consistency,
    cancel: CancelToken,
}

impl<P: SnapshotProvider> ConsistentProvider<P> {
    /// Wraps `inner`, with no scripts and nothing to freeze yet.
    pub fn new(inner: P) -> Self {
        ConsistentProvider {
            inner,
            scripts: None,
            mounts: Vec::new(),
            freeze_timeout: DEFAULT_FREEZE_TIMEOUT,
            min_consistency: Consistency::Crash,
            cancel: CancelToken::new(),
        }
    }

    /// Stops a running pre-script when this token is cancelled (give it the
    /// job's [`BackupOptions::cancel`](crate::BackupOptions::cancel)): the
    /// script is killed with what it started, nothing is frozen, the
    /// post-script still runs, and the snapshot fails as cancelled.
    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Runs these pre/post scripts for application-consistent snapshots.
    pub fn with_scripts(mut self, scripts: ScriptsConfig) -> Self {
        self.scripts = Some(scripts);
        self
    }

    /// Freezes these mount points (the guest file systems, mounted on the
    /// host) around the snapshot, in this order; thawed in reverse.
    pub fn with_freeze<I, T>(mut self, mounts: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<PathBuf>,
    {
        self.mounts = mounts.into_iter().map(Into::into).collect();
        self
    }

    /// How long a freeze may last before the watchdog thaws it (default
    /// 60 s).
    pub fn with_freeze_timeout(mut self, timeout: Duration) -> Self {
        self.freeze_timeout = timeout;
        self
    }

    /// The weakest consistency the job accepts; a fallback below it fails
    /// the job instead (default crash: every fallback is allowed).
    pub fn with_min_consistency(mut self, min: Consistency) -> Self {
        self.min_consistency = min;
        self
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

/// Runs the post-script once, when asked or at the latest on drop (an
/// error return or a panic between pre and post).
struct PostScript<'a> {
    pending: Option<ScriptSpec<'a>>,
}

impl PostScript<'_> {
    fn run(&mut self) -> Option<ScriptRun> {
        self.pending.take().map(|spec| run_script(&spec))
    }
}

impl Drop for PostScript<'_> {
    fn drop(&mut self) {
        let _ = self.run();
    }
}

/// How a freeze went, for [`settle`].
pub(crate) enum FreezeResult {
    /// Not attempted, and why.
    Disabled(String),
    /// Held for the whole snapshot step.
    Held,
    /// Failed, expired or could not start, and why.
    Failed(String),
}

/// The end of the fallback table (see the module): the consistency a
/// snapshot achieved, and a line for the log when it is less than
/// `wanted`. `use_scripts`: scripts were to run; `script_failed`: the stage
/// of a script that failed (with continue on failure). `freeze_level` is
/// what a freeze that held gives by itself: file system, or application
/// for a Windows guest's VSS freeze through its agent.
///
/// # Errors
/// [`Error::Provider`] (retryable) when the result is below `min`.
pub(crate) fn settle(
    wanted: Consistency,
    freeze: &FreezeResult,
    use_scripts: bool,
    script_failed: Option<&str>,
    freeze_level: Consistency,
    min: Consistency,
    vm: &str,
) -> Result<(Consistency, Option<String>)> {
    let (level, why) = match (freeze, use_scripts, script_failed) {
        (FreezeResult::Held | FreezeResult::Disabled(_), true, None) => (Consistency::Application, None),
        (FreezeResult::Failed(e), true, None) => (Consistency::Crash, Some(format!("the freeze failed: {e}"))),
        (FreezeResult::Held, _, _) => {
            let level = if script_failed.is_some() { Consistency::FileSystem } else { freeze_level };
            (
                level,
                (wanted > level).then(|| match script_failed {
                    Some(stage) => format!("the {stage}-script failed"),
                    None => "no scripts are configured".to_string(),
                }),
            )
        }
        (FreezeResult::Disabled(why), _, _) => {
            (Consistency::Crash, Some(format!("file systems were not frozen ({why})")))
        }
        (FreezeResult::Failed(e), _, _) => (Consistency::Crash, Some(format!("the freeze failed: {e}"))),
    };
    let level = level.min(wanted);
    if level < min {
        return Err(Error::Provider {
            vm: vm.to_string(),
            step: "snapshot",
            message: format!(
                "the snapshot would only be {level}-consistent ({}), and at least {min} consistency is required",
                why.as_deref().map_or_else(|| format!("{wanted} was asked for"), str::to_string),
            ),
            retryable: true,
        });
    }
    let line = (level < wanted)
        .then(|| format!("asked for {wanted} consistency, got {level}: {}", why.as_deref().unwrap_or("fallback")));
    Ok((level, line))
}

impl<P: SnapshotProvider> SnapshotProvider for ConsistentProvider<P> {
    fn prepare(&self, vm: &Vm) -> Result<PrepareReport> {
        self.inner.prepare(vm)
    }

    fn version(&self) -> String {
        self.inner.version()
    }

    fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
        self.snapshot_since(vm, wanted, &[])
    }

    fn snapshot_since(&self, vm: &Vm, wanted: Consistency, previous: &[(String, String)]) -> Result<Snapshot> {
        let mut log: Vec<String> = Vec::new();
        let scripts = self.scripts.as_ref().filter(|s| s.has_scripts());
        let use_scripts = wanted >= Consistency::Application && scripts.is_some();
        if wanted >= Consistency::Application && scripts.is_none() {
            log.push("no pre/post scripts are configured: the snapshot is at best file-system-consistent".into());
        }
        let freeze_wanted = wanted >= Consistency::FileSystem;
        let freeze_disabled: Option<String> = if !freeze_wanted {
            Some("not asked for".into())
        } else if self.scripts.as_ref().is_some_and(|s| !s.fs_freeze_enabled) {
            Some("fsFreezeEnabled is false in the scripts config".into())
        } else if self.mounts.is_empty() {
            Some("no mounts to freeze were given".into())
        } else {
            None
        };

        // Refuse unsafe scripts before anything runs.
        if use_scripts && let Some(s) = scripts {
            s.check_scripts()?;
        }
        let continue_on_failure = scripts.is_none_or(|s| s.continue_on_failure);
        let mut scripts_failed: Option<ScriptRun> = None;

        // Pre-script; from here the post-script is owed.
        let mut post = PostScript { pending: None };
        if use_scripts && let Some(s) = scripts {
            if let Some(path) = &s.post_script {
                post.pending = Some(ScriptSpec {
                    stage: "post",
                    path,
                    params: &s.post_params,
                    retries: s.post_retries,
                    timeout: s.timeout,
                    poll_interval: s.poll_interval,
                    vm: &vm.name,
                    cancel: None,
                });
            }
            if let Some(path) = &s.pre_script {
                let run = run_script(&ScriptSpec {
                    stage: "pre",
                    path,
                    params: &s.pre_params,
                    retries: s.pre_retries,
                    timeout: s.timeout,
                    poll_interval: s.poll_interval,
                    vm: &vm.name,
                    cancel: Some(self.cancel.clone()),
                });
                log.extend(run.log_lines());
                if self.cancel.is_cancelled() {
                    // The pre-script was killed for the cancel: not a
                    // script failure. `post` runs the post-script on drop.
                    drop(post);
                    return Err(Error::Cancelled { what: format!("snapshot of vm {}", vm.name) });
                }
                if !run.succeeded() {
                    if !continue_on_failure {
                        if let Some(p) = post.run() {
                            log.extend(p.log_lines());
                        }
                        return Err(script_error(vm, &run));
                    }
                    scripts_failed = Some(run);
                }
            }
        }

        // A cancel during the pre-script: nothing is frozen, and `post`
        // runs the post-script on the way out.
        if self.cancel.is_cancelled() {
            drop(post);
            return Err(Error::Cancelled { what: format!("snapshot of vm {}", vm.name) });
        }

        // Freeze, snapshot, thaw at once.
        let (snap, freeze) = match freeze_disabled {
            Some(why) => {
                if freeze_wanted {
                    log.push(format!("file systems are not frozen: {why}"));
                }
                (self.inner.snapshot_since(vm, Consistency::Crash, previous), FreezeResult::Disabled(why))
            }
            None => match FreezeGuard::freeze(&self.mounts, self.freeze_timeout) {
                Ok(guard) => {
                    let snap = self.inner.snapshot_since(vm, Consistency::Crash, previous);
                    let thaw = guard.thaw();
                    log.extend(thaw.warnings.iter().cloned());
                    let names: Vec<String> = self.mounts.iter().map(|m| m.display().to_string()).collect();
                    if thaw.expired {
                        (snap, FreezeResult::Failed(format!("the watchdog thawed {} first", names.join(", "))))
                    } else {
                        log.push(format!(
                            "froze {} for {:.3} s around the snapshot",
                            names.join(", "),
                            thaw.held.as_secs_f64()
                        ));
                        (snap, FreezeResult::Held)
                    }
                }
                Err(e) => {
                    log.push(format!("file systems are not frozen: {e}"));
                    (self.inner.snapshot_since(vm, Consistency::Crash, previous), FreezeResult::Failed(e.to_string()))
                }
            },
        };

        // Post-script, whatever happened since the pre-script.
        if let Some(run) = post.run() {
            log.extend(run.log_lines());
            if !run.succeeded() && scripts_failed.is_none() {
                scripts_failed = Some(run);
            }
        }
        let mut snap = snap?;

        let fail = |snap: Snapshot, err: Error| -> Result<Snapshot> {
            // Nothing will be committed: give the snapshot back now.
            let _ = self.inner.release(vm, snap);
            Err(err)
        };
        if self.cancel.is_cancelled() {
            return fail(snap, Error::Cancelled { what: format!("snapshot of vm {}", vm.name) });
        }
        if let Some(run) = &scripts_failed
            && !continue_on_failure
        {
            return fail(snap, script_error(vm, run));
        }
        let failed_stage = scripts_failed.as_ref().map(|r| r.stage);
        let level = match settle(
            wanted,
            &freeze,
            use_scripts,
            failed_stage,
            Consistency::FileSystem,
            self.min_consistency,
            &vm.name,
        ) {
            Ok((level, line)) => {
                log.extend(line);
                level
            }
            Err(e) => return fail(snap, e),
        };
        snap.consistency = snap.consistency.max(level);
        log.append(&mut snap.warnings);
        snap.warnings = log;
        Ok(snap)
    }

    fn check_intact(&self, vm: &Vm, snapshot: &Snapshot) -> Result<()> {
        self.inner.check_intact(vm, snapshot)
    }

    fn keepable(&self, snapshot: &Snapshot) -> Option<Vec<crate::snapshot::KeptDisk>> {
        self.inner.keepable(snapshot)
    }
    fn configuration(&self, vm: &Vm, snapshot: &Snapshot) -> Option<crate::model::VmConfiguration> {
        self.inner.configuration(vm, snapshot)
    }
    fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
        self.inner.release(vm, snapshot)
    }
}

fn script_error(vm: &Vm, run: &ScriptRun) -> Error {
    Error::Script {
        vm: vm.name.clone(),
        stage: run.stage,
        path: run.path.clone(),
        attempts: run.attempts.len() as u32,
        detail: run.last_detail(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ImageFileProvider;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Image files, counting releases.
    struct Counted(ImageFileProvider, AtomicUsize);
    impl SnapshotProvider for Counted {
        fn snapshot(&self, vm: &Vm, wanted: Consistency) -> Result<Snapshot> {
            self.0.snapshot(vm, wanted)
        }
        fn release(&self, vm: &Vm, snapshot: Snapshot) -> Result<()> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.release(vm, snapshot)
        }
    }

    fn setup(dir: &std::path::Path) -> (Vm, PathBuf, PathBuf) {
        let image = dir.join("root.img");
        std::fs::write(&image, [0u8; 4096]).expect("image");
        let script = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            p
        };
        (Vm::from_images("web", &[&image]).expect("vm"), script("ok.sh", "exit 0"), script("bad.sh", "exit 1"))
    }

    fn cfg(pre: &std::path::Path, continue_on_failure: bool) -> ScriptsConfig {
        ScriptsConfig { pre_script: Some(pre.to_path_buf()), continue_on_failure, ..ScriptsConfig::default() }
    }

    #[test]
    fn rows_that_need_no_mount() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (vm, ok, bad) = setup(dir.path());
        let app = Consistency::Application;
        let new = || ConsistentProvider::new(Counted(ImageFileProvider::new(), AtomicUsize::new(0)));

        // Scripts succeed, freeze disabled (no mounts): application.
        let p = new().with_scripts(cfg(&ok, true));
        assert_eq!(p.snapshot(&vm, app).expect("snapshot").consistency, Consistency::Application);
        // Scripts fail, continue, freeze disabled: crash, with the reason.
        let s = new().with_scripts(cfg(&bad, true)).snapshot(&vm, app).expect("snapshot");
        assert_eq!(s.consistency, Consistency::Crash);
        assert!(s.warnings.iter().any(|w| w.contains("got crash")), "{:?}", s.warnings);
        // ... unless crash is not allowed: the job fails and the snapshot is released.
        let p = new().with_scripts(cfg(&bad, true)).with_min_consistency(Consistency::FileSystem);
        assert!(matches!(p.snapshot(&vm, app), Err(Error::Provider { step: "snapshot", .. })));
        assert_eq!(p.inner().1.load(Ordering::SeqCst), 1);
        // Scripts fail, do not continue: the job fails before any snapshot.
        let p = new().with_scripts(cfg(&bad, false));
        assert!(matches!(p.snapshot(&vm, app), Err(Error::Script { attempts: 1, .. })));
        assert_eq!(p.inner().1.load(Ordering::SeqCst), 0);
        // None configured, nothing to freeze: crash.
        assert_eq!(new().snapshot(&vm, app).expect("snapshot").consistency, Consistency::Crash);
        // Crash asked: scripts do not run even when they would fail the job.
        assert!(new().with_scripts(cfg(&bad, false)).snapshot(&vm, Consistency::Crash).is_ok());
    }
}
