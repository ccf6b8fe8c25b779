//! [`Store`] over the `object_store` crate: Azure Blob (`az://`) and S3
//! (`s3://`). `object_store` is async; a small tokio runtime private to
//! each store runs it behind the synchronous [`Store`] calls.
//!
//! Retries: `object_store` retries each HTTP request (connection refused,
//! timeouts of idempotent requests, 5xx, 429) with exponential backoff for
//! up to [`REQUEST_RETRY_TIMEOUT`]; on top of that every whole operation
//! that still fails with a transient error is tried again [`OP_ATTEMPTS`]
//! times with backoff, which also covers a PUT cut mid-body (which
//! `object_store` does not retry). A create-only put retried after a
//! failure that may have landed compares the object found with its own
//! bytes.

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig};

use bytes::Bytes;

use super::s3_lock::S3Lock;
use super::{ObjectInfo, Store};
use crate::error::{Error, Result};
use crate::vault::settings::StoreLock;

/// How long `object_store` keeps retrying one request.
pub(crate) const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a whole operation is tried when it fails transiently.
pub(crate) const OP_ATTEMPTS: u32 = 4;
/// Parallel requests for listings-driven fetches (index files, heads).
const FETCH_CONCURRENCY: usize = 16;

/// Where a remote vault is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// "az" or "s3".
    pub scheme: String,
    /// The container or bucket.
    pub bucket: String,
    /// The prefix inside it, without leading or trailing '/'; may be empty.
    pub prefix: String,
}

/// Splits `az://CONTAINER/PREFIX` or `s3://BUCKET/PREFIX`.
pub(crate) fn parse_target(url: &str) -> Result<Target> {
    let bad = |why: &str| Error::invalid(format!("vault url {url}"), why.to_string());
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| bad("expected az://CONTAINER/PREFIX or s3://BUCKET/PREFIX"))?;
    if !matches!(scheme, "az" | "s3") {
        return Err(bad("the scheme must be az:// (Azure Blob) or s3:// (S3)"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("it names no container or bucket"));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(bad("the prefix must not hold '.', '..' or empty parts"));
    }
    Ok(Target { scheme: scheme.to_string(), bucket: bucket.to_string(), prefix: prefix.to_string() })
}

/// A vault's objects in Azure Blob or S3.
pub(crate) struct ObjectBackend {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    target: Target,
    url: String,
    /// S3's Object Lock calls (None on Azure Blob).
    s3_lock: Option<S3Lock>,
    /// Days each object written is locked for (0: none), as the vault's
    /// settings last read say.
    lock_days: AtomicU32,
}

