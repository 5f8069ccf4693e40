//! Settings from `docker/` and `k8s/`. Precedence: command-line flag > environment
//! variable > settings file > built-in default. Flags and environment variables are
//! handled by clap (`#[arg(env = ...)]`); this module reads the files and fills defaults.

use camino::{Utf8Component, Utf8Path, Utf8PathBuf};
use std::collections::BTreeMap;
use std::fs;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::oci::layer::Compression;

/// The repository xtask works on.
#[derive(Clone, Debug)]
pub struct Project {
    pub root: Utf8PathBuf,
}

impl Project {
    /// `--root` / `XTASK_ROOT` if given, else the nearest directory at or above the current
    /// one holding `docker/images.toml`, else the workspace this binary was built from.
    pub fn discover(explicit: Option<&Utf8Path>) -> Result<Project> {
        if let Some(root) = explicit {
            let root = root.canonicalize_utf8().with_context(|| format!("--root {root} does not exist"))?;
            return Ok(Project { root });
        }
        let cwd = crate::fsutil::current_dir()?;
        for dir in cwd.ancestors() {
            if dir.join("docker/images.toml").is_file() {
                return Ok(Project { root: dir.to_path_buf() });
            }
        }
        let built_from = Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Utf8Path::to_path_buf);
        match built_from {
            Some(root) if root.join("docker/images.toml").is_file() => Ok(Project { root }),
            _ => bail!(
                "cannot find the repository: no docker/images.toml in {} or above; run from inside the repository or pass --root",
                cwd
            ),
        }
    }

    /// Where xtask keeps everything it makes: `target/xtask`.
    pub fn work_dir(&self) -> Utf8PathBuf {
        self.root.join("target/xtask")
    }

    /// The content-addressed image store (an OCI layout).
    pub fn store_dir(&self) -> Utf8PathBuf {
        self.work_dir().join("oci")
    }

    pub fn rel(&self, p: &Utf8Path) -> String {
        crate::fsutil::display_rel(p, &self.root)
    }
}

/// `docker/images.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesFile {
    #[serde(default)]
    defaults: DefaultsFile,
    #[serde(default)]
    image: Vec<ImageFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsFile {
    registry: Option<String>,
    tag: Option<String>,
    platform: Option<String>,
    compression: Option<String>,
    mtime: Option<u64>,
    context: Option<String>,
    exclude: Option<Vec<String>>,
    insecure_registries: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    name: String,
    base: String,
    tag: Option<String>,
    registry: Option<String>,
    owner: Option<String>,
    file_mode: Option<String>,
    exec_mode: Option<String>,
    dir_mode: Option<String>,
    user: Option<String>,
    workdir: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    layer: Vec<LayerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerFile {
    name: String,
    source: String,
    target: String,
}

/// How new layers are compressed: like the base, or as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionChoice {
    Auto,
    Fixed(Compression),
}

impl std::str::FromStr for CompressionChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => CompressionChoice::Auto,
            "gzip" => CompressionChoice::Fixed(Compression::Gzip),
            "zstd" => CompressionChoice::Fixed(Compression::Zstd),
            "none" => CompressionChoice::Fixed(Compression::None),
            _ => bail!("compression `{s}` is not one of auto, gzip, zstd, none"),
        })
    }
}

/// One worker image, resolved: defaults applied, paths absolute, modes parsed.
#[derive(Clone, Debug)]
pub struct ImageDef {
    pub name: String,
    pub base: String,
    pub registry: String,
    pub tag: String,
    pub platform: String,
    pub compression: CompressionChoice,
    pub mtime: u64,
    /// Registries that may be spoken to over plain HTTP (besides loopback ones).
    pub insecure: Vec<String>,
    pub context: Utf8PathBuf,
    pub exclude: Vec<String>,
    pub uid: u64,
    pub gid: u64,
    pub file_mode: u32,
    pub exec_mode: u32,
    pub dir_mode: u32,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub layers: Vec<LayerDef>,
}

