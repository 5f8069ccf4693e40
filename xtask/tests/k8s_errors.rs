//! k8s-up, status and friends on bad input, against the real programs: kind (whose node
//! image cannot be had here), the local test cluster's API server, a kubeconfig that
//! points nowhere, and credentials that may not do what is asked.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

#[test]
fn the_kind_path_tries_three_times_and_shows_kinds_own_error() {
    require_docker();
    require("kind");
    let repo = Repo::new();
    let name = format!("xtask-test-{}", std::process::id());
    sh(Command::new("cp").arg("-r").arg(workspace().join("k8s")).arg(repo.root()));
    fs::copy(workspace().join("docker/images.toml"), repo.path("docker/images.toml")).unwrap();
    // A node image no registry has, here or anywhere.
    let out = repo
        .xtask()
        .args(["k8s-up", "--cluster-name", &name, "--node-image", "xtask.invalid/no-such-node:v0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(text.contains("preflight  Docker engine") && text.contains("kind v"), "{text}");
    for attempt in 1..=3 {
        assert!(text.contains(&format!("attempt {attempt} of 3")), "{text}");
    }
    assert!(err.contains(&format!("kind could not create cluster {name} in 3 attempts")), "{err}");
    assert!(err.contains("xtask.invalid/no-such-node"), "kind's own error is missing:\n{err}");
    let clusters = stdout(&sh(Command::new("kind").args(["get", "clusters"])));
    assert!(!clusters.lines().any(|l| l == name), "the half-made cluster was left: {clusters}");
}

#[test]
fn kubeconfigs_that_are_missing_wrong_or_point_nowhere_are_explained() {
    let repo = Repo::new();
    let missing = repo.fails(&["status", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(missing.contains("kubeconfig /nonexistent/kubeconfig does not exist"), "{missing}");

    let kubeconfig = test_kubeconfig();
    let err = repo.fails(&["status", "--kubeconfig", kubeconfig.to_str().unwrap(), "--context", "nope"]);
    assert!(err.contains("has no context `nope`; it has: "), "{err}");

    let text = fs::read_to_string(&kubeconfig).unwrap();
    let server = text.lines().find(|l| l.trim_start().starts_with("server:")).unwrap().trim().to_string();
    let nowhere = repo.path("nowhere.kubeconfig");
    fs::write(&nowhere, text.replace(&server, "server: https://127.0.0.1:1")).unwrap();
    let err = repo.fails(&["status", "--kubeconfig", nowhere.to_str().unwrap()]);
    assert!(
        err.contains("cannot reach the Kubernetes API server at https://127.0.0.1:1/")
            && err.contains("check that the cluster runs"),
        "{err}"
    );
}

#[test]
fn an_api_server_that_accepts_and_never_answers_is_given_up_on() {
    // A listener that takes the connection (TLS handshake and all bytes) and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let repo = Repo::new();
    let text = fs::read_to_string(test_kubeconfig()).unwrap();
    let server = text.lines().find(|l| l.trim_start().starts_with("server:")).unwrap().trim().to_string();
    let silent = repo.path("silent.kubeconfig");
    fs::write(&silent, text.replace(&server, &format!("server: https://127.0.0.1:{port}"))).unwrap();
    let started = std::time::Instant::now();
    let out = output_within(
        repo.xtask().args(["status", "--kubeconfig", silent.to_str().unwrap()]).env("XTASK_KUBE_TIMEOUT", "3"),
        std::time::Duration::from_secs(90),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("cannot reach the Kubernetes API server at https://127.0.0.1:{port}/")), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_forbidden_request_names_the_verb_resource_and_the_can_i_check() {
    let client = kube_client().await;
    let ns = TestNamespace::new(&client, "xtask-forbidden").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "nobody"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 600}})).unwrap();
    let token =
        sas.create_token_request("nobody", &PostParams::default(), &request).await.unwrap().status.unwrap().token;

    // The cluster of the test kubeconfig, as a service account with no rights at all.
    let text = fs::read_to_string(test_kubeconfig()).unwrap();
    let server = text
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .unwrap()
        .trim()
        .trim_start_matches("server:")
        .trim()
        .to_string();
    let ca = text
        .lines()
        .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
        .unwrap()
        .trim()
        .trim_start_matches("certificate-authority-data:")
        .trim()
        .to_string();
    let repo = Repo::new();
    let limited = repo.path("limited.kubeconfig");
    fs::write(
        &limited,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: nobody\n  user:\n    token: {token}\ncontexts:\n- name: nobody\n  context:\n    cluster: c\n    user: nobody\ncurrent-context: nobody\n"
        ),
    )
    .unwrap();
    let out = repo
        .xtask()
        .args(["status", "--kubeconfig", limited.to_str().unwrap(), "--namespace", &ns.name])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Forbidden: your credentials may not `list` nodes"), "{err}");
    assert!(err.contains(&format!("kubectl auth can-i list nodes -n {}", ns.name)), "{err}");
}

#[tokio::test]
async fn a_malformed_manifest_stops_k8s_up_before_anything_is_made() {
    let repo = Repo::new();
    sh(Command::new("cp").arg("-r").arg(workspace().join("k8s")).arg(repo.root()));
    fs::copy(workspace().join("docker/images.toml"), repo.path("docker/images.toml")).unwrap();
    let file = repo.path("k8s/airflow/logs.yaml");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace("accessModes: [ReadWriteOnce]", "accessModes: [ReadWriteOnce")).unwrap();
    let namespace = format!("xtask-malformed-{}", std::process::id());
    let err = repo.fails(&[
        "k8s-up",
        "--kubeconfig",
        test_kubeconfig().to_str().unwrap(),
        "--node-containerd",
        CLUSTER_CONTAINERD,
        "--namespace",
        &namespace,
    ]);
    assert!(err.contains("k8s/airflow/logs.yaml:") && err.contains("not valid YAML"), "{err}");
    let client = kube_client().await;
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(
        namespaces.get_opt(&namespace).await.unwrap().is_none(),
        "k8s-up created the namespace before checking k8s/"
    );
    assert!(
        !repo.store().join("index.json").exists() || !repo.store_index().contains("airflow-worker"),
        "k8s-up built images before checking k8s/"
    );
}
