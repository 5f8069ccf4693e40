//! New layers: a directory of the repository written as a deterministic tar (and gzip),
//! with its diffID, digest and size computed in the same pass.
//!
//! A layer's inputs are summarised by (path, kind, size, mtime, mode) of every entry plus
//! everything in the plan that shapes the bytes; when that summary matches a cached build
//! whose blob is still in the store, the layer is reused without reading a single file.
//!
//! In a git work tree a directory becomes two layers (see `split`): what the last commit
//! holds, and what the working tree changed since, so a one-file edit makes a one-file layer.

use camino::{Utf8Component, Utf8Path, Utf8PathBuf};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use flate2::GzBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::store::{BlobWriter, Store};
use super::tar::{Meta, TarWriter};
use super::{Digest, HashingWriter, MediaType};

mod split;

/// Bumped whenever the bytes we write for the same inputs change, so old cache entries
/// are not trusted.
const LAYER_FORMAT: &str = "xtask-layer-v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip at level 1: what every registry, engine and runtime reads.
    Gzip,
    /// zstd at level 3: smaller and faster both ways, read by containerd 1.5 and later and
    /// by Docker 23 and later, not by older engines.
    Zstd,
    None,
}

/// The zstd level new layers are written at (zstd's own default).
pub const ZSTD_LEVEL: i32 = 3;

impl Compression {
    pub fn media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
            Compression::None => MediaType::ImageLayer,
        }
    }

    /// The compression a base layer of this media type uses; new layers follow it (whoever
    /// reads the base reads them).
    pub fn of_media_type(media_type: &MediaType) -> Compression {
        match media_type {
            MediaType::ImageLayer => Compression::None,
            MediaType::ImageLayerZstd => Compression::Zstd,
            _ => Compression::Gzip,
        }
    }

    /// A reader of a layer blob written this way, giving its tar stream.
    pub fn decoder<'a>(self, blob: impl std::io::BufRead + 'a) -> Result<Box<dyn std::io::Read + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(blob)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(blob).context("cannot start zstd")?),
            Compression::None => Box::new(blob),
        })
    }
}

/// Everything that decides the bytes of one new layer.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    /// Short name shown to the user ("dags").
    pub name: String,
    /// Absolute path of the directory whose content the layer carries.
    pub source: Utf8PathBuf,
    /// The source as the user wrote it, for messages ("files/dags").
    pub source_label: String,
    /// Absolute path of the tree symlinks must stay inside (the repository's `files/`).
    /// Ignored for a root filesystem.
    pub context: Utf8PathBuf,
    /// A whole root filesystem (the base recipe's) rather than repository files: owners
    /// and modes come from the files, symlinks may point anywhere, sockets, pipes and
    /// devices are left out, and the `prune` directories are kept empty.
    pub rootfs: bool,
    /// Directories (relative to the source) whose content is left out; the directory
    /// itself stays. Used for /proc, /sys, /dev of a root filesystem.
    pub prune: Vec<String>,
    /// Where the content lands in the image, relative ("opt/airflow/dags").
    pub target: String,
    /// The target's ancestors and the target itself, outermost first, with the owner and
    /// mode they get in the layer (the base's where the base has them).
    pub parents: Vec<(String, Meta)>,
    pub uid: u64,
    pub gid: u64,
    pub file_mode: u32,
    pub exec_mode: u32,
    pub dir_mode: u32,
    pub mtime: u64,
    pub compression: Compression,
    /// File-name patterns (`*` and `?`) left out of the layer, e.g. `__pycache__`.
    pub exclude: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    File,
    Dir,
    Symlink(String),
    /// The path is deleted: an empty file named `.wh.NAME` in its parent (OCI whiteout).
    Whiteout,
}

/// One entry of a layer's source directory.
#[derive(Clone, Debug)]
pub struct Input {
    /// Utf8Path relative to the source directory, '/'-separated.
    pub rel: String,
    pub abs: Utf8PathBuf,
    pub kind: InputKind,
    pub size: u64,
    pub mtime_ns: i128,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The file's bytes when they do not come from `abs` (a committed version read from git).
    pub data: Option<Arc<[u8]>>,
}

/// The result of building (or reusing) a layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerBlob {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: MediaType,
}

/// Which part of a directory a layer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Every file of the working tree, in one layer.
    All,
    /// The files as the last commit has them.
    Committed,
    /// What the working tree changed since the last commit, deletions as whiteouts.
    Changes,
}

