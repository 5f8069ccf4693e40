//! `cargo xtask bench watch`: one DAG change, from the save to "the new version is parsed
//! in the cluster", through `cargo xtask watch`, next to the docker path for the same
//! change: docker build, docker save + ctr import (what kind load does), then the
//! rollout until the restarted DAG processor has parsed it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::deliver::{EDITED_DAG, check_cluster, cluster_flags, edit_dag, repo_copy, xtask};
use super::tools::{docker_ok, docker_save_import, timed};
use crate::cli::BenchClusterArgs;
use crate::cluster::Target;
use crate::ctx::Ctx;
use crate::ui::secs;

/// The DAG id of EDITED_DAG.
const EDITED_DAG_ID: &str = "example_bash";

/// The DAG's `last_parsed_time` as the cluster's API reports it.
fn last_parsed(ctx: &Ctx, bench: &BenchClusterArgs) -> Result<Option<String>> {
    let project = &ctx.project;
    let args = crate::cli::ClusterArgs {
        kubeconfig: Some(bench.kubeconfig.clone()),
        namespace: Some(bench.namespace.clone()),
        ..Default::default()
    };
    let (target, settings) = Target::from_args(project, &args)?;
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let (_pf, api, _) = crate::airflow::session::api_session(ctx, &cluster)?;
    Ok(api.dag_details(EDITED_DAG_ID)?.and_then(|d| d["last_parsed_time"].as_str().map(String::from)))
}

/// Seconds until the DAG's last_parsed_time moves past `before` (the API may be
/// restarting meanwhile).
fn wait_reparsed(ctx: &Ctx, bench: &BenchClusterArgs, before: &Option<String>, timeout: Duration) -> Result<f64> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(now) = last_parsed(ctx, bench)
            && now.is_some()
            && now != *before
        {
            return Ok(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{EDITED_DAG_ID} was not parsed again within {} s", timeout.as_secs())
}

pub fn run(ctx: &Ctx, args: &BenchClusterArgs) -> Result<()> {
    let project = &ctx.project;
    check_cluster(args)?;
    let repo = repo_copy(project)?;
    super::scenario::commit_all(&repo)?;
    let flags = cluster_flags(args);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let socket = args.node_containerd.to_string();
    let with_cluster = |cmd: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        a.extend(flags.iter().cloned());
        a
    };
    eprintln!("setting up: k8s-up into namespace {} (waits until healthy)", args.namespace);
    let mut up: Vec<&str> = vec!["k8s-up", "--json", "--node-containerd", &socket];
    up.extend_from_slice(&flag_refs);
    xtask(&repo, &up)?;

    // watch, for one change.
    eprintln!("measuring: cargo xtask watch, save to parsed");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--root")
        .arg(&repo)
        .args(with_cluster(&["watch", "--json", "--max-changes", "1", "--node-containerd", &socket]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_event = || -> Result<serde_json::Value> {
        let line = lines.next().context("watch ended early")??;
        Ok(serde_json::from_str(&line)?)
    };
    let ready = next_event()?;
    if ready["event"] != "ready" {
        bail!("watch did not start: {ready}");
    }
    edit_dag(&repo)?;
    let change = next_event()?;
    child.wait()?;
    let ours = change["change"]["save_to_parsed_seconds"]
        .as_f64()
        .with_context(|| format!("watch reported no latency: {change}"))?;
    let check = change["change"]["check_seconds"].as_f64().unwrap_or(0.0);
    let ship = change["change"]["ship_seconds"].as_f64().unwrap_or(0.0);

    // The rollout watch started: until the restarted DAG processor parsed the DAG.
    // (The old DAG processor is gone, so its last parse is the one watch waited for.)
    let rolled = Instant::now();
    let before = loop {
        match last_parsed(ctx, args) {
            Ok(Some(v)) => break Some(v),
            _ if rolled.elapsed() > Duration::from_secs(60) => bail!("the Airflow API did not answer after the roll"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    let rollout = rolled.elapsed().as_secs_f64() + wait_reparsed(ctx, args, &before, Duration::from_secs(300))?;

    let docker = if args.no_docker || !docker_ok() {
        None
    } else {
        eprintln!("measuring: docker build + docker save | ctr import for the same change");
        xtask(&repo, &["images", "--load", "docker", "--image", "airflow-worker"])?;
        let dockerfile = repo.join("../Dockerfile");
        std::fs::write(
            &dockerfile,
            "FROM docker.io/library/airflow-worker:dev\nCOPY --chown=50000:0 dags /opt/airflow/dags\n",
        )?;
        edit_dag(&repo)?;
        let mut build = Command::new("docker");
        build
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "-t", "xtask-bench/airflow-worker:docker", "-f"])
            .arg(&dockerfile)
            .arg(repo.join("files"));
        let build_seconds = timed(build)?.seconds;
        let mut ctr = Command::new("ctr");
        ctr.arg("--address").arg(&args.node_containerd).args(["--namespace", "k8s.io"]);
        let (save_import, bytes) =
            docker_save_import("xtask-bench/airflow-worker:docker", &repo.join("../save.tar"), ctr)?;
        Some((build_seconds, save_import, bytes))
    };

    eprintln!("cleaning up: k8s-down --keep-cluster --namespace {}", args.namespace);
    let mut down = vec!["k8s-down", "--keep-cluster"];
    down.extend_from_slice(&flag_refs);
    xtask(&repo, &down)?;

    println!("\none DAG changed ({EDITED_DAG}), from the save to the new version parsed in the cluster:\n");
    println!(
        "{:<46} {:>9}   check {}, build + ship {}, then copied into the running DAG processor and reparsed (target < 5 s)",
        "cargo xtask watch",
        secs(ours),
        secs(check),
        secs(ship)
    );
    println!(
        "{:<46} {:>9}   the restarted DAG processor's first parse (the same for both paths)",
        "rollout to the new image",
        secs(rollout)
    );
    if let Some((build, save_import, bytes)) = docker {
        let total = build + save_import + rollout;
        println!(
            "{:<46} {:>9}   docker build {}, save + import {} ({}), rollout {}; watch takes {:.3} of it (target <= 0.2)",
            "docker build + save | ctr import + rollout",
            secs(total),
            secs(build),
            secs(save_import),
            crate::fsutil::human_bytes(bytes),
            secs(rollout),
            ours / total
        );
    }
    Ok(())
}
