//! Getting k8s/ into a cluster: the manifests, generated secrets, server-side apply and
//! waiting with diagnosis.

pub mod apply;
pub mod check;
pub mod manifests;
pub mod render;
pub mod secrets;
pub mod wait;

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

use crate::config::{self, ImageOverrides, Project};
use crate::oci::store::Store;
use manifests::Doc;

/// The directories whose documents are applied: k8s/airflow, then each overlay asked for.
pub fn manifest_dirs(project: &Project, overlays: &[String]) -> Result<Vec<Utf8PathBuf>> {
    let mut dirs = vec![project.root.join("k8s/airflow")];
    for o in overlays {
        let d = project.root.join("k8s/overlays").join(o);
        if !d.is_dir() {
            let known: Vec<String> = std::fs::read_dir(project.root.join("k8s/overlays"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            bail!("no overlay `{o}` in k8s/overlays/; there are: {}", known.join(", "));
        }
        dirs.push(d);
    }
    Ok(dirs)
}

pub fn load_docs(project: &Project, overlays: &[String]) -> Result<Vec<Doc>> {
    let dirs = manifest_dirs(project, overlays)?;
    let refs: Vec<&Utf8Path> = dirs.iter().map(Utf8PathBuf::as_path).collect();
    manifests::load(&project.root, &refs)
}

/// The image names k8s/ may use as placeholders: the images of docker/images.toml.
pub fn placeholders(project: &Project) -> Result<BTreeSet<String>> {
    Ok(config::load_images(project, &ImageOverrides::default())?.into_iter().map(|d| d.name).collect())
}

/// Placeholder -> `name@sha256:...` for each image the store holds a build of.
pub fn built_images(project: &Project) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let defs = config::load_images(project, &ImageOverrides::default())?;
    let store = Store::open(&project.store_dir())?;
    let mut map = BTreeMap::new();
    let mut missing = Vec::new();
    for def in defs {
        match store.lookup(&def.full_name())? {
            Some(desc) => {
                map.insert(def.name.clone(), format!("{}/{}@{}", def.registry, def.name, desc.digest()));
            }
            None => missing.push(def.name),
        }
    }
    Ok((map, missing))
}
