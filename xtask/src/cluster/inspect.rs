//! What runs on the cluster next to what was last built: nodes and the images they hold,
//! components and whether they run a stale image, failing pods with their reasons. What
//! `status` prints and `doctor` checks.

use anyhow::Result;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use super::Cluster;
use crate::cluster::diagnose::{self, PodState};
use crate::oci::image::BuiltImage;

#[derive(Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub ready: bool,
    pub kubelet: String,
    /// Image placeholder -> whether this node has the image as last built.
    pub images: Vec<(String, bool)>,
}

#[derive(Serialize)]
pub struct Component {
    pub kind: String,
    pub name: String,
    pub ready: i32,
    pub desired: i32,
    /// The images its pods run; `stale` when one is not the last build.
    pub images: Vec<String>,
    pub stale: bool,
}

#[derive(Serialize)]
pub struct Status {
    pub cluster: String,
    pub server: String,
    pub version: String,
    pub namespace: String,
    pub nodes: Vec<NodeStatus>,
    pub built: Vec<(String, String)>,
    pub components: Vec<Component>,
    pub failing_pods: Vec<PodState>,
}

impl Status {
    pub fn healthy(&self) -> bool {
        self.failing_pods.is_empty()
            && self.components.iter().all(|c| c.ready >= c.desired && !c.stale)
            && self.nodes.iter().all(|n| n.ready)
    }
}

/// A pod on its way out, not failing: being deleted, or every container of it exited 0
/// (a worker pod whose task is done, before the executor removes it).
fn finishing(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return true;
    }
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses.is_some_and(|cs| {
        !cs.is_empty()
            && cs.iter().all(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0))
    })
}

/// Whether `node` holds `image`: a pod there runs it, or the node's status lists it. The
/// status alone is not enough: the kubelet refreshes it only every few seconds and lists
/// at most 50 images (nodeStatusMaxImages), so a node with many images may never show ours.
pub fn node_has(node: &Node, image: &BuiltImage, pods: &[Pod]) -> bool {
    let digest = format!("@{}", image.manifest.digest());
    let name = node.metadata.name.as_deref();
    let runs_it = pods.iter().any(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == name
            && p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .any(|c| c.image_id.ends_with(&digest))
    });
    runs_it
        || node
            .status
            .iter()
            .flat_map(|s| s.images.iter().flatten())
            .flat_map(|i| i.names.iter().flatten())
            .any(|n| n.ends_with(&digest))
}

pub async fn collect(cluster: &Cluster, built: &[BuiltImage]) -> Result<Status> {
    let version = cluster.version().await?;
    let ns = &cluster.namespace;
    let nodes: Vec<Node> = Api::<Node>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.explain(e, "list", "nodes"))?
        .items;
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.explain(e, "list", "pods"))?
        .items;
    let node_status = nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.metadata.name.clone().unwrap_or_default(),
            ready: n
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            kubelet: n
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kubelet_version.clone())
                .unwrap_or_default(),
            images: built.iter().map(|b| (b.name.clone(), node_has(n, b, &pods))).collect(),
        })
        .collect();
    let pinned: Vec<String> = built.iter().map(|b| b.manifest.digest().to_string()).collect();
    let selector = "app.kubernetes.io/name=airflow";
    let mut components = Vec::new();
    let images_of = |spec: Option<&k8s_openapi::api::core::v1::PodSpec>| -> Vec<String> {
        spec.map(|s| s.containers.iter().filter_map(|c| c.image.clone()).collect()).unwrap_or_default()
    };
    // An image is stale when it is one of ours (placeholder name) at another digest.
    let stale = |imgs: &[String]| {
        imgs.iter().any(|i| {
            built.iter().any(|b| i.contains(&format!("/{}@", b.name)))
                && !pinned.iter().any(|p| i.ends_with(p.as_str()))
        })
    };
    for d in Api::<Deployment>::namespaced(cluster.client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| cluster.explain(e, "list", "deployments"))?
        .items
    {
        let imgs = images_of(d.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
        components.push(Component {
            kind: "Deployment".into(),
            name: d.metadata.name.clone().unwrap_or_default(),
            ready: d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            stale: stale(&imgs),
            images: imgs,
        });
    }
    for s in Api::<StatefulSet>::namespaced(cluster.client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| cluster.explain(e, "list", "statefulsets"))?
        .items
    {
        let imgs = images_of(s.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
        components.push(Component {
            kind: "StatefulSet".into(),
            name: s.metadata.name.clone().unwrap_or_default(),
            ready: s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
            desired: s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            stale: stale(&imgs),
            images: imgs,
        });
    }
    let mut failing = Vec::new();
    for p in pods.iter().filter(|p| !finishing(p)) {
        let st = diagnose::pod_state(&cluster.client, ns, p).await?;
        if st.phase != "Succeeded" && (!st.ready || !st.problems.is_empty()) {
            failing.push(st);
        }
    }
    Ok(Status {
        cluster: cluster.target.describe(),
        server: cluster.url.clone(),
        version,
        namespace: ns.clone(),
        nodes: node_status,
        built: built.iter().map(|b| (b.name.clone(), b.manifest.digest().to_string())).collect(),
        components,
        failing_pods: failing,
    })
}

/// The Secret an external database is named by exists in the namespace and holds a
/// Postgres URL under its key; the error says how to make it.
pub async fn check_database_secret(cluster: &Cluster, db: &crate::config::ExternalDatabase) -> Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let ns = &cluster.namespace;
    let create = format!(
        "kubectl create namespace {ns} --dry-run=client -o yaml | kubectl apply -f - && kubectl -n {ns} create secret generic {} --from-literal={}='postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB'",
        db.secret, db.key
    );
    let secret = Api::<Secret>::namespaced(cluster.client.clone(), ns)
        .get_opt(&db.secret)
        .await
        .map_err(|e| cluster.explain(e, "get", "secrets"))?;
    let Some(secret) = secret else {
        anyhow::bail!(
            "k8s/settings.toml [database] names Secret {} in namespace {ns}, which does not exist; create it: {create}",
            db.secret
        );
    };
    let data = secret.data.unwrap_or_default();
    let Some(value) = data.get(&db.key) else {
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        anyhow::bail!(
            "Secret {} in namespace {ns} has no key `{}` (it has: {}); set `key` in k8s/settings.toml [database] or add the key",
            db.secret,
            db.key,
            if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
        );
    };
    let url = String::from_utf8_lossy(&value.0);
    if !url.starts_with("postgresql") {
        anyhow::bail!(
            "Secret {}, key {}, is not a Postgres URL (it should start with postgresql+psycopg2://); Airflow's KubernetesExecutor needs Postgres or MySQL, and this project deploys for Postgres",
            db.secret,
            db.key
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_done_or_deleted_pod_is_not_failing() {
        let done = pod(serde_json::json!({"metadata": {"name": "w"}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "base", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0}}}]}}));
        assert!(finishing(&done));
        let deleted = pod(serde_json::json!({"metadata": {"name": "w", "deletionTimestamp": "2026-12-02T10:00:00Z"}}));
        assert!(finishing(&deleted));
        let crashed = pod(serde_json::json!({"metadata": {"name": "w"}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "base", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
                "state": {"terminated": {"exitCode": 1}}}]}}));
        assert!(!finishing(&crashed));
        let starting = pod(serde_json::json!({"metadata": {"name": "w"}, "status": {"phase": "Pending"}}));
        assert!(!finishing(&starting));
    }
}
