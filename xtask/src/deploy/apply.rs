//! Server-side apply of the rendered manifests under one field manager, the generated
//! secrets (made once, kept after), and pruning of what xtask applied before but k8s/ no
//! longer has. Kinds xtask knows are addressed directly; any other kind (a custom resource,
//! a newer API) is found through the cluster's discovery. The kinds applied are recorded
//! in the namespace (ConfigMap `xtask-inventory`), so a kind dropped from k8s/ is pruned too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};

use super::manifests::{MANAGED_BY, MANAGED_BY_LABEL};
use super::secrets::{self, GENERATED};
use crate::cluster::Cluster;

pub const FIELD_MANAGER: &str = "xtask";
/// Marks the Secrets xtask generated, so they are never pruned or overwritten.
pub const GENERATED_ANNOTATION: &str = "xtask.io/generated";

/// The ConfigMap that records which kinds xtask applied in the namespace.
pub const INVENTORY: &str = "xtask-inventory";
/// How long a CustomResourceDefinition may take to be established.
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

/// The kinds xtask knows, with their plural names and scope; any other kind is looked up
/// through discovery.
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
    ("v1", "ResourceQuota", "resourcequotas", true),
    ("v1", "LimitRange", "limitranges", true),
    ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", true),
    ("networking.k8s.io/v1", "Ingress", "ingresses", true),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
    ("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", true),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", false),
];

fn gvk_of(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// The resource of a kind and whether it is namespaced: from the table for kinds xtask
/// knows, else from the cluster's discovery (which also finds the kinds of CRDs).
async fn resource_of(cluster: &Cluster, api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
    let gvk = gvk_of(api_version, kind);
    if let Some((_, _, plural, namespaced)) = KINDS.iter().find(|(v, k, _, _)| *v == api_version && *k == kind) {
        return Ok((ApiResource::from_gvk_with_plural(&gvk, plural), *namespaced));
    }
    tracing::debug!(api_version, kind, "not a kind xtask knows: asking the cluster's discovery");
    match kube::discovery::pinned_kind(&cluster.client, &gvk).await {
        Ok((ar, caps)) => Ok((ar, caps.scope == Scope::Namespaced)),
        Err(e) => Err(anyhow!(
            "the cluster does not serve {api_version} {kind} ({e}); if a CustomResourceDefinition defines it, add that to k8s/ (xtask applies CRDs first), else check apiVersion against `kubectl api-resources`"
        )),
    }
}

async fn api_for(cluster: &Cluster, api_version: &str, kind: &str) -> Result<(Api<DynamicObject>, bool)> {
    let (ar, namespaced) = resource_of(cluster, api_version, kind).await?;
    Ok((
        if namespaced {
            Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &ar)
        } else {
            Api::all_with(cluster.client.clone(), &ar)
        },
        namespaced,
    ))
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
            report.secrets = ensure_secrets(cluster, objects).await?;
            secrets_done = true;
        }
        let r = apply_one(cluster, obj).await?;
        on_object(&r);
        report.objects.push(r);
    }
    if !secrets_done {
        report.secrets = ensure_secrets(cluster, objects).await?;
    }
    let applied_kinds: BTreeSet<(String, String)> = objects
        .iter()
        .map(|o| (o["apiVersion"].as_str().unwrap_or("").to_string(), o["kind"].as_str().unwrap_or("").to_string()))
        .collect();
    if prune {
        let mut keep: BTreeSet<(String, String)> = objects
            .iter()
            .map(|o| {
                (o["kind"].as_str().unwrap_or("").to_string(), o["metadata"]["name"].as_str().unwrap_or("").to_string())
            })
            .collect();
        keep.insert(("ConfigMap".into(), INVENTORY.into()));
        for r in delete_managed(cluster, &keep).await? {
            on_object(&r);
            report.objects.push(ObjectResult { action: "pruned", ..r });
        }
    }
    record_inventory(cluster, &applied_kinds).await?;
    Ok(report)
}

