//! The owner and mode a base image gives the directories new layers write into, found by
//! reading its layers in order (whiteouts and opaque directories included). Cached per layer.
//!
//! On the way every entry of every base layer is held to one rule, whatever form the escape
//! takes: nothing may name a place outside the image's root. Refused: `..` and absolute
//! paths, hardlinks whose target is either, and any entry whose path passes through a
//! symlink (defined earlier in the same layer or in a lower one), since writing there would
//! write wherever the link points. Symlinks themselves may point anywhere: they are resolved
//! inside the container. xtask never unpacks a base itself (containerd does, within its
//! root); the rule protects any other consumer of the images we write.
//!
//! Reading is bounded: tar extension headers (GNU long names, PAX records) above 1 MiB are
//! refused rather than held in memory, and a layer may inflate to at most 100 times its
//! compressed size (or 1 GiB, whichever is more; XTASK_MAX_LAYER_INFLATE raises it), which
//! stops a gzip bomb in seconds.

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
    /// Symlinks the layer leaves, directories it defines (which replace a lower link) and
    /// the parent directories its entries are written into: enough to find an entry that
    /// writes through a lower layer's symlink.
    symlinks: Vec<String>,
    dirs: Vec<String>,
    parents: Vec<String>,
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
    let mut links: BTreeSet<String> = BTreeSet::new();
    for (digest, media_type) in layers {
        let key = format!("v2-{}-{}", digest.hex(), &wanted_key[..16]);
        let facts = match store.cache_get::<LayerDirFacts>("base-dirs", &key) {
            Some(f) => f,
            None => {
                let f = scan_layer_dirs(store, digest, media_type, wanted)?;
                store.cache_put("base-dirs", &key, &f)?;
                f
            }
        };
        for dir in &facts.dirs {
            links.remove(dir);
        }
        for gone in &facts.removed {
            links.retain(|l| l != gone && !is_strictly_under(l, gone));
        }
        for dir in &facts.opaque {
            links.retain(|l| !is_strictly_under(l, dir));
        }
        for parent in &facts.parents {
            if let Some(link) = through_link(parent, &links) {
                bail!(
                    "base layer {digest} writes into {parent}, but {link} is a symlink in a lower layer: writing through it would leave the image's root; the base image is unsafe to use, pick another base"
                );
            }
        }
        links.extend(facts.symlinks.iter().cloned());
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

/// `path` itself or the nearest of its ancestors that is in `links`.
fn through_link<'a>(path: &'a str, links: &BTreeSet<String>) -> Option<&'a str> {
    let mut p = path;
    loop {
        if links.contains(p) {
            return Some(p);
        }
        p = p.rsplit_once('/')?.0;
    }
}

/// The largest tar extension header (long name, PAX records) read into memory.
const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// How far a layer of `compressed` bytes may inflate.
fn inflate_limit(compressed: u64) -> u64 {
    std::env::var("XTASK_MAX_LAYER_INFLATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| compressed.saturating_mul(100).max(1 << 30))
}

/// A reader that fails once more than `limit` bytes came through.
struct Capped<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "it inflates to more than {} bytes (set XTASK_MAX_LAYER_INFLATE to allow more)",
                self.limit
            ))
        })?;
        Ok(n)
    }
}

/// The `path`, `linkpath` and `size` records of a PAX extended header.
fn pax_records(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    while let Some(space) = rest.iter().position(|&b| b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space]).ok().and_then(|l| l.parse::<usize>().ok()) else { break };
        if len <= space + 1 || len > rest.len() {
            break;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            out.insert(String::from_utf8_lossy(&record[..eq]).into_owned(), record[eq + 1..].to_vec());
        }
        rest = &rest[len..];
    }
    out
}

