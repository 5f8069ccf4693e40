//! `cargo xtask smoke`: the smoke DAGs (files/dags/smoke_*.py), run locally with
//! `airflow dags test` in the worker image (`--local`), or on the cluster through the
//! KubernetesExecutor.

use std::time::Instant;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::airflow::runner;
use crate::cli::SmokeArgs;
use crate::config::Project;
use crate::ctx::Ctx;
use crate::deploy::manifests;
use crate::error::Reported;
use crate::report::{self, Case, Suite};

pub mod cluster;
use crate::ui;

/// The smoke DAGs: files/dags/smoke_*.py, each defining the DAG named like its file.
pub fn smoke_dags(project: &Project, only: &[String]) -> Result<Vec<String>> {
    let mut all: Vec<String> = std::fs::read_dir(project.root.join("files/dags"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with("smoke_") && n.ends_with(".py"))
        .map(|n| n.trim_end_matches(".py").to_string())
        .collect();
    all.sort();
    if all.is_empty() {
        bail!("no smoke DAGs: files/dags/smoke_*.py matches nothing");
    }
    for d in only {
        if !all.contains(d) {
            bail!("no smoke DAG `{d}`; there are: {}", all.join(", "));
        }
    }
    Ok(if only.is_empty() { all } else { all.into_iter().filter(|d| only.contains(d)).collect() })
}

/// The env the pod template gives the `base` container, so a local run sees what a worker
/// pod sees.
pub fn pod_template_env(project: &Project) -> Result<Vec<(String, String)>> {
    let docs = manifests::load(&project.root, &[project.root.join("k8s/airflow").as_path()])?;
    let mut env = Vec::new();
    for d in docs.iter().filter(|d| d.kind() == "Pod") {
        for c in d.value["spec"]["containers"].as_array().into_iter().flatten().filter(|c| c["name"] == "base") {
            for e in c["env"].as_array().into_iter().flatten() {
                if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                    // The configuration the cluster mounts is not there outside it.
                    if k != "AIRFLOW_CONFIG" {
                        env.push((k.to_string(), v.to_string()));
                    }
                }
            }
        }
    }
    Ok(env)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: String,
    pub state: String,
    pub seconds: Option<f64>,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DagResult {
    pub dag: String,
    pub state: String,
    pub seconds: f64,
    pub tasks: Vec<TaskResult>,
    #[serde(default)]
    pub xcoms: serde_json::Value,
    #[serde(default)]
    pub log_tail: Option<String>,
}

impl DagResult {
    pub fn succeeded(&self) -> bool {
        self.state == "success"
    }

    pub fn suite(&self) -> Suite {
        Suite {
            name: self.dag.clone(),
            seconds: self.seconds,
            cases: self
                .tasks
                .iter()
                .map(|t| Case {
                    name: t.task_id.clone(),
                    classname: self.dag.clone(),
                    seconds: t.seconds.unwrap_or(0.0),
                    failure: (t.state != "success").then(|| {
                        format!("task {} ended {}\n{}", t.task_id, t.state, self.log_tail.clone().unwrap_or_default())
                    }),
                })
                .chain((self.tasks.is_empty()).then(|| {
                    Case {
                        name: "(dag run)".into(),
                        classname: self.dag.clone(),
                        seconds: self.seconds,
                        failure: (!self.succeeded())
                            .then(|| format!("DAG run {}\n{}", self.state, self.log_tail.clone().unwrap_or_default())),
                    }
                }))
                .collect(),
        }
    }
}

pub fn run(ctx: &Ctx, args: &SmokeArgs) -> Result<()> {
    if args.local || args.venv.is_some() { local(ctx, args) } else { cluster::run(ctx, args) }
}

fn local(ctx: &Ctx, args: &SmokeArgs) -> Result<()> {
    let project = &ctx.project;
    let started = Instant::now();
    let human = !args.json;
    let dags = smoke_dags(project, &args.dag)?;
    let runner =
        runner::for_project(project, ctx.handle(), args.venv.is_some(), args.venv.as_deref(), &args.image, human)?;
    if human {
        println!("smoke --local {}: {}", runner.describe(), dags.join(", "));
    }
    let mut env = pod_template_env(project)?;
    // A virtualenv run gets an Airflow home of its own (a container starts clean anyway).
    let home = camino_tempfile::Builder::new().prefix("xtask-smoke-").tempdir()?;
    if matches!(runner, runner::Runner::Venv { .. }) {
        env.push(("AIRFLOW_HOME".into(), home.path().to_string()));
    }
    let mut results: Vec<DagResult> = Vec::new();
    let out = runner.run_python(crate::airflow::SMOKE_LOCAL_SCRIPT, &dags, &env, &mut |v| {
        if let Some(err) = v.get("setup_error").and_then(|e| e.as_str()) {
            bail!("`airflow db migrate` failed before any DAG ran:\n{err}");
        }
        if v.get("setup_seconds").is_some() {
            return Ok(());
        }
        let r: DagResult = serde_json::from_value(v)?;
        if human {
            print_dag(&r);
        }
        results.push(r);
        Ok(())
    })?;
    if results.len() != dags.len() {
        bail!(
            "the smoke run stopped early ({} exit {}); its last output:\n{}",
            runner.describe(),
            out.exit_code,
            out.tail
        );
    }
    let dir = project.work_dir().join("smoke");
    let junit = dir.join("local-junit.xml");
    report::write_junit(&junit, &results.iter().map(DagResult::suite).collect::<Vec<_>>())?;
    report::write_json(&dir.join("local-summary.json"), &results)?;
    let failed = results.iter().filter(|r| !r.succeeded()).count();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"dags": results, "failed": failed, "junit": project.rel(&junit)})
            )?
        );
    } else {
        println!(
            "{} DAGs: {} succeeded, {failed} failed ({}); JUnit: {}",
            results.len(),
            results.len() - failed,
            ui::secs(started.elapsed().as_secs_f64()),
            project.rel(&junit)
        );
    }
    if failed > 0 {
        return Err(Reported(1).into());
    }
    Ok(())
}

fn print_dag(r: &DagResult) {
    println!("  {:<28} {:<10} {}", r.dag, r.state, ui::secs(r.seconds));
    for t in &r.tasks {
        println!("    {:<26} {:<10} {}", t.task_id, t.state, t.seconds.map(ui::secs).unwrap_or_default());
    }
    if let Some(tail) = &r.log_tail {
        for l in tail.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev() {
            println!("    | {l}");
        }
    }
}
