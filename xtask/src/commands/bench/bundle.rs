//! `cargo xtask bench bundle`: one DAG edit until the cluster's Airflow shows the new
//! version, in three ways on one kind cluster made for the run:
//!
//! - bundle mode: `dags push` (files/dags into the S3 DAG bundle, then a parse request),
//!   with and without the parse request (then the bundle's refresh interval decides);
//! - image mode: `k8s-up --no-wait` (a new worker image built, shipped and rolled out);
//! - docker: `docker build` + `kind load docker-image` + pointing the components at it.
//!
//! Every row is timed the same way (see `parsed`): from just before its first command
//! until the API shows the edit. Each row runs `--repeat` times; the table shows the
//! median, the fastest and the slowest.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use super::deliver::{repo_copy, xtask};
use super::deliver_kind::write_kind_config;
use super::parsed::{EditedDag, Row, Watcher, median, print_rows, set_worker_image};
use super::tools::{builder_name, buildkit_installed, docker_build, timed};
use crate::cli::{BenchBundleArgs, ClusterArgs};
use crate::cluster::Target;
use crate::config::Project;
use crate::ctx::Ctx;
use crate::ui::secs;

/// The DAG the benchmark edits: its description is the version the API must show.
const DAG: EditedDag = EditedDag { file: "files/dags/bench_bundle_edit.py", dag_id: "bench_bundle_edit" };
const OBJECT_STORE: [&str; 2] = ["--overlay", "object-store"];
const BUNDLE: [&str; 4] = ["--overlay", "object-store", "--overlay", "dag-bundle-s3"];

pub fn run(ctx: &Ctx, args: &BenchBundleArgs) -> Result<()> {
    let project = &ctx.project;
    crate::cluster::kind::require()?;
    ctx.docker()?;
    if args.repeat == 0 {
        bail!("--repeat: at least one run per row");
    }
    if args.nodes == 0 {
        bail!("--nodes: a cluster has at least one node");
    }
    let repo = repo_copy(project)?;
    DAG.write(&repo, "version 0")?;
    super::scenario::commit_all(&repo)?;
    write_kind_config(&project.root, &repo, args.nodes)?;
    let name = args.cluster_name.as_str();
    let cluster = ["--cluster-name", name, "--namespace", args.namespace.as_str()];
    let result = measure(ctx, &repo, args, &cluster);
    if args.keep_cluster {
        eprintln!("keeping kind cluster {name} (--keep-cluster)");
    } else {
        eprintln!("cleaning up: k8s-down --cluster-name {name}");
        let mut down = vec!["k8s-down"];
        down.extend_from_slice(&cluster);
        xtask(&repo, &down)?;
    }
    let rows = result?;

    println!(
        "\none DAG edited, from the first command to the API showing the new version; {} node(s), {} run(s) each\n",
        args.nodes, args.repeat
    );
    print_rows(&rows);
    if let Some(bundle) = rows.first() {
        let met = if bundle.median() < 2.0 { "met" } else { "not met" };
        print!("\nbundle mode's median {} (target under 2 s: {met})", secs(bundle.median()));
        match rows.iter().find(|r| r.name.starts_with("docker")) {
            Some(docker) => println!(", {:.3} of the docker path's", bundle.median() / docker.median()),
            None => println!(),
        }
    }
    Ok(())
}

