//! What `k8s-up` applies: the documents of k8s/ with the namespace set, placeholders
//! replaced by the built images, pod templates turned into ConfigMaps, the managed-by
//! label and config hashes added, in dependency order.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::manifests::{CONFIG_HASH_ANNOTATION, Doc, MANAGED_BY, MANAGED_BY_LABEL, POD_TEMPLATE_KEY};
/// How to render: the namespace, and what each placeholder image becomes.
pub struct RenderOptions<'a> {
    pub namespace: &'a str,
    /// placeholder -> `name@sha256:...`
    pub images: &'a BTreeMap<String, String>,
    /// A Secret every pod and service account pulls images with (`imagePullSecrets`).
    pub pull_secret: Option<&'a str>,
}

/// Kinds without a namespace; for kinds xtask does not know, apply asks the cluster.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
];

/// The objects to apply, in dependency order: namespace set, placeholders replaced, pod
/// templates turned into ConfigMaps, labels and config hashes added. Generated secrets
/// are not included (they are made in the cluster).
pub fn render(docs: &[Doc], opts: &RenderOptions<'_>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in docs {
        let mut v = doc.value.clone();
        let kind = doc.kind().to_string();
        if kind == "Namespace" {
            v["metadata"]["name"] = json!(opts.namespace);
        } else if !CLUSTER_SCOPED.contains(&kind.as_str()) {
            v["metadata"]["namespace"] = json!(opts.namespace);
        }
        if kind == "RoleBinding" {
            for s in v["subjects"].as_array_mut().into_iter().flatten() {
                if s["kind"] == "ServiceAccount" {
                    s["namespace"] = json!(opts.namespace);
                }
            }
        }
        replace_images(&mut v, opts.images);
        if let Some(secret) = opts.pull_secret {
            add_pull_secret(&mut v, secret);
        }
        v["metadata"]["labels"][MANAGED_BY_LABEL] = json!(MANAGED_BY);
        if kind == "Pod" {
            // A pod template: stored as YAML in a ConfigMap of the same name.
            let yaml = serde_yaml_ng::to_string(&v).context("cannot serialise the pod template")?;
            let mut labels = v["metadata"]["labels"].clone();
            labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
            v = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": doc.name(), "namespace": opts.namespace, "labels": labels},
                "data": {POD_TEMPLATE_KEY: yaml},
            });
        }
        out.push(v);
    }
    add_config_hashes(&mut out);
    out.sort_by_key(|v| apply_order(v["kind"].as_str().unwrap_or("")));
    Ok(out)
}

/// The placeholders (of `placeholders`) that the containers of `docs` use, sorted.
pub fn images_used(docs: &[Doc], placeholders: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut used = std::collections::BTreeSet::new();
    for doc in docs {
        for pointer in POD_SPECS {
            let Some(spec) = doc.value.pointer(pointer) else { continue };
            for list in ["containers", "initContainers"] {
                for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
                    if let Some(img) = c.get("image").and_then(Value::as_str).filter(|i| placeholders.contains(*i)) {
                        used.insert(img.to_string());
                    }
                }
            }
        }
    }
    used.into_iter().collect()
}

/// Where a document of each workload kind (or a Pod) keeps its pod spec.
pub const POD_SPECS: [&str; 3] = ["/spec", "/spec/template/spec", "/spec/jobTemplate/spec/template/spec"];

/// Replaces placeholder images in every container of every pod spec of `v`.
fn replace_images(v: &mut Value, images: &BTreeMap<String, String>) {
    for pointer in POD_SPECS {
        if let Some(spec) = v.pointer_mut(pointer) {
            for list in ["containers", "initContainers"] {
                for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(img) = c.get("image").and_then(Value::as_str)
                        && let Some(repl) = images.get(img)
                    {
                        c["image"] = json!(repl);
                    }
                }
            }
        }
    }
}

/// Adds `secret` to the imagePullSecrets of a ServiceAccount or of every pod spec of `v`.
fn add_pull_secret(v: &mut Value, secret: &str) {
    let entry = json!({"name": secret});
    let add = |list: &mut Value| match list.as_array_mut() {
        Some(a) if a.contains(&entry) => {}
        Some(a) => a.push(entry.clone()),
        None => *list = json!([entry.clone()]),
    };
    if v["kind"] == "ServiceAccount" {
        add(&mut v["imagePullSecrets"]);
        return;
    }
    for pointer in POD_SPECS {
        if let Some(spec) = v.pointer_mut(pointer).filter(|s| s.get("containers").is_some()) {
            add(&mut spec["imagePullSecrets"]);
        }
    }
}

/// Annotates each pod template with a hash of the ConfigMaps it mounts or reads, so that
/// applying changed configuration rolls the pods that use it.
fn add_config_hashes(objects: &mut [Value]) {
    let maps: BTreeMap<String, String> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| (o["metadata"]["name"].as_str().unwrap_or("").to_string(), o["data"].to_string()))
        .collect();
    for o in objects.iter_mut() {
        let Some(template) = o.pointer_mut("/spec/template") else { continue };
        let spec = template["spec"].to_string();
        let mut h = Sha256::new();
        let mut any = false;
        for (name, data) in &maps {
            if spec.contains(&format!("\"name\":\"{name}\"")) {
                h.update(name.as_bytes());
                h.update(data.as_bytes());
                any = true;
            }
        }
        if any {
            template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = json!(hex::encode(&h.finalize()[..8]));
        }
    }
}

/// Objects others depend on first; workloads after them; objects of other kinds (custom
/// resources among them) last, once the CustomResourceDefinitions that define them exist.
pub fn apply_order(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "CustomResourceDefinition",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ClusterRoleBinding",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Service",
        "Ingress",
        "StatefulSet",
        "Job",
        "CronJob",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

/// Parses the placeholders' replacements for `--image NAME=REF` style overrides.
pub fn parse_image_override(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("`{s}` is not PLACEHOLDER=IMAGE"))?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::manifests::split_documents;

    #[test]
    fn a_pull_secret_reaches_every_pod_spec_and_service_account_and_images_used_are_found() {
        let docs = split_documents(
            "k8s/airflow/x.yaml",
            "kind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n      containers: [{name: c, image: airflow-worker}]\n---\nkind: Pod\nmetadata: {name: t}\nspec:\n  containers: [{name: base, image: airflow-worker}]\n---\nkind: ServiceAccount\nmetadata: {name: sa}\n---\nkind: ConfigMap\nmetadata: {name: cm}\n",
        )
        .unwrap();
        let placeholders = ["airflow-worker", "airflow-s3"].map(String::from).into_iter().collect();
        assert_eq!(images_used(&docs, &placeholders), ["airflow-worker"]);
        let images = BTreeMap::new();
        let opts = RenderOptions { namespace: "ns", images: &images, pull_secret: Some("airflow-registry") };
        let objects = render(&docs, &opts).unwrap();
        let want = json!([{"name": "airflow-registry"}]);
        let by_name = |n: &str| objects.iter().find(|o| o["metadata"]["name"] == n).unwrap();
        assert_eq!(by_name("d")["spec"]["template"]["spec"]["imagePullSecrets"], want);
        assert_eq!(by_name("sa")["imagePullSecrets"], want);
        assert!(by_name("d")["spec"].get("imagePullSecrets").is_none());
        let template: Value =
            serde_yaml_ng::from_str(by_name("t")["data"][POD_TEMPLATE_KEY].as_str().unwrap()).unwrap();
        assert_eq!(template["spec"]["imagePullSecrets"], want, "the worker pod template pulls with it too");
        assert!(by_name("cm").get("imagePullSecrets").is_none());
    }
}
