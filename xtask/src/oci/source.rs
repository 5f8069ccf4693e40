//! Base image references -> blobs in the store.
//!
//! References are written the way skopeo and containers/image write them:
//! `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:NAME:TAG]`,
//! `docker-daemon:NAME:TAG` and `docker://HOST/REPO:TAG`. Base layers are copied into the
//! store byte for byte (each checked against its digest), never re-tarred.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::store::{DigestMismatch, Store};
use super::tar::safe_entry_path;
use super::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, Digest, Index, MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST, Manifest, Platform, canonical_json,
    is_index_media_type, oci_layer_media_type,
};

/// A parsed base image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseRef {
    OciDir {
        path: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
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
    pub fn parse(reference: &str, root: &Path) -> Result<BaseRef> {
        if reference == "scratch" {
            return Ok(BaseRef::Scratch);
        }
        let (transport, rest) = reference.split_once(':').ok_or_else(|| bad_ref(reference))?;
        let path_and_tag = |rest: &str| -> (PathBuf, Option<String>) {
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

/// A base image whose blobs are all in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaseImage {
    pub reference: String,
    /// The base's manifest as stored (for an OCI base, byte-identical to the source's).
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// Layers with OCI media types; blob bytes exactly as in the source.
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
    /// Name to record in `org.opencontainers.image.base.name`, where the reference is a
    /// portable name (a registry reference); None for local files.
    pub base_name: Option<String>,
}

impl BaseImage {
    pub fn total_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Progress of an import: called with the total once known, then with byte counts.
pub trait ImportProgress {
    fn start(&mut self, total: u64);
    fn advance(&mut self, n: u64);
}

pub struct NoProgress;
impl ImportProgress for NoProgress {
    fn start(&mut self, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// Brings the base image named by `reference` into the store, or finds it there from an
/// earlier import of the same unchanged source.
pub fn import(
    reference: &str,
    root: &Path,
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
        .all(|d| store.blob_size(&d.digest) == Some(d.size))
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
        "{reference}\n{}\n{platform}\n{}:{}:{}:{}\n",
        file.display(),
        md.len(),
        md.mtime_nsec() + md.mtime() * 1_000_000_000,
        md.ino(),
        md.dev()
    ));
    Ok(Some(hex::encode(h.finalize())))
}

/// Read access to the files of an image layout, whether a directory or a tar.
trait LayoutFiles {
    fn describe(&self) -> &str;
    /// Opens `path` (relative, '/'-separated), returning its size; None when absent.
    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>>;

    fn read_small(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some((mut r, size)) = self.open(path)? else { return Ok(None) };
        if size > 64 << 20 {
            bail!("{}: {path} is {size} bytes, too large for a JSON document", self.describe());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        r.read_to_end(&mut bytes).with_context(|| format!("{}: cannot read {path}", self.describe()))?;
        if (bytes.len() as u64) < size {
            bail!(
                "{}: {path} is truncated ({} of {size} bytes); the archive is incomplete",
                self.describe(),
                bytes.len()
            );
        }
        Ok(Some(bytes))
    }
}

struct DirFiles {
    root: PathBuf,
    label: String,
}

impl DirFiles {
    fn open(root: &Path, reference: &str) -> Result<DirFiles> {
        if !root.join("index.json").is_file() {
            bail!(
                "{} is not an OCI image layout (no index.json); check the path in `{reference}` (docker/images.toml), or build the base first",
                root.display()
            );
        }
        Ok(DirFiles { root: root.to_path_buf(), label: reference.to_string() })
    }
}

impl LayoutFiles for DirFiles {
    fn describe(&self) -> &str {
        &self.label
    }

    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let path = safe_entry_path(path).map_err(|e| anyhow!("{}: {e}", self.label))?;
        let p = self.root.join(path);
        match File::open(&p) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok(Some((Box::new(f), size)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }
}

#[derive(Clone, Debug)]
enum TarLoc {
    Data { offset: u64, size: u64 },
    Link(String),
}

/// A tar archive indexed once (names -> offsets) and then read by seeking, so a blob is
/// streamed straight from its place in the archive.
struct TarFiles {
    path: PathBuf,
    label: String,
    entries: HashMap<String, TarLoc>,
}

impl TarFiles {
    fn open(path: &Path, reference: &str) -> Result<TarFiles> {
        let file = File::open(path).with_context(|| {
            format!(
                "{} does not exist or cannot be read; check the path in `{reference}` (docker/images.toml)",
                path.display()
            )
        })?;
        let file_len = file.metadata()?.len();
        let mut archive = ::tar::Archive::new(file);
        let mut entries = HashMap::new();
        let corrupt = |e: std::io::Error| {
            anyhow!(
                "{} is not a readable tar archive ({e}); it is corrupt or truncated, export it again",
                path.display()
            )
        };
        for entry in archive.entries_with_seek().map_err(corrupt)? {
            let entry = entry.map_err(corrupt)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = safe_entry_path(&raw).map_err(|e| anyhow!("{}: {e}; refusing to read it", path.display()))?;
            let kind = entry.header().entry_type();
            let loc = if kind.is_symlink() || kind.is_hard_link() {
                let link =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let resolved = if kind.is_symlink() {
                    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    format!("{dir}/{link}")
                } else {
                    link.clone()
                };
                let resolved = normalize_within(&resolved).ok_or_else(|| {
                    anyhow!("{}: link {name} -> {link} escapes the archive; refusing to read it", path.display())
                })?;
                TarLoc::Link(resolved)
            } else if kind.is_file() {
                let offset = entry.raw_file_position();
                let size = entry.size();
                if offset + size > file_len {
                    bail!(
                        "{} is truncated: {name} needs {} bytes but the file ends after {}; export it again",
                        path.display(),
                        offset + size,
                        file_len
                    );
                }
                TarLoc::Data { offset, size }
            } else {
                continue;
            };
            entries.insert(name, loc);
        }
        if entries.is_empty() {
            bail!("{} holds no files; it is not an image archive", path.display());
        }
        Ok(TarFiles { path: path.to_path_buf(), label: reference.to_string(), entries })
    }

    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = name.to_string();
        for _ in 0..16 {
            match self.entries.get(&name)? {
                TarLoc::Data { offset, size } => return Some((*offset, *size)),
                TarLoc::Link(target) => name = target.clone(),
            }
        }
        None
    }
}

/// Resolves `.` and `..` in an archive-internal path; None if it climbs out.
fn normalize_within(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

impl LayoutFiles for TarFiles {
    fn describe(&self) -> &str {
        &self.label
    }

    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>> {
        let Some(name) = normalize_within(path) else { return Ok(None) };
        let Some((offset, size)) = self.locate(&name) else { return Ok(None) };
        let mut f = File::open(&self.path).with_context(|| format!("cannot open {}", self.path.display()))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Some((Box::new(BufReader::with_capacity(1 << 20, f).take(size)), size)))
    }
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads a JSON blob of an OCI layout, checking its digest.
fn read_layout_blob(files: &dyn LayoutFiles, desc: &Descriptor) -> Result<Vec<u8>> {
    let bytes = files
        .read_small(&blob_path(&desc.digest))?
        .ok_or_else(|| anyhow!("{}: blob {} is missing", files.describe(), desc.digest))?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        bail!(DigestMismatch {
            what: format!("{} blob {}", files.describe(), blob_path(&desc.digest)),
            expected: desc.digest.clone(),
            actual,
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

fn pick_from_index<'a>(index: &'a Index, tag: Option<&str>, what: &str) -> Result<&'a Descriptor> {
    let names = || -> String {
        let list: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|d| {
                d.annotation(ANNOTATION_REF_NAME).or(d.annotation(ANNOTATION_CONTAINERD_NAME)).map(String::from)
            })
            .collect();
        if list.is_empty() { "(none named)".into() } else { list.join(", ") }
    };
    match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| {
                d.annotation(ANNOTATION_REF_NAME) == Some(tag) || d.annotation(ANNOTATION_CONTAINERD_NAME) == Some(tag)
            })
            .ok_or_else(|| anyhow!("{what} has no image tagged `{tag}`; it has: {}", names())),
        None => match index.manifests.as_slice() {
            [one] => Ok(one),
            [] => bail!("{what} holds no image"),
            _ => bail!("{what} holds several images; name one with :TAG. It has: {}", names()),
        },
    }
}

fn pick_platform<'a>(index: &'a Index, platform: &Platform, what: &str) -> Result<&'a Descriptor> {
    index.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.matches(platform))).ok_or_else(|| {
        let have: Vec<String> =
            index.manifests.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
        anyhow!("{what} has no image for {platform}; it has: {}", have.join(", "))
    })
}

