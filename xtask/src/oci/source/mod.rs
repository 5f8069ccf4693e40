//! Base image references -> blobs in the store.
//!
//! References are written the way skopeo and containers/image write them:
//! `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:NAME:TAG]`,
//! `docker-daemon:NAME:TAG` and `docker://HOST/REPO:TAG`. Base layers are copied into the
//! store byte for byte (each checked against its digest), never re-tarred.

pub mod docker_archive;
mod layout;

use camino::{Utf8Path, Utf8PathBuf};
use std::fs::{self};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest as _, Sha256};

use super::image::{BaseImage, ImportProgress};
use super::store::Store;
use super::{DescriptorExt, MediaType, Platform};

use self::docker_archive::import_docker_archive;
use self::layout::{DirFiles, TarFiles, import_oci_layout};

/// A parsed base image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseRef {
    OciDir {
        path: Utf8PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: Utf8PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: Utf8PathBuf,
        name: Option<String>,
    },
    DockerDaemon {
        name: String,
    },
    Registry {
        reference: String,
    },
    /// No base: the image holds only its own layers.
    Scratch,
}

impl BaseRef {
    /// Parses `reference`; relative paths are taken from `root` (the repository).
    pub fn parse(reference: &str, root: &Utf8Path) -> Result<BaseRef> {
        if reference == "scratch" {
            return Ok(BaseRef::Scratch);
        }
        let (transport, rest) = reference.split_once(':').ok_or_else(|| bad_ref(reference))?;
        let path_and_tag = |rest: &str| -> (Utf8PathBuf, Option<String>) {
            let (p, t) = match rest.split_once(':') {
                Some((p, t)) if !t.is_empty() => (p, Some(t.to_string())),
                _ => (rest.trim_end_matches(':'), None),
            };
            (root.join(p), t)
        };
        Ok(match transport {
            "oci" => {
                let (path, tag) = path_and_tag(rest);
                BaseRef::OciDir { path, tag }
            }
            "oci-archive" => {
                let (path, tag) = path_and_tag(rest);
                BaseRef::OciArchive { path, tag }
            }
            "docker-archive" => {
                let (path, name) = path_and_tag(rest);
                BaseRef::DockerArchive { path, name }
            }
            "docker-daemon" => BaseRef::DockerDaemon { name: rest.to_string() },
            "docker" => {
                let r = rest.strip_prefix("//").ok_or_else(|| bad_ref(reference))?;
                BaseRef::Registry { reference: r.to_string() }
            }
            _ => return Err(bad_ref(reference)),
        })
    }
}

fn bad_ref(reference: &str) -> anyhow::Error {
    anyhow!(
        "base reference `{reference}` is not understood; write it as scratch, xtask-base:NAME, oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], docker-daemon:NAME:TAG or docker://HOST/REPO:TAG"
    )
}

/// Brings the base image named by `reference` into the store, or finds it there from an
/// earlier import of the same unchanged source.
pub fn import(
    reference: &str,
    root: &Utf8Path,
    platform: &Platform,
    insecure: &[String],
    store: &Store,
    rt: &tokio::runtime::Handle,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let base_ref = BaseRef::parse(reference, root)?;
    let cache_key = fingerprint(reference, &base_ref, platform)?;
    if let Some(key) = &cache_key
        && let Some(base) = store.cache_get::<BaseImage>("bases", key)
        && all_blobs_present(store, &base)
    {
        return Ok(base);
    }
    let mut base = match &base_ref {
        BaseRef::OciDir { path, tag } => {
            let files = DirFiles::open(path, reference)?;
            import_oci_layout(&files, tag.as_deref(), platform, store, progress)
        }
        BaseRef::OciArchive { path, tag } => {
            let files = TarFiles::open(path, reference)?;
            import_oci_layout(&files, tag.as_deref(), platform, store, progress)
        }
        BaseRef::DockerArchive { path, name } => {
            let files = TarFiles::open(path, reference)?;
            import_docker_archive(&files, name.as_deref(), platform, store, progress)
        }
        BaseRef::Scratch => scratch(platform, store),
        BaseRef::Registry { reference: r } => super::registry::pull(r, platform, insecure, store, progress),
        BaseRef::DockerDaemon { name } => super::docker::import_base(rt, name, platform, store, progress),
    }
    .with_context(|| format!("cannot import base image {reference}"))?;
    base.reference = reference.to_string();
    if let Some(key) = &cache_key {
        store.cache_put("bases", key, &base)?;
    }
    Ok(base)
}

