//! `cargo xtask bench deliver`: one DAG change onto the local test cluster's node, next to
//! what kind load does (`docker save` + `ctr import`), on the node's own containerd.
//!
//! Rows compare like with like: both sides start from an image built before the timer
//! starts ("onto the node"), or both build the change first ("build + onto the node").
//! Each is a process (or a pipeline of them) timed from start to exit, `--repeat` runs,
//! median. Bytes are counted where they enter the node's containerd: what xtask streams
//! into the import, and the archive `docker save` wrote.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::parsed::{median, median_u64};
use super::scenario::{commit_all, new_dag_layer};
use super::tools::{builder_name, buildkit_installed, docker_build, docker_ok, docker_save_import, timed};
use crate::cli::{BenchClusterArgs, ClusterArgs};
use crate::cluster::{Cluster, Target};
use crate::config::Project;
use crate::ctx::Ctx;
use crate::fsutil::human_bytes;
use crate::ui::secs;

/// The DAG file the benchmarks edit (in their copy of the repository).
pub const EDITED_DAG: &str = "files/dags/example_bash.py";

/// A copy of this repository's docker/, files/ and k8s/ under target/xtask/bench/cluster,
/// so benchmarks edit DAGs without touching the user's files. Its store starts as hard
/// links to this repository's store, so the Airflow base is not built again.
pub fn repo_copy(project: &Project) -> Result<Utf8PathBuf> {
    let copy = project.work_dir().join("bench/cluster/repo");
    fs::create_dir_all(&copy)?;
    for dir in ["docker", "files", "k8s"] {
        let _ = fs::remove_dir_all(copy.join(dir));
        duct::cmd!("cp", "-a", project.root.join(dir), &copy)
            .run()
            .with_context(|| format!("cannot copy {dir}/ into {}", copy))?;
    }
    let store = copy.join("target/xtask/oci");
    if !store.exists() && project.store_dir().exists() {
        fs::create_dir_all(store.parent().unwrap())?;
        duct::cmd!("cp", "-al", project.store_dir(), &store)
            .run()
            .with_context(|| format!("cannot hard-link {} into {}", project.store_dir(), store))?;
    }
    Ok(copy)
}

/// Appends a line to the edited DAG, different on every call.
pub fn edit_dag(repo: &Utf8Path) -> Result<()> {
    use std::io::Write;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let mut f = fs::OpenOptions::new().append(true).open(repo.join(EDITED_DAG))?;
    writeln!(f, "# benchmark edit {nanos}")?;
    Ok(())
}

/// `xtask --root REPO ARGS...`, timed; stdout is the command's JSON.
pub fn xtask(repo: &Utf8Path, args: &[&str]) -> Result<super::tools::Run> {
    let mut c = Command::new(std::env::current_exe()?);
    c.arg("--root").arg(repo).args(args).env_remove("SOURCE_DATE_EPOCH");
    timed(c)
}

pub fn cluster_flags(args: &BenchClusterArgs) -> Vec<String> {
    vec!["--kubeconfig".into(), args.kubeconfig.to_string(), "--namespace".into(), args.namespace.clone()]
}

pub fn node_ctr(args: &BenchClusterArgs) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address").arg(&args.node_containerd).args(["--namespace", "k8s.io"]);
    c
}

pub fn check_cluster(args: &BenchClusterArgs) -> Result<()> {
    if !args.kubeconfig.is_file() {
        bail!(
            "{} does not exist: start the local cluster with `.ci/local-cluster up` or pass --kubeconfig",
            args.kubeconfig
        );
    }
    if !args.node_containerd.exists() {
        bail!(
            "no containerd socket at {}: start the local cluster with `.ci/local-cluster up` or pass --node-containerd",
            args.node_containerd
        );
    }
    Ok(())
}

/// The benchmark's namespace on the local cluster, connected.
pub fn connect(ctx: &Ctx, args: &BenchClusterArgs) -> Result<Cluster> {
    let cluster_args = ClusterArgs {
        kubeconfig: Some(args.kubeconfig.clone()),
        namespace: Some(args.namespace.clone()),
        ..Default::default()
    };
    let (target, settings) = Target::from_args(&ctx.project, &cluster_args)?;
    ctx.connect(&target, &settings.namespace)
}

