//! `cargo xtask bench watch`: one DAG edit until the cluster's Airflow shows the new
//! version, on the local test cluster, three ways:
//!
//! - xtask's image path: `k8s-up --no-wait` (the changed layer built, shipped to the
//!   node, the components rolled), until the restarted DAG processor parsed it;
//! - the docker path for the same change: `docker build` of an image FROM the worker
//!   image with the DAGs copied in, `docker save | ctr import` into the node (what kind
//!   load does), the same components pointed at it, until parsed;
//! - `cargo xtask watch`, running: the edit copied into the running DAG processor and
//!   parsed at once (its image path follows in the background, and is not timed here).
//!
//! Every row is timed the same way (see `parsed`): from the saved edit until the API
//! shows it, `--repeat` runs each, median, fastest and slowest.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use super::deliver::{check_cluster, clean_up, cluster_flags, connect, node_ctr, repo_copy, xtask};
use super::parsed::{EditedDag, Row, Watcher, median, print_rows, set_worker_image};
use super::tools::{builder_name, buildkit_installed, docker_ok, docker_save_import, reap, timed};
use crate::cli::BenchClusterArgs;
use crate::ctx::Ctx;
use crate::ui::secs;

/// The quiet period watch is run with (its default).
const DEBOUNCE_MS: u64 = 100;

const DAG: EditedDag = EditedDag { file: "files/dags/bench_watch_edit.py", dag_id: "bench_watch_edit" };

pub fn run(ctx: &Ctx, args: &BenchClusterArgs) -> Result<()> {
    check_cluster(args)?;
    if args.repeat == 0 {
        bail!("--repeat: at least one run per row");
    }
    let repo = repo_copy(&ctx.project)?;
    DAG.write(&repo, "version 0")?;
    super::scenario::commit_all(&repo)?;
    let result = measure(ctx, &repo, args);
    let cleaned = clean_up(ctx, &repo, args);
    let rows = result?;
    cleaned?;

    println!(
        "\none DAG edited ({}), from the save to the API showing the new version; {} run(s) each\n",
        DAG.file, args.repeat
    );
    print_rows(&rows);
    let find = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix)).map(Row::median);
    if let Some(hot) = find("cargo xtask watch") {
        let met = if hot <= 1.0 { "met" } else { "not met" };
        println!("\nwatch's save to parsed: median {} (target at most 1 s: {met})", secs(hot));
    }
    if let (Some(ours), Some(docker)) = (find("xtask image path"), find("docker path")) {
        println!("xtask's image path takes {:.3} of the docker path's time", ours / docker);
    }
    Ok(())
}