#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub part: Part,
    pub blob: LayerBlob,
    pub reused: bool,
    pub seconds: f64,
    pub input_bytes: u64,
    pub files: usize,
}

/// Lists the source directory, sorted by path, refusing what cannot go into a layer.
pub fn scan(plan: &LayerPlan) -> Result<Vec<Input>> {
    let meta = fs::symlink_metadata(&plan.source).with_context(|| {
        format!(
            "layer `{}`: source directory {} does not exist; create it (it may be empty) or fix `source` in docker/images.toml",
            plan.name, plan.source_label
        )
    })?;
    if !meta.is_dir() {
        bail!("layer `{}`: {} is not a directory; fix `source` in docker/images.toml", plan.name, plan.source_label);
    }
    let mut out = Vec::new();
    walk(plan, &plan.source, "", &mut out)?;
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

fn walk(plan: &LayerPlan, dir: &Utf8Path, rel_dir: &str, out: &mut Vec<Input>) -> Result<()> {
    let label = |rel: &str| format!("{}/{}", plan.source_label, rel);
    let entries = fs::read_dir(dir).with_context(|| {
        format!(
            "cannot list {}: check its permissions",
            if rel_dir.is_empty() { plan.source_label.clone() } else { label(rel_dir) }
        )
    })?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!(
                "{}: file name {:?} is not valid UTF-8; rename it (image layers carry UTF-8 names)",
                if rel_dir.is_empty() { plan.source_label.clone() } else { label(rel_dir) },
                name
            );
        };
        if plan.exclude.iter().any(|p| glob_match(p, name)) {
            continue;
        }
        let rel = if rel_dir.is_empty() { name.to_string() } else { format!("{rel_dir}/{name}") };
        let abs = dir.join(name);
        let md = fs::symlink_metadata(&abs).with_context(|| format!("cannot stat {}", label(&rel)))?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            InputKind::Dir
        } else if ft.is_file() {
            InputKind::File
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).with_context(|| format!("cannot read symlink {}", label(&rel)))?;
            let Some(target) = target.to_str() else {
                bail!("{}: symlink target is not valid UTF-8", label(&rel));
            };
            if !plan.rootfs {
                check_symlink(plan, &rel, target)?;
            }
            InputKind::Symlink(target.to_string())
        } else if plan.rootfs {
            continue;
        } else {
            let what = if ft.is_fifo() {
                "a named pipe"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a device file"
            };
            bail!(
                "{} is {what}; only files, directories and symlinks can go into an image layer. Remove it, or add its name to `exclude` in docker/images.toml",
                label(&rel)
            );
        };
        out.push(Input {
            rel: rel.clone(),
            abs: abs.clone(),
            size: if kind == InputKind::File { md.len() } else { 0 },
            kind: kind.clone(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            data: None,
        });
        if kind == InputKind::Dir && !plan.prune.contains(&rel) {
            walk(plan, &abs, &rel, out)?;
        }
    }
    Ok(())
}

/// A symlink must resolve, lexically, to a place inside the context (`files/`): the image
/// has nothing of the host outside it.
fn check_symlink(plan: &LayerPlan, rel: &str, target: &str) -> Result<()> {
    let label = format!("{}/{}", plan.source_label, rel);
    if target.starts_with('/') {
        bail!(
            "{label} is a symlink to the absolute path {target}, which points outside files/; use a relative link to a file inside files/"
        );
    }
    let link_abs = plan.source.join(rel);
    let link_dir = link_abs.parent().unwrap_or(&plan.source);
    let rel_to_context = link_dir.strip_prefix(&plan.context).unwrap_or(Utf8Path::new(""));
    let mut stack: Vec<String> = rel_to_context
        .components()
        .filter_map(|c| match c {
            Utf8Component::Normal(s) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    bail!(
                        "{label} is a symlink to {target}, which points outside files/; only links to files inside files/ can go into the image"
                    );
                }
            }
            p => stack.push(p.to_string()),
        }
    }
    Ok(())
}

