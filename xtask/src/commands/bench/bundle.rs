//! `cargo xtask bench bundle`: one DAG edit until the cluster's Airflow shows the new
//! version, in three ways on one kind cluster made for the run:
//!
//! - bundle mode: `dags push` (files/dags into the S3 DAG bundle, then a parse request),
//!   with and without the parse request (then the bundle's refresh interval decides);
//! - image mode: `k8s-up --no-wait` (a new worker image built, shipped and rolled out);
//! - docker: `docker build` + `kind load docker-image` + pointing the components at it.
//!
//! Every row is timed the same way: from just before its first command starts (the edit is
//! already saved) until the API's DAG details carry the edit's description, polled every
//! 100 ms through one port-forward, kept across rows and made again when a rollout ends
//! the api-server pod it went to. Each row runs `--repeat` times; the table shows the
//! median, the fastest and the slowest.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use super::deliver::{repo_copy, xtask};
use super::deliver_kind::write_kind_config;
use super::tools::{builder_name, buildkit_installed, docker_build, timed};
use crate::airflow::api::ApiClient;
use crate::cli::{BenchBundleArgs, ClusterArgs};
use crate::cluster::portforward::PortForward;
use crate::cluster::{Cluster, Target};
use crate::config::Project;
use crate::ctx::Ctx;
use crate::ui::secs;

/// The DAG the benchmark edits: its description is the version the API must show.
const DAG_FILE: &str = "files/dags/bench_bundle_edit.py";
const DAG_ID: &str = "bench_bundle_edit";
const OBJECT_STORE: [&str; 2] = ["--overlay", "object-store"];
const BUNDLE: [&str; 4] = ["--overlay", "object-store", "--overlay", "dag-bundle-s3"];

fn write_dag(repo: &Utf8Path, version: &str) -> Result<()> {
    let text = format!(
        "from datetime import datetime\n\nfrom airflow.sdk import dag, task\n\n\n@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, description=\"{version}\")\ndef {DAG_ID}():\n    @task\n    def noop():\n        pass\n\n    noop()\n\n\n{DAG_ID}()\n"
    );
    crate::fsutil::write_atomic(&repo.join(DAG_FILE), text.as_bytes())
}

/// The API's view of the edited DAG, through a port-forward made again when it breaks.
struct Watcher<'a> {
    ctx: &'a Ctx,
    cluster: Cluster,
    session: Option<(PortForward, ApiClient)>,
}

impl Watcher<'_> {
    fn description(&mut self) -> Option<String> {
        if self.session.is_none() {
            let (pf, api, _) = crate::airflow::session::api_session(self.ctx, &self.cluster).ok()?;
            self.session = Some((pf, api));
        }
        let (_, api) = self.session.as_ref()?;
        match api.dag_details(DAG_ID) {
            Ok(details) => details.and_then(|d| d["description"].as_str().map(String::from)),
            Err(_) => {
                self.session = None;
                None
            }
        }
    }

    /// Seconds from `started` until the API shows `version`.
    fn wait_for(&mut self, version: &str, started: Instant, timeout: Duration) -> Result<f64> {
        loop {
            if self.description().as_deref() == Some(version) {
                return Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > timeout {
                bail!("{DAG_ID} did not show description {version:?} within {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Row {
    name: &'static str,
    note: String,
    runs: Vec<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        median(&self.runs)
    }
}

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
    write_dag(&repo, "version 0")?;
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
    println!("{:<44} {:>9} {:>9} {:>9}   note", "", "median", "fastest", "slowest");
    let max = |r: &Row| r.runs.iter().copied().fold(f64::MIN, f64::max);
    let min = |r: &Row| r.runs.iter().copied().fold(f64::MAX, f64::min);
    for r in &rows {
        println!("{:<44} {:>9} {:>9} {:>9}   {}", r.name, secs(r.median()), secs(min(r)), secs(max(r)), r.note);
    }
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
    let mut watcher = Watcher { ctx, cluster: cluster.clone(), session: None };
    watcher.wait_for("version 0", Instant::now(), Duration::from_secs(300))?;
    let mut version = 0;
    let mut edit = || -> Result<String> {
        version += 1;
        let v = format!("version {version}");
        write_dag(repo, &v)?;
        Ok(v)
    };
    let mut rows = Vec::new();

    // Image mode: the whole delivery k8s-up does, and the rollout.
    let mut image = Row { name: "image: k8s-up --no-wait", note: String::new(), runs: vec![] };
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
        let mut row = Row { name: "docker build + kind load + rollout", note: String::new(), runs: vec![] };
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
    let mut push_row = |name: &'static str, push: &[&str]| -> Result<(Row, Vec<f64>)> {
        let mut row = Row { name, note: String::new(), runs: vec![] };
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

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Points every container and init container of the namespace's Deployments that runs
/// the worker image at `image`, as k8s-up's apply would.
async fn set_worker_image(cluster: &Cluster, image: &str) -> Result<()> {
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