fn measure(ctx: &Ctx, repo: &Utf8Path, args: &BenchClusterArgs) -> Result<Vec<Row>> {
    let flags = cluster_flags(args);
    let socket = args.node_containerd.to_string();
    let run = |cmd: &[&str]| -> Result<super::tools::Run> {
        let mut a: Vec<&str> = cmd.to_vec();
        a.extend(flags.iter().map(String::as_str));
        a.extend(["--node-containerd", &socket]);
        xtask(repo, &a)
    };
    eprintln!("setting up: k8s-up into namespace {} (waits until healthy)", args.namespace);
    run(&["k8s-up", "--json"])?;
    let cluster = connect(ctx, args)?;
    let mut watcher = Watcher::new(ctx, cluster.clone(), &DAG);
    watcher.wait_for("version 0", Instant::now(), Duration::from_secs(300))?;
    let mut version = 0;
    let mut edit = || -> Result<(String, Instant)> {
        version += 1;
        let v = format!("version {version}");
        let started = Instant::now();
        DAG.write(repo, &v)?;
        Ok((v, started))
    };
    let mut rows = Vec::new();

    // xtask's image path.
    let mut image = Row::new("xtask image path: k8s-up --no-wait");
    let mut up_seconds = Vec::new();
    for _ in 0..args.repeat {
        let (v, started) = edit()?;
        eprintln!("measuring: k8s-up --no-wait, then the rollout, until {v} is parsed");
        up_seconds.push(run(&["k8s-up", "--no-wait", "--json"])?.seconds);
        image.runs.push(watcher.wait_for(&v, started, Duration::from_secs(600))?);
    }
    image.note = format!("k8s-up itself {} (build, ship, apply), then the rollout", secs(median(&up_seconds)));
    rows.push(image);

    // The docker path, for the same kind of change.
    if !args.no_docker && docker_ok() {
        let built: serde_json::Value = serde_json::from_slice(
            &xtask(repo, &["images", "--json", "--load", "docker", "--image", "airflow-worker"])?.stdout,
        )?;
        let base = built["images"][0]["reference"].as_str().context("no image reference in the images report")?;
        let dockerfile = repo.join("../Dockerfile.bench-watch");
        std::fs::write(&dockerfile, format!("FROM {base}\nCOPY --chown=50000:0 dags /opt/airflow/dags\n"))?;
        let buildkit = buildkit_installed();
        let mut row = Row::new("docker path: build + save | ctr import");
        let (mut build, mut load, mut bytes) = (Vec::new(), Vec::new(), 0);
        for i in 0..args.repeat {
            let tag = format!("xtask-bench/airflow-worker:watch-{i}");
            let (v, started) = edit()?;
            eprintln!("measuring: docker build + docker save | ctr import {tag} + rollout, until {v} is parsed");
            build.push(
                timed(super::tools::docker_build(buildkit, &[], &dockerfile, &repo.join("files"), &tag))?.seconds,
            );
            let (seconds, sent) = docker_save_import(&tag, &repo.join("../save.tar"), node_ctr(args))?;
            load.push(seconds);
            bytes = sent;
            ctx.block_on(set_worker_image(&cluster, &format!("docker.io/{tag}")))?;
            row.runs.push(watcher.wait_for(&v, started, Duration::from_secs(600))?);
        }
        row.note = format!(
            "{} {}, save + import {} ({}), then the same rollout",
            builder_name(buildkit),
            secs(median(&build)),
            secs(median(&load)),
            crate::fsutil::human_bytes(bytes)
        );
        rows.push(row);
        // Back to xtask's image before watch starts (watch ships from what k8s-up applied).
        run(&["k8s-up", "--json"])?;
    }

    // watch, running, for `repeat` changes.
    eprintln!("measuring: cargo xtask watch, {} change(s)", args.repeat);
    let log = std::fs::File::create(repo.join("../watch.log"))?;
    let repeat = args.repeat.to_string();
    let mut watch = Command::new(std::env::current_exe()?);
    watch
        .arg("--root")
        .arg(repo)
        .args(["watch", "--json", "--max-changes", &repeat, "--node-containerd", &socket])
        .args(["--debounce-ms", &DEBOUNCE_MS.to_string()])
        .args(&flags)
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = watch.spawn()?;
    let result = (|| -> Result<Row> {
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut next_event = || -> Result<serde_json::Value> {
            let line = lines.next().context("watch ended early; see target/xtask/bench/cluster/watch.log")??;
            Ok(serde_json::from_str(&line)?)
        };
        let ready = next_event()?;
        if ready["event"] != "ready" {
            bail!("watch did not start: {ready}");
        }
        let mut row = Row::new("cargo xtask watch (hot sync)");
        let (mut own, mut check, mut sync) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            let (v, started) = edit()?;
            eprintln!("measuring: watch, until {v} is parsed");
            row.runs.push(watcher.wait_for(&v, started, Duration::from_secs(300))?);
            let change = next_event()?;
            if change["change"]["outcome"] != "ok" {
                bail!("watch did not ship the change: {change}");
            }
            own.extend(change["change"]["save_to_parsed_seconds"].as_f64());
            check.extend(change["change"]["check_seconds"].as_f64());
            sync.extend(change["change"]["sync_seconds"].as_f64());
            // Its roll settled before the next edit, so each edit meets a running DAG processor.
            run(&["k8s-up", "--json"])?;
        }
        row.note = format!(
            "debounce {} ms, check {}, copy into the running DAG processor + parse request {}, then its parse; watch's own figure {}",
            DEBOUNCE_MS,
            secs(median(&check)),
            secs(median(&sync)),
            secs(median(&own))
        );
        Ok(row)
    })();
    if result.is_err() {
        let _ = child.kill();
    }
    reap(&watch, child)?;
    rows.push(result?);
    Ok(rows)
}
