//! S3 Object Lock for an immutable vault: while a vault is immutable for N
//! days, every object it writes to S3 is locked in compliance mode until N
//! days after it was written, so that no one, not even with the vault's own
//! credentials, can delete that version of it before then.
//!
//! `object_store` sets no retention on what it writes (its requests are
//! signed before any header could be added), so the two S3 calls needed are
//! made here: `GET ?object-lock` (does the bucket have Object Lock?) and
//! `PUT <key>?retention` after each write. They reuse `object_store`'s
//! SigV4 signer and its credential chain, so they reach whatever the
//! vault's own requests reach.
//!
//! Object Lock keeps versions, not keys: with the vault's credentials a
//! delete still succeeds, as a delete marker, and the locked version stays
//! readable by version id (and undeletable) until its retention ends.
//! Removing old versions afterwards is the bucket's lifecycle rule's work.

use std::sync::Arc;

use bytes::Bytes;
use object_store::ClientOptions;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::path::Path as ObjectPath;

/// Percent-encoding of a key in a URL path as S3 signs it: everything but
/// letters, digits, `-._~` and `/`.
const PATH_ENCODE_SET: percent_encoding::AsciiSet =
    percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');

/// The retention calls of one bucket.
pub(crate) struct S3Lock {
    s3: Arc<AmazonS3>,
    http: HttpClient,
    /// `https://host/bucket` (path style) or `https://bucket.host`.
    bucket_url: String,
    region: String,
}

impl std::fmt::Debug for S3Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Lock").field("bucket_url", &self.bucket_url).finish()
    }
}

/// An error of these calls, in `object_store`'s terms so that the backend's
/// retries judge it as they judge its own (a 4xx other than 408 and 429 is
/// definite).
fn failed(what: String) -> object_store::Error {
    object_store::Error::Generic { store: "S3", source: what.into() }
}

impl S3Lock {
    /// The calls for the bucket `builder` names, addressed as `object_store`
    /// addresses it (endpoint, path or virtual-hosted style, region).
    pub(crate) fn new(
        builder: &AmazonS3Builder,
        s3: Arc<AmazonS3>,
        bucket: &str,
        allow_http: bool,
    ) -> Result<S3Lock, object_store::Error> {
        let region = builder.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_string());
        let virtual_hosted =
            builder.get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        let bucket_url = match (builder.get_config_value(&AmazonS3ConfigKey::Endpoint), virtual_hosted) {
            (Some(endpoint), true) => endpoint.trim_end_matches('/').to_string(),
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let http = ReqwestConnector::default().connect(&ClientOptions::new().with_allow_http(allow_http))?;
        Ok(S3Lock { s3, http, bucket_url, region })
    }

    /// Whether the bucket has Object Lock enabled.
    pub(crate) async fn enabled(&self) -> Result<bool, object_store::Error> {
        let url = format!("{}?object-lock", self.bucket_url);
        let (status, body) = self.send(http::Method::GET, &url, Bytes::new()).await?;
        let text = String::from_utf8_lossy(&body);
        match status {
            200 => Ok(text.contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>")),
            // S3 answers 404 ObjectLockConfigurationNotFoundError for a
            // bucket without Object Lock (moto: 400, the same code).
            _ if text.contains("ObjectLockConfigurationNotFound") => Ok(false),
            _ => Err(failed(format!("S3 answered status {status} to GET {url}: {}", text.trim()))),
        }
    }

    /// Locks the newest version of the object at `path`, in compliance
    /// mode, until `until` (whole seconds).
    pub(crate) async fn retain(&self, path: &ObjectPath, until: jiff::Timestamp) -> Result<(), object_store::Error> {
        let key = percent_encoding::utf8_percent_encode(path.as_ref(), &PATH_ENCODE_SET);
        let url = format!("{}/{key}?retention", self.bucket_url);
        let until = jiff::Timestamp::from_second(until.as_second()).map_err(|e| failed(e.to_string()))?;
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            until.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        let (status, answer) = self.send(http::Method::PUT, &url, Bytes::from(body)).await?;
        if status == 200 {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&answer);
            Err(failed(format!("S3 answered status {status} to PUT {url}: {}", text.trim())))
        }
    }

    /// Sends one signed request (with a Content-MD5 for a body, which S3
    /// requires of retention calls) and returns the status and body.
    async fn send(&self, method: http::Method, url: &str, body: Bytes) -> Result<(u16, Bytes), object_store::Error> {
        use base64::Engine as _;
        use md5::Digest as _;
        let mut request = http::Request::builder().method(method).uri(url);
        if !body.is_empty() {
            let md5 = md5::Md5::digest(&body);
            request = request.header("content-md5", base64::engine::general_purpose::STANDARD.encode(md5));
        }
        let mut request = request
            .body(HttpRequestBody::from(body))
            .map_err(|e| failed(format!("cannot build a request to {url}: {e}")))?;
        let credential = self.s3.credentials().get_credential().await?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        let response = self.http.execute(request).await.map_err(|e| failed(format!("{url}: {e}")))?;
        let status = response.status().as_u16();
        let body = response.into_body().bytes().await.map_err(|e| failed(format!("{url}: {e}")))?;
        Ok((status, body))
    }
}
