//! OCI image layouts as a base: a directory (`oci:`) or a tar (`oci-archive:`), read in
//! place; blobs are streamed into the store and checked against their digests.

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::super::image::{BaseImage, ImportProgress};
use super::super::store::{DigestMismatch, Store};
use super::super::tar::safe_entry_path;
use super::super::{
    ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Descriptor, DescriptorExt, Digest, ImageIndex, ImageManifest,
    MediaType, Platform, descriptor, is_index_media_type, oci_layer_media_type, platform_matches, platform_string,
};

/// Read access to the files of an image layout, whether a directory or a tar.
pub(super) trait LayoutFiles {
    fn describe(&self) -> &str;
    /// Opens `path` (relative, '/'-separated), returning its size; None when absent.
    fn open(&self, path: &str) -> Result<Option<(Box<dyn Read + '_>, u64)>>;

    fn read_small(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some((r, size)) = self.open(path)? else { return Ok(None) };
        if size > 64 << 20 {
            bail!("{}: {path} is {size} bytes, too large for a JSON document", self.describe());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        r.take(size).read_to_end(&mut bytes).with_context(|| format!("{}: cannot read {path}", self.describe()))?;
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

pub(super) struct DirFiles {
    root: Utf8PathBuf,
    label: String,
}

impl DirFiles {
    pub(super) fn open(root: &Utf8Path, reference: &str) -> Result<DirFiles> {
        if !root.join("index.json").is_file() {
            bail!(
                "{} is not an OCI image layout (no index.json); check the path in `{reference}` (docker/images.toml), or build the base first",
                root
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
        // Only regular files are read: not through a symlink (which could name /dev/zero or
        // a host secret), and a FIFO or device is refused before it is read from (non-blocking
        // open, then a check of what was opened). What is read is bounded by its size.
        use std::os::unix::fs::OpenOptionsExt;
        let flags = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32;
        let refuse = || {
            anyhow!(
                "{}: {} is not a regular file (a symlink, FIFO or device); refusing to read it. Copy the layout with `cp -rL` if the links are yours",
                self.label,
                p
            )
        };
        match File::options().read(true).custom_flags(flags).open(&p) {
            Ok(f) => {
                let meta = f.metadata()?;
                if !meta.is_file() {
                    return Err(refuse());
                }
                let size = meta.len();
                Ok(Some((Box::new(f.take(size)), size)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => Err(refuse()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p)),
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
pub(super) struct TarFiles {
    path: Utf8PathBuf,
    label: String,
    entries: HashMap<String, TarLoc>,
}

impl TarFiles {
    pub(super) fn open(path: &Utf8Path, reference: &str) -> Result<TarFiles> {
        let file = File::open(path).with_context(|| {
            format!("{} does not exist or cannot be read; check the path in `{reference}` (docker/images.toml)", path)
        })?;
        let file_len = file.metadata()?.len();
        let mut archive = ::tar::Archive::new(file);
        let mut entries = HashMap::new();
        let corrupt = |e: std::io::Error| {
            anyhow!("{} is not a readable tar archive ({e}); it is corrupt or truncated, export it again", path)
        };
        for entry in archive.entries_with_seek().map_err(corrupt)? {
            let entry = entry.map_err(corrupt)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = safe_entry_path(&raw).map_err(|e| anyhow!("{}: {e}; refusing to read it", path))?;
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
                    anyhow!("{}: link {name} -> {link} escapes the archive; refusing to read it", path)
                })?;
                TarLoc::Link(resolved)
            } else if kind.is_file() {
                let offset = entry.raw_file_position();
                let size = entry.size();
                if offset + size > file_len {
                    bail!(
                        "{} is truncated: {name} needs {} bytes but the file ends after {}; export it again",
                        path,
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
            bail!("{} holds no files; it is not an image archive", path);
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
pub(super) fn normalize_within(path: &str) -> Option<String> {
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
        let mut f = File::open(&self.path).with_context(|| format!("cannot open {}", self.path))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Some((Box::new(BufReader::with_capacity(1 << 20, f).take(size)), size)))
    }
}

pub(super) fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads a JSON blob of an OCI layout, checking its digest.
pub(super) fn read_layout_blob(files: &dyn LayoutFiles, desc: &Descriptor) -> Result<Vec<u8>> {
    let digest = desc.sha256().with_context(|| files.describe().to_string())?;
    let bytes = files
        .read_small(&blob_path(&digest))?
        .ok_or_else(|| anyhow!("{}: blob {digest} is missing", files.describe()))?;
    let actual = Digest::of(&bytes);
    if actual != digest {
        bail!(DigestMismatch {
            what: format!("{} blob {}", files.describe(), blob_path(&digest)),
            expected: digest,
            actual,
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

pub(super) fn pick_from_index<'a>(index: &'a ImageIndex, tag: Option<&str>, what: &str) -> Result<&'a Descriptor> {
    let names = || -> String {
        let list: Vec<String> = index
            .manifests()
            .iter()
            .filter_map(|d| {
                d.annotation(ANNOTATION_REF_NAME).or(d.annotation(ANNOTATION_CONTAINERD_NAME)).map(String::from)
            })
            .collect();
        if list.is_empty() { "(none named)".into() } else { list.join(", ") }
    };
    match tag {
        Some(tag) => index
            .manifests()
            .iter()
            .find(|d| {
                d.annotation(ANNOTATION_REF_NAME) == Some(tag) || d.annotation(ANNOTATION_CONTAINERD_NAME) == Some(tag)
            })
            .ok_or_else(|| anyhow!("{what} has no image tagged `{tag}`; it has: {}", names())),
        None => match index.manifests().as_slice() {
            [one] => Ok(one),
            [] => bail!("{what} holds no image"),
            _ => bail!("{what} holds several images; name one with :TAG. It has: {}", names()),
        },
    }
}

pub(super) fn pick_platform<'a>(index: &'a ImageIndex, platform: &Platform, what: &str) -> Result<&'a Descriptor> {
    index.manifests().iter().find(|d| d.platform().as_ref().is_some_and(|p| platform_matches(platform, p))).ok_or_else(
        || {
            let have: Vec<String> =
                index.manifests().iter().filter_map(|d| d.platform().as_ref().map(platform_string)).collect();
            anyhow!("{what} has no image for {}; it has: {}", platform_string(platform), have.join(", "))
        },
    )
}

pub(super) fn check_config_platform(config: &[u8], platform: &Platform, what: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct Plat {
        architecture: Option<String>,
        os: Option<String>,
    }
    let p: Plat = serde_json::from_slice(config).with_context(|| format!("{what}: image config is not valid JSON"))?;
    if let (Some(arch), Some(os)) = (p.architecture, p.os)
        && (arch != platform.architecture().to_string() || os != platform.os().to_string())
    {
        bail!(
            "{what} is an image for {os}/{arch}, but the build targets {}; set `platform` in docker/images.toml or pick another base",
            platform_string(platform)
        );
    }
    Ok(())
}

pub(super) fn diff_ids_of(config: &[u8], what: &str) -> Result<Vec<Digest>> {
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

pub(super) fn import_oci_layout(
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
    let index: ImageIndex =
        serde_json::from_slice(&index_bytes).with_context(|| format!("{what}: index.json is not a valid OCI index"))?;
    let mut desc = pick_from_index(&index, tag, &what)?.clone();
    let mut manifest_bytes = read_layout_blob(files, &desc)?;
    // A multi-platform image: one more level to the manifest for our platform.
    if is_index_media_type(desc.media_type())
        || serde_json::from_slice::<ImageIndex>(&manifest_bytes).is_ok_and(|i| !i.manifests().is_empty())
    {
        let inner: ImageIndex = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("{what}: {} is not a valid index", desc.digest()))?;
        desc = pick_platform(&inner, platform, &what)?.clone();
        manifest_bytes = read_layout_blob(files, &desc)?;
    }
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{what}: manifest {} is not a valid image manifest", desc.digest()))?;
    let config_bytes = read_layout_blob(files, manifest.config())?;
    check_config_platform(&config_bytes, platform, &what)?;
    let diff_ids = diff_ids_of(&config_bytes, &what)?;
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "{what}: the manifest lists {} layers but the config {} diff_ids; the image is corrupt",
            manifest.layers().len(),
            diff_ids.len()
        );
    }
    progress.start(manifest.layers().iter().map(|l| l.size()).sum());
    let mut layers = Vec::new();
    for layer in manifest.layers() {
        let media_type = oci_layer_media_type(layer.media_type()).with_context(|| what.clone())?;
        let digest = layer.sha256().with_context(|| what.clone())?;
        let (mut r, size) =
            files.open(&blob_path(&digest))?.ok_or_else(|| anyhow!("{what}: layer blob {digest} is missing"))?;
        if size != layer.size() {
            bail!(
                "{what}: layer {digest} is {size} bytes but the manifest says {}; the image is corrupt",
                layer.size()
            );
        }
        store.ingest(&mut r, &digest, Some(size), &format!("{what} layer {}", blob_path(&digest)), &mut |n| {
            progress.advance(n)
        })?;
        let mut d = descriptor(media_type, &digest, layer.size());
        d.set_annotations(layer.annotations().clone());
        layers.push(d);
    }
    let config_digest = store.put_bytes(&config_bytes)?;
    let manifest_digest = store.put_bytes(&manifest_bytes)?;
    Ok(BaseImage {
        reference: String::new(),
        manifest: descriptor(
            manifest.media_type().clone().unwrap_or(MediaType::ImageManifest),
            &manifest_digest,
            manifest_bytes.len() as u64,
        ),
        config: descriptor(MediaType::ImageConfig, &config_digest, config_bytes.len() as u64),
        layers,
        diff_ids,
        base_name: None,
    })
}