#[derive(Clone, Debug)]
pub struct LayerDef {
    pub name: String,
    /// As written, relative to the repository ("files/dags").
    pub source: String,
    /// Inside the image, without the leading slash ("opt/airflow/dags").
    pub target: String,
}

impl ImageDef {
    /// `registry/name:tag`, the name the image is known by everywhere.
    pub fn full_name(&self) -> String {
        format!("{}/{}:{}", self.registry, self.name, self.tag)
    }
}

/// Overrides that come from flags or the environment.
#[derive(Clone, Debug, Default)]
pub struct ImageOverrides {
    pub tag: Option<String>,
    pub base: Option<String>,
    pub registry: Option<String>,
    pub compression: Option<CompressionChoice>,
    pub mtime: Option<u64>,
    pub platform: Option<String>,
    pub insecure: Vec<String>,
}

pub const IMAGES_FILE: &str = "docker/images.toml";

/// File times in new layers when neither SOURCE_DATE_EPOCH nor the settings give one:
/// 2000-01-01, late enough for every tool that dislikes 1970.
pub const DEFAULT_MTIME: u64 = 946_684_800;

/// Reads `docker/images.toml`. Errors name the file, the line and the fix.
pub fn load_images(project: &Project, overrides: &ImageOverrides) -> Result<Vec<ImageDef>> {
    let path = project.root.join(IMAGES_FILE);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read {IMAGES_FILE}; it defines the images to build (see README.md)"))?;
    parse_images(&text, project, overrides)
}

pub fn parse_images(text: &str, project: &Project, overrides: &ImageOverrides) -> Result<Vec<ImageDef>> {
    let file: ImagesFile = toml::from_str(text).map_err(|e| anyhow!("{IMAGES_FILE}: {e}"))?;
    let d = &file.defaults;
    if file.image.is_empty() {
        bail!("{IMAGES_FILE} defines no image; add an [[image]] table (see README.md)");
    }
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for img in file.image {
        let at = |field: &str| format!("{IMAGES_FILE}: image `{}`: {field}", img.name);
        if img.name.is_empty()
            || !img.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            bail!("{IMAGES_FILE}: image name `{}` must be lowercase letters, digits, '.', '_', '-' or '/'", img.name);
        }
        if !seen.insert(img.name.clone()) {
            bail!("{IMAGES_FILE}: image `{}` is defined twice", img.name);
        }
        let (uid, gid) = parse_owner(img.owner.as_deref().unwrap_or("50000:0")).with_context(|| at("owner"))?;
        let mode = |v: &Option<String>, default: u32, field: &str| -> Result<u32> {
            match v {
                None => Ok(default),
                Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| anyhow!("{}: `{s}` is not an octal mode like \"0644\"", at(field))),
            }
        };
        let compression = match &overrides.compression {
            Some(c) => *c,
            None => d
                .compression
                .as_deref()
                .unwrap_or("auto")
                .parse()
                .with_context(|| format!("{IMAGES_FILE}: [defaults] compression"))?,
        };
        let context_rel = d.context.clone().unwrap_or_else(|| "files".into());
        let context = project.root.join(&context_rel);
        let mut layers = Vec::new();
        for l in img.layer {
            let target = l.target.trim_end_matches('/');
            let Some(target) = target.strip_prefix('/') else {
                bail!(
                    "{}: target `{}` must be an absolute path inside the image, like /opt/airflow/dags",
                    at(&format!("layer `{}`", l.name)),
                    l.target
                );
            };
            if target.is_empty() || target.split('/').any(|p| p == ".." || p == "." || p.is_empty()) {
                bail!("{}: target `{}` must be a plain absolute path", at(&format!("layer `{}`", l.name)), l.target);
            }
            let source_abs = project.root.join(&l.source);
            if !lexically_inside(&source_abs, &context) {
                bail!(
                    "{}: source `{}` is outside `{context_rel}/`; layers carry only what is under {context_rel}/",
                    at(&format!("layer `{}`", l.name)),
                    l.source
                );
            }
            layers.push(LayerDef { name: l.name, source: l.source, target: target.to_string() });
        }
        out.push(ImageDef {
            base: overrides.base.clone().unwrap_or(img.base),
            registry: overrides
                .registry
                .clone()
                .or(img.registry)
                .or(d.registry.clone())
                .unwrap_or_else(|| "docker.io/library".into())
                .trim_end_matches('/')
                .to_string(),
            tag: overrides.tag.clone().or(img.tag).or(d.tag.clone()).unwrap_or_else(|| "dev".into()),
            platform: overrides.platform.clone().or(d.platform.clone()).unwrap_or_else(|| "linux/amd64".into()),
            insecure: overrides
                .insecure
                .iter()
                .cloned()
                .chain(d.insecure_registries.clone().unwrap_or_default())
                .collect(),
            compression,
            mtime: overrides.mtime.or(d.mtime).unwrap_or(DEFAULT_MTIME),
            context,
            exclude: d.exclude.clone().unwrap_or_else(|| vec!["__pycache__".into(), "*.pyc".into()]),
            uid,
            gid,
            file_mode: mode(&img.file_mode, 0o644, "file_mode")?,
            exec_mode: mode(&img.exec_mode, 0o755, "exec_mode")?,
            dir_mode: mode(&img.dir_mode, 0o755, "dir_mode")?,
            user: img.user,
            workdir: img.workdir,
            entrypoint: img.entrypoint,
            cmd: img.cmd,
            env: img.env,
            labels: img.labels,
            layers,
            name: img.name,
        });
    }
    Ok(out)
}