fn all_blobs_present(store: &Store, base: &BaseImage) -> bool {
    std::iter::once(&base.manifest)
        .chain(std::iter::once(&base.config))
        .chain(base.layers.iter())
        .all(|d| d.sha256().is_ok_and(|digest| store.blob_of_size(&digest, d.size())))
}

/// A cheap identity of a local source (path, size, mtime, inode of the file that changes
/// whenever the image does); None for sources that must be asked every time.
fn fingerprint(reference: &str, base_ref: &BaseRef, platform: &Platform) -> Result<Option<String>> {
    let file = match base_ref {
        BaseRef::OciDir { path, .. } => path.join("index.json"),
        BaseRef::OciArchive { path, .. } | BaseRef::DockerArchive { path, .. } => path.clone(),
        _ => return Ok(None),
    };
    let Ok(md) = fs::metadata(&file) else { return Ok(None) };
    let mut h = Sha256::new();
    h.update(format!(
        "{reference}\n{}\n{}\n{}:{}:{}:{}\n",
        file,
        super::platform_string(platform),
        md.len(),
        md.mtime_nsec() + md.mtime() * 1_000_000_000,
        md.ino(),
        md.dev()
    ));
    Ok(Some(hex::encode(h.finalize())))
}

/// The empty image: no layers, a config with only the platform.
fn scratch(platform: &Platform, store: &Store) -> Result<BaseImage> {
    let config = scratch_config(platform);
    let config = store.put_json(MediaType::ImageConfig, &config)?;
    let manifest = super::image::oci_manifest(config.clone(), vec![], None);
    let manifest = store.put_json(MediaType::ImageManifest, &manifest)?;
    Ok(BaseImage { reference: String::new(), manifest, config, layers: vec![], diff_ids: vec![], base_name: None })
}

fn scratch_config(platform: &Platform) -> oci_spec::image::ImageConfiguration {
    let mut config = oci_spec::image::ImageConfiguration::default();
    config
        .set_architecture(platform.architecture().clone())
        .set_os(platform.os().clone())
        .set_config(Some(Default::default()))
        .set_history(None);
    config.rootfs_mut().set_diff_ids(vec![]);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_config_keeps_its_bytes() {
        let platform = crate::oci::parse_platform("linux/arm64").unwrap();
        let bytes = crate::oci::canonical_json(&scratch_config(&platform)).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"architecture":"arm64","config":{},"os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
    }

    #[test]
    fn references_parse_like_skopeo() {
        let root = Utf8Path::new("/repo");
        assert_eq!(
            BaseRef::parse("oci:target/base:airflow", root).unwrap(),
            BaseRef::OciDir { path: "/repo/target/base".into(), tag: Some("airflow".into()) }
        );
        assert_eq!(
            BaseRef::parse("oci-archive:/abs/base.tar", root).unwrap(),
            BaseRef::OciArchive { path: "/abs/base.tar".into(), tag: None }
        );
        assert_eq!(
            BaseRef::parse("docker-archive:b.tar:busybox:1", root).unwrap(),
            BaseRef::DockerArchive { path: "/repo/b.tar".into(), name: Some("busybox:1".into()) }
        );
        assert_eq!(
            BaseRef::parse("docker://localhost:5000/a/b:1", root).unwrap(),
            BaseRef::Registry { reference: "localhost:5000/a/b:1".into() }
        );
        assert!(BaseRef::parse("ftp:x", root).is_err());
        assert!(BaseRef::parse("nocolon", root).is_err());
    }
}
