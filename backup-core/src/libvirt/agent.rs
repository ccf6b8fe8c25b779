//! The QEMU guest agent inside a libvirt domain, used through libvirt's
//! agent API: on KVM it is what a cloud's snapshot extension is.
//!
//! - [`GuestAgentInfo`]: whether it answers (`guest-ping`), its version and
//!   which of the commands vmbackup uses it enables (`guest-info`), and the
//!   guest's operating system (`guest-get-osinfo`);
//! - files in the guest (`guest-file-open`, `-read`, `-write`, `-close`):
//!   installing pre/post scripts, reading their configuration;
//! - programs in the guest (`guest-exec`, `guest-exec-status`): running the
//!   scripts with the host-side scripts module's timeout and retries;
//! - freezing and thawing every guest file system (libvirt's
//!   `virDomainFSFreeze`/`virDomainFSThaw`, which run the guest's fsfreeze
//!   hook; in a Windows guest the agent's freeze is a VSS snapshot).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::CancelToken;
use crate::snapshot::scripts::{Attempt, OUTPUT_LIMIT, Outcome};

/// How long one agent command may take (the freeze excepted: libvirt's own
/// timeout applies to it).
const COMMAND_TIMEOUT_SECS: i32 = 10;
/// The largest file read from the guest (a scripts configuration).
pub(crate) const MAX_GUEST_FILE: usize = 1 << 20;
/// Bytes per `guest-file-read`/`-write` call (the agent's messages are
/// bounded).
const FILE_CHUNK: usize = 48 << 10;

/// What the guest agent and the guest said when asked: recorded in the
/// vault's record of the VM by `prepare`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GuestAgentInfo {
    /// qemu-ga's version.
    pub version: String,
    /// The guest OS's id (`debian`, `mswindows`, ...), from
    /// `guest-get-osinfo`; empty when the agent does not say.
    pub os_id: String,
    /// The guest OS's pretty name.
    pub os_name: String,
    /// The guest kernel's release.
    pub kernel: String,
    /// `guest-fsfreeze-freeze` and `-thaw` are enabled.
    pub freeze_enabled: bool,
    /// `guest-exec` and `guest-exec-status` are enabled.
    pub exec_enabled: bool,
    /// `guest-file-open`, `-read`, `-write`, `-close` are enabled.
    pub files_enabled: bool,
}

impl GuestAgentInfo {
    /// Whether the guest is Windows, where the agent's freeze is a VSS
    /// snapshot.
    pub fn is_windows(&self) -> bool {
        is_windows_id(&self.os_id)
    }

    /// The consistency a successful agent freeze gives: application in a
    /// Windows guest (VSS asks every writer to flush, as Azure's Windows
    /// extension counts it), file system elsewhere.
    pub fn freeze_consistency(&self) -> crate::model::Consistency {
        if self.is_windows() { crate::model::Consistency::Application } else { crate::model::Consistency::FileSystem }
    }

