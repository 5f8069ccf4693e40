//! Server-side apply of the rendered manifests under one field manager, the generated
//! secrets (made once, kept after), and pruning of what xtask applied before but k8s/ no
//! longer has.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::manifests::{MANAGED_BY, MANAGED_BY_LABEL};
use super::secrets::{self, GENERATED};
use crate::cluster::Cluster;

pub const FIELD_MANAGER: &str = "xtask";
/// Marks the Secrets xtask generated, so they are never pruned or overwritten.
pub const GENERATED_ANNOTATION: &str = "xtask.io/generated";

/// The kinds xtask applies, with their plural names and scope.
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("v1", "Namespace", "namespaces", false),
    ("v1", "ServiceAccount", "serviceaccounts", true),
    ("v1", "ConfigMap", "configmaps", true),
    ("v1", "Secret", "secrets", true),
    ("v1", "Service", "services", true),
    ("v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
    ("rbac.authorization.k8s.io/v1", "Role", "roles", true),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", true),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false),
    ("apps/v1", "Deployment", "deployments", true),
    ("apps/v1", "StatefulSet", "statefulsets", true),
    ("apps/v1", "DaemonSet", "daemonsets", true),
    ("batch/v1", "Job", "jobs", true),
    ("batch/v1", "CronJob", "cronjobs", true),
];

pub fn api_resource(api_version: &str, kind: &str) -> Option<(ApiResource, bool)> {
    let (_, _, plural, namespaced) = KINDS.iter().find(|(v, k, _, _)| *v == api_version && *k == kind)?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Some((ApiResource::from_gvk_with_plural(&gvk, plural), *namespaced))
}

fn api_for(cluster: &Cluster, api_version: &str, kind: &str) -> Result<Api<DynamicObject>> {
    let (ar, namespaced) =
        api_resource(api_version, kind).ok_or_else(|| anyhow!("xtask does not apply {api_version} {kind}"))?;
    Ok(if namespaced {
        Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar)
    } else {
        Api::all_with(cluster.client.clone(), &ar)
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct ObjectResult {
    pub kind: String,
    pub name: String,
    /// created, configured, unchanged, recreated, pruned, kept, deleted.
    pub action: &'static str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ApplyReport {
    pub objects: Vec<ObjectResult>,
    pub secrets: Vec<ObjectResult>,
}

impl ApplyReport {
    pub fn changed(&self) -> bool {
        self.objects.iter().chain(&self.secrets).any(|o| !matches!(o.action, "unchanged" | "kept"))
    }

    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &self.objects {
            *counts.entry(o.action).or_default() += 1;
        }
        let secrets: BTreeMap<&str, usize> = self.secrets.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.action).or_default() += 1;
            m
        });
        let fmt = |m: &BTreeMap<&str, usize>| m.iter().map(|(a, n)| format!("{n} {a}")).collect::<Vec<_>>().join(", ");
        format!("{} objects: {}; generated secrets: {}", self.objects.len(), fmt(&counts), fmt(&secrets))
    }
}

/// Applies `objects` (rendered, in dependency order), making the generated secrets once the
/// namespace exists; with `prune`, deletes what xtask applied earlier and `objects` lacks.
pub async fn apply(
    cluster: &Cluster,
    objects: &[Value],
    prune: bool,
    on_object: &mut dyn FnMut(&ObjectResult),
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    let mut secrets_done = false;
    for obj in objects {
        let kind = obj["kind"].as_str().unwrap_or("");
        if kind != "Namespace" && !secrets_done {
            report.secrets = ensure_secrets(cluster).await?;
            secrets_done = true;
        }
        let r = apply_one(cluster, obj).await?;
        on_object(&r);
        report.objects.push(r);
    }
    if !secrets_done {
        report.secrets = ensure_secrets(cluster).await?;
    }
    if prune {
        let keep: BTreeSet<(String, String)> = objects
            .iter()
            .map(|o| {
                (o["kind"].as_str().unwrap_or("").to_string(), o["metadata"]["name"].as_str().unwrap_or("").to_string())
            })
            .collect();
        for r in delete_managed(cluster, &keep).await? {
            on_object(&r);
            report.objects.push(ObjectResult { action: "pruned", ..r });
        }
    }
    Ok(report)
}