fn check_config_platform(config: &[u8], platform: &Platform, what: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Plat {
        architecture: Option<String>,
        os: Option<String>,
    }
    let p: Plat = serde_json::from_slice(config).with_context(|| format!("{what}: image config is not valid JSON"))?;
    if let (Some(arch), Some(os)) = (p.architecture, p.os)
        && (arch != platform.architecture || os != platform.os)
    {
        bail!(
            "{what} is an image for {os}/{arch}, but the build targets {platform}; set `platform` in docker/images.toml or pick another base"
        );
    }
    Ok(())
}

fn diff_ids_of(config: &[u8], what: &str) -> Result<Vec<Digest>> {
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize)]
    struct Cfg {
        rootfs: RootFs,
    }
    let c: Cfg =
        serde_json::from_slice(config).with_context(|| format!("{what}: image config has no valid rootfs.diff_ids"))?;
    Ok(c.rootfs.diff_ids)
}

fn import_oci_layout(
    files: &dyn LayoutFiles,
    tag: Option<&str>,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let what = files.describe().to_string();
    let index_bytes = files
        .read_small("index.json")?
        .ok_or_else(|| anyhow!("{what} has no index.json; it is not an OCI image layout"))?;
    let index: Index =
        serde_json::from_slice(&index_bytes).with_context(|| format!("{what}: index.json is not a valid OCI index"))?;
    let mut desc = pick_from_index(&index, tag, &what)?.clone();
    let mut manifest_bytes = read_layout_blob(files, &desc)?;
    // A multi-platform image: one more level to the manifest for our platform.
    if is_index_media_type(&desc.media_type)
        || serde_json::from_slice::<Index>(&manifest_bytes).is_ok_and(|i| !i.manifests.is_empty())
    {
        let inner: Index = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("{what}: {} is not a valid index", desc.digest))?;
        desc = pick_platform(&inner, platform, &what)?.clone();
        manifest_bytes = read_layout_blob(files, &desc)?;
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{what}: manifest {} is not a valid image manifest", desc.digest))?;
    let config_bytes = read_layout_blob(files, &manifest.config)?;
    check_config_platform(&config_bytes, platform, &what)?;
    let diff_ids = diff_ids_of(&config_bytes, &what)?;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "{what}: the manifest lists {} layers but the config {} diff_ids; the image is corrupt",
            manifest.layers.len(),
            diff_ids.len()
        );
    }
    progress.start(manifest.layers.iter().map(|l| l.size).sum());
    let mut layers = Vec::new();
    for layer in &manifest.layers {
        let media_type = oci_layer_media_type(&layer.media_type).with_context(|| what.clone())?;
        let (mut r, size) = files
            .open(&blob_path(&layer.digest))?
            .ok_or_else(|| anyhow!("{what}: layer blob {} is missing", layer.digest))?;
        if size != layer.size {
            bail!(
                "{what}: layer {} is {size} bytes but the manifest says {}; the image is corrupt",
                layer.digest,
                layer.size
            );
        }
        store.ingest(&mut r, &layer.digest, &format!("{what} layer {}", blob_path(&layer.digest)), &mut |n| {
            progress.advance(n)
        })?;
        let mut d = Descriptor::new(media_type, layer.digest.clone(), layer.size);
        d.annotations = layer.annotations.clone();
        layers.push(d);
    }
    let config_digest = store.put_bytes(&config_bytes)?;
    let manifest_digest = store.put_bytes(&manifest_bytes)?;
    Ok(BaseImage {
        reference: String::new(),
        manifest: Descriptor::new(
            manifest.media_type.as_deref().unwrap_or(MEDIA_OCI_MANIFEST),
            manifest_digest,
            manifest_bytes.len() as u64,
        ),
        config: Descriptor::new(MEDIA_OCI_CONFIG, config_digest, config_bytes.len() as u64),
        layers,
        diff_ids,
        base_name: None,
    })
}