impl ObjectBackend {
    /// Connects to the store a URL names. Credentials and endpoints come
    /// from each cloud's environment variables (`AZURE_STORAGE_*`,
    /// `AZURITE_BLOB_STORAGE_URL` with `AZURE_STORAGE_USE_EMULATOR=true`;
    /// `AWS_*`, `AWS_ENDPOINT_URL`); `endpoint` overrides the endpoint (an
    /// `http://` one is allowed, for an emulator).
    pub(crate) fn connect(url: &str, endpoint: Option<&str>) -> Result<ObjectBackend> {
        let target = parse_target(url)?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 12,
            retry_timeout: REQUEST_RETRY_TIMEOUT,
        };
        let fail = |e: object_store::Error| Error::invalid(format!("vault url {url}"), e.to_string());
        let mut s3_lock = None;
        let store: Arc<dyn ObjectStore> = match target.scheme.as_str() {
            "az" => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut b = MicrosoftAzureBuilder::from_env().with_container_name(&target.bucket).with_retry(retry);
                if let Some(ep) = endpoint {
                    // The emulator mode ignores an endpoint: name the
                    // emulator's well-known account instead when none is set.
                    let emulator = b.get_config_value(&AzureConfigKey::UseEmulator).is_some_and(|v| v == "true");
                    if emulator || b.get_config_value(&AzureConfigKey::AccountName).is_none() {
                        b = b.with_use_emulator(false);
                        if b.get_config_value(&AzureConfigKey::AccountName).is_none() {
                            b = b.with_account(AZURITE_ACCOUNT);
                        }
                        if b.get_config_value(&AzureConfigKey::AccessKey).is_none() {
                            b = b.with_access_key(AZURITE_KEY);
                        }
                    }
                    let account = b.get_config_value(&AzureConfigKey::AccountName).unwrap_or_default();
                    let ep = ep.trim_end_matches('/');
                    // Azurite serves accounts under a path, the cloud under a host name.
                    let full = if ep.starts_with("http://") && !ep.ends_with(&account) {
                        format!("{ep}/{account}")
                    } else {
                        ep.to_string()
                    };
                    b = b.with_endpoint(full).with_allow_http(ep.starts_with("http://"));
                }
                Arc::new(b.build().map_err(fail)?)
            }
            _ => {
                use object_store::aws::AmazonS3Builder;
                let mut b = AmazonS3Builder::from_env().with_bucket_name(&target.bucket).with_retry(retry);
                let mut allow_http = false;
                if let Some(ep) = endpoint {
                    allow_http = ep.starts_with("http://");
                    b = b.with_endpoint(ep).with_allow_http(allow_http);
                } else if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL") {
                    allow_http = ep.starts_with("http://");
                    b = b.with_allow_http(allow_http);
                }
                let s3 = Arc::new(b.clone().build().map_err(fail)?);
                s3_lock = Some(S3Lock::new(&b, Arc::clone(&s3), &target.bucket, allow_http).map_err(fail)?);
                s3
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vmbackup-store")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start the object store runtime for", url, e))?;
        let url = format!("{}://{}/{}", target.scheme, target.bucket, target.prefix);
        Ok(ObjectBackend {
            rt,
            store,
            target,
            url: url.trim_end_matches('/').to_string(),
            s3_lock,
            lock_days: AtomicU32::new(0),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.target.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.target.prefix))
        }
    }

    /// The key of a listed path, relative to the prefix.
    fn key_of(&self, path: &ObjectPath) -> String {
        let s = path.as_ref();
        if self.target.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.target.prefix).map(|k| k.trim_start_matches('/')).unwrap_or(s).to_string()
        }
    }

    /// Runs a future to completion on the private runtime, also from a
    /// thread that is itself inside a tokio runtime (a host's).
    fn run<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.rt.block_on(f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.rt.block_on(f)
        }
    }

    /// Locks the object just written under `key` until the vault's
    /// immutable days have passed, when the vault is immutable and the
    /// store is S3.
    async fn lock_written(&self, key: &str, path: &ObjectPath) -> Result<()> {
        let days = self.lock_days.load(Ordering::Relaxed);
        let Some(lock) = self.s3_lock.as_ref().filter(|_| days > 0) else { return Ok(()) };
        let span = jiff::SignedDuration::from_hours(24 * i64::from(days));
        let until = jiff::Timestamp::now().checked_add(span).map_err(|e| {
            Error::invalid(format!("lock of {}", self.describe(key)), format!("{days} days from now: {e}"))
        })?;
        with_retries(|| lock.retain(path, until)).await.map_err(|e| self.err("lock (the vault is immutable)", key, e))
    }

    fn err(&self, action: &'static str, key: &str, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                std::io::ErrorKind::AlreadyExists
            }
            _ if transient(&e) => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::Other,
        };
        Error::io(action, self.describe(key), std::io::Error::new(kind, e.to_string()))
    }
}

/// The well-known account of Azure's storage emulator.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// The well-known key of Azure's storage emulator (public, documented by Microsoft).
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Whether an error may pass if the operation is tried again: anything but
/// a definite answer (not found, exists, precondition, bad request or
/// credentials).
fn transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::NotFound { .. }
        | object_store::Error::AlreadyExists { .. }
        | object_store::Error::Precondition { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::UnknownConfigurationKey { .. } => false,
        other => {
            let text = other.to_string();
            // A client error (4xx) other than 408 and 429 is a definite no.
            !(text.contains("status 4") && !text.contains("status 408") && !text.contains("status 429"))
        }
    }
}

