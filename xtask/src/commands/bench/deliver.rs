//! `cargo xtask bench deliver`: one DAG change, from `k8s-up --no-wait` start to the new
//! image on the node, next to what kind load does (`docker save` + `ctr import`), on the
//! local test cluster's containerd.

use camino::{Utf8Path, Utf8PathBuf};
use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::scenario::{commit_all, new_dag_layer};
use super::tools::{docker_ok, docker_save_import, timed};
use crate::cli::BenchClusterArgs;
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

fn node_ctr(args: &BenchClusterArgs) -> Command {
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

pub fn run(ctx: &Ctx, args: &BenchClusterArgs) -> Result<()> {
    let project = &ctx.project;
    check_cluster(args)?;
    let repo = repo_copy(project)?;
    // A DAG repository of realistic size: SQL templates next to the DAGs.
    let data = repo.join("files/dags/sql");
    fs::create_dir_all(&data)?;
    let mut rng = super::scenario::Rng(0x5eed_da75);
    for i in 0..args.dag_files {
        fs::write(data.join(format!("query_{i:04}.sql")), rng.python_source(25_000))?;
    }
    commit_all(&repo)?;
    let flags = cluster_flags(args);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let socket = args.node_containerd.to_string();
    let up = |extra: &[&str]| -> Result<super::tools::Run> {
        let mut a = vec!["k8s-up", "--no-wait", "--json", "--node-containerd", &socket];
        a.extend_from_slice(&flag_refs);
        a.extend_from_slice(extra);
        xtask(&repo, &a)
    };
    eprintln!("warming up: k8s-up --no-wait into namespace {} (the node gets the current image)", args.namespace);
    up(&[])?;
    edit_dag(&repo)?;
    eprintln!("measuring: k8s-up --no-wait after one DAG changed");
    let ours = up(&[])?;
    let report: serde_json::Value = serde_json::from_slice(&ours.stdout).context("k8s-up --json printed no report")?;
    let worker = report["deliveries"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["image"].as_str().is_some_and(|i| i.contains("airflow-worker"))))
        .cloned()
        .context("k8s-up delivered no airflow-worker image")?;
    let sent = worker["bytes"].as_u64().unwrap_or(0);
    let deliver_seconds = worker["seconds"].as_f64().unwrap_or(0.0);
    let built: serde_json::Value =
        serde_json::from_slice(&xtask(&repo, &["images", "--json", "--image", "airflow-worker"])?.stdout)?;
    let dag_layer = new_dag_layer(&built).context("no files/dags layer in the images report")?;
    let image_name =
        built["images"][0]["reference"].as_str().unwrap_or("docker.io/library/airflow-worker:dev").to_string();

    let docker = if args.no_docker || !docker_ok() {
        None
    } else {
        // The docker path's image, under its own name so the node's tag for ours stays.
        let docker_name = "xtask-bench/airflow-worker:docker";
        let load_and_tag = || -> Result<()> {
            xtask(&repo, &["images", "--load", "docker", "--image", "airflow-worker"])?;
            duct::cmd!("docker", "tag", &image_name, docker_name)
                .run()
                .with_context(|| format!("docker tag {image_name} {docker_name} failed"))?;
            Ok(())
        };
        let tar = repo.join("../save.tar");
        eprintln!("warming up: docker save | ctr import of the image before the change");
        edit_dag(&repo)?;
        load_and_tag()?;
        docker_save_import(docker_name, &tar, node_ctr(args))?;
        edit_dag(&repo)?;
        load_and_tag()?;
        eprintln!("measuring: docker save | ctr import after one DAG changed");
        Some(docker_save_import(docker_name, &tar, node_ctr(args))?)
    };

    eprintln!("cleaning up: k8s-down --keep-cluster --namespace {}", args.namespace);
    let mut down = vec!["k8s-down", "--keep-cluster"];
    down.extend_from_slice(&flag_refs);
    xtask(&repo, &down)?;

    println!(
        "\none DAG changed ({}); files/dags holds {} more files of 25 kB; the new DAG layer is {}",
        EDITED_DAG,
        args.dag_files,
        human_bytes(dag_layer)
    );
    println!("node: containerd at {}\n", args.node_containerd);
    println!("{:<40} {:>10} {:>12}   note", "", "time", "bytes sent");
    println!(
        "{:<40} {:>10} {:>12}   {:.4}x the DAG layer (target <= 1.1x; {} over it: config, manifest, tar headers); delivery itself {}; status {}",
        "xtask k8s-up --no-wait (build+ship+apply)",
        secs(ours.seconds),
        human_bytes(sent),
        sent as f64 / dag_layer.max(1) as f64,
        human_bytes(sent.saturating_sub(dag_layer)),
        secs(deliver_seconds),
        worker["status"].as_str().unwrap_or("?")
    );
    if let Some((seconds, bytes)) = docker {
        println!(
            "{:<40} {:>10} {:>12}   what kind load does; k8s-up takes {:.3} of its time (target <= 0.1)",
            "docker save + ctr import",
            secs(seconds),
            human_bytes(bytes),
            ours.seconds / seconds
        );
    }
    Ok(())
}