/// The empty image: no layers, a config with only the platform.
fn scratch(platform: &Platform, store: &Store) -> Result<BaseImage> {
    let config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let config = store.put_json(MEDIA_OCI_CONFIG, &config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: config.clone(),
        layers: vec![],
        annotations: None,
        extra: Default::default(),
    };
    let manifest = store.put_json(MEDIA_OCI_MANIFEST, &manifest)?;
    Ok(BaseImage { reference: String::new(), manifest, config, layers: vec![], diff_ids: vec![], base_name: None })
}

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
fn import_docker_archive(
    files: &dyn LayoutFiles,
    name: Option<&str>,
    platform: &Platform,
    store: &Store,
    progress: &mut dyn ImportProgress,
) -> Result<BaseImage> {
    let what = files.describe().to_string();
    if let Some(index_bytes) = files.read_small("index.json")?
        && let Ok(index) = serde_json::from_slice::<Index>(&index_bytes)
        && !index.manifests.is_empty()
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
            MEDIA_OCI_LAYER_GZIP
        } else if head == [0x28, 0xb5, 0x2f, 0xfd] {
            MEDIA_OCI_LAYER_ZSTD
        } else {
            MEDIA_OCI_LAYER
        };
        let expected = path.strip_prefix("blobs/sha256/").and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
        let expected = match (&expected, media_type) {
            (Some(d), _) => Some(d.clone()),
            (None, MEDIA_OCI_LAYER) => Some(diff_ids[i].clone()),
            (None, _) => None,
        };
        if let Some(d) = &expected
            && store.blob_size(d) == Some(size)
        {
            progress.advance(size);
            layers.push(Descriptor::new(media_type, d.clone(), size));
            continue;
        }
        let mut w = store.blob_writer()?;
        super::store::copy_with_progress(&mut r, &mut w, &mut |n| progress.advance(n))
            .with_context(|| format!("{what}: cannot read layer {path}"))?;
        let (digest, written) = w.commit(expected.as_ref(), &format!("{what} layer {path}"))?;
        if written != size {
            bail!("{what}: layer {path} is truncated ({written} of {size} bytes)");
        }
        layers.push(Descriptor::new(media_type, digest, written));
    }
    let config = store.put_bytes(&config_bytes)?;
    let config = Descriptor::new(MEDIA_OCI_CONFIG, config, config_bytes.len() as u64);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: config.clone(),
        layers: layers.clone(),
        annotations: None,
        extra: Default::default(),
    };
    let bytes = canonical_json(&manifest)?;
    let manifest_digest = store.put_bytes(&bytes)?;
    Ok(BaseImage {
        reference: String::new(),
        manifest: Descriptor::new(MEDIA_OCI_MANIFEST, manifest_digest, bytes.len() as u64),
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
            super::store::copy_with_progress(&mut entry, &mut w, &mut |n| progress.advance(n)).map_err(broken)?;
            let expected = path.strip_prefix("blobs/sha256/").and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
            let (digest, written) = w.commit(expected.as_ref(), &format!("{label} {path}"))?;
            files.blobs.insert(path, (digest, written));
        }
    }
    let mut counted = NoProgress;
    import_docker_archive(&files, name, platform, store, &mut counted)
}

/// `busybox:1` and `docker.io/library/busybox:1` name the same image.
pub fn normalize_docker_name(name: &str) -> String {
    let (repo, tag) = (super::repository_of(name), super::tag_of(name));
    let first = repo.split('/').next().unwrap_or("");
    let has_host = repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo = if has_host {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_skopeo() {
        let root = Path::new("/repo");
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