async fn apply_one(cluster: &Cluster, obj: &Value) -> Result<ObjectResult> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let api = api_for(cluster, api_version, &kind)?;
    let resource = format!("{}s", kind.to_lowercase());
    let before =
        api.get_opt(&name).await.map_err(|e| cluster.explain(e, "get", &resource))?.and_then(|o| o.resource_version());
    let dynamic: DynamicObject =
        serde_json::from_value(obj.clone()).with_context(|| format!("{kind} {name} is not a valid object"))?;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let applied = match api.patch(&name, &pp, &Patch::Apply(&dynamic)).await {
        Ok(o) => o,
        // A Job's pod template cannot change: replace the Job.
        Err(kube::Error::Api(s)) if s.code == 422 && kind == "Job" && s.message.contains("immutable") => {
            api.delete(&name, &DeleteParams::background()).await.map_err(|e| cluster.explain(e, "delete", "jobs"))?;
            for _ in 0..60 {
                if api.get_opt(&name).await?.is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            api.patch(&name, &pp, &Patch::Apply(&dynamic)).await.map_err(|e| cluster.explain(e, "create", "jobs"))?;
            return Ok(ObjectResult { kind, name, action: "recreated" });
        }
        Err(kube::Error::Api(s)) if s.code == 422 && !s.message.contains("immutable") => {
            bail!("the cluster refused {kind} {name}: {}", s.message)
        }
        Err(kube::Error::Api(s)) if s.code == 422 => bail!(
            "the cluster refused {kind} {name}: {}; for a field that cannot change (a StatefulSet's volumeClaimTemplates, a Service's clusterIP), delete the object and run k8s-up again",
            s.message
        ),
        Err(e) => return Err(cluster.explain(e, "patch", &resource)),
    };
    let action = match before {
        None => "created",
        Some(rv) if Some(rv.clone()) == applied.resource_version() => "unchanged",
        Some(_) => "configured",
    };
    Ok(ObjectResult { kind, name, action })
}

/// Makes each generated Secret that is missing (and adds keys a newer xtask declares);
/// never changes a value that exists. Values are never printed.
pub async fn ensure_secrets(cluster: &Cluster) -> Result<Vec<ObjectResult>> {
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut existing: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut out = Vec::new();
    for g in GENERATED {
        let current = api.get_opt(g.name).await.map_err(|e| cluster.explain(e, "get", "secrets"))?;
        let mut values: BTreeMap<String, String> = current
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        let missing: Vec<&str> = g.keys.iter().copied().filter(|k| !values.contains_key(*k)).collect();
        let action = if missing.is_empty() {
            "kept"
        } else {
            let fresh = secrets::generate(g.name, &existing)?;
            for k in &missing {
                values.insert(k.to_string(), fresh[*k].clone());
            }
            let body = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": g.name,
                    "namespace": cluster.namespace,
                    "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                    "annotations": {GENERATED_ANNOTATION: "true"},
                },
                "type": "Opaque",
                "stringData": values,
            });
            let secret: Secret = serde_json::from_value(body)?;
            if current.is_none() {
                api.create(&PostParams::default(), &secret)
                    .await
                    .map_err(|e| cluster.explain(e, "create", "secrets"))?;
                "created"
            } else {
                api.patch(g.name, &PatchParams::default(), &Patch::Merge(&secret))
                    .await
                    .map_err(|e| cluster.explain(e, "patch", "secrets"))?;
                "configured"
            }
        };
        existing.insert(g.name.to_string(), values);
        out.push(ObjectResult { kind: "Secret".into(), name: g.name.into(), action });
    }
    Ok(out)
}

/// Deletes every namespaced object xtask applied (its label) that is not in `keep`;
/// generated secrets stay unless `keep` is empty and they are asked for by `all`.
pub async fn delete_managed(cluster: &Cluster, keep: &BTreeSet<(String, String)>) -> Result<Vec<ObjectResult>> {
    let mut out = Vec::new();
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    for (api_version, kind, plural, namespaced) in KINDS {
        if !namespaced {
            continue;
        }
        let api = api_for(cluster, api_version, kind)?;
        let list =
            api.list(&ListParams::default().labels(&selector)).await.map_err(|e| cluster.explain(e, "list", plural))?;
        for o in list.items {
            let name = o.name_any();
            if keep.contains(&(kind.to_string(), name.clone())) {
                continue;
            }
            if *kind == "Secret" && o.annotations().contains_key(GENERATED_ANNOTATION) {
                continue;
            }
            api.delete(&name, &DeleteParams::background()).await.map_err(|e| cluster.explain(e, "delete", plural))?;
            out.push(ObjectResult { kind: kind.to_string(), name, action: "deleted" });
        }
    }
    Ok(out)
}

/// Everything xtask made in the namespace, generated secrets too (for k8s-down).
pub async fn delete_everything(cluster: &Cluster) -> Result<Vec<ObjectResult>> {
    let mut out = delete_managed(cluster, &BTreeSet::new()).await?;
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    for g in GENERATED {
        if api.get_opt(g.name).await?.is_some() {
            api.delete(g.name, &DeleteParams::background())
                .await
                .map_err(|e| cluster.explain(e, "delete", "secrets"))?;
            out.push(ObjectResult { kind: "Secret".into(), name: g.name.into(), action: "deleted" });
        }
    }
    Ok(out)
}
