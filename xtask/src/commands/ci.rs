//! `cargo xtask ci`: the pipeline in one command. images -> dags check -> k8s-up -> smoke
//! -> k8s-down, each step timed; on a failure, diagnostics are saved under
//! target/xtask/ci/ before the teardown. Non-interactive: no prompts, no colour or progress
//! bars when not on a terminal, and `--json` for a summary CI can read.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, LogParams};
use serde::Serialize;

use crate::cli::{CiArgs, ClusterArgs};
use crate::cluster::{Target, kind};
use crate::ctx::Ctx;
use crate::error::Reported;
use crate::ui;

#[derive(Serialize)]
struct Step {
    name: String,
    /// ok, failed, or skipped (after an earlier failure).
    status: &'static str,
    seconds: f64,
}

#[derive(Serialize)]
struct Summary {
    steps: Vec<Step>,
    ok: bool,
    diagnostics: Option<String>,
    seconds: f64,
}

fn cluster_flags(c: &ClusterArgs) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(k) = &c.kubeconfig {
        v.extend(["--kubeconfig".to_string(), k.to_string()]);
    }
    if let Some(x) = &c.context {
        v.extend(["--context".into(), x.clone()]);
    }
    if let Some(x) = &c.namespace {
        v.extend(["--namespace".into(), x.clone()]);
    }
    if let Some(x) = &c.cluster_name {
        v.extend(["--cluster-name".into(), x.clone()]);
    }
    v
}

/// `cargo xtask --root ROOT ARGS...` as a child of this process. Its report goes to stderr
/// so that stdout holds only the JSON summary; a failing step is a status, not an error.
fn step(exe: &std::path::Path, root: &camino::Utf8Path, args: &[String]) -> duct::Expression {
    let mut argv: Vec<std::ffi::OsString> = vec!["--root".into(), root.into()];
    argv.extend(args.iter().map(Into::into));
    duct::cmd(exe, argv).stdout_to_stderr().unchecked()
}

pub fn run(ctx: &Ctx, args: &CiArgs) -> Result<()> {
    let project = &ctx.project;
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let cluster_args = cluster_flags(&args.cluster);
    let mut up_args: Vec<String> = vec!["k8s-up".into(), "--timeout".into(), args.timeout.to_string()];
    up_args.extend(cluster_args.clone());
    if let Some(r) = &args.registry {
        up_args.extend(["--registry".into(), r.clone()]);
    }
    for r in &args.insecure_registry {
        up_args.extend(["--insecure-registry".into(), r.clone()]);
    }
    if let Some(s) = &args.node_containerd {
        up_args.extend(["--node-containerd".into(), s.to_string()]);
    }
    let mut smoke_args: Vec<String> = vec!["smoke".into(), "--timeout".into(), args.timeout.to_string()];
    smoke_args.extend(cluster_args.clone());
    let mut down_args: Vec<String> = vec!["k8s-down".into()];
    down_args.extend(cluster_args);

    let plan: Vec<(&str, Vec<String>)> = vec![
        ("images", vec!["images".into()]),
        ("dags check", vec!["dags".into(), "check".into()]),
        ("k8s-up", up_args),
        ("smoke", smoke_args),
    ];
    let mut steps = Vec::new();
    let mut failed = false;
    for (name, step_args) in &plan {
        if failed {
            steps.push(Step { name: name.to_string(), status: "skipped", seconds: 0.0 });
            continue;
        }
        eprintln!("==> {name}: cargo xtask {}", step_args.join(" "));
        let t = Instant::now();
        // Each step's report goes to stderr, so stdout holds only the JSON summary.
        let status = step(&exe, &project.root, step_args)
            .env("NO_COLOR", "1")
            .run()
            .with_context(|| format!("cannot run step {name}"))?
            .status;
        let ok = status.success();
        steps.push(Step {
            name: name.to_string(),
            status: if ok { "ok" } else { "failed" },
            seconds: t.elapsed().as_secs_f64(),
        });
        failed = !ok;
    }

    let mut diagnostics = None;
    if failed {
        let dir = project.work_dir().join("ci/diagnostics");
        match save_diagnostics(ctx, &args.cluster, &dir) {
            Ok(()) => {
                eprintln!("==> diagnostics saved in {}", project.rel(&dir));
                diagnostics = Some(project.rel(&dir));
            }
            Err(e) => eprintln!("==> could not save all diagnostics: {e:#}"),
        }
    }
    if args.keep {
        steps.push(Step { name: "k8s-down".into(), status: "skipped", seconds: 0.0 });
        eprintln!("==> k8s-down skipped (--keep): the cluster stays up");
    } else {
        eprintln!("==> k8s-down: cargo xtask {}", down_args.join(" "));
        let t = Instant::now();
        let status = step(&exe, &project.root, &down_args).run().context("cannot run k8s-down")?.status;
        steps.push(Step {
            name: "k8s-down".into(),
            status: if status.success() { "ok" } else { "failed" },
            seconds: t.elapsed().as_secs_f64(),
        });
        failed |= !status.success();
    }

    let summary = Summary { ok: !failed, steps, diagnostics, seconds: started.elapsed().as_secs_f64() };
    crate::report::write_json(&project.work_dir().join("ci/summary.json"), &summary)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("\n{:<12} {:<8} {:>9}", "step", "status", "time");
        for s in &summary.steps {
            println!("{:<12} {:<8} {:>9}", s.name, s.status, ui::secs(s.seconds));
        }
        println!("{:<12} {:<8} {:>9}", "total", if summary.ok { "ok" } else { "FAILED" }, ui::secs(summary.seconds));
    }
    if failed {
        return Err(Reported(1).into());
    }
    Ok(())
}

/// Pod descriptions, events and every container's log in the namespace; with kind, also
/// `kind export logs` (the nodes' own logs).
fn save_diagnostics(ctx: &Ctx, args: &ClusterArgs, dir: &Utf8Path) -> Result<()> {
    let project = &ctx.project;
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let (target, settings) = Target::from_args(project, args)?;
    if let Target::Kind { name, .. } = &target
        && kind::clusters().unwrap_or_default().contains(name)
    {
        let _ = duct::cmd("kind", ["export", "logs", dir.join("kind").as_str(), "--name", name])
            .stdout_null()
            .stderr_null()
            .run();
    }
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let ns = settings.namespace.clone();
    ctx.block_on(async {
        let pods = Api::<Pod>::namespaced(cluster.client.clone(), &ns);
        let list = pods.list(&ListParams::default()).await?;
        fs::write(dir.join("pods.yaml"), serde_yaml_ng::to_string(&list.items)?)?;
        let events = Api::<Event>::namespaced(cluster.client.clone(), &ns).list(&ListParams::default()).await?;
        let mut text = String::new();
        for e in &events.items {
            text.push_str(&format!(
                "{} {} {}/{}: {}\n",
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.involved_object.kind.clone().unwrap_or_default(),
                e.involved_object.name.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default().trim()
            ));
        }
        fs::write(dir.join("events.txt"), text)?;
        let logs: Utf8PathBuf = dir.join("logs");
        fs::create_dir_all(&logs)?;
        for p in &list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            let spec = p.spec.clone().unwrap_or_default();
            for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
                let lp = LogParams { container: Some(c.name.clone()), ..Default::default() };
                if let Ok(text) = pods.logs(&name, &lp).await {
                    fs::write(logs.join(format!("{name}.{}.log", c.name)), text)?;
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
