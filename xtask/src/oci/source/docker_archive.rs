//! What `docker save` writes, as a base: from a file (`docker-archive:`) or from the
//! Docker engine's export stream (`docker-daemon:`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::super::image::{BaseImage, ImportProgress, NoProgress};
use super::super::store::{DigestMismatch, Store};
use super::super::tar::safe_entry_path;
use super::super::{Digest, ImageIndex, MediaType, Platform, canonical_json, descriptor};

use super::layout::{LayoutFiles, check_config_platform, diff_ids_of, import_oci_layout, normalize_within};

/// What `docker save` writes in `manifest.json`, one per image.
#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// `docker save` output: the classic kind (`<id>/layer.tar`, uncompressed) or the kind
/// Docker 25+ writes (an OCI layout with a `manifest.json` beside it). The OCI index is
/// preferred when present, since it keeps the original manifest.
pub(super) fn import_docker_archive(
    files: &dyn LayoutFiles,
    name: Option<&str>,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let what = files.describe().to_string();
    if let Some(index_bytes) = files.read_small("index.json")?
        && let Ok(index) = serde_json::from_slice::<ImageIndex>(&index_bytes)
        && !index.manifests().is_empty()
    {
        let tag = name.map(normalize_docker_name);
        return import_oci_layout(files, tag.as_deref(), platform, store, progress);
    }
    let manifest_bytes = files
        .read_small("manifest.json")?
        .ok_or_else(|| anyhow!("{what} has no manifest.json; it is not what `docker save` writes"))?;
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{what}: manifest.json is not what `docker save` writes"))?;
    let entry = match name {
        Some(n) => {
            let want = normalize_docker_name(n);
            entries
                .iter()
                .find(|e| e.repo_tags.iter().flatten().any(|t| normalize_docker_name(t) == want))
                .ok_or_else(|| anyhow!("{what} has no image named {n}"))?
        }
        None => match entries.as_slice() {
            [one] => one,
            _ => bail!("{what} holds {} images; name one with docker-archive:FILE:NAME:TAG", entries.len()),
        },
    };
    let config_bytes =
        files.read_small(&entry.config)?.ok_or_else(|| anyhow!("{what}: config {} is missing", entry.config))?;
    if let Some(hex) = entry.config.strip_prefix("blobs/sha256/").or(entry.config.strip_suffix(".json"))
        && let Ok(expected) = Digest::parse(&format!("sha256:{hex}"))
    {
        let actual = Digest::of(&config_bytes);
        if actual != expected {
            bail!(DigestMismatch {
                what: format!("{what} {}", entry.config),
                expected,
                actual,
                size: config_bytes.len() as u64
            });
        }
    }
    check_config_platform(&config_bytes, platform, &what)?;
    let diff_ids = diff_ids_of(&config_bytes, &what)?;
    if diff_ids.len() != entry.layers.len() {
        bail!(
            "{what}: manifest.json lists {} layers but the config {} diff_ids; the archive is corrupt",
            entry.layers.len(),
            diff_ids.len()
        );
    }
    let mut total = 0;
    for l in &entry.layers {
        let (_, size) =
            files.open(l)?.ok_or_else(|| anyhow!("{what}: layer {l} is missing; the archive is incomplete"))?;
        total += size;
    }
    progress.start(total);
    let mut layers = Vec::new();
    for (i, path) in entry.layers.iter().enumerate() {
        let (r, size) = files.open(path)?.ok_or_else(|| anyhow!("{what}: layer {path} is missing"))?;
        let mut r = BufReader::with_capacity(1 << 20, r);
        let head = r.fill_buf()?.get(..4).map(<[u8]>::to_vec).unwrap_or_default();
        let media_type = if head.starts_with(&[0x1f, 0x8b]) {
            MediaType::ImageLayerGzip
        } else if head == [0x28, 0xb5, 0x2f, 0xfd] {
            MediaType::ImageLayerZstd
        } else {
            MediaType::ImageLayer
        };
        let expected = path.strip_prefix("blobs/sha256/").and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
        let expected = match (&expected, &media_type) {
            (Some(d), _) => Some(d.clone()),
            (None, MediaType::ImageLayer) => Some(diff_ids[i].clone()),
            (None, _) => None,
        };
        if let Some(d) = &expected
            && store.blob_of_size(d, size)
        {
            progress.advance(size);
            layers.push(descriptor(media_type, d, size));
            continue;
        }
        let mut w = store.blob_writer()?;
        super::super::store::copy_with_progress(&mut r, &mut w, &mut |n| progress.advance(n))
            .with_context(|| format!("{what}: cannot read layer {path}"))?;
        let (digest, written) = w.commit(expected.as_ref(), &format!("{what} layer {path}"))?;
        if written != size {
            bail!("{what}: layer {path} is truncated ({written} of {size} bytes)");
        }
        layers.push(descriptor(media_type, &digest, written));
    }
    let config = store.put_bytes(&config_bytes)?;
    let config = descriptor(MediaType::ImageConfig, &config, config_bytes.len() as u64);
    let manifest = super::super::image::oci_manifest(config.clone(), layers.clone(), None);
    let bytes = canonical_json(&manifest)?;
    let manifest_digest = store.put_bytes(&bytes)?;
    Ok(BaseImage {
        reference: String::new(),
        manifest: descriptor(MediaType::ImageManifest, &manifest_digest, bytes.len() as u64),
        config,
        layers,
        diff_ids,
        base_name: None,
    })
}

