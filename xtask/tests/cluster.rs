//! The local test cluster (.ci/local-cluster) is real Kubernetes: the API server takes
//! server-side apply through kube-rs (Level A), and its node runs an image built by
//! `cargo xtask images`, with cluster DNS and Services working (Level B).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{LogParams, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn server_side_apply_of_a_deployment_through_kube_rs_reads_back_and_is_idempotent() {
    let client = kube_client().await;
    let ns = TestNamespace::new(&client, "xtask-ssa").await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web@sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}
            }
        }
    });
    let pp = PatchParams::apply("xtask-test").force();
    let first = api.patch("web", &pp, &Patch::Apply(&deployment)).await.unwrap();
    let read = api.get("web").await.unwrap();
    assert_eq!(read.metadata.labels.unwrap()["app"], "web");
    assert_eq!(read.spec.unwrap().template.spec.unwrap().containers[0].name, "web");
    let managers: Vec<String> = read.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&"xtask-test".to_string()), "{managers:?}");
    let second = api.patch("web", &pp, &Patch::Apply(&deployment)).await.unwrap();
    // The deployment controller writes status and annotations meanwhile, so the resource
    // version may move; the generation moves only when the spec changes.
    assert_eq!(first.metadata.generation, second.metadata.generation, "re-applying the same object changed its spec");
    let mut changed = deployment.clone();
    changed["spec"]["template"]["metadata"]["labels"]["tier"] = json!("front");
    let third = api.patch("web", &pp, &Patch::Apply(&changed)).await.unwrap();
    assert_eq!(
        third.metadata.generation,
        second.metadata.generation.map(|g| g + 1),
        "a changed spec must bump the generation"
    );
}

async fn wait_for_phase(api: &Api<Pod>, name: &str, phases: &[&str], timeout: Duration) -> Pod {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let pod = api.get(name).await.unwrap();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if phases.contains(&phase.as_str()) {
            return pod;
        }
        if std::time::Instant::now() > deadline {
            panic!("pod {name} still {phase} after {timeout:?}: {:?}", pod.status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_pod_runs_an_image_built_by_xtask_and_reaches_a_service_by_name() {
    require("ctr");
    let repo = Repo::new();
    repo.write("files/dags/level_b_dag.py", "print('level b')\n");
    let tag = format!("levelb{}", std::process::id());
    repo.ok(&["images", "--archive", "--tag", &tag]);
    let image = format!("docker.io/library/airflow-worker:{tag}");
    // Images reach the node the way kind delivers them: ctr import into its containerd.
    sh(std::process::Command::new("ctr")
        .args(["--address", CLUSTER_CONTAINERD, "-n", "k8s.io", "images", "import"])
        .arg(repo.path("target/xtask/images.tar")));

    let client = kube_client().await;
    let ns = TestNamespace::new(&client, "xtask-levelb").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = |name: &str, cmd: serde_json::Value, labels: serde_json::Value, restart: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "restartPolicy": restart,
                "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": cmd}]
            }
        }))
        .unwrap()
    };
    pods.create(
        &PostParams::default(),
        &pod("cat-dag", json!(["cat", "/opt/airflow/dags/level_b_dag.py"]), json!({}), "Never"),
    )
    .await
    .unwrap();
    let done = wait_for_phase(&pods, "cat-dag", &["Succeeded", "Failed"], Duration::from_secs(90)).await;
    assert_eq!(done.status.unwrap().phase.as_deref(), Some("Succeeded"));
    let log = pods.logs("cat-dag", &LogParams::default()).await.unwrap();
    assert_eq!(log, "print('level b')\n");

    // A server pod behind a Service, and a client that reaches it by the Service's DNS name.
    pods.create(
        &PostParams::default(),
        &pod(
            "web",
            json!(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/opt/airflow/dags"]),
            json!({"app": "web"}),
            "Always",
        ),
    )
    .await
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    wait_for_phase(&pods, "web", &["Running"], Duration::from_secs(60)).await;
    let url = format!("http://web.{}.svc.cluster.local/level_b_dag.py", ns.name);
    // The test image is busybox with few applet links: call busybox for each tool.
    let tries = (1..=30).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
    let script =
        format!("for i in {tries}; do /bin/busybox wget -q -O - {url} && exit 0; /bin/busybox sleep 1; done; exit 1");
    pods.create(&PostParams::default(), &pod("client", json!(["/bin/sh", "-c", script]), json!({}), "Never"))
        .await
        .unwrap();
    let done = wait_for_phase(&pods, "client", &["Succeeded", "Failed"], Duration::from_secs(90)).await;
    let log = pods.logs("client", &LogParams::default()).await.unwrap();
    assert_eq!(done.status.unwrap().phase.as_deref(), Some("Succeeded"), "client log: {log}");
    assert!(log.contains("print('level b')"), "{log}");
}
