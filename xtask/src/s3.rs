//! The few S3 calls xtask makes (get, put, delete an object; is the bucket there): each
//! request signed by rusty-s3 (SigV4, as a presigned URL, path-style) and sent with ureq,
//! with a time limit and a bounded response body.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// How long a signed request stays valid, and how long one call may take.
const SIGNED_FOR: Duration = Duration::from_secs(300);
const CALL_LIMIT: Duration = Duration::from_secs(120);
/// The largest object xtask reads back (its own manifests).
const READ_LIMIT: u64 = 64 << 20;

pub struct ObjectStore {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    endpoint: String,
}

impl ObjectStore {
    pub fn new(endpoint: &str, bucket: &str, region: &str, key: &str, secret: &str) -> Result<ObjectStore> {
        let url: url::Url = endpoint.parse().with_context(|| format!("`{endpoint}` is not an endpoint URL"))?;
        let b = Bucket::new(url, UrlStyle::Path, bucket.to_string(), region.to_string())
            .map_err(|e| anyhow!("bucket {bucket} at {endpoint}: {e}"))?;
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(CALL_LIMIT)).build().into();
        Ok(ObjectStore { bucket: b, credentials: Credentials::new(key, secret), agent, endpoint: endpoint.to_string() })
    }

    fn failed(&self, what: &str, key: &str, status: u16, body: &str) -> anyhow::Error {
        let code = body.split("<Code>").nth(1).and_then(|r| r.split("</Code>").next()).unwrap_or("");
        let fix = match code {
            "NoSuchBucket" => format!(" (create bucket {}; the object-store overlay makes it)", self.bucket.name()),
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
                " (check the keys: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or Secret airflow-s3)".to_string()
            }
            _ => String::new(),
        };
        anyhow!("{what} s3://{}/{key} at {}: HTTP {status} {code}{fix}", self.bucket.name(), self.endpoint)
    }

    fn send(&self, req: ureq::RequestBuilder<ureq::typestate::WithBody>, body: &[u8]) -> Result<(u16, String)> {
        let mut resp =
            req.send(body).map_err(|e| anyhow!("cannot reach the object store at {}: {e}", self.endpoint))?;
        let status = resp.status().as_u16();
        Ok((status, resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default()))
    }

    /// The object, or None when there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let url = self.bucket.get_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let mut resp = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| anyhow!("cannot reach the object store at {}: {e}", self.endpoint))?;
        match resp.status().as_u16() {
            200 => Ok(Some(
                resp.body_mut()
                    .with_config()
                    .limit(READ_LIMIT)
                    .read_to_vec()
                    .with_context(|| format!("cannot read s3://{}/{key}", self.bucket.name()))?,
            )),
            404 => {
                let body = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
                if body.contains("NoSuchBucket") {
                    return Err(self.failed("cannot read", key, 404, &body));
                }
                Ok(None)
            }
            s => {
                let body = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
                Err(self.failed("cannot read", key, s, &body))
            }
        }
    }

    pub fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        let url = self.bucket.put_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        match self.send(self.agent.put(url.as_str()), body)? {
            (200, _) => Ok(()),
            (s, b) => Err(self.failed("cannot write", key, s, &b)),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let url = self.bucket.delete_object(Some(&self.credentials), key).sign(SIGNED_FOR);
        let mut resp = self
            .agent
            .delete(url.as_str())
            .call()
            .map_err(|e| anyhow!("cannot reach the object store at {}: {e}", self.endpoint))?;
        match resp.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            s => {
                let body = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
                Err(self.failed("cannot delete", key, s, &body))
            }
        }
    }

    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }
}

/// A key is a relative path of `/`-separated parts, none empty, `.` or `..`.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        bail!("`{key}` cannot be an object key here: use a relative path without empty, `.` or `..` parts");
    }
    Ok(())
}
