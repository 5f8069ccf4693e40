//! `docker/base/<name>.toml`: what a base recipe may say, and loading it with the key that
//! decides whether the base must be built again.

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::BTreeMap;
use std::fs;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::config::Project;

/// Bumped when the way a recipe becomes an image changes.
pub(super) const RECIPE_FORMAT: &str = "xtask-base-v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub debian: Debian,
    /// Shell commands run in the root filesystem after debootstrap, in order.
    #[serde(default)]
    pub step: Vec<Step>,
    pub python: Option<Python>,
    /// Programs built from their Go modules on this machine and copied into the image.
    #[serde(default)]
    pub go: Vec<GoProgram>,
    pub image: ImageSettings,
}

/// A program `go install PACKAGE@VERSION` builds (statically, CGO_ENABLED=0), put at `path`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoProgram {
    /// The main package, e.g. `github.com/versity/versitygw/cmd/versitygw`.
    pub package: String,
    /// Its module's version, e.g. `v1.8.0`.
    pub version: String,
    /// Where the program goes in the image.
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    pub suite: String,
    pub mirror: String,
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default)]
    pub packages: Vec<String>,
}

pub(super) fn default_variant() -> String {
    "minbase".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub run: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Python {
    /// Where the virtualenv goes; it becomes a layer of its own.
    pub venv: String,
    /// What pip installs: Airflow and providers, pinned.
    pub requirements: Vec<String>,
    /// A pip constraints file (relative to docker/base/) pinning everything else.
    pub constraints: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    /// `UID:GID` the container runs as.
    pub user: String,
    pub workdir: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub dir: Vec<DirSpec>,
    #[serde(default)]
    pub file: Vec<FileSpec>,
}

/// A directory the image must have, with its owner and mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub path: String,
    pub owner: String,
    pub mode: String,
}

/// A file written into the image (an entrypoint script, say).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    pub mode: String,
    pub content: String,
}

pub(super) fn parse_mode(s: &str, what: &str) -> Result<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| anyhow!("{what}: `{s}` is not an octal mode like \"0755\""))
}

pub(super) fn parse_owner(s: &str, what: &str) -> Result<(u32, u32)> {
    let (u, g) = s.split_once(':').ok_or_else(|| anyhow!("{what}: `{s}` is not UID:GID"))?;
    Ok((
        u.parse().map_err(|_| anyhow!("{what}: `{u}` is not a numeric uid"))?,
        g.parse().map_err(|_| anyhow!("{what}: `{g}` is not a numeric gid"))?,
    ))
}

pub struct LoadedRecipe {
    pub name: String,
    pub path: Utf8PathBuf,
    pub recipe: Recipe,
    pub constraints: Option<(Utf8PathBuf, String)>,
    pub key: String,
}

pub fn recipe_path(project: &Project, name: &str) -> Utf8PathBuf {
    project.root.join("docker/base").join(format!("{name}.toml"))
}

pub fn load(project: &Project, name: &str, mtime: u64) -> Result<LoadedRecipe> {
    let path = recipe_path(project, name);
    let rel = project.rel(&path);
    let text = fs::read_to_string(&path).with_context(|| {
        format!("cannot read the base recipe {rel}; `xtask-base:{name}` names docker/base/{name}.toml")
    })?;
    let recipe: Recipe = toml::from_str(&text).map_err(|e| anyhow!("{rel}: {e}"))?;
    if let Some(py) = &recipe.python
        && py.requirements.is_empty()
    {
        bail!("{rel}: [python] requirements is empty; list what pip installs (apache-airflow==VERSION, ...)");
    }
    parse_owner(&recipe.image.user, &format!("{rel}: [image] user"))?;
    for d in &recipe.image.dir {
        parse_owner(&d.owner, &format!("{rel}: [[image.dir]] {}", d.path))?;
        parse_mode(&d.mode, &format!("{rel}: [[image.dir]] {}", d.path))?;
    }
    for f in &recipe.image.file {
        parse_mode(&f.mode, &format!("{rel}: [[image.file]] {}", f.path))?;
    }
    for g in &recipe.go {
        if !g.version.starts_with('v') || g.package.contains('@') || !g.path.starts_with('/') {
            bail!(
                "{rel}: [[go]] {}: package is a Go package path without @, version a module version like \"v1.2.3\", path absolute (got version `{}`, path `{}`)",
                g.package,
                g.version,
                g.path
            );
        }
    }
    let constraints = match recipe.python.as_ref().and_then(|p| p.constraints.as_ref()) {
        Some(c) => {
            let p = path.parent().unwrap_or(Utf8Path::new(".")).join(c);
            let text = fs::read_to_string(&p).with_context(|| {
                format!("{rel}: constraints file {} is missing; create it with `cargo xtask base --update-lock`, or remove the `constraints` line", project.rel(&p))
            })?;
            Some((p, text))
        }
        None => None,
    };
    let mut h = Sha256::new();
    h.update(format!("{RECIPE_FORMAT}\n{mtime}\n"));
    h.update(&text);
    if let Some((_, c)) = &constraints {
        h.update(c);
    }
    Ok(LoadedRecipe { name: name.to_string(), path, recipe, constraints, key: hex::encode(h.finalize()) })
}
