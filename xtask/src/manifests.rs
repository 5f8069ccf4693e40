//! `cargo xtask manifests check|render`: the documents in k8s/, as typed objects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde_json::json;

use crate::Reported;
use crate::cli::{ManifestsArgs, ManifestsCommand};
use crate::config::{self, ImageOverrides, Project};
use crate::deploy::manifests::{self, CheckContext, Doc, RenderOptions};
use crate::deploy::secrets::GENERATED;
use crate::oci::store::Store;

/// The directories whose documents are applied: k8s/airflow, then each overlay asked for.
pub fn manifest_dirs(project: &Project, overlays: &[String]) -> Result<Vec<PathBuf>> {
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
    let refs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
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
                map.insert(def.name.clone(), format!("{}/{}@{}", def.registry, def.name, desc.digest));
            }
            None => missing.push(def.name),
        }
    }
    Ok((map, missing))
}

pub fn run(project: &Project, args: &ManifestsArgs) -> Result<()> {
    match &args.command {
        ManifestsCommand::Check { overlay, json } => {
            let docs = load_docs(project, overlay)?;
            let placeholders = placeholders(project)?;
            let problems = manifests::check(&docs, &CheckContext { placeholders: &placeholders });
            let files: BTreeSet<&str> = docs.iter().map(|d| d.file.as_str()).collect();
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"documents": docs.len(), "files": files.len(), "problems": problems})
                    )?
                );
            } else {
                for p in &problems {
                    println!("{p}");
                }
                if problems.is_empty() {
                    println!("{} documents in {} files: OK", docs.len(), files.len());
                } else {
                    println!("{} problem(s) in {} documents", problems.len(), docs.len());
                }
            }
            if !problems.is_empty() {
                return Err(Reported(1).into());
            }
            Ok(())
        }
        ManifestsCommand::Render { overlay, namespace, image } => {
            let cluster = config::load_cluster(project, namespace.as_deref(), None)?;
            let docs = load_docs(project, overlay)?;
            let (mut images, missing) = built_images(project)?;
            for o in image {
                let (k, v) = manifests::parse_image_override(o)?;
                images.insert(k, v);
            }
            for m in missing.iter().filter(|m| !images.contains_key(*m)) {
                eprintln!("note: image `{m}` is not built yet, so it stays a placeholder; run `cargo xtask images`");
            }
            let mut objects =
                manifests::render(&docs, &RenderOptions { namespace: &cluster.namespace, images: &images })?;
            for g in GENERATED {
                let data: BTreeMap<&str, &str> = g.keys.iter().map(|k| (*k, "<generated>")).collect();
                objects.push(json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": g.name, "namespace": cluster.namespace, "labels": {manifests::MANAGED_BY_LABEL: manifests::MANAGED_BY}},
                    "stringData": data,
                }));
            }
            objects.sort_by_key(|v| manifests::apply_order(v["kind"].as_str().unwrap_or("")));
            for o in &objects {
                println!("---\n{}", serde_yaml_ng::to_string(o)?.trim_end());
            }
            Ok(())
        }
    }
}
