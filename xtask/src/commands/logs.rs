//! `cargo xtask logs COMPONENT|DAG_ID[.TASK_ID] [-f]`: a component's pod logs, or a
//! task's worker pod logs, or, once the worker pod is gone, the task log from the API.

use anyhow::{Result, anyhow, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};

use crate::cli::LogsArgs;
use crate::cluster::{Cluster, Target};
use crate::ctx::Ctx;

/// Worker pods' labels, as the KubernetesExecutor sets them.
pub fn worker_selector(dag_id: &str, task_id: Option<&str>) -> String {
    let mut s = format!("{},dag_id={dag_id}", crate::airflow::WORKER_POD_SELECTOR);
    if let Some(t) = task_id {
        s.push_str(&format!(",task_id={t}"));
    }
    s
}

async fn print_logs(
    cluster: &Cluster,
    pods: &[Pod],
    container: Option<&str>,
    follow: bool,
    tail: Option<i64>,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(cluster.streams.clone(), &cluster.namespace);
    let mut sources = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let containers: Vec<String> = match container {
            Some(c) => vec![crate::cluster::pods::pick_container(pod, Some(c))?],
            None => pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect(),
        };
        for c in containers {
            sources.push((name.clone(), c));
        }
    }
    let prefix = sources.len() > 1;
    let streams = sources.into_iter().map(|(pod, c)| {
        let api = api.clone();
        let lp = LogParams { container: Some(c.clone()), follow, tail_lines: tail, ..Default::default() };
        async move {
            let label = if prefix { format!("[{pod}/{c}] ") } else { String::new() };
            let reader = match api.log_stream(&pod, &lp).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{label}cannot read the log: {e}");
                    return;
                }
            };
            let mut lines = reader.lines();
            while let Ok(Some(line)) = lines.try_next().await {
                println!("{label}{line}");
            }
        }
    });
    futures::stream::iter(streams).for_each_concurrent(None, |f| f).await;
    Ok(())
}

pub fn run(ctx: &Ctx, args: &LogsArgs) -> Result<()> {
    let project = &ctx.project;
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let cluster = ctx.connect(&target, &settings.namespace)?;
    ctx.block_on(crate::cluster::pods::check_namespace(&cluster))?;
    let pods_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);

    // A component?
    let component = ctx.block_on(crate::cluster::pods::component_selector(&cluster, &settings, &args.what));
    let component_error = match component {
        Ok((workload, selector)) => {
            let mut pods = ctx
                .block_on(pods_api.list(&ListParams::default().labels(&selector)))
                .map_err(|e| cluster.explain(e, "list", "pods"))?
                .items;
            if pods.is_empty() {
                bail!("{workload} has no pods in namespace {}", cluster.namespace);
            }
            pods.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
            return ctx.block_on(print_logs(&cluster, &pods, args.container.as_deref(), args.follow, args.tail));
        }
        Err(e) => e,
    };

    // A DAG or a task: its newest worker pod.
    let (dag_id, task_id) = match args.what.split_once('.') {
        Some((d, t)) => (d.to_string(), Some(t.to_string())),
        None => (args.what.clone(), None),
    };
    let selector = worker_selector(&dag_id, task_id.as_deref());
    let mut workers = ctx
        .block_on(pods_api.list(&ListParams::default().labels(&selector)))
        .map_err(|e| cluster.explain(e, "list", "pods"))?
        .items;
    workers.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)));
    if let Some(newest) = workers.first() {
        eprintln!(
            "worker pod {} ({}){}",
            newest.metadata.name.clone().unwrap_or_default(),
            newest.metadata.labels.as_ref().and_then(|l| l.get("task_id")).cloned().unwrap_or_default(),
            if workers.len() > 1 {
                format!("; {} older ones: `kubectl get pods -l {selector}`", workers.len() - 1)
            } else {
                String::new()
            }
        );
        // Worker pods run the task in the pod template's container `base`.
        let container = args.container.as_deref().unwrap_or("base");
        return ctx.block_on(print_logs(
            &cluster,
            std::slice::from_ref(newest),
            Some(container),
            args.follow,
            args.tail,
        ));
    }

    // The pod is gone: the task log from the API.
    let (_pf, api, _) = crate::airflow::session::api_session(ctx, &cluster).map_err(|e| {
        anyhow!(
            "{component_error}\nnor a worker pod of DAG {dag_id}, and the API is not reachable for its task log: {e}"
        )
    })?;
    if api.dag(&dag_id)?.is_none() {
        bail!("`{}` is neither a component nor a DAG: {component_error}", args.what);
    }
    let run_id = api.latest_run(&dag_id)?.ok_or_else(|| {
        anyhow!("DAG {dag_id} has no runs yet; trigger one (`cargo xtask smoke --dag {dag_id}` for smoke DAGs)")
    })?;
    let tis = api.task_instances(&dag_id, &run_id)?;
    let chosen: Vec<_> = tis.iter().filter(|t| task_id.as_deref().is_none_or(|id| t.task_id == id)).collect();
    if chosen.is_empty() {
        let names: Vec<&str> = tis.iter().map(|t| t.task_id.as_str()).collect();
        bail!("run {run_id} of {dag_id} has no task {}; its tasks: {}", task_id.unwrap_or_default(), names.join(", "));
    }
    for ti in chosen {
        let tries = ti.try_number.unwrap_or(1).max(1);
        println!(
            "== {dag_id}.{} run {run_id} try {tries} ({}; from the API: the worker pod is gone)",
            ti.task_id,
            ti.state.clone().unwrap_or_else(|| "no state".into())
        );
        println!("{}", api.task_log(&dag_id, &run_id, &ti.task_id, tries)?);
    }
    Ok(())
}