/// Shell-style match of `*` and `?` against a whole file name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// The key under which a layer's result is cached: every input's identity plus the plan.
pub fn cache_key(plan: &LayerPlan, inputs: &[Input]) -> String {
    let mut h = Sha256::new();
    let mut line = |s: String| {
        h.update(s.as_bytes());
        h.update(b"\n");
    };
    line(LAYER_FORMAT.to_string());
    line(format!(
        "target={} uid={} gid={} modes={:o},{:o},{:o} mtime={} compression={:?} rootfs={} prune={:?}",
        plan.target,
        plan.uid,
        plan.gid,
        plan.file_mode,
        plan.exec_mode,
        plan.dir_mode,
        plan.mtime,
        plan.compression,
        plan.rootfs,
        plan.prune
    ));
    for (path, m) in &plan.parents {
        line(format!("parent {path} {}:{} {:o}", m.uid, m.gid, m.mode));
    }
    for i in inputs {
        let kind = match &i.kind {
            InputKind::File => "f".to_string(),
            InputKind::Dir => "d".to_string(),
            InputKind::Symlink(t) => format!("l>{t}"),
            InputKind::Whiteout => "w".to_string(),
        };
        line(format!("{}\0{kind}\0{}\0{}\0{:o}\0{}:{}", i.rel, i.size, i.mtime_ns, i.mode, i.uid, i.gid));
    }
    hex::encode(h.finalize())
}

impl LayerPlan {
    fn meta_for(&self, input: &Input) -> Meta {
        if self.rootfs {
            let mode = if matches!(input.kind, InputKind::Symlink(_)) { 0o777 } else { input.mode };
            return Meta { uid: input.uid.into(), gid: input.gid.into(), mode, mtime: self.mtime };
        }
        let mode = match input.kind {
            InputKind::Dir => self.dir_mode,
            InputKind::Symlink(_) => 0o777,
            InputKind::File if input.mode & 0o111 != 0 => self.exec_mode,
            InputKind::File | InputKind::Whiteout => self.file_mode,
        };
        Meta { uid: self.uid, gid: self.gid, mode, mtime: self.mtime }
    }
}

/// The entry that deletes `path` in a layer: an empty `.wh.NAME` beside it.
fn whiteout_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.wh.{name}"),
        None => format!(".wh.{path}"),
    }
}

/// Writes the layer's tar stream: the target's parents, then every input.
fn write_tar(plan: &LayerPlan, inputs: &[Input], out: &mut dyn Write, on_bytes: &mut dyn FnMut(u64)) -> Result<()> {
    let mut tar = TarWriter::new(BufWriter::with_capacity(256 << 10, out));
    for (path, meta) in &plan.parents {
        tar.dir(path, Meta { mtime: plan.mtime, ..*meta })?;
    }
    for input in inputs {
        let path = if plan.target.is_empty() { input.rel.clone() } else { format!("{}/{}", plan.target, input.rel) };
        let meta = plan.meta_for(input);
        let label = || format!("{}/{}", plan.source_label, input.rel);
        match &input.kind {
            InputKind::Dir => tar.dir(&path, meta)?,
            InputKind::Symlink(target) => tar.symlink(&path, target, meta)?,
            InputKind::Whiteout => tar.file(&whiteout_path(&path), meta, 0, &mut std::io::empty())?,
            InputKind::File if input.data.is_some() => {
                let data = input.data.as_deref().unwrap_or_default();
                tar.file(&path, meta, data.len() as u64, &mut &data[..])
                    .with_context(|| format!("cannot add {} to layer `{}`", label(), plan.name))?;
                on_bytes(data.len() as u64);
            }
            InputKind::File => {
                let mut f = File::open(&input.abs).with_context(|| {
                    format!(
                        "cannot read {}: make it readable (chmod a+r) or add its name to `exclude` in docker/images.toml",
                        label()
                    )
                })?;
                tar.file(&path, meta, input.size, &mut f)
                    .with_context(|| format!("cannot add {} to layer `{}`", label(), plan.name))?;
                on_bytes(input.size);
            }
        }
    }
    tar.finish()?.flush()?;
    Ok(())
}

/// Builds the layer(s) of one directory into the store (or reuses cached results): two
/// layers, committed and changes, in a git work tree whose changes are small; else one.
pub fn build(plan: &LayerPlan, store: &Store, force: bool, on_bytes: &mut dyn FnMut(u64)) -> Result<Vec<BuiltLayer>> {
    let started = Instant::now();
    let inputs = scan(plan)?;
    if !plan.rootfs
        && let Some(parts) = split::build(plan, &inputs, store, force, on_bytes)?
    {
        return Ok(parts);
    }
    Ok(vec![build_one(plan, Part::All, &inputs, store, force, started, on_bytes)?])
}

