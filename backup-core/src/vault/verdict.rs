//! Boot verdicts: what booting a point in a throwaway domain showed
//! (`verify --boot`), kept beside the point in `verdicts/VM/POINT`, with
//! the tail of the guest's serial console and a screenshot. A verdict is a
//! host record (`Vault::seal_host_record`): moved to another point, edited
//! or forged without the vault's key, it does not open. A newer verdict
//! replaces the older one; prune removes it with its point.

use serde::{Deserialize, Serialize};

use super::{MAX_RECORD_LEN, Vault, layout};
use crate::error::{Error, Result};
use crate::model::validate_name;

/// The kind of host record a verdict is.
const RECORD_KIND: &str = "boot verdict";

/// What a boot of a point showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BootVerdict {
    /// The VM.
    pub vm: String,
    /// The point.
    pub point: String,
    /// The guest's agent answered and the in-guest test (if any) exited 0.
    pub passed: bool,
    /// Why it failed (None when it passed).
    pub reason: Option<String>,
    /// When it was booted (Unix seconds).
    pub checked_at: u64,
    /// Seconds from the domain's start to the agent's first answer.
    pub agent_seconds: Option<f64>,
    /// The in-guest test's command, when one ran.
    pub script: Option<String>,
    /// Its exit code and output (stdout then stderr, cut to 64 KiB).
    pub script_exit: Option<i64>,
    /// Its output.
    pub script_output: Option<String>,
    /// The end of the serial console's log (up to 64 KiB).
    pub console: String,
    /// What was done to judge it beyond the boot (a stale frozen state
    /// thawed, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// A PNG of the screen when it was judged (empty when none could be
    /// taken).
    #[serde(with = "b64")]
    pub screenshot: Vec<u8>,
}

impl BootVerdict {
    /// `passed` or `failed: REASON`.
    pub fn summary(&self) -> String {
        match (&self.passed, &self.reason) {
            (true, _) => "passed".into(),
            (false, Some(r)) => format!("failed: {r}"),
            (false, None) => "failed".into(),
        }
    }
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

impl Vault {
    /// Records a point's boot verdict, replacing an older one.
    ///
    /// # Errors
    /// Invalid names; errors writing to the store.
    pub(crate) fn write_boot_verdict(&self, verdict: &BootVerdict) -> Result<()> {
        validate_name("vm name", &verdict.vm)?;
        validate_name("point id", &verdict.point)?;
        let json = serde_json::to_vec(verdict).map_err(|e| Error::invalid("boot verdict", e.to_string()))?;
        let bytes = self.seal_host_record(RECORD_KIND, &[&verdict.vm, &verdict.point], &json)?;
        self.store().put(&layout::verdict(&verdict.vm, &verdict.point), bytes.into())
    }

    /// The boot verdict of a point, if it was ever booted.
    ///
    /// # Errors
    /// [`Error::Tampered`] for a verdict that does not authenticate; errors
    /// reading the store.
    pub fn boot_verdict(&self, vm: &str, point: &str) -> Result<Option<BootVerdict>> {
        validate_name("vm name", vm)?;
        validate_name("point id", point)?;
        let key = layout::verdict(vm, point);
        let Some(bytes) = self.store().get(&key, MAX_RECORD_LEN)? else { return Ok(None) };
        let object = format!("boot verdict {}", self.describe(&key));
        let json = self.open_host_record(RECORD_KIND, &[vm, point], &bytes, &object)?;
        serde_json::from_slice(&json).map(Some).map_err(|e| Error::corrupt(object, e.to_string()))
    }

    /// The boot verdicts of a VM's points, by point id.
    ///
    /// # Errors
    /// As [`boot_verdict`](Self::boot_verdict).
    pub fn boot_verdicts(&self, vm: &str) -> Result<std::collections::BTreeMap<String, BootVerdict>> {
        validate_name("vm name", vm)?;
        let folder = layout::verdicts_of(vm);
        let ids: Vec<String> = self
            .store()
            .list(&folder)?
            .iter()
            .filter_map(|o| layout::name_in(&o.key, &folder))
            .map(str::to_string)
            .collect();
        let mut out = std::collections::BTreeMap::new();
        for id in ids.into_iter().filter(|id| validate_name("point id", id).is_ok()) {
            if let Some(v) = self.boot_verdict(vm, &id)? {
                out.insert(id, v);
            }
        }
        Ok(out)
    }
}
