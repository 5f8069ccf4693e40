//! Smoke DAGs on the cluster, through the real KubernetesExecutor: wait until parsed
//! (an import error fails the DAG at once), trigger all, follow task states and a watch on
//! the worker pods, explain pods that fail before Airflow runs, report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use serde::Serialize;

use super::{DagResult, TaskResult, smoke_dags};
use crate::cli::SmokeArgs;
use crate::cluster::Target;
use crate::cluster::diagnose;
use crate::ctx::Ctx;
use crate::error::Reported;
use crate::report;
use crate::ui;

/// What the watch saw of one worker pod.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PodTrack {
    pub name: String,
    pub dag: String,
    pub task: String,
    pub phase: String,
    /// The node it was scheduled on.
    pub node: Option<String>,
    /// Seconds after the run was triggered.
    pub created: Option<f64>,
    pub started: Option<f64>,
    pub deleted: bool,
    #[serde(skip)]
    reported_phase: String,
}

fn secs_since(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, start: std::time::SystemTime) -> f64 {
    let ts = std::time::UNIX_EPOCH + Duration::from_micros(t.0.as_microsecond().max(0) as u64);
    ts.duration_since(start).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn track(pods: &Mutex<BTreeMap<String, PodTrack>>, pod: &Pod, start: std::time::SystemTime, deleted: bool) {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut map = pods.lock().expect("pods lock");
    let t = map.entry(name.clone()).or_insert_with(|| PodTrack {
        name,
        dag: labels.get("dag_id").cloned().unwrap_or_default(),
        task: labels.get("task_id").cloned().unwrap_or_default(),
        ..Default::default()
    });
    if let Some(c) = &pod.metadata.creation_timestamp {
        t.created = Some(secs_since(c, start));
    }
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        t.node = Some(node);
    }
    let status = pod.status.clone().unwrap_or_default();
    t.phase = status.phase.unwrap_or_default();
    for cs in status.container_statuses.iter().flatten() {
        let started = cs.state.as_ref().and_then(|s| {
            s.running
                .as_ref()
                .and_then(|r| r.started_at.clone())
                .or(s.terminated.as_ref().and_then(|r| r.started_at.clone()))
        });
        if let (Some(s), None) = (started, t.started) {
            t.started = Some(secs_since(&s, start));
        }
    }
    t.deleted |= deleted;
}

#[derive(Serialize)]
struct Summary<'a> {
    dags: &'a [DagResult],
    pods: Vec<PodTrack>,
    trigger_to_done_seconds: f64,
    pod_start_wait_seconds: f64,
    failed: usize,
}

