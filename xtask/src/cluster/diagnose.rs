//! Why a pod is not running: its phase, each container's waiting or terminated reason,
//! the scheduler's word when it is Pending, its last events, the fix, and the command that
//! shows more. Used by k8s-up's waits, status, smoke and doctor.

use anyhow::Result;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

/// The Secret of type kubernetes.io/dockerconfigjson k8s-up makes for `--registry HOST`
/// when it has credentials for HOST; every pod and service account pulls with it.
pub const PULL_SECRET: &str = "airflow-registry";

#[derive(Clone, Debug, Serialize)]
pub struct PodState {
    pub name: String,
    pub phase: String,
    pub ready: bool,
    pub node: Option<String>,
    pub restarts: i32,
    /// `container: Reason: message`, for each container that is not running well.
    pub problems: Vec<String>,
    /// The most telling reason (ImagePullBackOff, OOMKilled, Unschedulable, ...), if any.
    pub reason: Option<String>,
    /// The image of the container that reason is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub events: Vec<String>,
    pub hint: Option<String>,
}

impl PodState {
    /// A problem that will not go away by waiting.
    pub fn is_hopeless(&self) -> bool {
        matches!(
            self.reason.as_deref(),
            Some(
                "ImagePullBackOff"
                    | "ErrImagePull"
                    | "ErrImageNeverPull"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
                    | "CrashLoopBackOff"
                    | "OOMKilled"
            )
        )
    }

    /// An image pull that fails for an image delivery just put on the node: the node's
    /// container runtime has not caught up yet (its image cache lags the import), which
    /// the kubelet's next pull attempt gets past.
    pub fn pull_of_delivered(&self, delivered: &[String]) -> bool {
        matches!(self.reason.as_deref(), Some("ImagePullBackOff" | "ErrImagePull"))
            && self.image.as_ref().is_some_and(|i| delivered.contains(i))
    }

    /// Several lines: what, why, events, fix, where to look further.
    pub fn explain(&self, namespace: &str) -> String {
        let mut s = format!(
            "pod {} is {}{}{}",
            self.name,
            self.phase,
            self.node.as_ref().map(|n| format!(" on {n}")).unwrap_or_default(),
            if self.restarts > 0 { format!(", {} restarts", self.restarts) } else { String::new() }
        );
        for p in &self.problems {
            s.push_str(&format!("\n    {p}"));
        }
        for e in &self.events {
            s.push_str(&format!("\n    event: {e}"));
        }
        if let Some(h) = &self.hint {
            s.push_str(&format!("\n    fix: {h}"));
        }
        s.push_str(&format!("\n    more: kubectl -n {namespace} describe pod {}", self.name));
        s
    }
}

/// The fix for a reason, in words a user can act on.
pub fn hint(reason: &str, message: &str, image: Option<&str>, node: Option<&str>) -> Option<String> {
    let image = image.unwrap_or("its image");
    let node = node.unwrap_or("its node");
    let pull = matches!(reason, "ImagePullBackOff" | "ErrImagePull");
    let lower = message.to_ascii_lowercase();
    Some(match reason {
        _ if pull
            && ["401 unauthorized", "403 forbidden", "authorization failed", "no basic auth credentials", "unauthorized:", "denied"]
                .iter()
                .any(|w| lower.contains(w)) =>
        {
            format!(
                "the registry refused {node}'s credentials for {image} (the image may well be there): `cargo xtask k8s-up --registry HOST` puts your credentials for HOST (XTASK_REGISTRY_USER/XTASK_REGISTRY_PASSWORD with XTASK_REGISTRY_HOST, or `docker login HOST`) in Secret {PULL_SECRET}, which every pod pulls with; log in again and rerun it"
            )
        }
        _ if pull && (lower.contains("not found") || lower.contains("manifest unknown")) => format!(
            "the registry answered but has no {image}: push it with `cargo xtask k8s-up --registry HOST` (it pushes what it deploys), or fix the image in k8s/"
        ),
        "ImagePullBackOff" | "ErrImagePull" | "ErrImageNeverPull" => format!(
            "{image} is not on {node} and cannot be pulled: deliver it with `cargo xtask k8s-up` (it imports images into kind and local nodes), or push it where the cluster pulls from with `cargo xtask k8s-up --registry HOST`"
        ),
        "InvalidImageName" => format!("{image} is not a valid image reference; check the image in k8s/"),
        "CreateContainerConfigError" => {
            format!("a Secret or ConfigMap (or key) it needs is missing ({message}); `cargo xtask k8s-up` creates the generated secrets and applies k8s/")
        }
        "OOMKilled" => "the container used more memory than resources.limits.memory allows; raise the limit in its file under k8s/airflow/".into(),
        "CrashLoopBackOff" | "Error" => "the container keeps exiting; read its log with `cargo xtask logs COMPONENT` (or kubectl logs --previous)".into(),
        "Unschedulable" => format!("the scheduler cannot place it ({message}); lower its resources.requests in k8s/ or give the cluster more room"),
        "MissingPVC" => format!("a PersistentVolumeClaim it mounts is missing or still being deleted ({message}); wait for `cargo xtask k8s-down` to finish, then run `cargo xtask k8s-up` again, which creates it"),
        "UnboundPVC" => "its PersistentVolumeClaim is not bound: the cluster needs a default StorageClass (kind has one) or a matching PersistentVolume".into(),
        _ => return None,
    })
}