fn parse_owner(s: &str) -> Result<(u64, u64)> {
    let (u, g) = s.split_once(':').ok_or_else(|| anyhow!("`{s}` is not of the form UID:GID, like \"50000:0\""))?;
    Ok((
        u.parse().map_err(|_| anyhow!("`{u}` in `{s}` is not a numeric uid"))?,
        g.parse().map_err(|_| anyhow!("`{g}` in `{s}` is not a numeric gid"))?,
    ))
}

fn lexically_inside(path: &Utf8Path, dir: &Utf8Path) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Utf8Component::ParentDir => {
                parts.pop();
            }
            Utf8Component::Normal(p) => parts.push(p),
            _ => {}
        }
    }
    let normalized: Utf8PathBuf = std::iter::once("/").chain(parts).collect();
    normalized.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        Project { root: Utf8PathBuf::from("/repo") }
    }

    const GOOD: &str = r#"
[defaults]
tag = "dev"
[[image]]
name = "airflow-worker"
base = "oci:target/base:x"
[[image.layer]]
name = "dags"
source = "files/dags"
target = "/opt/airflow/dags"
"#;

    #[test]
    fn defaults_and_overrides_resolve_in_order() {
        let imgs = parse_images(GOOD, &project(), &ImageOverrides::default()).unwrap();
        assert_eq!(imgs[0].full_name(), "docker.io/library/airflow-worker:dev");
        assert_eq!((imgs[0].uid, imgs[0].gid), (50000, 0));
        assert_eq!(imgs[0].layers[0].target, "opt/airflow/dags");
        let o = ImageOverrides { tag: Some("ci".into()), ..Default::default() };
        assert_eq!(parse_images(GOOD, &project(), &o).unwrap()[0].tag, "ci");
    }

    #[test]
    fn misspelled_field_names_the_file_and_line() {
        let bad = GOOD.replace("target =", "taregt =");
        let err = parse_images(&bad, &project(), &ImageOverrides::default()).unwrap_err().to_string();
        assert!(err.contains("docker/images.toml"), "{err}");
        assert!(err.contains("line"), "{err}");
        assert!(err.contains("taregt"), "{err}");
    }

    #[test]
    fn relative_targets_and_sources_outside_files_are_refused() {
        let bad = GOOD.replace("\"/opt/airflow/dags\"", "\"opt/airflow/dags\"");
        assert!(
            parse_images(&bad, &project(), &ImageOverrides::default()).unwrap_err().to_string().contains("absolute")
        );
        let bad = GOOD.replace("\"files/dags\"", "\"files/../secrets\"");
        assert!(
            parse_images(&bad, &project(), &ImageOverrides::default()).unwrap_err().to_string().contains("outside")
        );
    }
}

