//! The default path, kind, for real: the node image `cargo xtask node-image` builds offline,
//! a two-node kind cluster (one control plane, one worker, as k8s/kind.yaml says) that
//! `cargo xtask ci` creates, ships the images to and runs the smoke DAGs on, with worker
//! pods on the worker node; `status` and `doctor` on it; kind's local registry
//! (`k8s-up --registry localhost:PORT`); `k8s-up --recreate`; and
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
    KindCluster(CLUSTER).run(repo, args)
}

fn ok(repo: &Repo, args: &[&str]) -> String {
    KindCluster(CLUSTER).ok(repo, args)
}

/// What the test makes and k8s-down removes: removed here too, before the test (left by an
/// earlier run that failed) and after it, whatever the outcome.
struct Leftovers;

impl Leftovers {
    fn remove() {
        let _ = KindCluster(CLUSTER).kind(&["delete", "cluster", "--name", CLUSTER]).output();
        let _ = Command::new("docker").args(["rm", "-f", "-v", "kind-registry"]).output();
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            Leftovers::remove();
        }
    }
}

#[test]
fn the_default_path_runs_on_a_two_node_kind_cluster() {
    require("kind");
    require_docker();
    Leftovers::remove();
    let _leftovers = Leftovers;
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

    // 4. kind's local registry (KEP-1755): images go through kind-registry, a container of
    //    Debian's docker-registry on kind's network, which every node pulls localhost:PORT from.
    let port = free_port();
    let registry = format!("localhost:{port}");
    let out = run(&repo, &["k8s-up", "--registry", &registry, "--json", "--timeout", "600"]);
    assert!(out.status.success(), "k8s-up --registry failed:\n{}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let worker_ref = report["images"]["airflow-worker"].as_str().unwrap_or_default().to_string();
    assert!(worker_ref.starts_with(&format!("{registry}/")), "pods do not pull from {registry}: {report:#}");
    let networks = stdout(&sh(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.State.Running}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        "kind-registry",
    ])));
    assert!(networks.starts_with("true") && networks.contains("kind"), "kind-registry: {networks}");
    for node in &nodes {
        let hosts = stdout(&sh(Command::new("docker").args([
            "exec",
            node,
            "cat",
            &format!("/etc/containerd/certs.d/{registry}/hosts.toml"),
        ])));
        assert!(hosts.contains("http://kind-registry:5000"), "{node}: {hosts}");
    }
    let kubectl = |args: &[&str]| -> String {
        let mut c = Command::new("docker");
        c.args(["exec", &format!("{CLUSTER}-control-plane"), "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf"]);
        stdout(&sh(c.args(args)))
    };
    let hosting = kubectl(&["-n", "kube-public", "get", "configmap", "local-registry-hosting", "-o", "yaml"]);
    assert!(hosting.contains(&format!("host: \"{registry}\"")), "{hosting}");
    let running = kubectl(&["-n", "airflow", "get", "pods", "-o", "jsonpath={.items[*].spec.containers[*].image}"]);
    assert!(running.contains(&worker_ref), "no pod runs {worker_ref}: {running}");
    // Again: the registry has every blob, nothing is uploaded.
    let out = run(&repo, &["k8s-up", "--registry", &registry, "--json", "--no-wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in again["pushes"].as_array().unwrap() {
        assert_eq!(p["uploaded_blobs"], 0, "a second push uploaded blobs: {again:#}");
    }

    // 5. --recreate: a new cluster (new node containers), delivered to and applied again.
    let ids_before = docker_lines(&["ps", "-q", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}")]);
    let up = ok(&repo, &["k8s-up", "--recreate", "--timeout", "600"]);
    assert!(up.contains(&format!("cluster    deleting {CLUSTER} (--recreate)")), "{up}");
    let ids_after = docker_lines(&["ps", "-q", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}")]);
    assert_eq!(ids_after.len(), 2, "{up}");
    assert!(ids_before.is_disjoint(&ids_after), "--recreate kept node containers: {ids_before:?} {ids_after:?}");

    // 6. k8s-down: nothing of the cluster (nor its registry) is left.
    let down = ok(&repo, &["k8s-down"]);
    assert!(down.contains(&format!("deleted kind cluster {CLUSTER}")), "{down}");
    assert!(down.contains("removed the local registry container kind-registry"), "{down}");
    let left = docker_lines(&["ps", "-aq", "--filter", &format!("label=io.x-k8s.kind.cluster={CLUSTER}")]);
    assert!(left.is_empty(), "containers left after k8s-down: {left:?}");
    let networks = docker_lines(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.contains("kind"), "k8s-down left the kind network: {networks:?}");
    let new_volumes: Vec<String> = docker_lines(&["volume", "ls", "-q"]).difference(&volumes_before).cloned().collect();
    assert!(new_volumes.is_empty(), "volumes left after k8s-down: {new_volumes:?}");
}
