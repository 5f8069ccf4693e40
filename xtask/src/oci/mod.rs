//! The image engine: OCI content written by our own code, no Docker daemon.
//!
//! Data flows one way: files on disk -> layers in the [`store::Store`] -> an image in the
//! store -> a destination (archive, registry, cluster). Every destination reads the store.

pub mod archive;
pub mod base_dirs;
pub mod docker;
pub mod image;
pub mod layer;
pub mod registry;
pub mod source;
pub mod store;
pub mod tar;

use std::fmt;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os, Platform};

// Docker's media types have no variant in oci-spec's `MediaType`: they parse as `Other`.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Annotation containerd reads on import to name the image.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Annotation the OCI image layout uses for a reference name.
pub const ANNOTATION_REF_NAME: &str = oci_spec::image::ANNOTATION_REF_NAME;
pub const ANNOTATION_BASE_DIGEST: &str = oci_spec::image::ANNOTATION_BASE_IMAGE_DIGEST;
pub const ANNOTATION_BASE_NAME: &str = oci_spec::image::ANNOTATION_BASE_IMAGE_NAME;

/// A sha256 content digest, `sha256:<64 lowercase hex>`: the only algorithm the store
/// keys blobs by. oci-spec's `Digest` admits any algorithm and is not ordered, so this
/// stays our own type, converted at the edge of every descriptor ([`DescriptorExt`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a sha256 digest (expected sha256: followed by 64 lowercase hex digits)")]
pub struct BadDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, BadDigest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| BadDigest(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(BadDigest(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    pub fn from_sha256(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        let mut h = Sha256::new();
        h.update(bytes);
        Digest::from_sha256(h)
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same digest as oci-spec's type, for a descriptor.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        // Every sha256 digest `parse` admits is a valid OCI digest.
        self.0.parse().expect("a sha256 digest is an OCI digest")
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = BadDigest;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Digest, BadDigest> {
        Digest::parse(d.as_ref())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A descriptor of content in the store.
pub fn descriptor(media_type: MediaType, digest: &Digest, size: u64) -> Descriptor {
    Descriptor::new(media_type, size, digest.to_oci())
}

/// What we read of oci-spec's descriptors.
pub trait DescriptorExt {
    /// The digest as the store keys it: an error for any algorithm but sha256.
    fn sha256(&self) -> Result<Digest, BadDigest>;
    fn annotation(&self, key: &str) -> Option<&str>;
}

impl DescriptorExt for Descriptor {
    fn sha256(&self) -> Result<Digest, BadDigest> {
        Digest::try_from(self.digest())
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().as_ref()?.get(key).map(String::as_str)
    }
}

/// Parses `os/arch[/variant]`, the form `--platform` takes in docker and skopeo.
pub fn parse_platform(s: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = s.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => (os, arch, None),
        [os, arch, variant] if !os.is_empty() && !arch.is_empty() => (os, arch, Some(variant.to_string())),
        _ => anyhow::bail!("platform `{s}` is not of the form os/arch[/variant], for example linux/amd64"),
    };
    let mut p = Platform::default();
    p.set_os(Os::from(*os)).set_architecture(Arch::from(*arch)).set_variant(variant);
    Ok(p)
}

/// The platform this program runs on, in OCI's (Go's) names: what a build targets.
pub fn host_platform() -> Platform {
    Platform::default()
}

/// Whether an image for `have` runs where `want` is asked for; a variant left out on
/// either side matches any.
pub fn platform_matches(want: &Platform, have: &Platform) -> bool {
    want.os() == have.os()
        && want.architecture() == have.architecture()
        && (want.variant().is_none() || have.variant().is_none() || want.variant() == have.variant())
}

/// `os/arch[/variant]`, as [`parse_platform`] reads it.
pub fn platform_string(p: &Platform) -> String {
    match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// The repository part of `REPO:TAG` (`docker.io/library/x:dev` -> `docker.io/library/x`);
/// a port in the host is not a tag.
pub fn repository_of(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => r,
        _ => name,
    }
}

/// The tag of `REPO:TAG`, `latest` when there is none.
pub fn tag_of(name: &str) -> &str {
    let repo = repository_of(name);
    if repo.len() < name.len() { &name[repo.len() + 1..] } else { "latest" }
}

/// `REPO@sha256:...`: an image named by its manifest digest.
pub fn digest_reference(name: &str, digest: &Digest) -> String {
    format!("{}@{digest}", repository_of(name))
}

/// Whether a media type names an index (OCI) or a manifest list (Docker).
pub fn is_index_media_type(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex) || media_type.as_ref() == MEDIA_DOCKER_MANIFEST_LIST
}

/// The OCI media type for a layer of the given (OCI or Docker) media type.
pub fn oci_layer_media_type(media_type: &MediaType) -> anyhow::Result<MediaType> {
    Ok(match media_type.as_ref() {
        "application/vnd.oci.image.layer.v1.tar" | MEDIA_DOCKER_LAYER => MediaType::ImageLayer,
        "application/vnd.oci.image.layer.v1.tar+gzip" | MEDIA_DOCKER_LAYER_GZIP => MediaType::ImageLayerGzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => MediaType::ImageLayerZstd,
        other => {
            anyhow::bail!("layer media type `{other}` is not supported (only tar, tar+gzip and tar+zstd layers are)")
        }
    })
}

/// Serialises a value as JSON with object keys sorted at every level and no whitespace,
/// so the same content always gives the same bytes (and digest).
pub fn canonical_json<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let v = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(512);
    write_canonical(&v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) -> io::Result<()> {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_canonical(&map[k.as_str()], out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_sha256(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes written through it (for a total that needs no digest).
pub struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> CountingWriter<W> {
    pub fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_the_part_after_the_last_colon_of_the_name() {
        assert_eq!(tag_of("docker.io/library/airflow-worker:dev"), "dev");
        assert_eq!(tag_of("localhost:5000/airflow-worker"), "latest");
        assert_eq!(repository_of("localhost:5000/airflow-worker"), "localhost:5000/airflow-worker");
    }

    #[test]
    fn digest_rejects_what_is_not_sha256() {
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": "d"}});
        let out = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(out, r#"{"a":{"c":"d","z":[{"x":2,"y":1}]},"b":1}"#);
    }

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(Digest::of(b"").as_str(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
