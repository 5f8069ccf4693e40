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

/// The documents of k8s/airflow and the overlays asked for, each overlay document that
/// names an earlier document's kind and name merged into it (see [`manifests::merge_overlays`]).
pub fn load_docs(project: &Project, overlays: &[String]) -> Result<Vec<Doc>> {
    let dirs = manifest_dirs(project, overlays)?;
    let refs: Vec<&Utf8Path> = dirs.iter().map(Utf8PathBuf::as_path).collect();
    manifests::merge_overlays(manifests::load(&project.root, &refs)?)
}

/// The metadata database's connection variable, which every Airflow container reads.
pub const DB_CONN_ENV: &str = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN";
/// The workload, Service and NetworkPolicy of the database k8s/airflow runs.
const BUILT_IN_DATABASE: &str = "airflow-postgres";

/// An existing database instead of the built-in one: the airflow-postgres StatefulSet, its
/// Service and NetworkPolicy are not applied, and every container's
/// AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (the migrate Job's and the init containers' too)
/// comes from the Secret `db.secret`, key `db.key`.
pub fn use_external_database(docs: &mut Vec<Doc>, db: &config::ExternalDatabase) {
    docs.retain(|d| {
        !(d.name() == BUILT_IN_DATABASE && matches!(d.kind(), "StatefulSet" | "Service" | "NetworkPolicy"))
    });
    for doc in docs.iter_mut() {
        for pointer in render::POD_SPECS {
            let Some(spec) = doc.value.pointer_mut(pointer) else { continue };
            for list in ["containers", "initContainers"] {
                for c in spec.get_mut(list).and_then(serde_json::Value::as_array_mut).into_iter().flatten() {
                    for e in c.get_mut("env").and_then(serde_json::Value::as_array_mut).into_iter().flatten() {
                        if e["name"] == DB_CONN_ENV {
                            *e = serde_json::json!({
                                "name": DB_CONN_ENV,
                                "valueFrom": {"secretKeyRef": {"name": db.secret, "key": db.key}},
                            });
                        }
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_database_replaces_the_built_in_one_everywhere() {
        let mut docs = manifests::split_documents(
            "k8s/airflow/x.yaml",
            "kind: StatefulSet\nmetadata: {name: airflow-postgres}\n---\nkind: Service\nmetadata: {name: airflow-postgres}\n---\nkind: Job\nmetadata: {name: migrate}\nspec:\n  template:\n    spec:\n      initContainers: [{name: i, env: [{name: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, valueFrom: {secretKeyRef: {name: airflow-secrets, key: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN}}}]}]\n      containers: [{name: c, env: [{name: A, value: '1'}, {name: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, valueFrom: {secretKeyRef: {name: airflow-secrets, key: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN}}}]}]\n",
        )
        .unwrap();
        let db = config::ExternalDatabase { secret: "ext".into(), key: "url".into() };
        use_external_database(&mut docs, &db);
        assert_eq!(docs.len(), 1, "the StatefulSet and Service of the built-in database are gone");
        let spec = &docs[0].value["spec"]["template"]["spec"];
        let want =
            serde_json::json!({"name": DB_CONN_ENV, "valueFrom": {"secretKeyRef": {"name": "ext", "key": "url"}}});
        assert_eq!(spec["initContainers"][0]["env"][0], want);
        assert_eq!(spec["containers"][0]["env"][1], want);
        assert_eq!(spec["containers"][0]["env"][0]["value"], "1");
    }
}