fn measure(ctx: &Ctx, repo: &Utf8Path, args: &BenchBundleArgs, cluster_flags: &[&str]) -> Result<Vec<Row>> {
    let with = |cmd: &[&str], overlays: &[&str]| -> Vec<String> {
        cmd.iter().chain(overlays).chain(cluster_flags).map(|s| s.to_string()).collect()
    };
    let run = |argv: Vec<String>| -> Result<super::tools::Run> {
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        xtask(repo, &refs)
    };
    eprintln!("setting up: k8s-up --overlay object-store on kind cluster {} (waits until healthy)", args.cluster_name);
    run(with(&["k8s-up", "--json"], &OBJECT_STORE))?;
    let repo_project = Project::discover(Some(repo))?;
    let cluster_args = ClusterArgs {
        cluster_name: Some(args.cluster_name.clone()),
        namespace: Some(args.namespace.clone()),
        ..Default::default()
    };
    let (target, settings) = Target::from_args(&repo_project, &cluster_args)?;
    let cluster = ctx.connect(&target, &settings.namespace)?;
    let mut watcher = Watcher::new(ctx, cluster.clone(), &DAG);
    watcher.wait_for("version 0", Instant::now(), Duration::from_secs(300))?;
    let mut version = 0;
    let mut edit = || -> Result<String> {
        version += 1;
        let v = format!("version {version}");
        DAG.write(repo, &v)?;
        Ok(v)
    };
    let mut rows = Vec::new();

    // Image mode: the whole delivery k8s-up does, and the rollout.
    let mut image = Row::new("image: k8s-up --no-wait");
    let mut up_seconds = Vec::new();
    for _ in 0..args.repeat {
        let v = edit()?;
        eprintln!("measuring: k8s-up --no-wait, then the rollout, until {v} is parsed");
        let started = Instant::now();
        up_seconds.push(run(with(&["k8s-up", "--no-wait", "--json"], &OBJECT_STORE))?.seconds);
        image.runs.push(watcher.wait_for(&v, started, Duration::from_secs(600))?);
    }
    image.note = format!("k8s-up itself {} (build, ship, apply), then the rollout", secs(median(&up_seconds)));

    // docker: an image FROM the worker image with the DAGs copied in, loaded by kind, and
    // the same components pointed at it.
    let docker = if args.no_docker {
        None
    } else {
        let built: serde_json::Value = serde_json::from_slice(
            &run(["images", "--json", "--load", "docker", "--image", "airflow-worker"].map(String::from).to_vec())?
                .stdout,
        )?;
        let base = built["images"][0]["reference"].as_str().context("no image reference in the images report")?;
        let dockerfile = repo.join("../Dockerfile.bench-bundle");
        std::fs::write(&dockerfile, format!("FROM {base}\nCOPY --chown=50000:0 dags /opt/airflow/dags\n"))?;
        let mut row = Row::new("docker build + kind load + rollout");
        let mut parts = (Vec::new(), Vec::new());
        let buildkit = buildkit_installed();
        for i in 0..args.repeat {
            let v = edit()?;
            let tag = format!("xtask-bench/airflow-worker:bundle-bench-{i}");
            eprintln!("measuring: docker build + kind load docker-image {tag} + rollout, until {v} is parsed");
            let started = Instant::now();
            parts.0.push(timed(docker_build(buildkit, &[], &dockerfile, &repo.join("files"), &tag))?.seconds);
            let mut load = std::process::Command::new("kind");
            load.args(["load", "docker-image", &tag, "--name", &args.cluster_name]);
            parts.1.push(timed(load)?.seconds);
            ctx.block_on(set_worker_image(&cluster, &format!("docker.io/{tag}")))?;
            row.runs.push(watcher.wait_for(&v, started, Duration::from_secs(600))?);
            row.note = format!(
                "{} {}, kind load {}, then the same rollout",
                builder_name(buildkit),
                secs(median(&parts.0)),
                secs(median(&parts.1))
            );
        }
        Some(row)
    };

    // Bundle mode: the DAGs from the bucket.
    eprintln!("setting up: dags push, then k8s-up with overlay dag-bundle-s3 (waits until healthy)");
    run(with(&["dags", "push", "--json"], &[]))?;
    run(with(&["k8s-up", "--json"], &BUNDLE))?;
    let v = edit()?;
    run(with(&["dags", "push", "--json"], &[]))?;
    watcher.wait_for(&v, Instant::now(), Duration::from_secs(300))?;
    let mut push_row = |name: &str, push: &[&str]| -> Result<(Row, Vec<f64>)> {
        let mut row = Row::new(name);
        let mut push_seconds = Vec::new();
        for _ in 0..args.repeat {
            let v = edit()?;
            eprintln!("measuring: {} until {v} is parsed", push.join(" "));
            let started = Instant::now();
            let pushed = run(with(push, &[]))?;
            push_seconds.push(pushed.seconds);
            let report: serde_json::Value = serde_json::from_slice(&pushed.stdout)?;
            let asked = report["reparse_requested"].as_array().is_some_and(|a| !a.is_empty());
            match (asked, push.contains(&"--no-reparse")) {
                (false, false) => bail!("dags push asked for no reparse: {report}"),
                (true, true) => bail!("dags push --no-reparse asked for a reparse: {report}"),
                _ => {}
            }
            row.runs.push(watcher.wait_for(&v, started, Duration::from_secs(120))?);
        }
        Ok((row, push_seconds))
    };
    let (mut bundle, push_seconds) = push_row("bundle: dags push (asks for a reparse)", &["dags", "push", "--json"])?;
    bundle.note =
        format!("dags push itself {}, then the DAG processor's next loop and parse", secs(median(&push_seconds)));
    let (mut interval, _) = push_row("bundle: dags push --no-reparse", &["dags", "push", "--no-reparse", "--json"])?;
    interval.note = "the bundle's refresh_interval (5 s in overlay dag-bundle-s3) decides".into();

    rows.push(bundle);
    rows.push(interval);
    rows.push(image);
    rows.extend(docker);
    Ok(rows)
}