/// Files of a `docker save` stream seen once in order: small ones kept in memory, large
/// ones already written into the store as blobs.
struct StoredFiles<'a> {
    label: String,
    store: &'a Store,
    small: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
}

impl LayoutFiles for StoredFiles<'_> {
    fn describe(&self) -> &str {
        &self.label
    }

    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let mut name = normalize_within(path).unwrap_or_default();
        for _ in 0..16 {
            if let Some(target) = self.links.get(&name) {
                name = target.clone();
                continue;
            }
            if let Some(bytes) = self.small.get(&name) {
                return Ok(Some((Box::new(&bytes[..]), bytes.len() as u64)));
            }
            if let Some((digest, size)) = self.blobs.get(&name) {
                return Ok(Some((Box::new(BufReader::with_capacity(1 << 20, self.store.open_blob(digest)?)), *size)));
            }
            return Ok(None);
        }
        Ok(None)
    }
}

/// Imports what `docker save` writes, read once from a stream (the Docker engine's export):
/// every file larger than 1 MiB goes straight into the store as a blob.
pub fn import_docker_save_stream(
    reader: impl Read,
    name: Option<&str>,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let label = format!("docker-daemon:{}", name.unwrap_or("?"));
    let mut files = StoredFiles {
        label: label.clone(),
        store,
        small: HashMap::new(),
        blobs: HashMap::new(),
        links: HashMap::new(),
    };
    let mut archive = ::tar::Archive::new(reader);
    let broken = |e: std::io::Error| anyhow!("{label}: the export stream broke off or is not a tar ({e})");
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = safe_entry_path(&raw).map_err(|e| anyhow!("{label}: {e}; refusing to read it"))?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let link = entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let target = if kind.is_symlink() {
                format!("{}/{link}", path.rsplit_once('/').map(|(d, _)| d).unwrap_or(""))
            } else {
                link
            };
            files.links.insert(path, normalize_within(&target).unwrap_or_default());
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        if size <= 1 << 20 {
            let mut bytes = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut bytes).map_err(broken)?;
            files.small.insert(path, bytes);
        } else {
            let mut w = store.blob_writer()?;
            super::super::store::copy_with_progress(&mut entry, &mut w, &mut |n| progress.advance(n))
                .map_err(broken)?;
            let expected = path.strip_prefix("blobs/sha256/").and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
            let (digest, written) = w.commit(expected.as_ref(), &format!("{label} {path}"))?;
            files.blobs.insert(path, (digest, written));
        }
    }
    let mut counted = NoProgress;
    import_docker_archive(&files, name, platform, store, &mut counted)
}

/// `busybox:1` and `docker.io/library/busybox:1` name the same image. A name that is not
/// a valid reference is left as written (it then matches only itself).
pub fn normalize_docker_name(name: &str) -> String {
    match super::super::registry::ImageRef::parse(name) {
        Ok(r) => r.to_string(),
        Err(_) => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_normalize() {
        assert_eq!(normalize_docker_name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_docker_name("apache/airflow:3"), "docker.io/apache/airflow:3");
        assert_eq!(normalize_docker_name("localhost:5000/x:1"), "localhost:5000/x:1");
    }

    #[test]
    fn archive_paths_cannot_climb_out() {
        assert_eq!(normalize_within("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize_within("../b"), None);
    }
}