    /// Builds the record from the agent's replies: `guest-info`'s and
    /// `guest-get-osinfo`'s `return` values (the latter null when the
    /// agent lacks the command).
    pub fn from_replies(info: &Value, osinfo: &Value) -> GuestAgentInfo {
        let enabled = |names: &[&str]| {
            names.iter().all(|n| {
                info["supported_commands"].as_array().is_some_and(|cmds| {
                    cmds.iter().any(|c| c["name"].as_str() == Some(n) && c["enabled"].as_bool() != Some(false))
                })
            })
        };
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        GuestAgentInfo {
            version: s(&info["version"]),
            os_id: s(&osinfo["id"]),
            os_name: {
                let pretty = s(&osinfo["pretty-name"]);
                if pretty.is_empty() { s(&osinfo["name"]) } else { pretty }
            },
            kernel: s(&osinfo["kernel-release"]),
            freeze_enabled: enabled(&["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]),
            exec_enabled: enabled(&["guest-exec", "guest-exec-status"]),
            files_enabled: enabled(&["guest-file-open", "guest-file-read", "guest-file-write", "guest-file-close"]),
        }
    }

    /// One line for the VM's record and the job log.
    pub fn summary(&self) -> String {
        let yes = |b: bool| if b { "enabled" } else { "disabled" };
        format!(
            "guest agent {} in {} ({}, kernel {}): freeze {}, exec {}, files {}",
            if self.version.is_empty() { "of unknown version" } else { &self.version },
            if self.os_name.is_empty() { "an unnamed OS" } else { &self.os_name },
            if self.os_id.is_empty() { "no id" } else { &self.os_id },
            if self.kernel.is_empty() { "unknown" } else { &self.kernel },
            yes(self.freeze_enabled),
            yes(self.exec_enabled),
            yes(self.files_enabled),
        )
    }
}

/// Whether a `guest-get-osinfo` id is Windows's.
pub(crate) fn is_windows_id(id: &str) -> bool {
    id.eq_ignore_ascii_case("mswindows")
}

/// The guest agent of one domain.
pub(crate) struct Agent<'a> {
    pub dom: &'a super::handle::Domain,
    /// Whether the guest is Windows (how a timed-out program is killed).
    pub windows: bool,
}

impl Agent<'_> {
    /// Sends one command; its `return` value.
    fn call(&self, execute: &str, arguments: Option<Value>, timeout_secs: i32) -> Result<Value, String> {
        let cmd = match arguments {
            Some(a) => json!({ "execute": execute, "arguments": a }),
            None => json!({ "execute": execute }),
        };
        let reply = self.dom.qemu_agent_command(&cmd.to_string(), timeout_secs)?;
        let v: Value =
            serde_json::from_str(&reply).map_err(|e| format!("the agent's reply to {execute} is not JSON: {e}"))?;
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Whether the agent answers within a few seconds.
    pub fn ping(&self) -> Result<(), String> {
        self.call("guest-ping", None, 5).map(|_| ())
    }

    /// Only the agent's version (one command: what `version()` asks at
    /// every job).
    pub fn version(&self) -> Result<String, String> {
        let info = self.call("guest-info", None, 5)?;
        Ok(info["version"].as_str().unwrap_or_default().to_string())
    }

    /// The agent's version, enabled commands and the guest's OS.
    pub fn info(&self) -> Result<GuestAgentInfo, String> {
        self.ping()?;
        let info = self.call("guest-info", None, COMMAND_TIMEOUT_SECS)?;
        // Older agents lack guest-get-osinfo: the OS is then unknown.
        let osinfo = self.call("guest-get-osinfo", None, COMMAND_TIMEOUT_SECS).unwrap_or(Value::Null);
        Ok(GuestAgentInfo::from_replies(&info, &osinfo))
    }

    /// A file of the guest, or None when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, String> {
        let handle =
            match self.call("guest-file-open", Some(json!({ "path": path, "mode": "r" })), COMMAND_TIMEOUT_SECS) {
                Ok(h) => h,
                Err(e) if e.contains("No such file") => return Ok(None),
                Err(e) => return Err(format!("open {path} in the guest: {e}")),
            };
        let mut data = Vec::new();
        let result = loop {
            let chunk = match self.call(
                "guest-file-read",
                Some(json!({ "handle": handle, "count": FILE_CHUNK })),
                COMMAND_TIMEOUT_SECS,
            ) {
                Ok(c) => c,
                Err(e) => break Err(format!("read {path} in the guest: {e}")),
            };
            match decode(&chunk["buf-b64"]) {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(e) => break Err(format!("read {path} in the guest: {e}")),
            }
            if data.len() > MAX_GUEST_FILE {
                break Err(format!("{path} in the guest is larger than {MAX_GUEST_FILE} bytes"));
            }
            if chunk["eof"].as_bool() != Some(false) || chunk["count"].as_u64() == Some(0) {
                break Ok(Some(data));
            }
        };
        let _ = self.call("guest-file-close", Some(json!({ "handle": handle })), COMMAND_TIMEOUT_SECS);
        result
    }

