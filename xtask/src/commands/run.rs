//! `cargo xtask run TASK`: a named task from k8s/settings.toml on the first of its
//! executors that is available (or the one `-x` asks for), saying which it used and why
//! the others were passed over.

use std::io::IsTerminal;

use anyhow::{Result, anyhow, bail};

use crate::airflow::{container, runner};
use crate::cli::RunArgs;
use crate::cluster::exec::{ExecRequest, exec_streaming};
use crate::cluster::pods::{check_namespace, pick_container, ready_pod};
use crate::cluster::{Cluster, Target};
use crate::config::{ClusterSettings, Executor, TaskDef};
use crate::ctx::Ctx;

/// An executor that can run the task now, with what it runs on.
enum Ready {
    Local,
    /// The worker image on the local Docker engine, built and loaded only when the task
    /// runs (listing what could run builds nothing).
    Container,
    Kubernetes {
        cluster: Box<Cluster>,
        pod: String,
        container: String,
    },
}

impl Ready {
    fn describe(&self) -> String {
        match self {
            Ready::Local => "on this machine".into(),
            Ready::Container => "in a container of the worker image (Docker engine)".into(),
            Ready::Kubernetes { cluster, pod, container } => {
                format!("in pod {}/{pod} (container {container})", cluster.namespace)
            }
        }
    }
}

/// Whether `executor` can run `task` now; the error says why not.
fn availability(
    ctx: &Ctx,
    target: &Target,
    settings: &ClusterSettings,
    task: &TaskDef,
    executor: Executor,
) -> Result<Ready> {
    match executor {
        Executor::Local => {
            let missing: Vec<&String> = task.requires.iter().filter(|p| crate::process::find(p).is_none()).collect();
            if missing.is_empty() {
                Ok(Ready::Local)
            } else {
                bail!("not on PATH: {}", missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            }
        }
        Executor::Container => {
            // Only whether the engine answers: the image is built and loaded when the task
            // runs, not to list what could run.
            ctx.docker()?;
            Ok(Ready::Container)
        }
        Executor::Kubernetes => {
            let cluster = Box::new(ctx.connect(target, &settings.namespace)?);
            ctx.block_on(async move {
                check_namespace(&cluster).await?;
                let pod = ready_pod(&cluster, settings, &task.component).await?;
                let container = pick_container(&pod, None).or_else(|_| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .map(|c| c.name.clone())
                        .ok_or_else(|| anyhow!("pod without containers"))
                })?;
                let pod = pod.metadata.name.clone().unwrap_or_default();
                Ok(Ready::Kubernetes { cluster, pod, container })
            })
        }
    }
}

/// Runs the task on `ready`, first saying where (`run NAME: executor X, ...`).
fn execute(ctx: &Ctx, name: &str, executor: Executor, task: &TaskDef, ready: Ready) -> Result<i32> {
    let project = &ctx.project;
    let say = |on: &str| eprintln!("run {name}: executor {executor}, {on}");
    // The container's image is named once it is built, below.
    if !matches!(ready, Ready::Container) {
        say(&ready.describe());
    }
    let tty = task.interactive && std::io::stdin().is_terminal();
    let argv = vec!["sh".to_string(), "-c".to_string(), task.script.clone()];
    match ready {
        Ready::Local => {
            let out = duct::cmd(&argv[0], &argv[1..]).dir(&project.root).unchecked().run()?;
            Ok(out.status.code().unwrap_or(1))
        }
        Ready::Container => {
            let image = worker_image(ctx)?;
            say(&format!("in a container of {image}"));
            let spec = container::Spec { image, cmd: argv, env: vec![], binds: vec![], tty, auto_remove: false };
            Ok(ctx.block_on(container::run_with_stdio(&spec, task.interactive))? as i32)
        }
        Ready::Kubernetes { cluster, pod, container } => {
            let req =
                ExecRequest { command: argv, container, stdin: task.interactive, tty, workdir: None, env: vec![] };
            ctx.block_on(exec_streaming(&cluster, &pod, &req))
        }
    }
}

/// Builds (when stale) and loads the worker image; its fully qualified name.
fn worker_image(ctx: &Ctx) -> Result<String> {
    match runner::for_project(&ctx.project, ctx.handle(), false, None, "airflow-worker", false)? {
        runner::Runner::Image { name, .. } => Ok(name),
        runner::Runner::Venv { .. } => bail!("no worker image to run the task in"),
    }
}

fn list(ctx: &Ctx, target: &Target, settings: &ClusterSettings) -> Result<()> {
    if settings.tasks.is_empty() {
        println!("no tasks: add [tasks.NAME] sections to k8s/settings.toml");
        return Ok(());
    }
    for (name, task) in &settings.tasks {
        println!("{name:<16} {}", task.description);
        for x in &task.executors {
            let state = match availability(ctx, target, settings, task, *x) {
                Ok(r) => format!("available, {}", r.describe()),
                Err(e) => format!("unavailable: {}", first_line(&e)),
            };
            println!("  {:<12} {state}", x.to_string());
        }
    }
    Ok(())
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

pub fn run(ctx: &Ctx, args: &RunArgs) -> Result<i32> {
    let project = &ctx.project;
    let (target, settings) = Target::from_args(project, &args.cluster)?;
    if args.list {
        list(ctx, &target, &settings)?;
        return Ok(0);
    }
    let name = args.task.as_deref().unwrap_or_default();
    let task = settings.tasks.get(name).ok_or_else(|| {
        let names: Vec<&String> = settings.tasks.keys().collect();
        anyhow!(
            "no task `{name}` in k8s/settings.toml; the tasks are: {} (see `cargo xtask run --list`)",
            if names.is_empty() {
                "none".into()
            } else {
                names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            }
        )
    })?;
    let order = match args.executor {
        Some(x) if !task.executors.contains(&x) => bail!(
            "task {name} does not run on `{x}`; k8s/settings.toml allows: {} (add `{x}` to its executors to allow it)",
            task.executors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
        ),
        Some(x) => vec![x],
        None => task.executors.clone(),
    };
    let mut passed_over = Vec::new();
    for x in order {
        match availability(ctx, &target, &settings, task, x) {
            Ok(ready) => return execute(ctx, name, x, task, ready),
            Err(e) => {
                eprintln!("run {name}: executor {x} is unavailable: {}", first_line(&e));
                passed_over.push(format!("  {x}: {e}"));
            }
        }
    }
    bail!("no executor can run task {name}:\n{}", passed_over.join("\n"))
}
