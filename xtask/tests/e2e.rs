//! End to end on the local cluster, with real Airflow: k8s-up (idempotent), status, the
//! smoke DAGs through the KubernetesExecutor, failures diagnosed (failing task, import
//! error, worker image not on the node, a component whose image is missing, one that
//! cannot be scheduled), doctor, logs, watch, pruning, registry delivery, and k8s-down
//! --keep-cluster.
//!
//! One test, in steps: each Airflow install takes a minute of a two-core machine, so the
//! steps share one.

mod common;

use std::fs;
use std::process::Output;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod, ResourceQuota};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

struct Install<'a> {
    repo: &'a Repo,
    namespace: String,
}

impl Install<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.repo.xtask();
        c.args(args).args(["--kubeconfig", test_kubeconfig().to_str().unwrap(), "--namespace", &self.namespace]);
        c.output().unwrap()
    }

    fn up(&self, extra: &[&str]) -> Output {
        let mut args = vec!["k8s-up", "--json"];
        if !extra.contains(&"--timeout") {
            args.extend_from_slice(&["--timeout", "300"]);
        }
        args.extend_from_slice(extra);
        if !extra.contains(&"--registry") {
            args.extend_from_slice(&["--node-containerd", CLUSTER_CONTAINERD]);
        }
        self.run(&args)
    }

    fn up_ok(&self, extra: &[&str]) -> serde_json::Value {
        let out = self.up(extra);
        assert!(out.status.success(), "k8s-up failed:\n{}\n{}", stdout(&out), stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn smoke(&self, extra: &[&str]) -> (bool, serde_json::Value, String) {
        let mut args = vec!["smoke", "--json", "--timeout", "300"];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("smoke printed no JSON ({e}):\n{}\n{}", stdout(&out), stderr(&out)));
        (out.status.success(), v, stderr(&out))
    }
}

fn edit(repo: &Repo, file: &str, from: &str, to: &str) {
    let p = repo.path(file);
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn dag<'a>(summary: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    summary["dags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dag"] == id)
        .unwrap_or_else(|| panic!("no {id} in {summary}"))
}

const TRIGGERER_RESOURCES: &str = "requests: {cpu: 50m, memory: 256Mi}\n            limits: {cpu: \"1\", memory: 768Mi}\n          volumeMounts:\n            - {name: config, mountPath: /opt/airflow/config, readOnly: true}\n            - {name: logs";
const TRIGGERER_64_CPUS: &str = "requests: {cpu: \"64\", memory: 256Mi}\n            limits: {cpu: \"64\", memory: 768Mi}\n          volumeMounts:\n            - {name: config, mountPath: /opt/airflow/config, readOnly: true}\n            - {name: logs";
const MISSING_IMAGE: &str =
    "docker.io/library/xtask-not-on-any-node@sha256:0000000000000000000000000000000000000000000000000000000000000001";

