//! The default path, kind, for real: the node image `cargo xtask node-image` builds offline,
//! a two-node kind cluster (one control plane, one worker, as k8s/kind.yaml says) that
//! `cargo xtask ci` creates, ships the images to and runs the smoke DAGs on, with worker
//! pods on the worker node; `status` and `doctor` on it; `k8s-up --recreate`; and
//! `k8s-down`, which must leave no container, network or volume behind.
//!
//! One test, in steps: a kind cluster with Airflow takes minutes of a two-core machine.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use common::*;

const CLUSTER: &str = "xtask-kind-test";

fn docker_lines(args: &[&str]) -> BTreeSet<String> {
    let out = sh(Command::new("docker").args(args));
    stdout(&out).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

fn run(repo: &Repo, args: &[&str]) -> Output {
    let mut c = repo.xtask();
    c.args(args).args(["--cluster-name", CLUSTER]);
    c.output().unwrap()
}

fn ok(repo: &Repo, args: &[&str]) -> String {
    let out = run(repo, args);
    assert!(out.status.success(), "xtask {args:?} failed:\n{}\n{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn the_default_path_runs_on_a_two_node_kind_cluster() {
    require("kind");
    require_docker();
    let _ = Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]).output();
    let volumes_before = docker_lines(&["volume", "ls", "-q"]);

    // 1. The node image, built here from Go modules and Debian, loaded into the engine.
    let out = sh(Command::new(env!("CARGO_BIN_EXE_xtask")).arg("--root").arg(workspace()).arg("node-image"));
    let text = stdout(&out);
    assert!(text.contains("xtask.local/kind-node:"), "{text}");
    let node_image = text
        .lines()
        .find_map(|l| l.strip_prefix("node-image "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("node-image printed no image name:\n{text}"))
        .to_string();
    assert!(
        docker_lines(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).contains(&node_image),
        "{node_image} is not in the Docker engine"
    );

    // 2. `cargo xtask ci` on kind: creates the cluster of k8s/kind.yaml (k8s-up picks the
    //    node image just built), images, dags check, delivery to both nodes, smoke.
    let repo = airflow_repo();
    let out = run(&repo, &["ci", "--keep", "--json", "--timeout", "600"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ci printed no JSON ({e}):\n{}\n{}", stdout(&out), stderr(&out)));
    assert!(out.status.success() && summary["ok"] == true, "ci failed:\n{summary:#}\n{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains(&format!("({node_image})")), "k8s-up did not create the cluster from {node_image}:\n{log}");
    let nodes =
        docker_lines(&["ps", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}"), "--format", "{{.Names}}"]);
    let worker = format!("{CLUSTER}-worker");
    assert_eq!(nodes, BTreeSet::from([format!("{CLUSTER}-control-plane"), worker.clone()]));
    for node in &nodes {
        assert!(log.contains(&format!("-> kind node {node}:")), "nothing was delivered to {node}:\n{log}");
    }
    // The smoke DAGs' tasks ran in worker pods, scheduled on the worker node (the control
    // plane is tainted).
    let smoke: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo.path("target/xtask/smoke/cluster-summary.json")).unwrap())
            .unwrap();
    let pods = smoke["pods"].as_array().unwrap();
    assert!(!pods.is_empty(), "no worker pod was seen: {smoke:#}");
    for p in pods {
        assert_eq!(p["node"], worker.as_str(), "worker pod {} ran elsewhere: {smoke:#}", p["name"]);
    }

    // 3. Day two on kind.
    let status = ok(&repo, &["status"]);
    for node in &nodes {
        assert!(status.contains(node.as_str()), "status does not list {node}:\n{status}");
    }
    let doctor = ok(&repo, &["doctor"]);
    assert!(doctor.contains("ok   cluster"), "{doctor}");

    // 4. --recreate: a new cluster (new node containers), delivered to and applied again.
    let ids_before = docker_lines(&["ps", "-q", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}")]);
    let up = ok(&repo, &["k8s-up", "--recreate", "--timeout", "600"]);
    assert!(up.contains(&format!("cluster    deleting {CLUSTER} (--recreate)")), "{up}");
    let ids_after = docker_lines(&["ps", "-q", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}")]);
    assert_eq!(ids_after.len(), 2, "{up}");
    assert!(ids_before.is_disjoint(&ids_after), "--recreate kept node containers: {ids_before:?} {ids_after:?}");

    // 5. k8s-down: nothing of the cluster is left.
    let down = ok(&repo, &["k8s-down"]);
    assert!(down.contains(&format!("deleted kind cluster {CLUSTER}")), "{down}");
    let left = docker_lines(&["ps", "-aq", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}")]);
    assert!(left.is_empty(), "containers left after k8s-down: {left:?}");
    let networks = docker_lines(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.contains("kind"), "k8s-down left the kind network: {networks:?}");
    let new_volumes: Vec<String> = docker_lines(&["volume", "ls", "-q"]).difference(&volumes_before).cloned().collect();
    assert!(new_volumes.is_empty(), "volumes left after k8s-down: {new_volumes:?}");
}
