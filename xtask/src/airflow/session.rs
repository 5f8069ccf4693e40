//! Airflow's REST API on the cluster: a port-forward to a ready api-server pod, logged in
//! with the credentials k8s-up generated.

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::airflow::api::ApiClient;
use crate::cluster::Cluster;
use crate::cluster::diagnose;
use crate::cluster::pods::pod_ready;
use crate::cluster::portforward::PortForward;
use crate::ctx::Ctx;

/// Airflow's REST API on the cluster: a port-forward to a ready api-server pod, logged in
/// with the credentials k8s-up generated. Keep the PortForward alive while using the client.
pub fn api_session(ctx: &Ctx, cluster: &Cluster) -> Result<(PortForward, ApiClient, String)> {
    let ns = cluster.namespace.clone();
    let client = cluster.client.clone();
    let (user, password, pod) = ctx.block_on(async {
        let secret = Api::<Secret>::namespaced(client.clone(), &ns).get_opt("airflow-admin").await?;
        let secret = secret
            .ok_or_else(|| anyhow!("no Secret airflow-admin in namespace {ns}: run `cargo xtask k8s-up` first"))?;
        let get = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        let selector = "app.kubernetes.io/name=airflow,app.kubernetes.io/component=api-server";
        let pods = Api::<Pod>::namespaced(client.clone(), &ns).list(&ListParams::default().labels(selector)).await?;
        let ready = pods.items.iter().find(|p| pod_ready(p));
        match ready.and_then(|p| p.metadata.name.clone()) {
            Some(pod) => Ok((get("username"), get("password"), pod)),
            None => {
                let states = diagnose::pods(&client, &ns, selector).await.unwrap_or_default();
                let why: Vec<String> = states.iter().map(|p| p.explain(&ns)).collect();
                bail!(
                    "no ready api-server pod in namespace {ns}; run `cargo xtask k8s-up`{}",
                    if why.is_empty() { String::new() } else { format!(":\n  {}", why.join("\n  ")) }
                )
            }
        }
    })?;
    let pf = ctx.block_on(PortForward::start(&cluster.streams, &ns, &pod, 8080))?;
    let api = ApiClient::login(&pf.base_url(), &user, &password)?;
    Ok((pf, api, pod))
}
