//! One tar that is both an OCI image layout and a docker-archive: `docker load`,
//! `kind load image-archive`, `ctr images import` and `skopeo oci-archive:` all read it.
//!
//! Entries: `oci-layout`, `index.json` (each image named by `io.containerd.image.name`
//! with its fully qualified name and `org.opencontainers.image.ref.name` with its tag),
//! `manifest.json` (docker's list of config + layers + RepoTags), then `blobs/sha256/*`.

use camino::Utf8Path;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use serde::Serialize;

use super::store::Store;
use super::tar::{Meta, TarWriter};
use super::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, DescriptorExt, Digest, ImageIndex, ImageManifest,
    canonical_json,
};
use crate::fsutil::AtomicFile;

/// An image to put into an archive.
#[derive(Clone, Debug)]
pub struct ArchiveImage {
    /// Fully qualified name, e.g. `docker.io/library/airflow-worker:dev`.
    pub name: String,
    pub manifest: Descriptor,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveStats {
    /// Bytes of the whole tar.
    pub bytes: u64,
    pub blobs: usize,
    /// Blobs left out because the destination already has them.
    pub omitted_blobs: usize,
    pub omitted_bytes: u64,
}

#[derive(Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// What goes into an archive besides the images.
#[derive(Clone, Debug, Default)]
pub struct ArchiveOptions {
    /// Layer blobs the destination already has: left out (manifests and configs never are).
    pub omit: BTreeSet<Digest>,
    /// Also name each image `REPO@sha256:...` for containerd, whose CRI finds an image a
    /// pod names by digest only under that exact name.
    pub digest_names: bool,
}

/// Streams the archive into `out`.
pub fn write_archive(
    store: &Store,
    images: &[ArchiveImage],
    opts: &ArchiveOptions,
    out: &mut dyn Write,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<ArchiveStats> {
    let omit = &opts.omit;
    let mut index_manifests = Vec::new();
    let mut docker = Vec::new();
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut stats = ArchiveStats::default();
    for image in images {
        let manifest_digest = image.manifest.sha256()?;
        let manifest: ImageManifest = store.read_json(&manifest_digest)?;
        let mut desc = image.manifest.clone();
        desc.set_annotations(Some(HashMap::from([
            (ANNOTATION_CONTAINERD_NAME.to_string(), image.name.clone()),
            (ANNOTATION_REF_NAME.to_string(), super::tag_of(&image.name).to_string()),
        ])));
        index_manifests.push(desc);
        if opts.digest_names {
            let mut by_digest = image.manifest.clone();
            by_digest.set_annotations(Some(HashMap::from([(
                ANNOTATION_CONTAINERD_NAME.to_string(),
                super::digest_reference(&image.name, &manifest_digest),
            )])));
            index_manifests.push(by_digest);
        }
        let config = manifest.config().sha256()?;
        let layers: Vec<(Digest, u64)> =
            manifest.layers().iter().map(|l| Ok((l.sha256()?, l.size()))).collect::<Result<_>>()?;
        docker.push(DockerManifestEntry {
            config: format!("blobs/sha256/{}", config.hex()),
            repo_tags: vec![image.name.clone()],
            layers: layers.iter().map(|(d, _)| format!("blobs/sha256/{}", d.hex())).collect(),
        });
        blobs.insert(manifest_digest, image.manifest.size());
        blobs.insert(config, manifest.config().size());
        for (digest, size) in layers {
            if omit.contains(&digest) {
                if !blobs.contains_key(&digest) {
                    stats.omitted_blobs += 1;
                    stats.omitted_bytes += size;
                }
                continue;
            }
            blobs.insert(digest, size);
        }
    }
    let mut index = ImageIndex::default();
    index.set_manifests(index_manifests);
    let meta = Meta { uid: 0, gid: 0, mode: 0o644, mtime: 0 };
    let dir_meta = Meta { mode: 0o755, ..meta };
    let mut counting = super::CountingWriter::new(BufWriter::with_capacity(1 << 20, out));
    {
        let mut tar = TarWriter::new(&mut counting);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        tar.file("oci-layout", meta, layout.len() as u64, &mut &layout[..])?;
        let index_bytes = canonical_json(&index)?;
        tar.file("index.json", meta, index_bytes.len() as u64, &mut &index_bytes[..])?;
        let docker_bytes = canonical_json(&docker)?;
        tar.file("manifest.json", meta, docker_bytes.len() as u64, &mut &docker_bytes[..])?;
        tar.dir("blobs", dir_meta)?;
        tar.dir("blobs/sha256", dir_meta)?;
        for (digest, size) in &blobs {
            let mut f = store.open_blob(digest)?;
            let mut progress = ProgressReader { inner: &mut f, on_bytes: &mut *on_bytes };
            tar.file(&format!("blobs/sha256/{}", digest.hex()), meta, *size, &mut progress)
                .with_context(|| format!("cannot copy blob {digest} from the store"))?;
            stats.blobs += 1;
        }
        tar.finish()?;
    }
    counting.flush()?;
    stats.bytes = counting.count();
    Ok(stats)
}

/// Writes the archive to `path` atomically: under a temporary name, renamed when complete.
pub fn write_archive_file(
    store: &Store,
    images: &[ArchiveImage],
    path: &Utf8Path,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<ArchiveStats> {
    let mut file = AtomicFile::create(path)?;
    let stats = write_archive(store, images, &ArchiveOptions::default(), file.file(), on_bytes)
        .with_context(|| format!("cannot write archive {}", path))?;
    file.commit()?;
    Ok(stats)
}

struct ProgressReader<'a, R> {
    inner: &'a mut R,
    on_bytes: &'a mut dyn FnMut(u64),
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_bytes)(n as u64);
        Ok(n)
    }
}
