//! An HTTP client for one registry: authentication per scope, manifests, and blobs
//! streamed both ways.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::super::store::Store;
use super::super::{Descriptor, DescriptorExt, Digest, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MediaType};
use super::auth::{Credentials, credentials_for, parse_challenge};

/// Whether `host` may be spoken to over plain HTTP: loopback, or named by the user.
pub fn is_insecure(host: &str, insecure: &[String]) -> bool {
    let name = host.rsplit_once(':').filter(|(_, p)| !p.contains(']')).map(|(h, _)| h).unwrap_or(host);
    let loopback = name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback || insecure.iter().any(|i| i == host || i == name)
}

/// How long the registry may stay silent (connecting, answering, each read and write):
/// XTASK_REGISTRY_TIMEOUT seconds, 60 by default.
fn stall_limit() -> Duration {
    crate::limits::env_seconds("XTASK_REGISTRY_TIMEOUT", 60)
}

/// The whole of one request, body included: a few stall limits, plus the body's size at a
/// floor rate of 1 MiB/s, so a registry that trickles bytes is stopped too.
fn total_limit(stall: Duration, body: u64) -> Duration {
    stall * 3 + Duration::from_secs(body >> 20)
}

/// The scheme and authority of a URL (`https://host:port`), the unit credentials are
/// bound to.
fn origin(url: &str) -> Option<(String, String)> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    Some((uri.scheme_str()?.to_ascii_lowercase(), uri.authority()?.as_str().to_ascii_lowercase()))
}

/// A client for one registry. Credentials and tokens go only to the registry's own origin
/// (scheme, host and port): not to an upload location, a redirect or a token realm
/// elsewhere (Docker Hub's own token service excepted), and plain HTTP only to loopback or
/// `--insecure-registry` hosts.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    pub host: String,
    insecure: Vec<String>,
    creds: Option<Credentials>,
    stall: Duration,
    /// Authorization header per scope, once obtained.
    tokens: Mutex<BTreeMap<String, String>>,
}

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Reader(&'a mut dyn Read, u64),
}

impl Client {
    pub fn new(host: &str, insecure: &[String]) -> Result<Client> {
        let api_host = if host == "docker.io" { "registry-1.docker.io" } else { host };
        let scheme = if is_insecure(host, insecure) { "http" } else { "https" };
        let stall = stall_limit();
        // Redirects are followed by `send`, which decides per hop what may go along.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(stall))
            .timeout_resolve(Some(stall))
            .timeout_recv_response(Some(stall))
            .timeout_per_read(Some(stall))
            .timeout_per_write(Some(stall))
            .max_redirects(0)
            .build()
            .into();
        Ok(Client {
            agent,
            base: format!("{scheme}://{api_host}"),
            host: host.to_string(),
            insecure: insecure.to_vec(),
            creds: credentials_for(host)?,
            stall,
            tokens: Mutex::new(BTreeMap::new()),
        })
    }

    /// An absolute URL for `path`, which the registry may have given (a Location): refused
    /// when it would take us to plain HTTP on a host that is neither loopback nor named with
    /// --insecure-registry.
    fn url(&self, path: &str) -> Result<String> {
        let url = if path.starts_with('/') { format!("{}{path}", self.base) } else { path.to_string() };
        let Some((scheme, authority)) = origin(&url) else {
            bail!("registry {} sent `{path}`, which is not a URL xtask can follow", self.host);
        };
        match scheme.as_str() {
            "https" => Ok(url),
            "http" if is_insecure(&authority, &self.insecure) => Ok(url),
            _ => bail!(
                "registry {} sent xtask to `{url}`, which is not HTTPS; refused (plain HTTP is for loopback and hosts named with --insecure-registry)",
                self.host
            ),
        }
    }

    /// Whether credentials for this registry may go to `url`.
    fn is_own(&self, url: &str) -> bool {
        origin(url).is_some_and(|o| origin(&self.base) == Some(o))
    }

    /// Sends one request, given at most `total_limit` for its `body_size` bytes.
    fn run(
        &self,
        req: ureq::http::Request<impl ureq::AsSendBody>,
        body_size: u64,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        self.agent
            .run(self.agent.configure_request(req).timeout_global(Some(total_limit(self.stall, body_size))).build())
    }

    fn unreachable(&self, url: &str, e: ureq::Error) -> anyhow::Error {
        if let ureq::Error::Timeout(t) = e {
            return anyhow!(
                "registry {} stalled at {url}: {t} (it was given {}s of silence; raise XTASK_REGISTRY_TIMEOUT if the registry is slow but alive)",
                self.host,
                self.stall.as_secs()
            );
        }
        anyhow!(
            "registry {} is unreachable at {url} ({e}); check the address, that the registry runs, and --insecure-registry for plain HTTP",
            self.host,
        )
    }