/// `k8s/settings.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sFile {
    #[serde(default)]
    cluster: ClusterFile,
    #[serde(default)]
    components: BTreeMap<String, String>,
    #[serde(default)]
    tasks: BTreeMap<String, TaskDef>,
    database: Option<ExternalDatabase>,
}

/// `[database]` of k8s/settings.toml: an existing Postgres instead of the airflow-postgres
/// StatefulSet, named by a Secret in the namespace that holds its SQLAlchemy URL.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExternalDatabase {
    /// The Secret's name.
    pub secret: String,
    /// Its key holding `postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB`.
    #[serde(default = "default_database_key")]
    pub key: String,
}

fn default_database_key() -> String {
    "connection".into()
}

/// Where a named task may run, in `k8s/settings.toml`'s `executors` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// On this machine.
    Local,
    /// In a container of the worker image on the local Docker engine.
    Container,
    /// In a component's pod on the cluster.
    Kubernetes,
}

impl std::fmt::Display for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Executor::Local => "local",
            Executor::Container => "container",
            Executor::Kubernetes => "kubernetes",
        })
    }
}

/// A named task (`cargo xtask run NAME`): a shell script and where it may run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    pub description: String,
    /// Run with `sh -c`.
    pub script: String,
    /// Tried in this order; the first available one runs the script.
    pub executors: Vec<Executor>,
    /// The component whose pod the `kubernetes` executor uses.
    #[serde(default = "default_task_component")]
    pub component: String,
    /// Programs the `local` executor needs on PATH.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Interactive: stdin and, with a terminal, a TTY.
    #[serde(default)]
    pub interactive: bool,
}

fn default_task_component() -> String {
    "scheduler".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    name: Option<String>,
    kubernetes_version: Option<String>,
    namespace: Option<String>,
    python_version: Option<String>,
}

/// Cluster settings with defaults applied.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// The kind cluster's name.
    pub name: String,
    pub kubernetes_version: String,
    pub namespace: String,
    /// Short component names -> Deployment or StatefulSet names.
    pub components: BTreeMap<String, String>,
    pub tasks: BTreeMap<String, TaskDef>,
    /// An external metadata database, or None for the airflow-postgres StatefulSet.
    pub database: Option<ExternalDatabase>,
}

impl ClusterSettings {
    /// The workload name of a component: its entry in `[components]`, else the name itself.
    pub fn workload_of<'a>(&'a self, component: &'a str) -> &'a str {
        self.components.get(component).map(String::as_str).unwrap_or(component)
    }
}

pub const K8S_SETTINGS_FILE: &str = "k8s/settings.toml";
pub const DEFAULT_NAMESPACE: &str = "airflow";

/// Reads `k8s/settings.toml` (absent means defaults). `namespace` is the flag's value,
/// already merged with XTASK_NAMESPACE by clap.
pub fn load_cluster(project: &Project, namespace: Option<&str>, name: Option<&str>) -> Result<ClusterSettings> {
    let path = project.root.join(K8S_SETTINGS_FILE);
    let file: K8sFile = match fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| anyhow!("{K8S_SETTINGS_FILE}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => K8sFile::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {K8S_SETTINGS_FILE}")),
    };
    let c = file.cluster;
    let kubernetes_version = c.kubernetes_version.unwrap_or_else(|| "v1.35.4".into());
    let python = c.python_version.unwrap_or_else(|| "3.11".into());
    Ok(ClusterSettings {
        name: name
            .map(String::from)
            .or(c.name)
            .unwrap_or_else(|| format!("airflow-python-{python}-{kubernetes_version}").replace('.', "-")),
        namespace: namespace.map(String::from).or(c.namespace).unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        kubernetes_version,
        components: file.components,
        tasks: file.tasks,
        database: file.database,
    })
}