fn scan_layer_dirs(
    store: &Store,
    digest: &Digest,
    media_type: &MediaType,
    wanted: &BTreeSet<String>,
) -> Result<LayerDirFacts> {
    let file = store.open_blob(digest)?;
    let compressed = file.metadata()?.len();
    let limit = inflate_limit(compressed);
    let buffered = std::io::BufReader::with_capacity(1 << 20, file);
    let reader: Box<dyn Read> = Compression::of_media_type(media_type).decoder(buffered)?;
    let reader = Capped { inner: reader, left: limit, limit };
    let unsafe_base = |what: String| {
        anyhow::anyhow!("base layer {digest}: {what}; the base image is unsafe to use, pick another base")
    };
    let mut facts = LayerDirFacts::default();
    let mut links: BTreeSet<String> = BTreeSet::new();
    let mut parents: BTreeSet<String> = BTreeSet::new();
    // Raw entries: extension headers come to us as entries, so their size is checked
    // before anything is read into memory (the tar crate would read them whole).
    let mut archive = ::tar::Archive::new(reader);
    let entries = archive.entries().with_context(|| format!("base layer {digest} is not a tar archive"))?.raw(true);
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.with_context(|| format!("base layer {digest} is corrupt, truncated or too large"))?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            let size = entry.header().entry_size()?;
            if size > MAX_EXTENSION_HEADER {
                bail!(unsafe_base(format!(
                    "a tar extension header of {size} bytes (at most {MAX_EXTENSION_HEADER} are read)"
                )));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).with_context(|| format!("base layer {digest} is corrupt or truncated"))?;
            let strip = |mut d: Vec<u8>| {
                while d.last() == Some(&0) {
                    d.pop();
                }
                d
            };
            if kind.is_gnu_longname() {
                long_name = Some(strip(data));
            } else if kind.is_gnu_longlink() {
                long_link = Some(strip(data));
            } else if kind.is_pax_local_extensions() {
                pax = pax_records(&data);
            }
            continue;
        }
        let header_size = entry.header().entry_size()?;
        if let Some(size) = pax.get("size")
            && std::str::from_utf8(size).ok().and_then(|s| s.parse::<u64>().ok()) != Some(header_size)
        {
            bail!(
                "base layer {digest} gives a file's size only in a PAX record (a file over 8 GiB), which xtask cannot read; use a base without such files"
            );
        }
        let raw_path =
            long_name.take().or_else(|| pax.remove("path")).unwrap_or_else(|| entry.path_bytes().into_owned());
        let raw_link = long_link
            .take()
            .or_else(|| pax.remove("linkpath"))
            .or_else(|| entry.link_name_bytes().map(|b| b.into_owned()));
        let pax_id = |key: &str| pax.get(key).and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        let (pax_uid, pax_gid) = (pax_id("uid"), pax_id("gid"));
        pax.clear();
        let raw = String::from_utf8_lossy(&raw_path).into_owned();
        let path = safe_entry_path(&raw).map_err(|e| unsafe_base(e.to_string()))?;
        if kind.is_hard_link() {
            let target = String::from_utf8_lossy(raw_link.as_deref().unwrap_or_default()).into_owned();
            let target = safe_entry_path(&target)
                .map_err(|e| unsafe_base(format!("hardlink {path} points outside the image ({e})")))?;
            if let Some(link) = through_link(&target, &links) {
                bail!(unsafe_base(format!("hardlink {path} points through the symlink {link}")));
            }
        }
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path.as_str()),
        };
        if !dir.is_empty() {
            if let Some(link) = through_link(&dir, &links) {
                bail!(unsafe_base(format!("{path} is written through the symlink {link}")));
            }
            parents.insert(dir.clone());
        }
        if name == ".wh..wh..opq" {
            links.retain(|l| !is_strictly_under(l, &dir));
            if wanted.iter().any(|w| is_strictly_under(w, &dir)) {
                facts.opaque.push(dir.clone());
            }
            continue;
        }
        if let Some(removed) = name.strip_prefix(".wh.") {
            let gone = if dir.is_empty() { removed.to_string() } else { format!("{dir}/{removed}") };
            links.retain(|l| *l != gone && !is_strictly_under(l, &gone));
            if wanted.iter().any(|w| *w == gone || is_strictly_under(w, &gone)) {
                facts.removed.push(gone);
            }
            continue;
        }
        if kind.is_symlink() {
            links.insert(path.clone());
        } else {
            links.remove(&path);
        }
        if kind.is_dir() {
            facts.dirs.push(path.clone());
        }
        if wanted.contains(&path) {
            let h = entry.header();
            let info = if kind.is_dir() {
                Some(DirInfo {
                    uid: pax_uid.unwrap_or(h.uid().unwrap_or(0)),
                    gid: pax_gid.unwrap_or(h.gid().unwrap_or(0)),
                    mode: h.mode().unwrap_or(0o755) & 0o7777,
                })
            } else {
                None
            };
            facts.defined.insert(path, info);
        }
    }
    if long_name.is_some() || long_link.is_some() {
        bail!("base layer {digest} ends with a long-name header and no entry; it is corrupt or truncated");
    }
    facts.symlinks = links.into_iter().collect();
    facts.parents = parents.into_iter().collect();
    Ok(facts)
}
