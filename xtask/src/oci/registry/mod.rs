//! The OCI distribution API: pulling a base image blob by blob into the store, and pushing
//! an image while uploading only the blobs the registry lacks.
//!
//! Blobs stream through a 1 MiB buffer both ways and each pulled blob is checked against
//! its digest before it enters the store, so an interrupted pull or push leaves the store
//! consistent and simply resumes on the next run (present blobs are skipped).
//!
//! `auth` finds credentials and parses challenges; `client` speaks HTTP to one registry.

mod auth;
mod client;

use std::fmt;

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;

use super::image::{BaseImage, ImportProgress};
use super::store::Store;
use super::{
    Descriptor, DescriptorExt, Digest, ImageIndex, ImageManifest, MediaType, Platform, descriptor, is_index_media_type,
    oci_layer_media_type, platform_matches, platform_string,
};

pub use self::auth::pull_secret_json;
pub use self::client::Client;

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
}