/// Builds one layer of `inputs`, or reuses the cached build of the same inputs.
fn build_one(
    plan: &LayerPlan,
    part: Part,
    inputs: &[Input],
    store: &Store,
    force: bool,
    started: Instant,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<BuiltLayer> {
    let input_bytes: u64 = inputs.iter().map(|i| i.size).sum();
    let files = inputs.iter().filter(|i| i.kind == InputKind::File).count();
    let key = cache_key(plan, inputs);
    if !force
        && let Some(blob) = store.cache_get::<LayerBlob>("layers", &key)
        && store.blob_of_size(&blob.digest, blob.size)
    {
        return Ok(BuiltLayer {
            part,
            blob,
            reused: true,
            seconds: started.elapsed().as_secs_f64(),
            input_bytes,
            files,
        });
    }
    let blob = write(plan, inputs, store, on_bytes)?;
    store.cache_put("layers", &key, &blob)?;
    Ok(BuiltLayer { part, blob, reused: false, seconds: started.elapsed().as_secs_f64(), input_bytes, files })
}

/// Writes the layer blob in one pass: tar bytes are hashed (diffID), compressed, and the
/// compressed bytes hashed (digest) as they land in the store.
pub fn write(plan: &LayerPlan, inputs: &[Input], store: &Store, on_bytes: &mut dyn FnMut(u64)) -> Result<LayerBlob> {
    let blob = store.blob_writer()?;
    let encoder: Box<dyn Encoder> = match plan.compression {
        Compression::Gzip => {
            Box::new(GzBuilder::new().mtime(0).operating_system(255).write(blob, flate2::Compression::fast()))
        }
        // One thread and no dictionary: the bytes depend only on the input and the level.
        Compression::Zstd => {
            let mut zst = zstd::stream::write::Encoder::new(blob, ZSTD_LEVEL).context("cannot start zstd")?;
            zst.include_checksum(true).context("cannot set up zstd")?;
            Box::new(zst)
        }
        Compression::None => {
            let mut blob = blob;
            write_tar(plan, inputs, &mut blob, on_bytes)?;
            let (digest, size) = blob.commit(None, "new layer")?;
            return Ok(LayerBlob { diff_id: digest.clone(), digest, size, media_type: plan.compression.media_type() });
        }
    };
    let mut tar_hash = HashingWriter::new(encoder);
    write_tar(plan, inputs, &mut tar_hash, on_bytes)?;
    let (encoder, diff_id, _) = tar_hash.finish();
    let (digest, size) = encoder.finish()?.commit(None, "new layer")?;
    Ok(LayerBlob { digest, diff_id, size, media_type: plan.compression.media_type() })
}

/// A compressor writing into a store blob, finished once the tar stream is through.
trait Encoder: Write {
    fn finish(self: Box<Self>) -> Result<BlobWriter>;
}

impl Encoder for flate2::write::GzEncoder<BlobWriter> {
    fn finish(self: Box<Self>) -> Result<BlobWriter> {
        (*self).finish().context("cannot finish gzip stream")
    }
}

impl Encoder for zstd::stream::write::Encoder<'static, BlobWriter> {
    fn finish(self: Box<Self>) -> Result<BlobWriter> {
        (*self).finish().context("cannot finish zstd stream")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn plan(dir: &Utf8Path) -> LayerPlan {
        LayerPlan {
            name: "dags".into(),
            source: dir.join("files/dags"),
            source_label: "files/dags".into(),
            context: dir.join("files"),
            target: "opt/airflow/dags".into(),
            parents: vec![("opt".into(), Meta { uid: 0, gid: 0, mode: 0o755, mtime: 0 })],
            uid: 50000,
            gid: 0,
            file_mode: 0o644,
            exec_mode: 0o755,
            dir_mode: 0o755,
            mtime: 946684800,
            compression: Compression::Gzip,
            exclude: vec!["__pycache__".into(), "*.pyc".into()],
            rootfs: false,
            prune: vec![],
        }
    }

    #[test]
    fn a_zstd_layer_carries_the_same_tar_and_reads_back_as_a_base() {
        let dir = camino_tempfile::tempdir().unwrap();
        let mut p = plan(dir.path());
        fs::create_dir_all(p.source.join("team")).unwrap();
        fs::write(p.source.join("team/a.py"), "print('a')\n".repeat(500)).unwrap();
        let inputs = scan(&p).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        p.compression = Compression::None;
        let plain = write(&p, &inputs, &store, &mut |_| {}).unwrap();
        p.compression = Compression::Zstd;
        let zst = write(&p, &inputs, &store, &mut |_| {}).unwrap();
        assert_eq!(zst.media_type, MediaType::ImageLayerZstd);
        assert_eq!(zst.diff_id, plain.diff_id, "the same tar stream inside");
        assert!(zst.size < plain.size / 4, "{} vs {}", zst.size, plain.size);
        // The same inputs give the same bytes in another store.
        let other = Store::open(&dir.path().join("other")).unwrap();
        assert_eq!(write(&p, &inputs, &other, &mut |_| {}).unwrap().digest, zst.digest);
        // A base whose layer is zstd is read like any other (it was refused before).
        let wanted: std::collections::BTreeSet<String> = ["opt".to_string()].into();
        let dirs =
            crate::oci::base_dirs::base_dirs(&store, &[(zst.digest.clone(), zst.media_type.clone())], &wanted).unwrap();
        assert_eq!(dirs.get("opt").map(|d| (d.uid, d.mode & 0o7777)), Some((0, 0o755)));
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("*.pyc", "a.pyc"));
        assert!(!glob_match("*.pyc", "a.py"));
        assert!(glob_match("__pycache__", "__pycache__"));
        assert!(glob_match("a?c", "abc"));
    }

    #[test]
    fn symlinks_inside_files_pass_and_outside_fail() {
        let dir = camino_tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        check_symlink(&p, "x.py", "../include/x.py").unwrap();
        check_symlink(&p, "sub/x.py", "../y.py").unwrap();
        let err = check_symlink(&p, "x.py", "../../etc/passwd").unwrap_err();
        assert!(err.to_string().contains("files/dags/x.py"), "{err}");
        assert!(err.to_string().contains("outside files/"), "{err}");
        assert!(check_symlink(&p, "x.py", "/etc/passwd").is_err());
    }

    #[test]
    fn excluded_names_and_their_subtrees_are_left_out() {
        let dir = camino_tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        fs::create_dir_all(p.source.join("__pycache__")).unwrap();
        fs::write(p.source.join("__pycache__/a.cpython-311.pyc"), b"x").unwrap();
        fs::write(p.source.join("a.py"), b"x").unwrap();
        fs::write(p.source.join("b.pyc"), b"x").unwrap();
        let inputs = scan(&p).unwrap();
        let names: Vec<_> = inputs.iter().map(|i| i.rel.as_str()).collect();
        assert_eq!(names, ["a.py"]);
    }

    #[test]
    fn a_root_filesystem_keeps_file_owners_and_any_symlink_and_prunes() {
        let dir = camino_tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("proc/1")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/tool"), b"x").unwrap();
        // chown clears set-uid, so it goes first.
        std::os::unix::fs::chown(root.join("usr/bin/tool"), Some(50000), Some(0)).unwrap();
        fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        let plan = LayerPlan {
            source: root.clone(),
            source_label: "rootfs".into(),
            target: String::new(),
            parents: vec![],
            rootfs: true,
            prune: vec!["proc".into()],
            exclude: vec![],
            ..plan(dir.path())
        };
        let inputs = scan(&plan).unwrap();
        let names: Vec<_> = inputs.iter().map(|i| i.rel.as_str()).collect();
        assert_eq!(names, ["bin", "proc", "usr", "usr/bin", "usr/bin/tool"]);
        let tool = inputs.iter().find(|i| i.rel == "usr/bin/tool").unwrap();
        assert_eq!(plan.meta_for(tool), Meta { uid: 50000, gid: 0, mode: 0o4755, mtime: plan.mtime });
    }

    #[test]
    fn cache_key_changes_with_content_identity_and_plan() {
        let dir = camino_tempfile::tempdir().unwrap();
        let p = plan(dir.path());
        fs::create_dir_all(&p.source).unwrap();
        fs::write(p.source.join("a.py"), b"x").unwrap();
        let k1 = cache_key(&p, &scan(&p).unwrap());
        fs::write(p.source.join("a.py"), b"xy").unwrap();
        let k2 = cache_key(&p, &scan(&p).unwrap());
        assert_ne!(k1, k2);
        let mut p2 = p.clone();
        p2.uid = 1;
        assert_ne!(k2, cache_key(&p2, &scan(&p2).unwrap()));
    }
}
