//! What the benchmarks that end at "Airflow shows the new version" share: a DAG whose
//! description is the version, a poller of the API for it, and rows of repeated runs.
//!
//! Every such row is timed the same way: from just before its first command starts (the
//! edit already saved) until the API's DAG details carry the edit's description, polled
//! every 100 ms through one port-forward, kept across rows and made again when a rollout
//! ends the api-server pod it went to.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use crate::airflow::api::ApiClient;
use crate::cluster::Cluster;
use crate::cluster::portforward::PortForward;
use crate::ctx::Ctx;
use crate::ui::secs;

/// A DAG of one no-op task whose description names the version: what the API must show.
pub(super) struct EditedDag {
    /// Its file, relative to the repository.
    pub(super) file: &'static str,
    pub(super) dag_id: &'static str,
}

impl EditedDag {
    pub(super) fn write(&self, repo: &Utf8Path, version: &str) -> Result<()> {
        let id = self.dag_id;
        let text = format!(
            "from datetime import datetime\n\nfrom airflow.sdk import dag, task\n\n\n@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, description=\"{version}\")\ndef {id}():\n    @task\n    def noop():\n        pass\n\n    noop()\n\n\n{id}()\n"
        );
        crate::fsutil::write_atomic(&repo.join(self.file), text.as_bytes())
    }
}

/// The API's view of the edited DAG, through a port-forward made again when it breaks.
pub(super) struct Watcher<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) cluster: Cluster,
    pub(super) dag_id: &'static str,
    session: Option<(PortForward, ApiClient)>,
}

impl<'a> Watcher<'a> {
    pub(super) fn new(ctx: &'a Ctx, cluster: Cluster, dag: &EditedDag) -> Self {
        Watcher { ctx, cluster, dag_id: dag.dag_id, session: None }
    }

    fn description(&mut self) -> Option<String> {
        if self.session.is_none() {
            let (pf, api, _) = crate::airflow::session::api_session(self.ctx, &self.cluster).ok()?;
            self.session = Some((pf, api));
        }
        let (_, api) = self.session.as_ref()?;
        match api.dag_details(self.dag_id) {
            Ok(details) => details.and_then(|d| d["description"].as_str().map(String::from)),
            Err(_) => {
                self.session = None;
                None
            }
        }
    }

    /// Seconds from `started` until the API shows `version`.
    pub(super) fn wait_for(&mut self, version: &str, started: Instant, timeout: Duration) -> Result<f64> {
        loop {
            if self.description().as_deref() == Some(version) {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > timeout {
                bail!("{} did not show description {version:?} within {} s", self.dag_id, timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One way of getting an edit to Airflow, run several times.
pub(super) struct Row {
    pub(super) name: String,
    pub(super) note: String,
    pub(super) runs: Vec<f64>,
}

impl Row {
    pub(super) fn new(name: impl Into<String>) -> Row {
        Row { name: name.into(), note: String::new(), runs: vec![] }
    }

    pub(super) fn median(&self) -> f64 {
        median(&self.runs)
    }
}

/// The middle value (the upper one of an even count); 0 for none.
pub(super) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The middle value of byte counts, like `median`.
pub(super) fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The rows as a table: median, fastest, slowest, note.
pub(super) fn print_rows(rows: &[Row]) {
    println!("{:<48} {:>9} {:>9} {:>9}   note", "", "median", "fastest", "slowest");
    for r in rows {
        let max = r.runs.iter().copied().fold(f64::MIN, f64::max);
        let min = r.runs.iter().copied().fold(f64::MAX, f64::min);
        println!("{:<48} {:>9} {:>9} {:>9}   {}", r.name, secs(r.median()), secs(min), secs(max), r.note);
    }
}

/// Points every container and init container of the namespace's Deployments that runs
/// the worker image at `image`, as k8s-up's apply would.
pub(super) async fn set_worker_image(cluster: &Cluster, image: &str) -> Result<()> {
    let api = Api::<Deployment>::namespaced(cluster.client.clone(), &cluster.namespace);
    for d in api.list(&ListParams::default()).await?.items {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(spec) = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else { continue };
        let uses = |cs: &[k8s_openapi::api::core::v1::Container]| -> Vec<serde_json::Value> {
            cs.iter()
                .filter(|c| c.image.as_deref().is_some_and(|i| i.contains("airflow-worker")))
                .map(|c| serde_json::json!({"name": c.name, "image": image}))
                .collect()
        };
        let containers = uses(&spec.containers);
        let init = uses(spec.init_containers.as_deref().unwrap_or_default());
        if containers.is_empty() && init.is_empty() {
            continue;
        }
        let patch =
            serde_json::json!({"spec": {"template": {"spec": {"containers": containers, "initContainers": init}}}});
        api.patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .with_context(|| format!("cannot point deployment {name} at {image}"))?;
    }
    Ok(())
}
