//! The owner and mode a base image gives the directories new layers write into, found by
//! reading its layers in order (whiteouts and opaque directories included). Every entry of
//! every base layer is checked for a path escaping the root on the way. Cached per layer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::layer::Compression;
use super::store::Store;
use super::tar::safe_entry_path;
use super::{Digest, MediaType};

/// Owner and mode of a directory as the base image has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirInfo {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
}

/// What one base layer says about the wanted paths: which it (re)defines and which it
/// deletes through whiteouts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct LayerDirFacts {
    defined: BTreeMap<String, Option<DirInfo>>,
    /// Paths (directories) removed by `.wh.` files, and directories made opaque.
    removed: Vec<String>,
    opaque: Vec<String>,
}

/// The owner and mode the base image gives each of `wanted` (directories), after applying
/// all its layers in order. Every entry of every layer is checked for paths that escape
/// the root. Results are cached per layer digest.
pub fn base_dirs(
    store: &Store,
    layers: &[(Digest, MediaType)],
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, DirInfo>> {
    if wanted.is_empty() {
        return Ok(BTreeMap::new());
    }
    let wanted_key = {
        let mut h = Sha256::new();
        for w in wanted {
            h.update(w.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    };
    let mut state: BTreeMap<String, DirInfo> = BTreeMap::new();
    for (digest, media_type) in layers {
        let key = format!("{}-{}", digest.hex(), &wanted_key[..16]);
        let facts = match store.cache_get::<LayerDirFacts>("base-dirs", &key) {
            Some(f) => f,
            None => {
                let f = scan_layer_dirs(store, digest, media_type, wanted)?;
                store.cache_put("base-dirs", &key, &f)?;
                f
            }
        };
        for dir in &facts.opaque {
            state.retain(|p, _| !is_strictly_under(p, dir));
        }
        for gone in &facts.removed {
            state.retain(|p, _| p != gone && !is_strictly_under(p, gone));
        }
        for (path, info) in &facts.defined {
            match info {
                Some(info) => {
                    state.insert(path.clone(), *info);
                }
                None => {
                    state.remove(path);
                }
            }
        }
    }
    Ok(state)
}

fn is_strictly_under(path: &str, dir: &str) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

fn scan_layer_dirs(
    store: &Store,
    digest: &Digest,
    media_type: &MediaType,
    wanted: &BTreeSet<String>,
) -> Result<LayerDirFacts> {
    let file = store.open_blob(digest)?;
    let reader: Box<dyn Read> = match Compression::of_media_type(media_type) {
        _ if *media_type == MediaType::ImageLayerZstd => {
            bail!("base layer {digest} is zstd-compressed, which xtask cannot read yet; use a gzip base")
        }
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file))),
        Compression::None => Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
    };
    let mut facts = LayerDirFacts::default();
    let mut archive = ::tar::Archive::new(reader);
    let entries = archive.entries().with_context(|| format!("base layer {digest} is not a tar archive"))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("base layer {digest} is corrupt or truncated"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = safe_entry_path(&raw).map_err(|e| {
            anyhow::anyhow!("base layer {digest}: {e}; the base image is unsafe to use, pick another base")
        })?;
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path.as_str()),
        };
        if name == ".wh..wh..opq" {
            if wanted.iter().any(|w| is_strictly_under(w, &dir)) {
                facts.opaque.push(dir);
            }
            continue;
        }
        if let Some(removed) = name.strip_prefix(".wh.") {
            let gone = if dir.is_empty() { removed.to_string() } else { format!("{dir}/{removed}") };
            if wanted.iter().any(|w| *w == gone || is_strictly_under(w, &gone)) {
                facts.removed.push(gone);
            }
            continue;
        }
        if wanted.contains(&path) {
            let h = entry.header();
            let info = if h.entry_type().is_dir() {
                Some(DirInfo {
                    uid: h.uid().unwrap_or(0),
                    gid: h.gid().unwrap_or(0),
                    mode: h.mode().unwrap_or(0o755) & 0o7777,
                })
            } else {
                None
            };
            facts.defined.insert(path, info);
        }
    }
    Ok(facts)
}
