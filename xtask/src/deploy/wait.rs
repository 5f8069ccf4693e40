//! Waiting until Airflow is healthy: each step with a deadline and a progress line per
//! component; on a timeout, or on a problem waiting will not fix, the reason (pod, phase,
//! container reason, events, fix, the command that shows more) rather than "timed out".
//!
//! The checks are ours rather than kube::runtime's wait conditions: those answer only
//! yes or no, where each check here also says where it stands ("1/2 available") for the
//! progress line, and a failed Job ends the wait at once instead of at the deadline.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use crate::cluster::Cluster;
use crate::cluster::diagnose;
use crate::cluster::portforward::PortForward;

#[derive(Clone, Debug)]
pub enum Check {
    StatefulSetReady(String),
    JobComplete(String),
    DeploymentRolledOut(String),
    /// An HTTP GET through a port-forward to a ready pod of the selector answers 200.
    Http {
        selector: String,
        port: u16,
        path: String,
    },
}

#[derive(Clone, Debug)]
pub struct Step {
    pub label: String,
    pub checks: Vec<Check>,
    /// Pods to diagnose when the step fails.
    pub selector: String,
    pub timeout: Duration,
}

/// The steps that make "Airflow is healthy", for the objects actually applied: the
/// StatefulSets (Postgres), then the Jobs (the migration), then the Deployments, then the
/// api-server's health endpoint if there is an api-server.
pub fn steps_for(objects: &[serde_json::Value], timeout: Duration) -> Vec<Step> {
    let of = |kind: &str| -> Vec<&serde_json::Value> { objects.iter().filter(|o| o["kind"] == kind).collect() };
    let name = |o: &serde_json::Value| o["metadata"]["name"].as_str().unwrap_or("").to_string();
    // Pods to diagnose: those of the objects' pod templates, by their component label.
    let selector = |objs: &[&serde_json::Value]| -> String {
        let components: Vec<&str> = objs
            .iter()
            .filter_map(|o| {
                o.pointer("/spec/template/metadata/labels/app.kubernetes.io~1component").and_then(|v| v.as_str())
            })
            .collect();
        format!("app.kubernetes.io/component in ({})", components.join(","))
    };
    let mut steps = Vec::new();
    let mut add = |label: &str, objs: Vec<&serde_json::Value>, check: &dyn Fn(String) -> Check| {
        if !objs.is_empty() {
            steps.push(Step {
                label: label.into(),
                checks: objs.iter().map(|o| check(name(o))).collect(),
                selector: selector(&objs),
                timeout,
            });
        }
    };
    add("postgres", of("StatefulSet"), &Check::StatefulSetReady);
    add("db migrate", of("Job"), &Check::JobComplete);
    add("components", of("Deployment"), &Check::DeploymentRolledOut);
    if of("Deployment").iter().any(|d| name(d) == "airflow-api-server") {
        let component = "app.kubernetes.io/name=airflow,app.kubernetes.io/component=api-server".to_string();
        steps.push(Step {
            label: "api-server health".into(),
            checks: vec![Check::Http {
                selector: component.clone(),
                port: 8080,
                path: "/api/v2/monitor/health".into(),
            }],
            selector: component,
            timeout,
        });
    }
    steps
}

