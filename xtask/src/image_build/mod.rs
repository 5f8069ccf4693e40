//! Building the images of docker/images.toml: base -> layers in the store -> an image in
//! the store. What `images`, `k8s-up`, `watch`, `dags check` and `status` share.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::{self, CompressionChoice, ImageDef, ImageOverrides, Project};
use crate::fsutil::human_bytes;
use crate::oci::archive::ArchiveImage;
use crate::oci::image::{self, BuiltImage, ConfigChanges, NewLayer};
use crate::oci::image::{BaseImage, ImportProgress};
use crate::oci::layer::{self, Compression, LayerPlan, Part};
use crate::oci::registry::ImageRef;
use crate::oci::source;
use crate::oci::store::Store;
use crate::oci::tar::Meta;
use crate::oci::{Descriptor, DescriptorExt, Digest, MediaType};
use crate::ui;

pub mod recipe;
use tokio::runtime::Handle;

/// Base references of this form name a recipe in docker/base/ that `cargo xtask base` builds.
pub const XTASK_BASE: &str = "xtask-base:";

#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Names of the images to build; empty means all.
    pub only: Vec<String>,
    pub overrides: ImageOverrides,
    pub no_cache: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct BaseReport {
    pub reference: String,
    pub manifest_digest: Digest,
    pub layers: usize,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// The layer's name in docker/images.toml; `NAME+changes` for the part of a git work
    /// tree's directory changed since the last commit.
    pub name: String,
    /// "all" (every file), "committed" (as the last commit has them) or "changes".
    pub part: Part,
    pub source: String,
    pub target: String,
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: MediaType,
    /// "rebuilt" or "reused".
    pub status: &'static str,
    pub files: usize,
    pub input_bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    pub name: String,
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub config_digest: Digest,
    pub base: BaseReport,
    pub layers: Vec<LayerReport>,
    /// Whether the store's name for this image now points at a different manifest.
    pub changed: bool,
    pub seconds: f64,
    #[serde(skip)]
    pub manifest: Descriptor,
    #[serde(skip)]
    pub all_layers: Vec<Descriptor>,
}

impl ImageReport {
    pub fn built(&self) -> BuiltImage {
        BuiltImage { name: self.name.clone(), reference: self.reference.clone(), manifest: self.manifest.clone() }
    }

    pub fn archive_image(&self) -> ArchiveImage {
        self.built().archive_image()
    }
}

/// The images of docker/images.toml as last built, from the store, without building.
/// The last build of each image of docker/images.toml (of those named in `only`, unless
/// it is empty).
pub fn last_built(project: &Project, only: &[String]) -> Result<Vec<BuiltImage>> {
    let defs = select(config::load_images(project, &ImageOverrides::default())?, only)?;
    let store = Store::open(&project.store_dir())?;
    let mut out = Vec::new();
    for def in defs {
        let reference = def.full_name();
        match store.lookup(&reference)? {
            Some(manifest) => out.push(BuiltImage { name: def.name.clone(), reference, manifest }),
            None => bail!("image `{}` has not been built yet; run `cargo xtask images` (or drop --no-build)", def.name),
        }
    }
    Ok(out)
}

/// Where an image goes for `--push REGISTRY[/PREFIX]`: REGISTRY/PREFIX/NAME:TAG.
pub fn push_target(reference: &str, name: &str, dest: &str) -> Result<ImageRef> {
    let tag = crate::oci::tag_of(reference);
    ImageRef::parse(&format!("{}/{name}:{tag}", dest.trim_end_matches('/')))
}

/// `SOURCE_DATE_EPOCH`, the reproducible-builds convention for "the time of these inputs".
pub fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Ok(Some(v.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds since 1970; unset it or fix it")
        })?)),
        _ => Ok(None),
    }
}

struct BarProgress(indicatif::ProgressBar);
impl ImportProgress for BarProgress {
    fn start(&mut self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&mut self, n: u64) {
        self.0.inc(n);
    }
}

/// Builds the selected images into the store and returns the store (still locked) and a
/// report per image. With `human`, prints a line per step.
pub fn build(project: &Project, rt: &Handle, opts: &BuildOptions, human: bool) -> Result<(Store, Vec<ImageReport>)> {
    let defs = config::load_images(project, &opts.overrides)?;
    let defs = select(defs, &opts.only)?;
    let store = Store::open(&project.store_dir())?;
    let mut reports = Vec::new();
    for def in &defs {
        reports
            .push(build_def(project, rt, &store, def, opts, human).with_context(|| format!("image `{}`", def.name))?);
    }
    Ok((store, reports))
}

fn select(defs: Vec<ImageDef>, only: &[String]) -> Result<Vec<ImageDef>> {
    if only.is_empty() {
        return Ok(defs);
    }
    for name in only {
        if !defs.iter().any(|d| &d.name == name) {
            let known: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
            bail!("no image named `{name}` in {}; defined: {}", config::IMAGES_FILE, known.join(", "));
        }
    }
    Ok(defs.into_iter().filter(|d| only.contains(&d.name)).collect())
}

/// Every ancestor of `target` and the target itself, outermost first.
pub(crate) fn ancestors(target: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    for part in target.split('/') {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(part);
        out.push(acc.clone());
    }
    out
}

pub fn import_base(project: &Project, rt: &Handle, store: &Store, def: &ImageDef, human: bool) -> Result<BaseImage> {
    if let Some(name) = def.base.strip_prefix(XTASK_BASE) {
        let opts = recipe::BuildOpts { human, ..Default::default() };
        let outcome = recipe::ensure(project, store, name, def.mtime, &opts)?;
        if outcome.built && human {
            println!("  base     built from docker/base/{name}.toml in {}", ui::secs(outcome.seconds));
        }
        return Ok(outcome.base);
    }
    let platform = crate::oci::parse_platform(&def.platform)?;
    let bar = ui::bytes_bar("base", 0);
    let base =
        source::import(&def.base, &project.root, &platform, &def.insecure, store, rt, &mut BarProgress(bar.clone()))?;
    bar.finish_and_clear();
    Ok(base)
}