#[tokio::test(flavor = "multi_thread")]
async fn airflow_on_kubernetes_end_to_end() {
    let repo = airflow_repo();
    let client = kube_client().await;
    let namespace = format!("xtask-e2e-{}", std::process::id());
    let install = Install { repo: &repo, namespace: namespace.clone() };
    let ns_guard = TestNamespaceName(namespace.clone());

    // 1. From nothing to healthy.
    let first = install.up_ok(&[]);
    assert!(
        first["apply"]["objects"].as_array().unwrap().iter().all(|o| o["action"] == "created"),
        "{}",
        first["apply"]
    );
    assert_eq!(first["apply"]["secrets"].as_array().unwrap().len(), 3);

    // 2. A second run builds nothing, ships nothing, changes nothing, and says so.
    let second = install.up_ok(&[]);
    assert_eq!(second["changed"], false, "{second}");
    assert!(second["built"].as_array().unwrap().is_empty());
    assert!(
        second["deliveries"].as_array().unwrap().iter().all(|d| d["status"] == "present"),
        "{}",
        second["deliveries"]
    );
    assert!(second["apply"]["objects"].as_array().unwrap().iter().all(|o| o["action"] == "unchanged"));
    assert!(second["apply"]["secrets"].as_array().unwrap().iter().all(|o| o["action"] == "kept"));
    let out = install.run(&["k8s-up", "--node-containerd", CLUSTER_CONTAINERD]);
    assert!(stdout(&out).contains("nothing changed"), "{}", stdout(&out));

    // 3. status: healthy, the nodes hold the images as last built.
    let out = install.run(&["status", "--json"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["nodes"][0]["images"].as_array().unwrap().iter().all(|i| i[1] == true), "{status}");
    assert!(status["failing_pods"].as_array().unwrap().is_empty(), "{status}");

    // 4. The smoke DAGs through the KubernetesExecutor: each task in its own pod, the
    //    include package and the pod template's env visible, pods gone after success.
    let (ok, summary, err) = install.smoke(&[]);
    assert!(ok, "smoke failed: {summary}\n{err}");
    let mut hostnames = Vec::new();
    for d in summary["dags"].as_array().unwrap() {
        assert_eq!(d["state"], "success", "{d}");
        for t in d["tasks"].as_array().unwrap() {
            assert_eq!(t["state"], "success", "{t}");
            hostnames.push(t["hostname"].as_str().unwrap().to_string());
        }
    }
    let mut distinct = hostnames.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), hostnames.len(), "tasks shared a pod: {hostnames:?}");
    let env = dag(&summary, "smoke_environment");
    assert_eq!(env["xcoms"]["include_is_importable"]["shared_version"], "1.0", "{env}");
    assert_eq!(env["xcoms"]["pod_template_env_is_set"]["marker"], "set-by-pod-template", "{env}");
    let xcom = dag(&summary, "smoke_xcom");
    let consumed = &xcom["xcoms"]["consume"];
    assert_ne!(consumed["producer_hostname"], consumed["consumer_hostname"], "{xcom}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut left = usize::MAX;
    for _ in 0..30 {
        left = pods.list(&ListParams::default().labels("kubernetes_executor=True")).await.unwrap().items.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    assert_eq!(left, 0, "worker pods were not deleted after success");
    assert!(fs::read_to_string(repo.path("target/xtask/smoke/cluster-junit.xml")).unwrap().contains("failures=\"0\""));

    // 4b. Day two on the healthy install: doctor passes every check, a component's log,
    //     and a finished task's log from the API once its worker pod is gone.
    let out = install.run(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(out.status.success(), "doctor failed on a healthy install:\n{}\n{}", stdout(&out), stderr(&out));
    for name in ["cluster", "namespace", "rbac", "admission", "images", "components", "workers", "dags"] {
        let c = checks["checks"].as_array().and_then(|a| a.iter().find(|c| c["check"] == name));
        assert!(c.is_some_and(|c| c["ok"] == true), "doctor's {name} check: {checks}");
    }
    let out = install.run(&["logs", "scheduler", "--tail", "20"]);
    assert!(out.status.success() && !stdout(&out).trim().is_empty(), "{}\n{}", stdout(&out), stderr(&out));
    let out = install.run(&["logs", "smoke_xcom.consume"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("consume"), "the task log from the API: {}", stdout(&out));

    // 4c. "Task stuck in queued": a ResourceQuota that refuses worker pods is found by
    //     doctor, which names the quota and the fix.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &namespace);
    let quota: ResourceQuota = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "no-more-pods"}, "spec": {"hard": {"pods": "0"}}}),
    )
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let out = install.run(&["doctor", "--json"]);
    quotas.delete("no-more-pods", &DeleteParams::default()).await.unwrap();
    assert!(!out.status.success(), "doctor passed with a quota that refuses every pod");
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let admission = checks["checks"].as_array().unwrap().iter().find(|c| c["check"] == "admission").unwrap();
    assert_eq!(admission["ok"], false, "{checks}");
    assert!(admission["detail"].as_str().unwrap().contains("exceeded quota"), "{admission}");
    assert!(admission["fix"].as_str().unwrap().contains("ResourceQuota"), "{admission}");

    // 4d. watch: a DAG that does not import is reported and not shipped; the fixed DAG
    //     ships and is parsed by the cluster's Airflow.
    {
        use std::io::{BufRead, BufReader};
        let mut watch = repo.xtask();
        watch
            .args(["watch", "--json", "--max-changes", "2", "--kubeconfig", test_kubeconfig().to_str().unwrap()])
            .args(["--namespace", &namespace])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = watch.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || -> serde_json::Value {
            loop {
                let line = lines.next().expect("watch ended before the event").unwrap();
                if line.starts_with('{') {
                    return serde_json::from_str(&line).unwrap();
                }
            }
        };
        assert_eq!(next()["event"], "ready");
        repo.write("files/dags/watched.py", "from airflow.sdk import dag\nimport no_such_module_for_watch\n");
        let rejected = next();
        assert_eq!(rejected["change"]["outcome"], "rejected", "{rejected}");
        assert!(rejected["change"]["image"].is_null(), "a rejected change was shipped: {rejected}");
        assert!(rejected["change"]["errors"].to_string().contains("no_such_module_for_watch"), "{rejected}");
        repo.write(
            "files/dags/watched.py",
            "from datetime import datetime\nfrom airflow.sdk import DAG\nwith DAG(dag_id='watched', schedule=None, start_date=datetime(2024, 1, 1)):\n    pass\n",
        );
        let shipped = next();
        assert_eq!(shipped["change"]["outcome"], "ok", "{shipped}");
        assert!(shipped["change"]["image"].is_string(), "{shipped}");
        assert!(shipped["change"]["save_to_parsed_seconds"].as_f64().is_some(), "not parsed in the cluster: {shipped}");
        assert!(child.wait().unwrap().success(), "watch did not end after its two changes");
        fs::remove_file(repo.path("files/dags/watched.py")).unwrap();
    }

    // 5. A failing task and a DAG that does not import: both fail fast, with the reason.
    repo.write(
        "files/dags/smoke_failing.py",
        "from datetime import datetime\nfrom airflow.sdk import dag, task\n\n@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False)\ndef smoke_failing():\n    @task\n    def explode():\n        raise ValueError('exploded on purpose')\n    explode()\n\nsmoke_failing()\n",
    );
    repo.write("files/dags/smoke_broken_import.py", "from airflow.sdk import dag\nimport no_such_module_anywhere\n");
    install.up_ok(&[]);
    let (ok, summary, _) = install.smoke(&["--dag", "smoke_failing", "--dag", "smoke_broken_import"]);
    assert!(!ok);
    let failing = dag(&summary, "smoke_failing");
    assert_eq!(failing["state"], "failed", "{failing}");
    assert_eq!(failing["tasks"][0]["state"], "failed");
    assert!(failing["log_tail"].as_str().unwrap().contains("exploded on purpose"), "{failing}");
    let broken = dag(&summary, "smoke_broken_import");
    assert_eq!(broken["state"], "import error", "{broken}");
    assert!(broken["log_tail"].as_str().unwrap().contains("no_such_module_anywhere"), "{broken}");
    // The failed task's pod stays, for its logs and events.
    let failed_pods = pods.list(&ListParams::default().labels("dag_id=smoke_failing")).await.unwrap().items;
    assert!(!failed_pods.is_empty(), "the failed worker pod was deleted");
    // Its log comes from the worker pod itself while the pod is there.
    let out = install.run(&["logs", "smoke_failing.explode"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("worker pod "), "not read from the worker pod: {}", stderr(&out));
    assert!(stdout(&out).contains("exploded on purpose"), "{}", stdout(&out));
    fs::remove_file(repo.path("files/dags/smoke_failing.py")).unwrap();
    fs::remove_file(repo.path("files/dags/smoke_broken_import.py")).unwrap();

    // 6. A worker image that is not on the node is reported as such, not as a timeout.
    edit(
        &repo,
        "k8s/airflow/pod-template.yaml",
        "      image: airflow-worker ",
        &format!("      image: {MISSING_IMAGE} "),
    );
    install.up_ok(&[]);
    let (ok, summary, _) = install.smoke(&["--dag", "smoke_xcom"]);
    assert!(!ok);
    let run = dag(&summary, "smoke_xcom");
    let why = run["log_tail"].as_str().unwrap_or("");
    assert!(
        why.contains("xtask-not-on-any-node") && (why.contains("ImagePullBackOff") || why.contains("ErrImagePull")),
        "{run}"
    );
    assert!(why.contains("k8s-up"), "no fix named: {why}");
    edit(
        &repo,
        "k8s/airflow/pod-template.yaml",
        &format!("      image: {MISSING_IMAGE} "),
        "      image: airflow-worker ",
    );

    // 7. k8s-up diagnoses a component whose image is missing, fast ...
    edit(
        &repo,
        "k8s/airflow/triggerer.yaml",
        "        - name: triggerer\n          image: airflow-worker",
        &format!("        - name: triggerer\n          image: {MISSING_IMAGE}"),
    );
    let out = install.up(&[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot become ready")
            && err.contains("airflow-triggerer")
            && err.contains("xtask-not-on-any-node"),
        "{err}"
    );
    assert!(err.contains("fix:") && err.contains("more: kubectl -n"), "{err}");
    edit(
        &repo,
        "k8s/airflow/triggerer.yaml",
        &format!("        - name: triggerer\n          image: {MISSING_IMAGE}"),
        "        - name: triggerer\n          image: airflow-worker",
    );
    // ... and one that cannot be scheduled, at its deadline, with the scheduler's reason.
    edit(&repo, "k8s/airflow/triggerer.yaml", TRIGGERER_RESOURCES, TRIGGERER_64_CPUS);
    let out = install.up(&["--timeout", "40"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not ready after 40 s") && err.contains("Insufficient cpu") && err.contains("resources.requests"),
        "{err}"
    );
    edit(&repo, "k8s/airflow/triggerer.yaml", TRIGGERER_64_CPUS, TRIGGERER_RESOURCES);
    install.up_ok(&[]);

    // 8. Pruning: what k8s/ no longer has goes; what xtask did not make stays.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mine: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "made-by-someone-else"}, "data": {"a": "b"}}))
            .unwrap();
    cms.create(&PostParams::default(), &mine).await.unwrap();
    fs::remove_file(repo.path("k8s/airflow/triggerer.yaml")).unwrap();
    let pruned = install.up_ok(&[]);
    assert!(
        pruned["apply"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "Deployment" && o["name"] == "airflow-triggerer" && o["action"] == "pruned"),
        "{}",
        pruned["apply"]
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    assert!(deployments.get_opt("airflow-triggerer").await.unwrap().is_none());
    assert!(cms.get_opt("made-by-someone-else").await.unwrap().is_some(), "pruned an object xtask did not make");

    // 8b. Down, then up at once, converges: k8s-down returns once what it deleted is gone
    // (the logs claim too, which waits for its pods); it used to return at once, and the
    // next apply found the claim terminating and waited 600 s for pods that never started.
    let out = install.run(&["k8s-down", "--keep-cluster"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    assert!(claims.get_opt("airflow-logs").await.unwrap().is_none(), "k8s-down returned with the claim terminating");
    install.up_ok(&[]);

    // 9. Images through a real registry instead: pods pull from it.
    let registry = Registry::start(None);
    let hosts = std::path::Path::new("/var/lib/xtask-local-cluster/containerd/certs.d").join(&registry.host);
    fs::create_dir_all(&hosts).unwrap();
    fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://{0}\"\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            registry.host
        ),
    )
    .unwrap();
    let via_registry = install.up_ok(&["--registry", &format!("{}/e2e", registry.host)]);
    assert!(via_registry["pushes"].as_array().unwrap().iter().all(|p| p["uploaded_blobs"].as_u64().unwrap() > 0));
    let scheduler = deployments.get("airflow-scheduler").await.unwrap();
    let image = scheduler.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap();
    assert!(image.starts_with(&format!("{}/e2e/airflow-worker@sha256:", registry.host)), "{image}");
    let _ = fs::remove_dir_all(&hosts);

    // 10. k8s-down --keep-cluster removes what xtask made, secrets too, and only that.
    let out = install.run(&["k8s-down", "--keep-cluster"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(deployments.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(cms.get_opt("airflow-config").await.unwrap().is_none());
    assert!(cms.get_opt("made-by-someone-else").await.unwrap().is_some());
    assert!(claims.get_opt("airflow-logs").await.unwrap().is_none(), "k8s-down returned with the claim terminating");
    drop(ns_guard);
}

/// Deletes the namespace when the test ends, however it ends.
struct TestNamespaceName(String);

impl Drop for TestNamespaceName {
    fn drop(&mut self) {
        let name = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async move {
                let api: Api<Namespace> = Api::all(kube_client().await);
                let _ = api.delete(&name, &DeleteParams::default()).await;
            })
        })
        .join();
    }
}