    /// Writes `bytes` to `path` in the guest with `mode` (octal, as chmod
    /// takes it): to a new file beside it first, renamed over it at the
    /// end, so a reader never sees half a file. Linux guests.
    pub fn write_file(&self, path: &str, bytes: &[u8], mode: &str) -> Result<(), String> {
        let temp = format!("{path}.vmbackup-new");
        let handle = self
            .call("guest-file-open", Some(json!({ "path": temp, "mode": "w" })), COMMAND_TIMEOUT_SECS)
            .map_err(|e| format!("create {temp} in the guest: {e}"))?;
        let mut written = Ok(());
        for chunk in bytes.chunks(FILE_CHUNK) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            if let Err(e) =
                self.call("guest-file-write", Some(json!({ "handle": handle, "buf-b64": b64 })), COMMAND_TIMEOUT_SECS)
            {
                written = Err(format!("write {temp} in the guest: {e}"));
                break;
            }
        }
        let closed = self.call("guest-file-close", Some(json!({ "handle": handle })), COMMAND_TIMEOUT_SECS);
        written?;
        closed.map_err(|e| format!("close {temp} in the guest: {e}"))?;
        self.run("chmod", &[mode, &temp])?;
        self.run("mv", &["-f", &temp, path])
    }

    /// Runs a short program in the guest; an error with its output unless
    /// it exits with status 0.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let a = self.exec(program, &args, Duration::from_secs(30), Duration::from_secs(1), None);
        match a.outcome {
            Outcome::Succeeded => Ok(()),
            other => Err(format!("{program} {} in the guest {other}: {}", args.join(" "), a.output.trim_end())),
        }
    }

    /// Runs `path` with `args` in the guest once, with its output captured,
    /// checking on it at most `poll` apart; killed after `timeout` or when
    /// `cancel` is cancelled.
    pub fn exec(
        &self,
        path: &str,
        args: &[String],
        timeout: Duration,
        poll: Duration,
        cancel: Option<&CancelToken>,
    ) -> Attempt {
        let start = Instant::now();
        let done = |outcome, output: String, dropped| Attempt {
            outcome,
            output,
            dropped,
            seconds: start.elapsed().as_secs_f64(),
        };
        let pid = match self.call(
            "guest-exec",
            Some(json!({ "path": path, "arg": args, "capture-output": true })),
            COMMAND_TIMEOUT_SECS,
        ) {
            Ok(r) => match r["pid"].as_i64() {
                Some(pid) => pid,
                None => return done(Outcome::NotStarted(format!("guest-exec returned no pid: {r}")), String::new(), 0),
            },
            Err(e) => return done(Outcome::NotStarted(e), String::new(), 0),
        };
        let mut nap = Duration::from_millis(20);
        loop {
            let status = match self.call("guest-exec-status", Some(json!({ "pid": pid })), COMMAND_TIMEOUT_SECS) {
                Ok(s) => s,
                Err(e) => {
                    return done(
                        Outcome::Failed(format!("the agent stopped answering about guest pid {pid}: {e}")),
                        String::new(),
                        0,
                    );
                }
            };
            if status["exited"].as_bool() == Some(true) {
                let mut output = decode(&status["out-data"]).unwrap_or_default();
                output.extend(decode(&status["err-data"]).unwrap_or_default());
                let dropped = output.len().saturating_sub(OUTPUT_LIMIT);
                let text = String::from_utf8_lossy(&output[dropped..]).into_owned();
                let outcome = match (status["exitcode"].as_i64(), status["signal"].as_i64()) {
                    (_, Some(sig)) => Outcome::Failed(format!("killed by signal {sig} in the guest")),
                    (Some(0), None) => Outcome::Succeeded,
                    (Some(code), None) => Outcome::Failed(format!("exit status {code}")),
                    (None, None) => Outcome::Failed("ended without an exit status".into()),
                };
                return done(outcome, text, dropped as u64);
            }
            if cancel.is_some_and(CancelToken::is_cancelled) {
                self.kill(pid);
                return done(Outcome::Cancelled, String::new(), 0);
            }
            if start.elapsed() >= timeout {
                self.kill(pid);
                return done(Outcome::TimedOut, String::new(), 0);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(poll.max(Duration::from_millis(20)));
        }
    }

    /// Kills a program started by [`exec`](Self::exec) (best effort: the
    /// agent has no command for it, so a program in the guest does it).
    fn kill(&self, pid: i64) {
        let pid = pid.to_string();
        let (program, args): (&str, Vec<String>) = if self.windows {
            ("taskkill", vec!["/F".into(), "/T".into(), "/PID".into(), pid])
        } else {
            ("kill", vec!["-KILL".into(), pid])
        };
        let _ = self.call(
            "guest-exec",
            Some(json!({ "path": program, "arg": args, "capture-output": false })),
            COMMAND_TIMEOUT_SECS,
        );
    }

    /// Whether the agent says the guest is frozen. A guest booted from a
    /// point taken during a freeze says so when its agent keeps its state
    /// folder on disk instead of a tmpfs: it then refuses most commands
    /// until a thaw.
    pub fn says_frozen(&self) -> bool {
        self.call("guest-fsfreeze-status", None, 5).ok().is_some_and(|v| v.as_str() == Some("frozen"))
    }

    /// Freezes every file system of the guest; how many.
    pub fn freeze(&self) -> Result<u32, String> {
        self.dom.fs_freeze()
    }

    /// Thaws every file system of the guest; how many.
    pub fn thaw(&self) -> Result<u32, String> {
        self.dom.fs_thaw()
    }
}

