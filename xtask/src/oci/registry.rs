//! The OCI distribution API: pulling a base image blob by blob into the store, and pushing
//! an image while uploading only the blobs the registry lacks.
//!
//! Blobs stream through a 1 MiB buffer both ways and each pulled blob is checked against
//! its digest before it enters the store, so an interrupted pull or push leaves the store
//! consistent and simply resumes on the next run (present blobs are skipped).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use super::image::{BaseImage, ImportProgress};
use super::store::Store;
use super::{
    Descriptor, DescriptorExt, Digest, ImageIndex, ImageManifest, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST,
    MediaType, Platform, descriptor, is_index_media_type, oci_layer_media_type, platform_matches, platform_string,
};

/// `HOST[:PORT]/REPO[:TAG|@sha256:...]`, with Docker Hub's short forms expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        // oci-spec's parser (the grammar of distribution/reference), with Docker Hub's short
        // forms expanded: `busybox` is docker.io/library/busybox:latest.
        let r: oci_spec::distribution::Reference = s.parse().map_err(|e| {
            anyhow!("`{s}` is not an image reference like HOST[:PORT]/REPO:TAG or HOST/REPO@sha256:... ({e})")
        })?;
        let digest = r.digest().map(Digest::parse).transpose()?;
        let tag = r.tag().map(String::from);
        Ok(ImageRef { registry: r.registry().to_string(), repository: r.repository().to_string(), tag, digest })
    }

    /// What the manifest endpoint takes: the digest if given, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A user name and password (or token) for a registry, and where they came from. The
/// secret is never printed: Debug and Display show only the source.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
    pub source: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ user: {:?}, source: {:?} }}", self.user, self.source)
    }
}