/// Tries an operation up to [`OP_ATTEMPTS`] times while it fails
/// transiently, with backoff (1, 2, 4 s).
async fn with_retries<T, F, Fut>(mut op: F) -> std::result::Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, object_store::Error>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < OP_ATTEMPTS && transient(&e) => {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn info(key: String, m: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo { key, size: m.size, modified: SystemTime::from(m.last_modified) }
}

/// The largest object fetched whole (configs, index files, manifests,
/// segments, VM records, gc marks): the largest of those the format allows
/// (a manifest, 64 MiB). Packs are read by ranges, each bounded by a frame.
/// Whoever can write the store must not make a reader hold gigabytes.
const MAX_WHOLE_OBJECT: u64 = 64 << 20;

fn too_big(path: &ObjectPath, size: u64, limit: u64) -> object_store::Error {
    object_store::Error::Generic {
        store: "vault",
        source: format!("{path} holds {size} bytes, more than such a vault object may ({limit})").into(),
    }
}

impl Store for ObjectBackend {
    fn describe(&self, key: &str) -> String {
        if key.is_empty() { self.url.clone() } else { format!("{}/{key}", self.url) }
    }

    fn get(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        let store = &self.store;
        let limit = limit.min(MAX_WHOLE_OBJECT);
        let r = self.run(with_retries(|| async {
            match store.get(&path).await {
                Ok(g) if g.meta.size > limit => Err(too_big(&path, g.meta.size, limit)),
                Ok(g) => g.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        }));
        r.map_err(|e| self.err("download", key, e))
    }

    fn get_many(&self, keys: &[String], limit: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let store = &self.store;
        let limit = limit.min(MAX_WHOLE_OBJECT);
        let futs = keys.iter().map(|k| {
            let path = self.path(k);
            async move {
                let r = with_retries(|| async {
                    match store.get(&path).await {
                        Ok(g) if g.meta.size > limit => Err(too_big(&path, g.meta.size, limit)),
                        Ok(g) => g.bytes().await.map(|b| Some(b.to_vec())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .await;
                r.map_err(|e| (k.clone(), e))
            }
        });
        let r = self.run(futures::stream::iter(futs).buffered(FETCH_CONCURRENCY).try_collect::<Vec<_>>());
        r.map_err(|(k, e)| self.err("download", &k, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(key);
        let store = &self.store;
        let r = self.run(with_retries(|| async { store.get_range(&path, range.clone()).await.map(|b| b.to_vec()) }));
        r.map_err(|e| {
            let what = format!("bytes {}..{} of", range.start, range.end);
            let mut err = self.err("download", key, e);
            if let Error::Io { path, .. } = &mut err {
                *path = PathBuf::from(format!("{what} {}", self.describe(key)));
            }
            err
        })
    }

    fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes);
        let store = &self.store;
        let r = self.run(with_retries(|| async { store.put(&path, payload.clone()).await.map(|_| ()) }));
        r.map_err(|e| self.err("upload", key, e))?;
        self.run(self.lock_written(key, &path))
    }

    fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<()> {
        let path = self.path(key);
        // A payload of many buffers: a retry clones the list, not the bytes.
        let payload = PutPayload::from_iter(parts);
        let store = &self.store;
        let r = self.run(with_retries(|| async { store.put(&path, payload.clone()).await.map(|_| ()) }));
        r.map_err(|e| self.err("upload", key, e))?;
        self.run(self.lock_written(key, &path))
    }

    fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let path = self.path(key);
        let payload = PutPayload::from(bytes.clone());
        let store = &self.store;
        let mut tried = false;
        let r = self.run(with_retries(|| {
            let again = std::mem::replace(&mut tried, true);
            let payload = payload.clone();
            let path = &path;
            let bytes = &bytes;
            async move {
                let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                match store.put_opts(path, payload, opts).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                        // After a failed attempt the object found may be
                        // our own, written before the answer was lost.
                        if again {
                            let found = store.get(path).await?.bytes().await?;
                            Ok(found.as_ref() == bytes.as_ref())
                        } else {
                            Ok(false)
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }));
        if r.as_ref().is_ok_and(|created| *created) {
            self.run(self.lock_written(key, &path))?;
        }
        r.map_err(|e| self.err("create", key, e))
    }

    fn publish(&self, files: &[(String, PathBuf)], concurrency: usize) -> Result<()> {
        let store = &self.store;
        let futs = files.iter().map(|(key, file)| {
            let path = self.path(key);
            async move {
                let bytes = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
                let payload = PutPayload::from(bytes);
                with_retries(|| async { store.put(&path, payload.clone()).await.map(|_| ()) })
                    .await
                    .map_err(|e| self.err("upload", key, e))?;
                self.lock_written(key, &path).await
            }
        });
        self.run(futures::stream::iter(futs).buffer_unordered(concurrency.max(1)).try_collect::<Vec<()>>())?;
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(prefix.trim_end_matches('/'));
        let store = &self.store;
        let r = self.run(with_retries(|| async { store.list(Some(&path)).try_collect::<Vec<_>>().await }));
        let metas = r.map_err(|e| self.err("list", prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas.iter().map(|m| info(self.key_of(&m.location), m)).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn head_many(&self, keys: &[String]) -> Result<Vec<Option<ObjectInfo>>> {
        let store = &self.store;
        let futs = keys.iter().map(|k| {
            let path = self.path(k);
            async move {
                let r = with_retries(|| async {
                    match store.head(&path).await {
                        Ok(m) => Ok(Some(info(k.clone(), &m))),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                })
                .await;
                r.map_err(|e| (k.clone(), e))
            }
        });
        let r = self.run(futures::stream::iter(futs).buffered(FETCH_CONCURRENCY).try_collect::<Vec<_>>());
        r.map_err(|(k, e)| self.err("stat", &k, e))
    }

    fn list_folders(&self, folder: &str) -> Result<Vec<String>> {
        let path = self.path(folder.trim_end_matches('/'));
        let store = &self.store;
        let r = self.run(with_retries(|| async { store.list_with_delimiter(Some(&path)).await }));
        let listing = r.map_err(|e| self.err("list", folder, e))?;
        let mut out: Vec<String> =
            listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        out.sort();
        Ok(out)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let store = &self.store;
        let futs = keys.iter().map(|k| {
            let path = self.path(k);
            async move {
                let r = with_retries(|| async {
                    match store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await;
                r.map_err(|e| (k.clone(), e))
            }
        });
        let r = self.run(futures::stream::iter(futs).buffer_unordered(FETCH_CONCURRENCY).try_collect::<Vec<()>>());
        r.map(drop).map_err(|(k, e)| self.err("delete", &k, e))
    }

    fn open_file(&self, _key: &str, _flags: libc::c_int) -> Option<Result<std::fs::File>> {
        None
    }

    fn lock_writes(&self, days: u32) {
        self.lock_days.store(days, Ordering::Relaxed);
    }

    fn store_lock(&self) -> Result<StoreLock> {
        let Some(lock) = &self.s3_lock else { return Ok(StoreLock::Unavailable) };
        let enabled = self.run(with_retries(|| lock.enabled()));
        match enabled.map_err(|e| self.err("read the Object Lock configuration of", "", e))? {
            true => Ok(StoreLock::Enabled),
            false => Ok(StoreLock::Disabled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_bad_ones_refused() {
        let t = parse_target("az://backups/fleet/eu").expect("az");
        assert_eq!((t.scheme.as_str(), t.bucket.as_str(), t.prefix.as_str()), ("az", "backups", "fleet/eu"));
        let t = parse_target("s3://bucket").expect("s3");
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("bucket", ""));
        for bad in ["gs://b/p", "az:///p", "s3://b/a/../c", "az://b/a//c", "/local/path"] {
            let e = parse_target(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