    /// One request, authenticating on a 401 challenge and retrying once, and following
    /// redirects of bodiless requests (a blob served from object storage). The
    /// Authorization header goes only to the registry's own origin.
    fn send(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut url = self.url(path)?;
        let (mut attempts, mut hops) = (0, 0);
        if matches!(body, Body::Empty) && !matches!(method, "GET" | "HEAD") {
            // An empty POST or PUT says so (Content-Length: 0) rather than going chunked.
            body = Body::Bytes(&[]);
        }
        loop {
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if self.is_own(&url)
                && let Some(auth) = self.tokens.lock().expect("token lock").get(scope)
            {
                req = req.header("Authorization", auth.as_str());
            }
            let size = match &body {
                Body::Empty => 0,
                Body::Bytes(b) => b.len() as u64,
                Body::Reader(_, n) => *n,
            };
            let resp = match &mut body {
                Body::Empty => self.run(req.body(()).expect("valid request"), size),
                Body::Bytes(b) => {
                    self.run(req.header("Content-Length", b.len().to_string()).body(*b).expect("valid request"), size)
                }
                Body::Reader(r, len) => self.run(
                    req.header("Content-Length", len.to_string())
                        .body(ureq::SendBody::from_reader(r))
                        .expect("valid request"),
                    size,
                ),
            }
            .map_err(|e| self.unreachable(&url, e))?;
            tracing::debug!(method, url, status = resp.status().as_u16(), "registry request");
            if resp.status().is_redirection()
                && matches!(body, Body::Empty)
                && let Some(to) = resp.headers().get("Location").and_then(|v| v.to_str().ok())
            {
                hops += 1;
                if hops > 5 {
                    bail!("registry {} redirected {method} {path} more than 5 times; giving up", self.host);
                }
                url = self.url(&resolve(&url, to))?;
                continue;
            }
            if resp.status() == 401 && attempts == 0 && self.is_own(&url) {
                attempts += 1;
                let challenge =
                    resp.headers().get("WWW-Authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                self.authenticate(&challenge, scope)?;
                if matches!(body, Body::Reader(..)) {
                    // A streamed body cannot be sent twice; the caller retries from the start.
                    bail!(NeedsRetry);
                }
                continue;
            }
            if resp.status() == 401 {
                bail!(self.auth_error(scope));
            }
            if resp.status() == 403 {
                bail!(
                    "registry {} denied `{scope}` ({}); the credentials {} may not do that; log in as another user with `docker login {}`",
                    self.host,
                    resp.status(),
                    self.creds.as_ref().map(|c| format!("from {}", c.source)).unwrap_or_else(|| "(none found)".into()),
                    self.host
                );
            }
            return Ok(resp);
        }
    }

    fn auth_error(&self, scope: &str) -> anyhow::Error {
        match &self.creds {
            Some(c) => anyhow!(
                "registry {} refused the credentials for user `{}` from {} (401 for {scope}); log in again with `docker login {}`, or set XTASK_REGISTRY_USER and XTASK_REGISTRY_PASSWORD",
                self.host,
                c.user,
                c.source,
                self.host
            ),
            None => anyhow!(
                "registry {} wants credentials (401 for {scope}) and none were found: tried XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD and the Docker config (~/.docker/config.json); log in with `docker login {}`",
                self.host,
                self.host
            ),
        }
    }

    /// Answers a challenge: Basic with our credentials, or Bearer through the token service.
    fn authenticate(&self, challenge: &str, scope: &str) -> Result<()> {
        let (kind, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let header = match kind.to_ascii_lowercase().as_str() {
            "basic" => self.creds.as_ref().ok_or_else(|| self.auth_error(scope))?.basic(),
            "bearer" => {
                let p = parse_challenge(params);
                let realm = p
                    .get("realm")
                    .ok_or_else(|| anyhow!("registry {} sent a Bearer challenge without realm", self.host))?;
                let realm = self.url(realm)?;
                let mut url = format!("{realm}?scope={}", scope.replace(' ', "&scope="));
                if let Some(service) = p.get("service") {
                    url.push_str(&format!("&service={service}"));
                }
                let mut req = ureq::http::Request::builder().method("GET").uri(&url);
                // The password goes to the token service only when the registry itself
                // serves it (or it is Docker Hub's): a realm elsewhere gets an anonymous
                // request, so a hostile registry cannot collect it.
                let trusted = self.is_own(&realm)
                    || (super::auth::hub(&self.host) == "index.docker.io"
                        && origin(&realm).is_some_and(|(s, a)| s == "https" && a == "auth.docker.io"));
                match &self.creds {
                    Some(c) if trusted => req = req.header("Authorization", c.basic()),
                    Some(_) => tracing::warn!(
                        "registry {} sent its token service elsewhere ({realm}); asking it without credentials",
                        self.host
                    ),
                    None => {}
                }
                let mut resp =
                    self.run(req.body(()).expect("valid request"), 0).map_err(|e| self.unreachable(&url, e))?;
                if resp.status() == 401 || resp.status() == 403 {
                    bail!(self.auth_error(scope));
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body =
                    resp.body_mut().with_config().limit(1 << 20).read_to_vec().context("cannot read the token")?;
                let t: Token = serde_json::from_slice(&body)
                    .with_context(|| format!("token service {realm} answered something other than a token"))?;
                format!("Bearer {}", t.token.or(t.access_token).unwrap_or_default())
            }
            _ => bail!("registry {} asks for `{kind}` authentication, which xtask does not speak", self.host),
        };
        self.tokens.lock().expect("token lock").insert(scope.to_string(), header);
        Ok(())
    }

    fn error_body(resp: &mut ureq::http::Response<ureq::Body>) -> String {
        resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default()
    }

    /// A manifest or index: its bytes, media type and digest.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<(Vec<u8>, String, Digest)> {
        let accept = [
            MediaType::ImageManifest.as_ref(),
            MediaType::ImageIndex.as_ref(),
            MEDIA_DOCKER_MANIFEST,
            MEDIA_DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        let scope = format!("repository:{repo}:pull");
        let mut resp = self.send(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &scope,
            &[("Accept", &accept)],
            Body::Empty,
        )?;
        if resp.status() == 404 {
            bail!(
                "manifest unknown: {}/{repo}:{reference} does not exist on the registry (check the name and tag)",
                self.host
            );
        }
        if !resp.status().is_success() {
            let status = resp.status();
            bail!(
                "registry {} answered {status} for manifest {repo}:{reference}: {}",
                self.host,
                Self::error_body(&mut resp)
            );
        }
        let media_type = resp.headers().get("Content-Type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let bytes = resp.body_mut().with_config().limit(16 << 20).read_to_vec().context("cannot read the manifest")?;
        let digest = Digest::of(&bytes);
        if let Ok(d) = Digest::parse(reference)
            && d != digest
        {
            bail!(super::super::store::DigestMismatch {
                what: format!("manifest {}/{repo}", self.host),
                expected: d,
                actual: digest,
                size: bytes.len() as u64
            });
        }
        Ok((bytes, media_type, digest))
    }

    /// The size of a blob when the registry has it.
    pub fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let scope = format!("repository:{repo}:pull");
        let resp = self.send("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &scope, &[], Body::Empty)?;
        if resp.status() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("registry {} answered {} for blob {digest}", self.host, resp.status());
        }
        Ok(resp.headers().get("Content-Length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).or(Some(0)))
    }

    /// Streams a blob into the store, checked against its digest.
    pub fn pull_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        store: &Store,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let digest = desc.sha256()?;
        if store.blob_of_size(&digest, desc.size()) {
            on_bytes(desc.size());
            return Ok(0);
        }
        let scope = format!("repository:{repo}:pull");
        let mut resp = self.send("GET", &format!("/v2/{repo}/blobs/{}", digest), &scope, &[], Body::Empty)?;
        if !resp.status().is_success() {
            let status = resp.status();
            bail!("registry {} answered {status} for blob {}: {}", self.host, digest, Self::error_body(&mut resp));
        }
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let what = format!("blob {} from {}/{repo}", digest, self.host);
        store.ingest(&mut reader, &digest, Some(desc.size()), &what, on_bytes).map_err(|e| {
            if is_timeout(&e) {
                e.context(format!(
                    "registry {} stalled while sending {digest} (each read may wait {}s; raise XTASK_REGISTRY_TIMEOUT if it is slow but alive)",
                    self.host,
                    self.stall.as_secs()
                ))
            } else {
                e
            }
        })
    }

    /// Uploads a blob from the store unless the registry has it; returns bytes sent.
    pub fn push_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        store: &Store,
        chunk: u64,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        if self.blob_size(repo, &desc.sha256()?)?.is_some() {
            return Ok(0);
        }
        let scope = format!("repository:{repo}:pull,push");
        for attempt in 0..2 {
            match self.upload(repo, desc, store, &scope, chunk, on_bytes) {
                Err(e) if attempt == 0 && e.is::<NeedsRetry>() => continue,
                other => return other,
            }
        }
        unreachable!("two attempts at most")
    }

    fn upload(
        &self,
        repo: &str,
        desc: &Descriptor,
        store: &Store,
        scope: &str,
        chunk: u64,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let (digest, size) = (desc.sha256()?, desc.size());
        let mut resp = self.send("POST", &format!("/v2/{repo}/blobs/uploads/"), scope, &[], Body::Empty)?;
        if resp.status() != 202 {
            let status = resp.status();
            bail!(
                "registry {} refused to start an upload to {repo} ({status}): {}",
                self.host,
                Self::error_body(&mut resp)
            );
        }
        let mut location = self.location(&resp)?;
        let mut file = store.open_blob(&digest)?;
        let mut counting = CountingReader { inner: &mut file, on_bytes: &mut *on_bytes };
        let chunked = size > chunk;
        if chunked {
            // Chunked: PATCH pieces in order; the PUT below only closes the upload.
            let mut sent = 0u64;
            while sent < size {
                let n = chunk.min(size - sent);
                let range = format!("{}-{}", sent, sent + n - 1);
                let mut piece = (&mut counting).take(n);
                let resp = self.send(
                    "PATCH",
                    &location,
                    scope,
                    &[("Content-Type", "application/octet-stream"), ("Content-Range", &range)],
                    Body::Reader(&mut piece, n),
                )?;
                if resp.status() != 202 {
                    bail!("registry {} refused chunk {range} of blob {} ({})", self.host, digest, resp.status());
                }
                location = self.location(&resp)?;
                sent += n;
            }
        }
        // The PUT with the digest: empty after chunks, else the whole blob in one request.
        let (headers, body): (&[(&str, &str)], Body) = if chunked {
            (&[], Body::Empty)
        } else {
            (&[("Content-Type", "application/octet-stream")], Body::Reader(&mut counting, size))
        };
        let mut resp = self.send("PUT", &with_digest(&location, &digest), scope, headers, body)?;
        if resp.status() != 201 {
            let status = resp.status();
            bail!("registry {} did not accept blob {} ({status}): {}", self.host, digest, Self::error_body(&mut resp));
        }
        Ok(size)
    }

    /// Where an upload goes on: the Location the registry answered, as an absolute URL.
    fn location(&self, resp: &ureq::http::Response<ureq::Body>) -> Result<String> {
        let to = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("registry {} started an upload without a Location", self.host))?;
        self.url(&resolve(&self.base, to))
    }

    pub fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        let scope = format!("repository:{repo}:pull,push");
        let mut resp = self.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &scope,
            &[("Content-Type", media_type)],
            Body::Bytes(bytes),
        )?;
        if resp.status() != 201 {
            let status = resp.status();
            bail!(
                "registry {} did not accept the manifest for {repo}:{tag} ({status}): {}",
                self.host,
                Self::error_body(&mut resp)
            );
        }
        Ok(())
    }
}