fn decode(v: &Value) -> Result<Vec<u8>, String> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => {
            base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("bad base64 from the agent: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Consistency;

    fn info_reply(disabled: &[&str]) -> Value {
        let names = [
            "guest-ping",
            "guest-fsfreeze-freeze",
            "guest-fsfreeze-thaw",
            "guest-exec",
            "guest-exec-status",
            "guest-file-open",
            "guest-file-read",
            "guest-file-write",
            "guest-file-close",
        ];
        json!({
            "version": "7.2.19",
            "supported_commands": names.iter().map(|n| json!({"name": n, "enabled": !disabled.contains(n), "success-response": true})).collect::<Vec<_>>()
        })
    }

    #[test]
    fn a_windows_guests_freeze_is_application_consistent_a_linux_guests_file_system() {
        // The reply of qemu-ga for Windows (virtio-win's) to guest-get-osinfo.
        let windows = json!({
            "name": "Microsoft Windows Server 2022",
            "kernel-release": "20348",
            "version": "Microsoft Windows Server 2022",
            "variant": "server",
            "pretty-name": "Windows Server 2022 Datacenter",
            "version-id": "2022",
            "variant-id": "server",
            "kernel-version": "10.0",
            "machine": "x86_64",
            "id": "mswindows"
        });
        let w = GuestAgentInfo::from_replies(&info_reply(&[]), &windows);
        assert!(w.is_windows());
        assert_eq!(w.freeze_consistency(), Consistency::Application);
        assert_eq!(w.os_name, "Windows Server 2022 Datacenter");
        let debian = json!({"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "kernel-release": "6.1.0-28-amd64"});
        let l = GuestAgentInfo::from_replies(&info_reply(&[]), &debian);
        assert!(!l.is_windows());
        assert_eq!(l.freeze_consistency(), Consistency::FileSystem);
        assert!(l.freeze_enabled && l.exec_enabled && l.files_enabled);
        assert!(l.summary().contains("Debian GNU/Linux 12 (bookworm)"), "{}", l.summary());
    }

    #[test]
    fn commands_disabled_in_the_agent_are_recorded_as_disabled() {
        // qemu-ga -b guest-exec,guest-fsfreeze-freeze (a hardened guest).
        let i = GuestAgentInfo::from_replies(&info_reply(&["guest-exec", "guest-fsfreeze-freeze"]), &Value::Null);
        assert!(!i.freeze_enabled && !i.exec_enabled && i.files_enabled);
        assert_eq!(i.os_id, "");
        assert!(i.summary().contains("freeze disabled, exec disabled, files enabled"), "{}", i.summary());
    }
}