impl Credentials {
    fn basic(&self) -> String {
        format!("Basic {}", BASE64.encode(format!("{}:{}", self.user, self.password)))
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn host_of(key: &str) -> &str {
    let k = key.trim_start_matches("https://").trim_start_matches("http://");
    k.split('/').next().unwrap_or(k)
}

/// Credentials for `host`: XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD (for CI), else the
/// Docker config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): its auths,
/// credHelpers and credsStore, the way `docker login` leaves them.
pub fn credentials_for(host: &str) -> Option<Credentials> {
    if let (Ok(user), Ok(password)) = (std::env::var("XTASK_REGISTRY_USER"), std::env::var("XTASK_REGISTRY_PASSWORD"))
        && std::env::var("XTASK_REGISTRY_HOST").map(|h| h == host).unwrap_or(true)
    {
        return Some(Credentials { user, password, source: "XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD".into() });
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    let path = dir.join("config.json");
    let cfg: DockerConfig = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    fn hub(h: &str) -> &str {
        if h == "docker.io" || h == "registry-1.docker.io" { "index.docker.io" } else { h }
    }
    let wanted = hub(host);
    let helper = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| hub(host_of(k)) == wanted)
        .map(|(_, v)| v.clone())
        .or(cfg.creds_store.clone());
    if let Some(helper) = helper
        && let Some(c) = from_helper(&helper, host)
    {
        return Some(c);
    }
    let (_, auth) = cfg.auths.iter().find(|(k, _)| hub(host_of(k)) == wanted)?;
    let source = format!("{} (auths)", path.display());
    if let (Some(u), Some(p)) = (&auth.username, &auth.password) {
        return Some(Credentials { user: u.clone(), password: p.clone(), source });
    }
    let decoded = String::from_utf8(BASE64.decode(auth.auth.as_deref()?.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials { user: user.into(), password: password.into(), source })
}

fn from_helper(helper: &str, host: &str) -> Option<Credentials> {
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let program = format!("docker-credential-{helper}");
    crate::process::find(&program)?;
    let out = duct::cmd(&program, ["get"]).stdin_bytes(host.as_bytes()).stderr_null().read().ok()?;
    let o: Out = serde_json::from_str(&out).ok()?;
    Some(Credentials { user: o.username, password: o.secret, source: format!("credential helper {program}") })
}

/// Whether `host` may be spoken to over plain HTTP: loopback, or named by the user.
pub fn is_insecure(host: &str, insecure: &[String]) -> bool {
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    matches!(name, "localhost" | "127.0.0.1" | "[::1]") || insecure.iter().any(|i| i == host || i == name)
}

/// A client for one registry.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    pub host: String,
    creds: Option<Credentials>,
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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .max_redirects(10)
            .build()
            .into();
        Ok(Client {
            agent,
            base: format!("{scheme}://{api_host}"),
            host: host.to_string(),
            creds: credentials_for(host),
            tokens: Mutex::new(BTreeMap::new()),
        })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow!(
            "registry {} is unreachable at {} ({e}); check the address, that the registry runs, and --insecure-registry for plain HTTP",
            self.host,
            self.base
        )
    }

    /// One request, authenticating on a 401 challenge and retrying once.
    fn send(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        for attempt in 0..2 {
            let url = self.url(path);
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(auth) = self.tokens.lock().expect("token lock").get(scope) {
                req = req.header("Authorization", auth.as_str());
            }
            let resp = match &mut body {
                Body::Empty => self.agent.run(req.body(()).expect("valid request")),
                Body::Bytes(b) => {
                    self.agent.run(req.header("Content-Length", b.len().to_string()).body(*b).expect("valid request"))
                }
                Body::Reader(r, len) => {
                    let req = req
                        .header("Content-Length", len.to_string())
                        .body(ureq::SendBody::from_reader(r))
                        .expect("valid request");
                    self.agent.run(req)
                }
            }
            .map_err(|e| self.unreachable(e))?;
            tracing::debug!(method, url, status = resp.status().as_u16(), "registry request");
            if resp.status() == 401 && attempt == 0 {
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
        unreachable!("two attempts at most")
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
                let mut url = format!("{realm}?scope={}", scope.replace(' ', "&scope="));
                if let Some(service) = p.get("service") {
                    url.push_str(&format!("&service={service}"));
                }
                let mut req = ureq::http::Request::builder().method("GET").uri(&url);
                if let Some(c) = &self.creds {
                    req = req.header("Authorization", c.basic());
                }
                let mut resp = self.agent.run(req.body(()).expect("valid request")).map_err(|e| self.unreachable(e))?;
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
            bail!(super::store::DigestMismatch {
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
        if let Some(size) = store.blob_size(&digest) {
            on_bytes(size);
            return Ok(0);
        }
        let scope = format!("repository:{repo}:pull");
        let mut resp = self.send("GET", &format!("/v2/{repo}/blobs/{}", digest), &scope, &[], Body::Empty)?;
        if !resp.status().is_success() {
            let status = resp.status();
            bail!("registry {} answered {status} for blob {}: {}", self.host, digest, Self::error_body(&mut resp));
        }
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        store.ingest(&mut reader, &digest, &format!("blob {} from {}/{repo}", digest, self.host), on_bytes)
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
        let mut sent = 0u64;
        if size > chunk {
            // Chunked: PATCH pieces in order, then PUT with the digest.
            while sent < size {
                let n = chunk.min(size - sent);
                let range = format!("{}-{}", sent, sent + n - 1);
                let mut piece = (&mut file).take(n);
                let mut counting = CountingReader { inner: &mut piece, on_bytes: &mut *on_bytes };
                let resp = self.send(
                    "PATCH",
                    &location,
                    scope,
                    &[("Content-Type", "application/octet-stream"), ("Content-Range", &range)],
                    Body::Reader(&mut counting, n),
                )?;
                if resp.status() != 202 {
                    bail!("registry {} refused chunk {range} of blob {} ({})", self.host, digest, resp.status());
                }
                location = self.location(&resp)?;
                sent += n;
            }
            let url = with_digest(&location, &digest);
            let mut resp = self.send("PUT", &url, scope, &[], Body::Empty)?;
            if resp.status() != 201 {
                let status = resp.status();
                bail!(
                    "registry {} did not accept blob {} ({status}): {}",
                    self.host,
                    digest,
                    Self::error_body(&mut resp)
                );
            }
        } else {
            // Monolithic: one PUT with the whole blob.
            let url = with_digest(&location, &digest);
            let mut counting = CountingReader { inner: &mut file, on_bytes: &mut *on_bytes };
            let mut resp = self.send(
                "PUT",
                &url,
                scope,
                &[("Content-Type", "application/octet-stream")],
                Body::Reader(&mut counting, size),
            )?;
            if resp.status() != 201 {
                let status = resp.status();
                bail!(
                    "registry {} did not accept blob {} ({status}): {}",
                    self.host,
                    digest,
                    Self::error_body(&mut resp)
                );
            }
            sent = size;
        }
        Ok(sent)
    }

    fn location(&self, resp: &ureq::http::Response<ureq::Body>) -> Result<String> {
        resp.headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or_else(|| anyhow!("registry {} started an upload without a Location", self.host))
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

fn with_digest(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn parse_challenge(params: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let (value, next) = if let Some(stripped) = after.strip_prefix('"') {
            match stripped.split_once('"') {
                Some((v, n)) => (v, n),
                None => (stripped, ""),
            }
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        out.insert(key.trim().trim_start_matches(',').trim().to_string(), value.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    out
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

/// Pulls `reference` (a registry image) into the store as a base.
pub fn pull(
    reference: &str,
    platform: &Platform,
    insecure: &[String],
    store: &Store,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let r = ImageRef::parse(reference)?;
    let client = Client::new(&r.registry, insecure)?;
    let (mut bytes, mut media_type, mut digest) = client.get_manifest(&r.repository, &r.reference())?;
    let looks_like_index = |b: &[u8]| serde_json::from_slice::<ImageIndex>(b).is_ok_and(|i| !i.manifests().is_empty());
    if is_index_media_type(&MediaType::from(media_type.as_str())) || looks_like_index(&bytes) {
        let index: ImageIndex = serde_json::from_slice(&bytes).context("the registry's index is not valid JSON")?;
        let desc = index
            .manifests()
            .iter()
            .find(|d| d.platform().as_ref().is_some_and(|p| platform_matches(platform, p)))
            .ok_or_else(|| {
                let have: Vec<String> =
                    index.manifests().iter().filter_map(|d| d.platform().as_ref().map(platform_string)).collect();
                anyhow!(
                    "{reference} has no image for {}; it has: {} (choose one with --platform)",
                    platform_string(platform),
                    have.join(", ")
                )
            })?
            .clone();
        (bytes, media_type, digest) = client.get_manifest(&r.repository, desc.sha256()?.as_str())?;
    }
    let manifest: ImageManifest =
        serde_json::from_slice(&bytes).with_context(|| format!("{reference}: not a valid image manifest"))?;
    let total: u64 = manifest.layers().iter().map(|l| l.size()).sum::<u64>() + manifest.config().size();
    progress.start(total);
    client.pull_blob(&r.repository, manifest.config(), store, &mut |n| progress.advance(n))?;
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let media = oci_layer_media_type(l.media_type()).with_context(|| reference.to_string())?;
        client.pull_blob(&r.repository, l, store, &mut |n| progress.advance(n))?;
        layers.push(descriptor(media, &l.sha256()?, l.size()));
    }
    let config_digest = manifest.config().sha256()?;
    let config_bytes = store.read_blob(&config_digest)?;
    #[derive(Deserialize)]
    struct Cfg {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    let cfg: Cfg = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("{reference}: image config has no rootfs.diff_ids"))?;
    let manifest_digest = store.put_bytes(&bytes)?;
    debug_assert_eq!(manifest_digest, digest);
    let media = if media_type.is_empty() {
        manifest.media_type().clone().unwrap_or(MediaType::ImageManifest)
    } else {
        MediaType::from(media_type.as_str())
    };
    let mut pinned = r.clone();
    pinned.digest = Some(digest.clone());
    Ok(BaseImage {
        reference: reference.to_string(),
        manifest: descriptor(media, &digest, bytes.len() as u64),
        config: descriptor(MediaType::ImageConfig, &config_digest, manifest.config().size()),
        layers,
        diff_ids: cfg.rootfs.diff_ids,
        base_name: Some(pinned.to_string()),
    })
}

/// What a push moved.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    pub digest: Option<Digest>,
    pub uploaded_bytes: u64,
    pub uploaded_blobs: usize,
    pub skipped_bytes: u64,
    pub skipped_blobs: usize,
}

/// Pushes an image of the store to `target`, uploading only missing blobs.
pub fn push(
    store: &Store,
    manifest: &Descriptor,
    target: &ImageRef,
    insecure: &[String],
    on_bytes: &mut dyn FnMut(u64),
) -> Result<PushReport> {
    let client = Client::new(&target.registry, insecure)?;
    let manifest_digest = manifest.sha256()?;
    let m: ImageManifest = store.read_json(&manifest_digest)?;
    let chunk: u64 = std::env::var("XTASK_PUSH_CHUNK_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(64 << 20);
    let mut report = PushReport { reference: target.to_string(), ..Default::default() };
    for desc in m.layers().iter().chain(std::iter::once(m.config())) {
        let sent = client.push_blob(&target.repository, desc, store, chunk.max(1), on_bytes)?;
        if sent == 0 {
            report.skipped_blobs += 1;
            report.skipped_bytes += desc.size();
            on_bytes(desc.size());
        } else {
            report.uploaded_blobs += 1;
            report.uploaded_bytes += sent;
        }
    }
    let bytes = store.read_blob(&manifest_digest)?;
    let tag = target.tag.clone().unwrap_or_else(|| "latest".into());
    client.put_manifest(&target.repository, &tag, manifest.media_type().as_ref(), &bytes)?;
    report.uploaded_bytes += bytes.len() as u64;
    report.digest = Some(manifest_digest);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_like_docker() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        let r = ImageRef::parse("localhost:5000/team/worker:dev").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "team/worker", Some("dev"))
        );
        let d = format!("sha256:{}", "b".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/a/b@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert!(ImageRef::parse("x@sha256:short").is_err());
        let r = ImageRef::parse(&format!("localhost:5000/w:dev@{d}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.reference()), (Some("dev"), d.clone()));
        assert_eq!(ImageRef::parse("apache/airflow:3").unwrap().to_string(), "docker.io/apache/airflow:3");
        assert!(ImageRef::parse("Upper/Case").is_err());
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
    }

    #[test]
    fn credentials_never_show_the_secret() {
        let c = Credentials { user: "u".into(), password: "hunter2".into(), source: "env".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn plain_http_only_for_loopback_or_named_hosts() {
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(!is_insecure("registry.example.com", &[]));
        assert!(is_insecure("registry.lan:5000", &["registry.lan:5000".into()]));
    }
}
