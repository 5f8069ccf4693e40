//! Finding a component's pod and container, with errors that list what does exist.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};

use crate::cluster::Cluster;
use crate::config::ClusterSettings;

/// Fails with the list of namespaces that exist when the cluster's namespace does not.
/// Credentials that may not read namespaces skip the check (the next call says more).
pub async fn check_namespace(cluster: &Cluster) -> Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    match api.get_opt(&cluster.namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            let names: Vec<String> = match api.list(&ListParams::default()).await {
                Ok(list) => list.items.into_iter().filter_map(|n| n.metadata.name).collect(),
                Err(_) => vec![],
            };
            bail!(
                "namespace {} does not exist on {}; the namespaces are: {} (pick one with --namespace or XTASK_NAMESPACE, or create it with `cargo xtask k8s-up`)",
                cluster.namespace,
                cluster.target.describe(),
                if names.is_empty() { "(none readable)".into() } else { names.join(", ") }
            )
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
        Err(e) => Err(cluster.explain(e, "get", "namespaces")),
    }
}

/// The label selector of a component's workload (Deployment, else StatefulSet).
pub async fn component_selector(
    cluster: &Cluster,
    settings: &ClusterSettings,
    component: &str,
) -> Result<(String, String)> {
    let name = settings.workload_of(component);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let labels = match deployments.get_opt(name).await.map_err(|e| cluster.explain(e, "get", "deployments"))? {
        Some(d) => d.spec.and_then(|s| s.selector.match_labels),
        None => {
            let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
            match sets.get_opt(name).await.map_err(|e| cluster.explain(e, "get", "statefulsets"))? {
                Some(s) => s.spec.and_then(|s| s.selector.match_labels),
                None => {
                    let mut known: Vec<String> = deployments
                        .list(&ListParams::default())
                        .await
                        .map(|l| l.items.into_iter().filter_map(|d| d.metadata.name).collect())
                        .unwrap_or_default();
                    known.extend(
                        sets.list(&ListParams::default())
                            .await
                            .map(|l| l.items.into_iter().filter_map(|d| d.metadata.name))
                            .into_iter()
                            .flatten(),
                    );
                    let short: Vec<&String> = settings.components.keys().collect();
                    bail!(
                        "no Deployment or StatefulSet `{name}` in namespace {}; it has: {}{}",
                        cluster.namespace,
                        if known.is_empty() { "none".into() } else { known.join(", ") },
                        if short.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (short names from k8s/settings.toml: {})",
                                short.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            )
                        }
                    )
                }
            }
        }
    };
    let labels: BTreeMap<String, String> = labels.unwrap_or_default();
    if labels.is_empty() {
        bail!("the workload {name} has no matchLabels selector; xtask cannot find its pods");
    }
    Ok((name.to_string(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")))
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One line about a pod: phase, and why its containers are not running.
pub fn pod_summary(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let mut reasons = Vec::new();
    for cs in status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten()) {
        if let Some(state) = &cs.state {
            if let Some(w) = &state.waiting {
                reasons.push(format!("{}: {}", cs.name, w.reason.clone().unwrap_or_else(|| "waiting".into())));
            } else if let Some(t) = &state.terminated
                && t.exit_code != 0
            {
                reasons.push(format!(
                    "{}: {} (exit {})",
                    cs.name,
                    t.reason.clone().unwrap_or_else(|| "terminated".into()),
                    t.exit_code
                ));
            } else if state.running.is_some() && !cs.ready {
                reasons.push(format!("{}: running, not ready", cs.name));
            }
        }
    }
    if reasons.is_empty()
        && let Some(c) = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        reasons.push(format!("unschedulable: {}", c.message.clone().unwrap_or_default()));
    }
    let phase = status.phase.unwrap_or_else(|| "Unknown".into());
    if reasons.is_empty() { format!("{name} ({phase})") } else { format!("{name} ({phase}; {})", reasons.join("; ")) }
}

/// The component's first ready pod (newest first); the error lists every pod and why it
/// is not ready.
pub async fn ready_pod(cluster: &Cluster, settings: &ClusterSettings, component: &str) -> Result<Pod> {
    let (workload, selector) = component_selector(cluster, settings, component).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| cluster.explain(e, "list", "pods"))?
        .items;
    list.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
    if let Some(p) = list.iter().find(|p| pod_ready(p)) {
        return Ok(p.clone());
    }
    if list.is_empty() {
        bail!(
            "{workload} has no pods in namespace {} (scaled to zero, or not applied: `cargo xtask k8s-up`)",
            cluster.namespace
        );
    }
    let lines: Vec<String> = list.iter().map(|p| format!("  {}", pod_summary(p))).collect();
    Err(anyhow!(
        "no ready pod of {workload} in namespace {}:\n{}\nsee why with `cargo xtask doctor` or `cargo xtask logs {component}`",
        cluster.namespace,
        lines.join("\n")
    ))
}

/// The container to use: the one asked for (which must exist), else the only one.
pub fn pick_container(pod: &Pod, asked: Option<&str>) -> Result<String> {
    let names: Vec<String> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    match asked {
        Some(c) if names.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => bail!("pod {pod_name} has no container `{c}`; its containers are: {}", names.join(", ")),
        None if names.len() == 1 => Ok(names[0].clone()),
        None => bail!("pod {pod_name} has {} containers; pick one with --container: {}", names.len(), names.join(", ")),
    }
}