/// What a check sees now: done, or a short description of where it is.
async fn look(cluster: &Cluster, check: &Check) -> Result<Result<(), String>> {
    let ns = &cluster.namespace;
    let c = &cluster.client;
    Ok(match check {
        Check::StatefulSetReady(name) => {
            let Some(s) = Api::<StatefulSet>::namespaced(c.clone(), ns).get_opt(name).await? else {
                return Ok(Err(format!("{name}: not created yet")));
            };
            let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = s.status.unwrap_or_default();
            let ready = st.ready_replicas.unwrap_or(0);
            if ready >= want && st.current_revision == st.update_revision {
                Ok(())
            } else {
                Err(format!("{name}: {ready}/{want} ready"))
            }
        }
        Check::JobComplete(name) => {
            let Some(j) = Api::<Job>::namespaced(c.clone(), ns).get_opt(name).await? else {
                return Ok(Err(format!("{name}: not created yet")));
            };
            let st = j.status.unwrap_or_default();
            let cond = |t: &str| st.conditions.iter().flatten().any(|c| c.type_ == t && c.status == "True");
            if cond("Complete") {
                Ok(())
            } else if cond("Failed") {
                bail!(JobFailed(name.clone()));
            } else {
                Err(format!("{name}: running ({} failed attempts)", st.failed.unwrap_or(0)))
            }
        }
        Check::DeploymentRolledOut(name) => {
            let Some(d) = Api::<Deployment>::namespaced(c.clone(), ns).get_opt(name).await? else {
                return Ok(Err(format!("{name}: not created yet")));
            };
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or(0);
            let st = d.status.unwrap_or_default();
            let updated = st.updated_replicas.unwrap_or(0);
            let available = st.available_replicas.unwrap_or(0);
            let total = st.replicas.unwrap_or(0);
            if st.observed_generation.unwrap_or(0) >= generation
                && updated >= want
                && available >= want
                && total <= want
            {
                Ok(())
            } else {
                Err(format!("{name}: {available}/{want} available, {updated} updated"))
            }
        }
        Check::Http { selector, port, path } => {
            let pods = Api::<Pod>::namespaced(c.clone(), ns).list(&ListParams::default().labels(selector)).await?;
            let ready = pods.items.iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            let Some(pod) = ready.and_then(|p| p.metadata.name.clone()) else {
                return Ok(Err("no ready pod to ask".into()));
            };
            let pf = PortForward::start(&cluster.streams, ns, &pod, *port).await?;
            let url = format!("{}{path}", pf.base_url());
            let answer = tokio::task::spawn_blocking(move || -> Result<(u16, String)> {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut resp = agent.get(&url).call()?;
                let status = resp.status().as_u16();
                Ok((status, resp.body_mut().read_to_string().unwrap_or_default()))
            })
            .await??;
            drop(pf);
            match answer {
                (200, body) => airflow_healthy(&body).map_err(|why| format!("{pod}: {why}")),
                (status, body) => Err(format!("{pod}: HTTP {status} {}", body.chars().take(200).collect::<String>())),
            }
        }
    })
}