pub fn run(ctx: &Ctx, args: &SmokeArgs) -> Result<()> {
    let project = &ctx.project;
    let human = !args.json;
    let say = |s: &str| {
        if human {
            println!("{s}");
        }
    };
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    let dags = smoke_dags(project, &args.dag)?;
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let ns = cluster.namespace.clone();
    let client = cluster.client.clone();

    // 1. The API through a port-forward, with the credentials k8s-up generated.
    let (pf, api, pod) = crate::airflow::session::api_session(ctx, &cluster)?;
    say(&format!("smoke      {} DAG(s) in namespace {ns} through api-server pod {pod}", dags.len()));

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut results: BTreeMap<String, DagResult> = BTreeMap::new();
    let fail = |dag: &str, state: &str, why: String| DagResult {
        dag: dag.into(),
        state: state.into(),
        seconds: 0.0,
        tasks: vec![],
        xcoms: serde_json::Value::Null,
        log_tail: Some(why),
    };

    // 2. Parsed, or an import error now.
    let mut pending: Vec<String> = dags.clone();
    while !pending.is_empty() {
        let errors = api.import_errors()?;
        let mut still = Vec::new();
        for dag in pending {
            if let Some(e) =
                errors.iter().find(|e| e.filename.ends_with(&format!("/{dag}.py")) || e.filename == format!("{dag}.py"))
            {
                say(&format!("parse      {dag}: import error"));
                results.insert(dag.clone(), fail(&dag, "import error", e.stack_trace.clone()));
            } else if api.dag(&dag)?.is_some() {
                say(&format!("parse      {dag}: parsed"));
            } else {
                still.push(dag);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for dag in &pending {
                results.insert(dag.clone(), fail(dag, "not parsed", format!("the DAG processor did not store {dag} within {} s; check `cargo xtask dags check` and the dag-processor's log", args.timeout)));
            }
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }

    // 3. Trigger everything parsed, all at once, and watch the worker pods.
    let start = std::time::SystemTime::now();
    let started = Instant::now();
    let pods: Arc<Mutex<BTreeMap<String, PodTrack>>> = Arc::default();
    let watch = {
        let pods = pods.clone();
        let api: Api<Pod> = Api::namespaced(cluster.streams.clone(), &ns);
        ctx.handle().spawn(async move {
            let mut stream =
                watcher(api, watcher::Config::default().labels(crate::airflow::WORKER_POD_SELECTOR)).boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => track(&pods, &p, start, false),
                    Ok(watcher::Event::Delete(p)) => track(&pods, &p, start, true),
                    _ => {}
                }
            }
        })
    };
    let mut runs: BTreeMap<String, String> = BTreeMap::new();
    for dag in dags.iter().filter(|d| !results.contains_key(*d)) {
        api.unpause(dag)?;
        let run_id = api.trigger(dag)?;
        say(&format!("trigger    {dag}: {run_id}"));
        runs.insert(dag.clone(), run_id);
    }

    // 4. Follow until every run ends (or the deadline).
    let mut task_states: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut done: BTreeMap<String, (String, f64)> = BTreeMap::new();
    let mut broken_pods: BTreeMap<String, String> = BTreeMap::new();
    while done.len() < runs.len() {
        for (dag, run_id) in &runs {
            if done.contains_key(dag) {
                continue;
            }
            for ti in api.task_instances(dag, run_id)? {
                let state = ti.state.clone().unwrap_or_else(|| "none".into());
                let key = (dag.clone(), ti.task_id.clone());
                if task_states.get(&key) != Some(&state) {
                    say(&format!("{:>7.1}s  task {dag}.{}: {state}", started.elapsed().as_secs_f64(), ti.task_id));
                    task_states.insert(key, state);
                }
            }
            let state = api.run_state(dag, run_id)?;
            if matches!(state.as_str(), "success" | "failed") {
                done.insert(dag.clone(), (state, started.elapsed().as_secs_f64()));
            }
        }
        {
            let mut map = pods.lock().expect("pods lock");
            for t in map.values_mut() {
                if t.phase != t.reported_phase {
                    say(&format!(
                        "{:>7.1}s  pod  {} ({}.{}): {}{}",
                        started.elapsed().as_secs_f64(),
                        t.name,
                        t.dag,
                        t.task,
                        t.phase,
                        t.node.as_ref().map(|n| format!(" on {n}")).unwrap_or_default()
                    ));
                    t.reported_phase = t.phase.clone();
                }
            }
        }
        // A worker pod that cannot start will not fix itself: fail its DAG now, with why.
        let states =
            ctx.block_on(diagnose::pods(&client, &ns, crate::airflow::WORKER_POD_SELECTOR)).unwrap_or_default();
        for st in states.iter().filter(|p| p.is_hopeless()) {
            let dag = pods.lock().expect("pods lock").get(&st.name).map(|t| t.dag.clone()).unwrap_or_default();
            if runs.contains_key(&dag) && !done.contains_key(&dag) {
                say(&format!(
                    "{:>7.1}s  pod  {} cannot run: {}",
                    started.elapsed().as_secs_f64(),
                    st.name,
                    st.reason.clone().unwrap_or_default()
                ));
                broken_pods.insert(dag.clone(), st.explain(&ns));
                done.insert(dag, ("failed".into(), started.elapsed().as_secs_f64()));
            }
        }
        if done.len() < runs.len() && Instant::now() > deadline {
            for dag in runs.keys() {
                if done.contains_key(dag) {
                    continue;
                }
                // Not a bare timeout: what its worker pods are stuck on (Pending on
                // resources, a node selector, a quota), or that none was ever made.
                let stuck: Vec<String> = states
                    .iter()
                    .filter(|p| {
                        pods.lock().expect("pods lock").get(&p.name).is_some_and(|t| &t.dag == dag)
                            && p.phase != "Succeeded"
                    })
                    .map(|p| p.explain(&ns))
                    .collect();
                let why = if stuck.is_empty() {
                    format!(
                        "no worker pod started within {} s; the scheduler may not be able to create pods: check `cargo xtask status` and the scheduler's log",
                        args.timeout
                    )
                } else {
                    stuck.join("\n")
                };
                broken_pods.entry(dag.clone()).or_insert(why);
                done.insert(dag.clone(), ("timed out".into(), started.elapsed().as_secs_f64()));
            }
        }
        if done.len() < runs.len() {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let total = started.elapsed().as_secs_f64();
    watch.abort();

    // 5. Results: tasks, XComs, failed tasks' logs, the pods used.
    for (dag, run_id) in &runs {
        let (state, seconds) = done[dag].clone();
        let tis = api.task_instances(dag, run_id)?;
        let mut xcoms = serde_json::Map::new();
        let mut log_tail = broken_pods.get(dag).cloned();
        for ti in &tis {
            if let Some(v) = api.xcom(dag, run_id, &ti.task_id)? {
                xcoms.insert(ti.task_id.clone(), v);
            }
            if ti.state.as_deref() == Some("failed") && log_tail.is_none() {
                let log = api.task_log(dag, run_id, &ti.task_id, ti.try_number.unwrap_or(1)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                log_tail = Some(format!(
                    "task {} failed; the end of its log:\n{}",
                    ti.task_id,
                    lines[lines.len().saturating_sub(30)..].join("\n")
                ));
            }
        }
        let tasks = tis
            .iter()
            .map(|t| TaskResult {
                task_id: t.task_id.clone(),
                state: t.state.clone().unwrap_or_else(|| "none".into()),
                seconds: t.duration,
                hostname: t.hostname.clone(),
            })
            .collect();
        results.insert(
            dag.clone(),
            DagResult { dag: dag.clone(), state, seconds, tasks, xcoms: serde_json::Value::Object(xcoms), log_tail },
        );
    }
    let results: Vec<DagResult> = results.into_values().collect();
    let pods: Vec<PodTrack> = pods.lock().expect("pods lock").values().cloned().collect();
    let pod_wait: f64 = pods.iter().filter_map(|p| Some(p.started? - p.created?)).sum();
    let failed = results.iter().filter(|r| !r.succeeded()).count();

    let dir = project.work_dir().join("smoke");
    let junit = dir.join("cluster-junit.xml");
    report::write_junit(&junit, &results.iter().map(DagResult::suite).collect::<Vec<_>>())?;
    let summary = Summary {
        dags: &results,
        pods: pods.clone(),
        trigger_to_done_seconds: total,
        pod_start_wait_seconds: pod_wait,
        failed,
    };
    report::write_json(&dir.join("cluster-summary.json"), &summary)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("\n{:<24} {:<44} {:<12} {:>9}  pods", "DAG", "run", "state", "time");
        for r in &results {
            let used: Vec<&str> = pods.iter().filter(|p| p.dag == r.dag).map(|p| p.name.as_str()).collect();
            println!(
                "{:<24} {:<44} {:<12} {:>9}  {}",
                r.dag,
                runs.get(&r.dag).map(String::as_str).unwrap_or("-"),
                r.state,
                ui::secs(r.seconds),
                used.len()
            );
            if let Some(t) = &r.log_tail
                && !r.succeeded()
            {
                for l in t.lines() {
                    println!("    {l}");
                }
            }
        }
        println!(
            "\ntrigger to done: {}; waiting for worker pods to start: {} in total over {} pods; JUnit {}",
            ui::secs(total),
            ui::secs(pod_wait),
            pods.len(),
            project.rel(&junit)
        );
    }
    drop(pf);
    if failed > 0 {
        return Err(Reported(1).into());
    }
    Ok(())
}