/// The state of every pod matching `selector` in `namespace`.
pub async fn pods(client: &kube::Client, namespace: &str, selector: &str) -> Result<Vec<PodState>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    let mut out = Vec::new();
    for pod in list.items {
        out.push(pod_state(client, namespace, &pod).await?);
    }
    Ok(out)
}

pub async fn pod_state(client: &kube::Client, namespace: &str, pod: &Pod) -> Result<PodState> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let node = spec.node_name.clone();
    let mut problems = Vec::new();
    let mut reason: Option<(String, String, Option<String>)> = None;
    let mut restarts = 0;
    let statuses = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for cs in statuses {
        restarts += cs.restart_count;
        let state = cs.state.clone().unwrap_or_default();
        let last_oom = cs
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
        if let Some(w) = &state.waiting {
            let r = w.reason.clone().unwrap_or_default();
            if r != "ContainerCreating" && r != "PodInitializing" {
                let msg = w.message.clone().unwrap_or_default();
                problems.push(format!("{}: {r}: {msg}", cs.name));
                // A crash loop whose last death was the OOM killer is an OOM problem.
                let r = if last_oom { "OOMKilled".to_string() } else { r };
                reason.get_or_insert((r, msg, Some(cs.image.clone())));
            }
        }
        if let Some(t) = &state.terminated {
            let r = t.reason.clone().unwrap_or_default();
            if t.exit_code != 0 || r == "OOMKilled" {
                let msg = t.message.clone().unwrap_or_else(|| format!("exit code {}", t.exit_code));
                problems.push(format!("{}: {r}: {msg}", cs.name));
                reason.get_or_insert((r, msg, Some(cs.image.clone())));
            }
        }
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            let msg = c.message.clone().unwrap_or_default();
            let r = if msg.contains("persistentvolumeclaim")
                && (msg.contains("not found") || msg.contains("being deleted"))
            {
                "MissingPVC"
            } else if msg.contains("unbound") && msg.contains("PersistentVolumeClaim") {
                "UnboundPVC"
            } else {
                "Unschedulable"
            };
            problems.push(format!("not scheduled: {msg}"));
            reason.get_or_insert((r.into(), msg, None));
        }
    }
    let events = recent_events(client, namespace, &name).await.unwrap_or_default();
    // A back-off's own message names no cause; the kubelet's events do.
    let hint = reason
        .as_ref()
        .and_then(|(r, m, img)| hint(r, &format!("{m}\n{}", events.join("\n")), img.as_deref(), node.as_deref()));
    Ok(PodState {
        name,
        phase: status.phase.unwrap_or_else(|| "Unknown".into()),
        ready: status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True"),
        node,
        restarts,
        problems,
        image: reason.as_ref().and_then(|r| r.2.clone()),
        reason: reason.map(|r| r.0),
        events,
        hint,
    })
}

/// The last warning events of an object, oldest first.
pub async fn recent_events(client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await?;
    let mut events: Vec<Event> = list.items.into_iter().filter(|e| e.type_.as_deref() == Some("Warning")).collect();
    events.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0).or(e.event_time.clone().map(|t| t.0)));
    Ok(events
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|e| format!("{}: {}", e.reason.clone().unwrap_or_default(), e.message.clone().unwrap_or_default().trim()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_usual_failure_has_a_fix() {
        for r in [
            "ImagePullBackOff",
            "ErrImagePull",
            "OOMKilled",
            "CrashLoopBackOff",
            "CreateContainerConfigError",
            "Unschedulable",
            "UnboundPVC",
            "MissingPVC",
        ] {
            assert!(hint(r, "msg", Some("img"), Some("node")).is_some(), "{r}");
        }
        let h = hint("ImagePullBackOff", "", Some("docker.io/library/airflow-worker@sha256:x"), Some("kind-worker"))
            .unwrap();
        assert!(h.contains("airflow-worker") && h.contains("kind-worker") && h.contains("k8s-up"));
    }

    /// The kubelet's words, as containerd 2 puts them in the Failed event.
    #[test]
    fn a_refused_pull_is_told_from_a_missing_image() {
        let img = Some("10.0.0.1:5000/airflow-worker@sha256:x");
        let refused = "Back-off pulling image\nFailed: Failed to pull image \"10.0.0.1:5000/airflow-worker@sha256:x\": failed to resolve image: failed to authorize: failed to fetch anonymous token: unexpected status from GET request to http://10.0.0.1:5000/token: 401 Unauthorized";
        let h = hint("ImagePullBackOff", refused, img, Some("n1")).unwrap();
        assert!(h.starts_with("the registry refused n1's credentials") && h.contains(PULL_SECRET), "{h}");
        let missing = "Failed: rpc error: code = NotFound desc = failed to pull and unpack image \"10.0.0.1:5000/airflow-worker@sha256:x\": not found";
        let h = hint("ErrImagePull", missing, img, Some("n1")).unwrap();
        assert!(h.starts_with("the registry answered but has no"), "{h}");
    }
}