/// The kinds recorded by the last apply in the namespace.
async fn read_inventory(cluster: &Cluster) -> Result<BTreeSet<(String, String)>> {
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let cm = api.get_opt(INVENTORY).await.map_err(|e| cluster.explain(e, "get", "configmaps"))?;
    let text = cm.and_then(|c| c.data).and_then(|d| d.get("kinds").cloned()).unwrap_or_default();
    Ok(text.lines().filter_map(|l| l.split_once(' ')).map(|(v, k)| (v.to_string(), k.to_string())).collect())
}

async fn record_inventory(cluster: &Cluster, kinds: &BTreeSet<(String, String)>) -> Result<()> {
    let text: String = kinds.iter().map(|(v, k)| format!("{v} {k}\n")).collect();
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": INVENTORY, "namespace": cluster.namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "data": {"kinds": text},
    });
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    api.patch(INVENTORY, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|e| cluster.explain(e, "patch", "configmaps"))?;
    Ok(())
}

/// What an apply can change of an object: everything but what the server or controllers
/// move on their own (status, resourceVersion, managedFields' times, generation).
fn content(o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["resourceVersion", "managedFields", "generation"] {
            meta.remove(k);
        }
    }
    v
}

async fn apply_one(cluster: &Cluster, obj: &Value) -> Result<ObjectResult> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let (api, namespaced) = api_for(cluster, api_version, &kind).await?;
    let resource = format!("{}s", kind.to_lowercase());
    let mut before = api.get_opt(&name).await.map_err(|e| cluster.explain(e, "get", &resource))?;
    if before.as_ref().is_some_and(|b| b.metadata.deletion_timestamp.is_some()) {
        // Still terminating from a k8s-down (a claim waits for its pods): an apply now would
        // count it unchanged and then lose it. Wait until it is gone and create it anew.
        eprintln!("waiting for {kind} {name} to finish terminating before applying it");
        if !wait_gone(&api, &name, TERMINATING_TIMEOUT).await? {
            bail!(
                "{kind} {name} is still terminating after {} s; something holds its finalizers (see `kubectl -n {} describe {} {name}`)",
                TERMINATING_TIMEOUT.as_secs(),
                cluster.namespace,
                resource
            );
        }
        before = None;
    }
    let mut dynamic: DynamicObject =
        serde_json::from_value(obj.clone()).with_context(|| format!("{kind} {name} is not a valid object"))?;
    if !namespaced {
        dynamic.metadata.namespace = None;
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let applied = match api.patch(&name, &pp, &Patch::Apply(&dynamic)).await {
        Ok(o) => o,
        // A Job's pod template cannot change: replace the Job.
        Err(kube::Error::Api(s)) if s.code == 422 && kind == "Job" && s.message.contains("immutable") => {
            api.delete(&name, &DeleteParams::background()).await.map_err(|e| cluster.explain(e, "delete", "jobs"))?;
            wait_gone(&api, &name, Duration::from_secs(30)).await?;
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
    if kind == "CustomResourceDefinition" {
        // The objects of its kind come later in the same apply: wait until it serves them.
        let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
        tokio::time::timeout(CRD_ESTABLISHED_TIMEOUT, await_condition(crds, &name, conditions::is_crd_established()))
            .await
            .map_err(|_| {
                anyhow!(
                    "CustomResourceDefinition {name} was not established within {} s; see `kubectl describe crd {name}`",
                    CRD_ESTABLISHED_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("waiting for CustomResourceDefinition {name}"))?;
    }
    tracing::debug!(api_version, kind, name, namespaced, "applied");
    // Decided by what the apply changed, not by resourceVersion, which controllers move
    // (a Deployment's status) between our read and our patch.
    let action = match before {
        None => "created",
        Some(b) if content(&b) == content(&applied) => "unchanged",
        Some(_) => "configured",
    };
    Ok(ObjectResult { kind, name, action })
}

/// Makes each generated Secret that is missing (and adds keys a newer xtask declares);
/// never changes a value that exists. Values are never printed.
pub async fn ensure_secrets(cluster: &Cluster, objects: &[Value]) -> Result<Vec<ObjectResult>> {
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut existing: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut out = Vec::new();
    for g in GENERATED.iter().filter(|g| g.wanted(objects)) {
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
    let mut kinds: BTreeSet<(String, String)> =
        KINDS.iter().filter(|k| k.3).map(|(v, k, _, _)| (v.to_string(), k.to_string())).collect();
    kinds.extend(read_inventory(cluster).await?);
    // The inventory goes last, so an interrupted prune still knows the other kinds.
    let inventory = ("v1".to_string(), "ConfigMap".to_string());
    for (api_version, kind) in &kinds {
        let (api, namespaced) = match api_for(cluster, api_version, kind).await {
            Ok(a) => a,
            // A kind whose CRD is gone has no objects left to prune.
            Err(_) => continue,
        };
        if !namespaced {
            continue;
        }
        let plural = format!("{}s", kind.to_lowercase());
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| cluster.explain(e, "list", &plural))?;
        for o in list.items {
            let name = o.name_any();
            if keep.contains(&(kind.to_string(), name.clone())) {
                continue;
            }
            if kind == "Secret" && o.annotations().contains_key(GENERATED_ANNOTATION) {
                continue;
            }
            if (api_version, kind) == (&inventory.0, &inventory.1) && name == INVENTORY {
                continue;
            }
            api.delete(&name, &DeleteParams::background()).await.map_err(|e| cluster.explain(e, "delete", &plural))?;
            out.push(ObjectResult { kind: kind.to_string(), name, action: "deleted" });
        }
    }
    if !keep.contains(&("ConfigMap".to_string(), INVENTORY.to_string())) {
        let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        if api.get_opt(INVENTORY).await.map_err(|e| cluster.explain(e, "get", "configmaps"))?.is_some() {
            api.delete(INVENTORY, &DeleteParams::background())
                .await
                .map_err(|e| cluster.explain(e, "delete", "configmaps"))?;
            out.push(ObjectResult { kind: "ConfigMap".into(), name: INVENTORY.into(), action: "deleted" });
        }
    }
    Ok(out)
}

/// How long an object may take to finish terminating before an apply gives up on it.
pub const TERMINATING_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits up to `limit` until `name` no longer exists; whether it is gone.
async fn wait_gone(api: &Api<DynamicObject>, name: &str, limit: Duration) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    while api.get_opt(name).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(true)
}

/// Waits until every object `removed` names is gone (finalizers done), telling
/// `on_wait` what is left each time the set shrinks; Err names what stayed past `limit`.
pub async fn wait_deleted(
    cluster: &Cluster,
    removed: &[ObjectResult],
    limit: Duration,
    on_wait: &mut dyn FnMut(&[String]),
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = usize::MAX;
    loop {
        let mut left = Vec::new();
        for r in removed {
            let Some((v, _, _, _)) = KINDS.iter().find(|k| k.1 == r.kind) else { continue };
            let (api, _) = api_for(cluster, v, &r.kind).await?;
            if api.get_opt(&r.name).await.map_err(|e| cluster.explain(e, "get", &r.kind))?.is_some() {
                left.push(format!("{} {}", r.kind, r.name));
            }
        }
        // The pods their controllers made go too (a claim waits for them).
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let selector = "app.kubernetes.io/name=airflow";
        for p in
            pods.list(&ListParams::default().labels(selector)).await.map_err(|e| cluster.explain(e, "list", "pods"))?
        {
            left.push(format!("Pod {}", p.name_any()));
        }
        if left.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "still terminating after {} s: {}; see `kubectl -n {} get pods,pvc` for what holds them",
                limit.as_secs(),
                left.join(", "),
                cluster.namespace
            );
        }
        if left.len() != last {
            on_wait(&left);
            last = left.len();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Everything xtask made in the namespace, generated secrets too, and the worker pods the
/// executor left (for k8s-down).
pub async fn delete_everything(cluster: &Cluster) -> Result<Vec<ObjectResult>> {
    let mut out = delete_managed(cluster, &BTreeSet::new()).await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let workers = ListParams::default().labels(crate::airflow::WORKER_POD_SELECTOR);
    for p in pods.list(&workers).await.map_err(|e| cluster.explain(e, "list", "pods"))? {
        let name = p.name_any();
        pods.delete(&name, &DeleteParams::background()).await.map_err(|e| cluster.explain(e, "delete", "pods"))?;
        out.push(ObjectResult { kind: "Pod".into(), name, action: "deleted" });
    }
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