/// Removes what the benchmark deployed (`k8s-down --keep-cluster`) and then its namespace,
/// and waits until the namespace is gone, so the next benchmark starts on a clean cluster.
pub fn clean_up(ctx: &Ctx, repo: &Utf8Path, args: &BenchClusterArgs) -> Result<()> {
    eprintln!("cleaning up: k8s-down --keep-cluster --namespace {}, then the namespace", args.namespace);
    let mut down = vec!["k8s-down", "--keep-cluster"];
    let flags = cluster_flags(args);
    down.extend(flags.iter().map(String::as_str));
    xtask(repo, &down)?;
    let cluster = connect(ctx, args)?;
    ctx.block_on(async {
        use k8s_openapi::api::core::v1::Namespace;
        let api = kube::Api::<Namespace>::all(cluster.client.clone());
        if api.get_opt(&args.namespace).await?.is_some() {
            api.delete(&args.namespace, &Default::default()).await?;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
        while api.get_opt(&args.namespace).await?.is_some() {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "namespace {} still terminating after 300 s; see `kubectl get ns {} -o yaml`",
                    args.namespace,
                    args.namespace
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        Ok(())
    })
}

/// One side of a row: the runs' seconds and bytes.
#[derive(Default)]
struct Side {
    seconds: Vec<f64>,
    bytes: Vec<u64>,
    peak_rss_kb: i64,
}

impl Side {
    fn push(&mut self, seconds: f64, bytes: u64) {
        self.seconds.push(seconds);
        self.bytes.push(bytes);
    }
    fn median_bytes(&self) -> u64 {
        median_u64(&self.bytes)
    }
}

pub fn run(ctx: &Ctx, args: &BenchClusterArgs) -> Result<()> {
    check_cluster(args)?;
    if args.repeat == 0 {
        bail!("--repeat: at least one run per row");
    }
    let repo = repo_copy(&ctx.project)?;
    // A DAG repository of realistic size: SQL templates next to the DAGs.
    let data = repo.join("files/dags/sql");
    fs::create_dir_all(&data)?;
    let mut rng = super::scenario::Rng(0x5eed_da75);
    for i in 0..args.dag_files {
        fs::write(data.join(format!("query_{i:04}.sql")), rng.python_source(25_000))?;
    }
    commit_all(&repo)?;
    let result = measure(&repo, args);
    let cleaned = clean_up(ctx, &repo, args);
    let m = result?;
    cleaned?;

    println!(
        "\none DAG changed ({}); files/dags holds {} more files of 25 kB; the new DAG layer is {}",
        EDITED_DAG,
        args.dag_files,
        human_bytes(m.dag_layer)
    );
    println!(
        "node: containerd at {}; {} run(s) each, median; docker: {}\n",
        args.node_containerd, args.repeat, m.builder
    );
    println!("{:<46} {:>9} {:>12}   note", "", "time", "bytes sent");
    let row = |name: &str, side: &Side, note: String| {
        println!("{:<46} {:>9} {:>12}   {note}", name, secs(median(&side.seconds)), human_bytes(side.median_bytes()));
    };
    let ratio = |ours: &Side, peer: &Option<Side>| -> String {
        peer.as_ref()
            .map(|p| format!("{:.3}", median(&ours.seconds) / median(&p.seconds)))
            .unwrap_or_else(|| "-".into())
    };
    let target = |s: &Side| if median(&s.seconds) <= 0.5 { "met" } else { "not met" };
    row(
        "onto the node: xtask images --load containerd",
        &m.ship,
        format!(
            "image built before; {:.2}x the DAG layer; {} of docker's time (targets: <= 0.5 s, {}; <= 0.05); peak {:.0} MB",
            m.ship.median_bytes() as f64 / m.dag_layer.max(1) as f64,
            ratio(&m.ship, &m.docker_ship),
            target(&m.ship),
            m.ship.peak_rss_kb as f64 / 1024.0
        ),
    );
    if let Some(d) = &m.docker_ship {
        row("onto the node: docker save | ctr import", d, "image built before; what kind load does".into());
    }
    row(
        "build + onto the node: xtask images --load",
        &m.build_ship,
        format!(
            "{} of docker's time; peak {:.0} MB",
            ratio(&m.build_ship, &m.docker_build_ship),
            m.build_ship.peak_rss_kb as f64 / 1024.0
        ),
    );
    if let Some(d) = &m.docker_build_ship {
        row("build + onto the node: docker build + save | ctr", d, "FROM the worker image, COPY dags".into());
    }
    row(
        "xtask k8s-up --no-wait (build + ship + apply)",
        &m.up,
        format!("delivery itself {} (k8s-up's own figure)", secs(median(&m.up_delivery))),
    );
    Ok(())
}

struct Measured {
    dag_layer: u64,
    builder: &'static str,
    ship: Side,
    build_ship: Side,
    up: Side,
    up_delivery: Vec<f64>,
    docker_ship: Option<Side>,
    docker_build_ship: Option<Side>,
}

fn measure(repo: &Utf8Path, args: &BenchClusterArgs) -> Result<Measured> {
    let flags = cluster_flags(args);
    let socket = args.node_containerd.to_string();
    let up = || -> Result<super::tools::Run> {
        let mut a = vec!["k8s-up", "--no-wait", "--json", "--node-containerd", &socket];
        a.extend(flags.iter().map(String::as_str));
        xtask(repo, &a)
    };
    let load = || -> Result<(super::tools::Run, u64)> {
        let run = xtask(
            repo,
            &["images", "--json", "--image", "airflow-worker", "--load", "containerd", "--containerd-socket", &socket],
        )?;
        let report: serde_json::Value =
            serde_json::from_slice(&run.stdout).context("images --json printed no report")?;
        let bytes = report["deliveries"].as_array().into_iter().flatten().filter_map(|d| d["bytes"].as_u64()).sum();
        Ok((run, bytes))
    };
    let build = || xtask(repo, &["images", "--json", "--image", "airflow-worker"]);
    eprintln!("warming up: k8s-up --no-wait into namespace {} (the node gets the current image)", args.namespace);
    up()?;

    let mut ship = Side::default();
    let mut build_ship = Side::default();
    let mut up_side = Side::default();
    let mut up_delivery = Vec::new();
    let mut dag_layer = 0;
    for i in 0..args.repeat {
        eprintln!("measuring ({}/{}): images --load containerd of a built change", i + 1, args.repeat);
        edit_dag(repo)?;
        let built: serde_json::Value = serde_json::from_slice(&build()?.stdout)?;
        dag_layer = new_dag_layer(&built).context("no files/dags layer in the images report")?;
        let (run, bytes) = load()?;
        ship.push(run.seconds, bytes);
        ship.peak_rss_kb = ship.peak_rss_kb.max(run.max_rss_kb);

        eprintln!("measuring ({}/{}): images --load containerd, build included", i + 1, args.repeat);
        edit_dag(repo)?;
        let (run, bytes) = load()?;
        build_ship.push(run.seconds, bytes);
        build_ship.peak_rss_kb = build_ship.peak_rss_kb.max(run.max_rss_kb);

        eprintln!("measuring ({}/{}): k8s-up --no-wait", i + 1, args.repeat);
        edit_dag(repo)?;
        let run = up()?;
        let report: serde_json::Value =
            serde_json::from_slice(&run.stdout).context("k8s-up --json printed no report")?;
        let worker = report["deliveries"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["image"].as_str().is_some_and(|i| i.contains("airflow-worker"))))
            .cloned()
            .context("k8s-up delivered no airflow-worker image")?;
        up_side.push(run.seconds, worker["bytes"].as_u64().unwrap_or(0));
        up_delivery.push(worker["seconds"].as_f64().unwrap_or(0.0));
    }

    let buildkit = buildkit_installed();
    let (docker_ship, docker_build_ship) = if args.no_docker || !docker_ok() {
        (None, None)
    } else {
        let built: serde_json::Value = serde_json::from_slice(
            &xtask(repo, &["images", "--json", "--load", "docker", "--image", "airflow-worker"])?.stdout,
        )?;
        let base =
            built["images"][0]["reference"].as_str().context("no image reference in the images report")?.to_string();
        let dockerfile = repo.join("../Dockerfile.bench-deliver");
        fs::write(&dockerfile, format!("FROM {base}\nCOPY --chown=50000:0 dags /opt/airflow/dags\n"))?;
        let tar = repo.join("../save.tar");
        let docker_build_tag = |tag: &str| -> Result<f64> {
            Ok(timed(docker_build(buildkit, &[], &dockerfile, &repo.join("files"), tag))?.seconds)
        };
        eprintln!("warming up: docker build + docker save | ctr import once");
        edit_dag(repo)?;
        docker_build_tag("xtask-bench/airflow-worker:deliver-warm")?;
        docker_save_import("xtask-bench/airflow-worker:deliver-warm", &tar, node_ctr(args))?;
        let mut ship = Side::default();
        let mut build_ship = Side::default();
        for i in 0..args.repeat {
            eprintln!("measuring ({}/{}): docker save | ctr import of a built change", i + 1, args.repeat);
            let tag = format!("xtask-bench/airflow-worker:deliver-{i}");
            edit_dag(repo)?;
            docker_build_tag(&tag)?;
            let (seconds, bytes) = docker_save_import(&tag, &tar, node_ctr(args))?;
            ship.push(seconds, bytes);

            eprintln!("measuring ({}/{}): docker build + docker save | ctr import", i + 1, args.repeat);
            let tag = format!("xtask-bench/airflow-worker:deliver-built-{i}");
            edit_dag(repo)?;
            let build_seconds = docker_build_tag(&tag)?;
            let (seconds, bytes) = docker_save_import(&tag, &tar, node_ctr(args))?;
            build_ship.push(build_seconds + seconds, bytes);
        }
        (Some(ship), Some(build_ship))
    };
    Ok(Measured {
        dag_layer,
        builder: builder_name(buildkit),
        ship,
        build_ship,
        up: up_side,
        up_delivery,
        docker_ship,
        docker_build_ship,
    })
}
