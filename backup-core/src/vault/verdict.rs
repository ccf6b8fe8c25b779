//! Boot verdicts: what booting a point in a throwaway domain showed
//! (`verify --boot`), kept beside the point in `verdicts/VM/POINT`, with
//! the tail of the guest's serial console and a screenshot. A verdict is a
//! host record (`Vault::seal_host_record`): moved to another point, edited
//! or forged without the vault's key, it does not open. A newer verdict
//! replaces the older one; prune removes it with its point.

use serde::{Deserialize, Serialize};

use super::{MAX_RECORD_LEN, Vault};
use crate::error::{Error, Result};
use crate::model::{hex, validate_name};

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
    fn verdict_key(vm: &str, point: &str) -> String {
        format!("verdicts/{vm}/{point}")
    }

    /// Records a point's boot verdict, replacing an older one.
    ///
    /// # Errors
    /// Invalid names; I/O errors; the remote store's errors.
    pub(crate) fn write_boot_verdict(&self, verdict: &BootVerdict) -> Result<()> {
        validate_name("vm name", &verdict.vm)?;
        validate_name("point id", &verdict.point)?;
        let json = serde_json::to_vec(verdict).map_err(|e| Error::invalid("boot verdict", e.to_string()))?;
        let bytes = self.seal_host_record(RECORD_KIND, &[&verdict.vm, &verdict.point], &json)?;
        let key = Self::verdict_key(&verdict.vm, &verdict.point);
        if let Some(remote) = &self.remote {
            remote.store().put(&key, bytes.clone())?;
        }
        let dir = self.root.join("verdicts").join(&verdict.vm);
        self.dir.mkdirs(&dir)?;
        let mut r = [0u8; 6];
        let _ = getrandom::fill(&mut r);
        let tmp = self.root.join("tmp").join(format!("verdict-{}.{}", verdict.point, hex(&r)));
        self.dir.write_durable(&tmp, &self.root.join(&key), &bytes)
    }

    /// The boot verdict of a point, if it was ever booted.
    ///
    /// # Errors
    /// [`Error::Tampered`] for a verdict that does not authenticate; I/O
    /// errors.
    pub fn boot_verdict(&self, vm: &str, point: &str) -> Result<Option<BootVerdict>> {
        validate_name("vm name", vm)?;
        validate_name("point id", point)?;
        let key = Self::verdict_key(vm, point);
        let bytes = match &self.remote {
            Some(remote) => remote.store().get(&key)?,
            None => match self.dir.read(&self.root.join(&key), MAX_RECORD_LEN) {
                Ok(b) => Some(b),
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
        };
        let Some(bytes) = bytes else { return Ok(None) };
        let object = format!("boot verdict {key} of vault {}", self.location());
        let json = self.open_host_record(RECORD_KIND, &[vm, point], &bytes, &object)?;
        serde_json::from_slice(&json).map(Some).map_err(|e| Error::corrupt(object, e.to_string()))
    }

    /// The boot verdicts of a VM's points, by point id.
    ///
    /// # Errors
    /// As [`boot_verdict`](Self::boot_verdict).
    pub fn boot_verdicts(&self, vm: &str) -> Result<std::collections::BTreeMap<String, BootVerdict>> {
        validate_name("vm name", vm)?;
        let ids: Vec<String> = match &self.remote {
            Some(remote) => remote
                .store()
                .list(&format!("verdicts/{vm}/"))?
                .into_iter()
                .filter_map(|o| o.key.rsplit('/').next().map(str::to_string))
                .collect(),
            None => self.dir.list(&self.root.join("verdicts").join(vm))?,
        };
        let mut out = std::collections::BTreeMap::new();
        for id in ids.into_iter().filter(|id| validate_name("point id", id).is_ok()) {
            if let Some(v) = self.boot_verdict(vm, &id)? {
                out.insert(id, v);
            }
        }
        Ok(out)
    }

    /// Removes a point's verdict (prune, when it removes the point).
    pub(crate) fn remove_boot_verdict(&self, vm: &str, point: &str) -> Result<()> {
        let key = Self::verdict_key(vm, point);
        if let Some(remote) = &self.remote {
            remote.store().delete(&key)?;
        }
        self.dir.remove_file_if_exists(&self.root.join(&key)).map(|_| ())
    }
}
