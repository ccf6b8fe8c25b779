//! Installing pre/post scripts into a Linux guest through its agent (the
//! `--guest-scripts CONFIG` of `prepare`): the host's
//! `VMSnapshotScriptPluginConfig.json` names scripts on the host; they are
//! copied to fixed paths in the guest, and the configuration is copied
//! there with those paths. A file already there with the same bytes is left
//! alone, so installing again changes nothing; each file is written beside
//! its place and renamed over it. What was found or changed is returned
//! for the VM's record.

use std::path::Path;

use serde_json::Value;

use super::agent::{Agent, GuestAgentInfo};
use super::quiesce::{GUEST_CONFIG, GUEST_DIR, GUEST_POST_SCRIPT, GUEST_PRE_SCRIPT};
use crate::snapshot::ScriptsConfig;

/// Installs the scripts and the configuration of `config` (a host file)
/// into the guest; one line per file.
pub(crate) fn install(agent: &Agent<'_>, info: &GuestAgentInfo, config: &Path) -> Result<Vec<String>, String> {
    let cfg = ScriptsConfig::load(config).map_err(|e| e.to_string())?;
    if info.is_windows() {
        return Err("installing scripts into a Windows guest is not supported (its freeze is a VSS snapshot)".into());
    }
    if !info.files_enabled || !info.exec_enabled {
        return Err("the guest agent has guest-file-* or guest-exec disabled".into());
    }
    agent.run("mkdir", &["-p", GUEST_DIR])?;
    agent.run("chmod", &["0700", GUEST_DIR])?;
    let mut lines = Vec::new();
    for (stage, host, guest) in
        [("pre", &cfg.pre_script, GUEST_PRE_SCRIPT), ("post", &cfg.post_script, GUEST_POST_SCRIPT)]
    {
        if let Some(host) = host {
            let bytes = std::fs::read(host).map_err(|e| format!("read {}: {e}", host.display()))?;
            lines.push(put(agent, guest, &bytes, "0700", &format!("the {stage}-script {}", host.display()))?);
        }
    }
    let text = std::fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let guest_config = guest_config(&text, &cfg)?;
    lines.push(put(agent, GUEST_CONFIG, guest_config.as_bytes(), "0600", "the scripts configuration")?);
    Ok(lines)
}

/// The host's configuration with the guest's script paths.
fn guest_config(text: &str, cfg: &ScriptsConfig) -> Result<String, String> {
    let mut json: Value = serde_json::from_str(text).map_err(|e| format!("the scripts configuration: {e}"))?;
    let Value::Object(obj) = &mut json else {
        return Err("the scripts configuration is not a JSON object".into());
    };
    for (key, guest, present) in [
        ("preScriptLocation", GUEST_PRE_SCRIPT, cfg.pre_script.is_some()),
        ("postScriptLocation", GUEST_POST_SCRIPT, cfg.post_script.is_some()),
    ] {
        obj.retain(|k, _| !k.eq_ignore_ascii_case(key));
        obj.insert(key.into(), Value::String(if present { guest.into() } else { String::new() }));
    }
    serde_json::to_string_pretty(&json).map(|t| t + "\n").map_err(|e| e.to_string())
}

/// Puts `bytes` at `path` in the guest unless they are there already.
fn put(agent: &Agent<'_>, path: &str, bytes: &[u8], mode: &str, what: &str) -> Result<String, String> {
    let hash = blake3::hash(bytes).to_hex();
    let hash = &hash[..16];
    if agent.read_file(path)?.as_deref() == Some(bytes) {
        return Ok(format!("{what} is already installed in the guest as {path} (blake3 {hash})"));
    }
    agent.write_file(path, bytes, mode)?;
    Ok(format!("installed {what} in the guest as {path} (blake3 {hash})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_configuration_names_the_guest_paths_and_keeps_the_rest() {
        let text = r#"{"pluginName":"ScriptRunner","PRESCRIPTLOCATION":"/host/pre.sh","postScriptLocation":"","timeoutInSeconds":30,"continueBackupOnFailure":false}"#;
        let cfg = ScriptsConfig::from_json(text, Path::new("/host/c.json")).expect("parses");
        let out = guest_config(text, &cfg).expect("rewrites");
        let back = ScriptsConfig::from_json(&out, Path::new(GUEST_CONFIG)).expect("parses back");
        assert_eq!(back.pre_script.as_deref(), Some(Path::new(GUEST_PRE_SCRIPT)));
        assert_eq!(back.post_script, None);
        assert!(!back.continue_on_failure);
        assert_eq!(back.timeout, std::time::Duration::from_secs(30));
        assert!(!out.contains("/host/pre.sh"), "{out}");
    }
}
