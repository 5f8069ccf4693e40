//! `cargo xtask bench deliver-kind`: one DAG change onto every node of a kind cluster,
//! `k8s-up --no-wait` next to kind's own `kind load docker-image` and `kind load
//! image-archive`, on clusters of 1 and 2 nodes made for the run (and deleted after it).
//!
//! Each side ships its own one-DAG change (kind skips an image its nodes already have, so
//! measuring it on ours would measure nothing). Times are wall clock of the command, from
//! start to exit, once each. Bytes are what reaches the nodes: ours as k8s-up counts what
//! it streams into each node's `ctr import`; kind's as the image's full archive, which kind
//! streams to every node.

use camino::Utf8Path;
use std::fs;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::deliver::{edit_dag, repo_copy, xtask};
use super::tools::timed;
use crate::cli::BenchKindArgs;
use crate::ctx::Ctx;
use crate::fsutil::human_bytes;
use crate::ui::secs;

struct Row {
    nodes: usize,
    ours: (f64, u64),
    docker_image: (f64, u64),
    image_archive: (f64, u64),
    dag_layer: u64,
}

/// k8s/kind.yaml of the copy, with `nodes` nodes and no host ports (a user's cluster may
/// hold them).
pub(super) fn write_kind_config(project_root: &Utf8Path, repo: &Utf8Path, nodes: usize) -> Result<()> {
    let path = project_root.join("k8s/kind.yaml");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{path}"))?;
    let mut list = vec![serde_yaml_ng::from_str::<serde_yaml_ng::Value>("{role: control-plane}")?];
    for _ in 1..nodes {
        list.push(serde_yaml_ng::from_str("{role: worker}")?);
    }
    config["nodes"] = serde_yaml_ng::Value::Sequence(list);
    crate::fsutil::write_atomic(&repo.join("k8s/kind.yaml"), serde_yaml_ng::to_string(&config)?.as_bytes())
}

pub fn run(ctx: &Ctx, args: &BenchKindArgs) -> Result<()> {
    let project = &ctx.project;
    crate::cluster::kind::require()?;
    ctx.docker()?;
    let repo = repo_copy(project)?;
    let data = repo.join("files/dags/sql");
    fs::create_dir_all(&data)?;
    let mut rng = super::scenario::Rng(0x5eed_da75);
    for i in 0..args.dag_files {
        fs::write(data.join(format!("query_{i:04}.sql")), rng.python_source(25_000))?;
    }
    super::scenario::commit_all(&repo)?;
    let mut rows = Vec::new();
    for &n in &args.nodes {
        if n == 0 {
            bail!("--nodes: a cluster has at least one node");
        }
        let name = format!("xtask-bench-{n}");
        write_kind_config(&project.root, &repo, n)?;
        let cluster = ["--cluster-name", name.as_str(), "--namespace", args.namespace.as_str()];
        let result = measure(&repo, &name, n, &cluster);
        eprintln!("cleaning up: k8s-down --cluster-name {name}");
        let mut down = vec!["k8s-down"];
        down.extend_from_slice(&cluster);
        let cleaned = xtask(&repo, &down);
        rows.push(result?);
        cleaned?;
    }

    println!(
        "\none DAG changed in each run; files/dags holds {} more files of 25 kB; times once each, start to exit\n",
        args.dag_files
    );
    println!("{:<6} {:<42} {:>10} {:>12}   note", "nodes", "", "time", "bytes sent");
    for r in &rows {
        println!(
            "{:<6} {:<42} {:>10} {:>12}   {:.3}x the DAG layer per node (target <= 1.1)",
            r.nodes,
            "xtask k8s-up --no-wait (build+ship+apply)",
            secs(r.ours.0),
            human_bytes(r.ours.1),
            r.ours.1 as f64 / r.nodes as f64 / r.dag_layer.max(1) as f64
        );
        println!(
            "{:<6} {:<42} {:>10} {:>12}   k8s-up takes {:.3} of its time (target <= 0.05)",
            r.nodes,
            "kind load docker-image",
            secs(r.docker_image.0),
            human_bytes(r.docker_image.1),
            r.ours.0 / r.docker_image.0
        );
        println!(
            "{:<6} {:<42} {:>10} {:>12}   k8s-up takes {:.3} of its time",
            r.nodes,
            "kind load image-archive",
            secs(r.image_archive.0),
            human_bytes(r.image_archive.1),
            r.ours.0 / r.image_archive.0
        );
    }
    if let Some(r) = rows.first() {
        println!("\nthe DAG layer: {}", human_bytes(r.dag_layer));
    }
    Ok(())
}

fn measure(repo: &Utf8Path, name: &str, nodes: usize, cluster: &[&str]) -> Result<Row> {
    let up = || -> Result<super::tools::Run> {
        let mut a = vec!["k8s-up", "--no-wait", "--json"];
        a.extend_from_slice(cluster);
        xtask(repo, &a)
    };
    eprintln!("warming up: k8s-up --no-wait creates kind cluster {name} ({nodes} node(s)) and ships the image");
    up()?;
    edit_dag(repo)?;
    eprintln!("measuring: k8s-up --no-wait after one DAG changed");
    let ours = up()?;
    let report: serde_json::Value = serde_json::from_slice(&ours.stdout).context("k8s-up --json printed no report")?;
    let worker: Vec<&serde_json::Value> = report["deliveries"]
        .as_array()
        .map(|ds| ds.iter().filter(|d| d["image"].as_str().is_some_and(|i| i.contains("airflow-worker"))).collect())
        .unwrap_or_default();
    if worker.len() != nodes {
        bail!("k8s-up delivered airflow-worker to {} node(s), not {nodes}: {report}", worker.len());
    }
    let sent: u64 = worker.iter().map(|d| d["bytes"].as_u64().unwrap_or(0)).sum();

    // kind's sides: each a fresh one-DAG change, built (untimed) into Docker or an archive.
    let archive = repo.join("../kind-load.tar");
    let build = |extra: &[&str]| -> Result<serde_json::Value> {
        edit_dag(repo)?;
        let mut a = vec!["images", "--json", "--image", "airflow-worker"];
        a.extend_from_slice(extra);
        Ok(serde_json::from_slice(&xtask(repo, &a)?.stdout)?)
    };
    let built = build(&["--load", "docker"])?;
    let reference = built["images"][0]["reference"].as_str().context("no image reference in the report")?.to_string();
    let dag_layer = super::scenario::new_dag_layer(&built).context("no files/dags layer in the images report")?;
    eprintln!("measuring: kind load docker-image {reference} --name {name}");
    let mut c = Command::new("kind");
    c.args(["load", "docker-image", &reference, "--name", name]);
    let docker_image = timed(c)?;
    // kind streams `docker save` of the image to every node: its size, once per node.
    let saved = duct::cmd!("docker", "save", &reference).stdout_capture().run()?.stdout.len() as u64;

    build(&["--archive", archive.as_str()])?;
    eprintln!("measuring: kind load image-archive --name {name}");
    let mut c = Command::new("kind");
    c.args(["load", "image-archive", archive.as_str(), "--name", name]);
    let image_archive = timed(c)?;
    let archive_size = fs::metadata(&archive)?.len();
    let _ = fs::remove_file(&archive);

    Ok(Row {
        nodes,
        ours: (ours.seconds, sent),
        docker_image: (docker_image.seconds, saved * nodes as u64),
        image_archive: (image_archive.seconds, archive_size * nodes as u64),
        dag_layer,
    })
}