/// Builds one image definition into `store` (what `build` does for each of docker/images.toml).
pub fn build_def(
    project: &Project,
    rt: &Handle,
    store: &Store,
    def: &ImageDef,
    opts: &BuildOptions,
    human: bool,
) -> Result<ImageReport> {
    let started = Instant::now();
    let full_name = def.full_name();
    if human {
        println!("{}  {full_name}", def.name);
    }
    let base = import_base(project, rt, store, def, human)?;
    if human {
        println!(
            "  base     {}  {}  ({} layers, {})",
            def.base,
            base.manifest.digest(),
            base.layers.len(),
            human_bytes(base.total_size())
        );
    }
    let wanted: BTreeSet<String> = def.layers.iter().flat_map(|l| ancestors(&l.target)).collect();
    let layer_info: Vec<(Digest, MediaType)> =
        base.layers.iter().map(|l| Ok((l.sha256()?, l.media_type().clone()))).collect::<Result<_>>()?;
    let base_dirs = crate::oci::base_dirs::base_dirs(store, &layer_info, &wanted)?;
    let compression = match def.compression {
        CompressionChoice::Fixed(c) => c,
        CompressionChoice::Auto => {
            base.layers.last().map(|l| Compression::of_media_type(l.media_type())).unwrap_or(Compression::Gzip)
        }
    };

    let mut layer_reports = Vec::new();
    let mut blobs = Vec::new();
    for l in &def.layers {
        let parents = ancestors(&l.target)
            .into_iter()
            .map(|p| {
                let meta = match base_dirs.get(&p) {
                    Some(d) => Meta { uid: d.uid, gid: d.gid, mode: d.mode, mtime: def.mtime },
                    None if p == l.target => Meta { uid: def.uid, gid: def.gid, mode: def.dir_mode, mtime: def.mtime },
                    None => Meta { uid: 0, gid: 0, mode: 0o755, mtime: def.mtime },
                };
                (p, meta)
            })
            .collect();
        let plan = LayerPlan {
            name: l.name.clone(),
            source: project.root.join(&l.source),
            source_label: l.source.clone(),
            context: def.context.clone(),
            target: l.target.clone(),
            parents,
            uid: def.uid,
            gid: def.gid,
            file_mode: def.file_mode,
            exec_mode: def.exec_mode,
            dir_mode: def.dir_mode,
            mtime: def.mtime,
            compression,
            exclude: def.exclude.clone(),
            rootfs: false,
            prune: vec![],
        };
        let bar = ui::bytes_bar(&l.name, 0);
        let parts = layer::build(&plan, store, opts.no_cache, &mut |n| bar.inc(n))?;
        bar.finish_and_clear();
        for built in parts {
            let (name, created_by) = match built.part {
                Part::All => (l.name.clone(), format!("COPY {} /{}", l.source, l.target)),
                Part::Committed => (l.name.clone(), format!("COPY {} /{} (as committed)", l.source, l.target)),
                Part::Changes => (
                    format!("{}+changes", l.name),
                    format!("COPY {} /{} (changes since the commit)", l.source, l.target),
                ),
            };
            if human {
                println!(
                    "  {:<8} {}  {:>9}  {}{}",
                    name,
                    built.blob.digest,
                    human_bytes(built.blob.size),
                    if built.reused { "reused" } else { "rebuilt" },
                    if built.reused { String::new() } else { format!(" in {}", ui::secs(built.seconds)) }
                );
            }
            layer_reports.push(LayerReport {
                name,
                part: built.part,
                source: l.source.clone(),
                target: format!("/{}", l.target),
                digest: built.blob.digest.clone(),
                diff_id: built.blob.diff_id.clone(),
                size: built.blob.size,
                media_type: built.blob.media_type.clone(),
                status: if built.reused { "reused" } else { "rebuilt" },
                files: built.files,
                input_bytes: built.input_bytes,
                seconds: built.seconds,
            });
            blobs.push((built.blob, created_by));
        }
    }

    let created = image::rfc3339(def.mtime)?;
    let changes = ConfigChanges {
        env: def.env.clone(),
        labels: def.labels.clone(),
        user: def.user.clone(),
        workdir: def.workdir.clone(),
        entrypoint: def.entrypoint.clone(),
        cmd: def.cmd.clone(),
        created,
    };
    let new_layers: Vec<NewLayer<'_>> =
        blobs.iter().map(|(blob, created_by)| NewLayer { blob, created_by: created_by.clone() }).collect();
    let assembled = image::assemble(store, &base, &new_layers, &changes)?;
    let changed = store.tag(&full_name, &assembled.manifest)?;
    if human {
        println!("  manifest {}  {}", assembled.manifest.digest(), if changed { "new" } else { "unchanged" });
    }
    Ok(ImageReport {
        name: def.name.clone(),
        reference: full_name,
        manifest_digest: assembled.manifest.sha256()?,
        manifest_size: assembled.manifest.size(),
        config_digest: assembled.config.sha256()?,
        base: BaseReport {
            reference: def.base.clone(),
            manifest_digest: base.manifest.sha256()?,
            layers: base.layers.len(),
            size: base.total_size(),
        },
        layers: layer_reports,
        changed,
        seconds: started.elapsed().as_secs_f64(),
        manifest: assembled.manifest,
        all_layers: assembled.layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_outermost_first() {
        assert_eq!(ancestors("opt/airflow/dags"), ["opt", "opt/airflow", "opt/airflow/dags"]);
    }
}