/// The token for a scope was obtained while a streamed body was in flight; start again.
#[derive(Debug, thiserror::Error)]
#[error("authenticated; the upload must start again")]
struct NeedsRetry;

/// Whether `e` is ureq giving up on a silent peer, as itself or inside the `io::Error` a
/// body read returns.
fn is_timeout(e: &anyhow::Error) -> bool {
    let ureq_timeout = |u: &ureq::Error| matches!(u, ureq::Error::Timeout(_));
    e.chain().any(|c| {
        c.downcast_ref::<ureq::Error>().is_some_and(ureq_timeout)
            || c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                io.kind() == std::io::ErrorKind::TimedOut
                    || io.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()).is_some_and(ureq_timeout)
            })
    })
}

/// `to` (a Location header) made absolute against `from`.
fn resolve(from: &str, to: &str) -> String {
    if to.starts_with("http://") || to.starts_with("https://") {
        return to.to_string();
    }
    let (scheme, authority) = origin(from).unwrap_or_default();
    if to.starts_with('/') {
        format!("{scheme}://{authority}{to}")
    } else {
        let dir = from.split('?').next().unwrap_or(from);
        format!("{}/{to}", dir.rsplit_once('/').map(|(d, _)| d).unwrap_or(dir))
    }
}

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    on_bytes: &'a mut dyn FnMut(u64),
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_named_hosts() {
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("127.0.0.2:5000", &[]) && is_insecure("[::1]:5000", &[]));
        assert!(!is_insecure("registry.example.com", &[]) && !is_insecure("10.0.0.1:5000", &[]));
        assert!(is_insecure("registry.lan:5000", &["registry.lan:5000".into()]));
    }
}