/// The api-server's health answer: it must be JSON whose metadatabase says healthy. The
/// other parts (scheduler, triggerer, dag processor) have wait steps of their own; their
/// heartbeats lag their pods' readiness (a triggerer reported unhealthy for minutes on
/// the test cluster), so they do not hold the api-server's step.
fn airflow_healthy(body: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the health answer is not JSON ({e}): {body}"))?;
    let status = |part: &serde_json::Value| part["status"].as_str().map(String::from);
    if status(&v["metadatabase"]).as_deref() != Some("healthy") {
        return Err(format!("the metadatabase is not healthy: {body}"));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("Job {0} failed")]
struct JobFailed(String);

/// How long a state that waiting will not fix (a bad image, a missing secret, a crash
/// loop) is watched before the step fails with its diagnosis.
const HOPELESS_GRACE: Duration = Duration::from_secs(20);
/// The same for a failing pull of an image delivery just confirmed on the node.
const DELIVERED_PULL_GRACE: Duration = Duration::from_secs(90);

/// Waits for every step in order; returns each step's seconds. `on_progress` gets a line
/// whenever what a step sees changes.
///
/// `delivered` are the image references delivery just confirmed on the nodes: a failing
/// pull of one of those gets a longer grace than other hopeless states, as the node's
/// runtime may still be catching up with the import.
pub async fn wait(
    cluster: &Cluster,
    steps: &[Step],
    delivered: &[String],
    on_progress: &mut dyn FnMut(&str),
) -> Result<Vec<(String, f64)>> {
    let mut times = Vec::new();
    for step in steps {
        let started = Instant::now();
        let mut last = String::new();
        let mut hopeless_since: Option<Instant> = None;
        loop {
            let mut pending = Vec::new();
            let mut failure = None;
            for check in &step.checks {
                match look(cluster, check).await {
                    Ok(Ok(())) => {}
                    Ok(Err(state)) => pending.push(state),
                    Err(e) if e.is::<JobFailed>() => failure = Some(e.to_string()),
                    Err(e) => pending.push(format!("cannot check yet: {e}")),
                }
            }
            if pending.is_empty() && failure.is_none() {
                on_progress(&format!("{}: ready in {:.0} s", step.label, started.elapsed().as_secs_f64()));
                break;
            }
            let now = pending.join("; ");
            if now != last {
                on_progress(&format!("{}: {now}", step.label));
                last = now;
            }
            let pods = diagnose::pods(&cluster.client, &cluster.namespace, &step.selector).await.unwrap_or_default();
            let hopeless: Vec<&diagnose::PodState> = pods.iter().filter(|p| p.is_hopeless()).collect();
            hopeless_since = if hopeless.is_empty() { None } else { hopeless_since.or(Some(Instant::now())) };
            let grace = if hopeless.iter().all(|p| p.pull_of_delivered(delivered)) {
                DELIVERED_PULL_GRACE
            } else {
                HOPELESS_GRACE
            };
            let timed_out = started.elapsed() > step.timeout;
            // A bad image or missing secret will not fix itself: say so after a short grace.
            let give_up = failure.is_some() || timed_out || hopeless_since.is_some_and(|t| t.elapsed() > grace);
            if give_up {
                let why = failure.unwrap_or_else(|| {
                    if timed_out {
                        format!("{} not ready after {:.0} s", step.label, step.timeout.as_secs_f64())
                    } else {
                        format!("{} cannot become ready", step.label)
                    }
                });
                let troubled: Vec<&diagnose::PodState> =
                    pods.iter().filter(|p| !p.ready && p.phase != "Succeeded").collect();
                let details = if troubled.is_empty() {
                    format!("no pod of `{}` is failing; the last state: {last}", step.selector)
                } else {
                    troubled.iter().map(|p| p.explain(&cluster.namespace)).collect::<Vec<_>>().join("\n  ")
                };
                bail!("{why}:\n  {details}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        times.push((step.label.clone(), started.elapsed().as_secs_f64()));
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airflow_is_healthy_only_when_no_part_says_otherwise() {
        let ok = r#"{"metadatabase":{"status":"healthy"},"scheduler":{"status":"healthy","latest_scheduler_heartbeat":"2026-01-01T00:00:00+00:00"},"triggerer":{"status":null,"latest_triggerer_heartbeat":null}}"#;
        assert_eq!(airflow_healthy(ok), Ok(()));
        // The scheduler's own step waits for it; the api-server's does not.
        let scheduler_late = r#"{"metadatabase":{"status":"healthy"},"scheduler":{"status":"unhealthy","latest_scheduler_heartbeat":null}}"#;
        assert_eq!(airflow_healthy(scheduler_late), Ok(()));
        // An answer that says nothing of the metadatabase is not a healthy one (the old
        // text search passed it, as it held no "unhealthy").
        assert!(airflow_healthy(r#"{"metadatabase":{"status":null}}"#).is_err());
        assert!(airflow_healthy(r#"{"detail":"Not Found"}"#).is_err());
        // Text that merely mentions "healthy" is not an answer.
        assert!(airflow_healthy(r#"{"metadatabase":{"status":"unhealthy"},"note":"healthy"}"#).is_err());
        let db_down = r#"{"metadatabase":{"status":"unhealthy"}}"#;
        assert!(airflow_healthy(db_down).unwrap_err().contains("metadatabase"));
        assert!(airflow_healthy("<html>").is_err());
    }
}
