//! Clusters shaped like production, on a two-node kind cluster: the metadata database an
//! existing Postgres outside the cluster (Debian's, on this machine) named by a Secret;
//! task logs in a real S3 server (versitygw, the object-store overlay) written by worker
//! pods on one node and read by the api-server on the other after the worker pod is gone;
//! DAGs from Airflow's S3 DAG bundle, filled by `dags push`;
//! images pulled from a private registry (Debian's docker-registry behind htpasswd) with a
//! pull secret k8s-up makes from the credentials for that one host; `doctor` checking all
//! of it from inside the cluster, telling a refused pull from a missing image and saying
//! what is wrong when the bucket is missing.
//!
//! One test, in steps: a kind cluster with Airflow takes minutes of a two-core machine.

mod common;

use std::process::{Command, Output};

use common::*;

const CLUSTER: &str = "xtask-prod-test";
const CONTROL_PLANE: &str = "xtask-prod-test-control-plane";
const WORKER: &str = "xtask-prod-test-worker";

const KIND: KindCluster = KindCluster(CLUSTER);

fn run(repo: &Repo, args: &[&str]) -> Output {
    KIND.run(repo, args)
}

fn ok(repo: &Repo, args: &[&str]) -> String {
    KIND.ok(repo, args)
}

/// kubectl on the control-plane node, as its admin.
fn kubectl(args: &[&str]) -> String {
    let mut c = Command::new("docker");
    c.args(["exec", CONTROL_PLANE, "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "-n", "airflow"]);
    stdout(&sh(c.args(args)))
}

/// The cluster, removed before the test (left by an earlier run that failed) and after it.
struct Cluster;

impl Cluster {
    fn remove() {
        let _ = KIND.kind(&["delete", "cluster", "--name", CLUSTER]).output();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        Cluster::remove();
    }
}

/// Debian's PostgreSQL on this machine, outside the cluster, listening where kind's nodes
/// reach the host (every address; scram-sha-256 passwords), stopped on drop.
struct HostPostgres {
    dir: std::path::PathBuf,
    port: u16,
    password: String,
    child: std::process::Child,
}

impl HostPostgres {
    const BIN: &str = "/usr/lib/postgresql/15/bin";

    /// `program` as the postgres user; setpriv execs it, so the child is the program
    /// itself and a signal to it reaches the server.
    fn as_postgres(program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--", &format!("{}/{program}", Self::BIN)]);
        c
    }

    fn start() -> HostPostgres {
        assert!(
            std::path::Path::new(Self::BIN).join("postgres").exists(),
            "PostgreSQL 15 is not installed: apt-get install postgresql (or run .ci/setup)"
        );
        let dir = std::env::temp_dir().join(format!("xtask-prod-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        sh(Command::new("chown").args(["postgres:postgres"]).arg(&dir));
        let password = format!("pw{}", std::process::id());
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        sh(Command::new("chown").args(["postgres:postgres"]).arg(&pwfile));
        let data = dir.join("data");
        sh(Self::as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "airflow", "--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display())));
        let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf")).unwrap();
        std::io::Write::write_all(&mut hba, b"host all all 0.0.0.0/0 scram-sha-256\n").unwrap();
        let port = free_port();
        let child = Self::as_postgres("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=*"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("postgres.log")).unwrap())
            .spawn()
            .unwrap();
        let pg = HostPostgres { dir, port, password, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = pg.psql("postgres", "CREATE DATABASE airflow");
            if out.status.success() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "postgres did not start: {}", stderr(&out));
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        pg
    }

    fn psql(&self, db: &str, sql: &str) -> Output {
        Command::new("psql")
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "airflow", "-d", db, "-tAc", sql])
            .output()
            .unwrap()
    }
}

impl Drop for HostPostgres {
    fn drop(&mut self) {
        // SIGINT: a fast shutdown.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host's address on kind's Docker network, which the nodes (and their pods) reach.
fn kind_gateway() -> String {
    let out = sh(Command::new("docker").args([
        "network",
        "inspect",
        "kind",
        "-f",
        "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
    ]));
    stdout(&out)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .unwrap_or_else(|| panic!("kind's network has no IPv4 gateway: {}", stdout(&out)))
        .to_string()
}

#[test]
fn task_logs_live_in_s3_and_are_read_from_another_node_after_the_worker_pod_is_gone() {
    require("kind");
    require_docker();
    Cluster::remove();
    let _cluster = Cluster;
    // The node image (built once per machine and version; the kind test builds it too).
    sh(Command::new(env!("CARGO_BIN_EXE_xtask")).arg("--root").arg(workspace()).arg("node-image"));

    // The api-server on the control plane, every worker pod on the worker node: an overlay
    // of the test's own (patches by kind and name, as the README's "Overlays" says).
    let repo = airflow_repo();
    let pg = HostPostgres::start();
    let settings = std::fs::read_to_string(repo.path("k8s/settings.toml")).unwrap();
    repo.write("k8s/settings.toml", &format!("{settings}\n[database]\nsecret = \"airflow-external-db\"\n"));
    repo.write(
        "k8s/overlays/split-nodes/split.yaml",
        &format!(
            "kind: Deployment\nmetadata: {{name: airflow-api-server}}\nspec:\n  template:\n    spec:\n      nodeSelector: {{kubernetes.io/hostname: {CONTROL_PLANE}}}\n      tolerations: [{{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}}]\n---\nkind: Pod\nmetadata: {{name: airflow-pod-template}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {WORKER}}}\n"
        ),
    );
    let up_args = [
        "k8s-up",
        "--overlay",
        "object-store",
        "--overlay",
        "remote-logging-s3",
        "--overlay",
        "split-nodes",
        "--timeout",
        "900",
    ];
    // The database's Secret does not exist yet: k8s-up says how to make it before it
    // applies anything (the cluster it created stays).
    let out = run(&repo, &up_args);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("[database] names Secret airflow-external-db in namespace airflow, which does not exist")
            && err.contains("kubectl -n airflow create secret generic airflow-external-db --from-literal=connection="),
        "{err}"
    );
    kubectl(&["create", "namespace", "airflow"]);
    let url = format!("postgresql+psycopg2://airflow:{}@{}:{}/airflow", pg.password, kind_gateway(), pg.port);
    kubectl(&["create", "secret", "generic", "airflow-external-db", &format!("--from-literal=connection={url}")]);
    let up = ok(&repo, &up_args);
    assert!(
        up.contains("database   external: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN from Secret airflow-external-db"),
        "{up}"
    );
    // No database of its own: neither its StatefulSet nor its image.
    assert!(kubectl(&["get", "statefulsets", "-o", "name"]).trim().is_empty());
    assert!(!up.contains("images     airflow-postgres"), "{up}");
    // The migration ran against the host's Postgres.
    let tables = pg.psql("airflow", "SELECT count(*) FROM information_schema.tables WHERE table_name = 'dag_run'");
    assert_eq!(stdout(&tables).trim(), "1", "{}", stderr(&tables));
    // The overlay's server was built and shipped with it; no logs volume was made.
    assert!(up.contains("images     airflow-s3"), "{up}");
    assert!(up.contains("/airflow-s3:dev -> kind node"), "{up}");
    let claims = kubectl(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert!(!claims.contains("airflow-logs"), "the shared logs volume was still made: {claims}");
    let api_node = kubectl(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=api-server",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(api_node.trim(), CONTROL_PLANE);

    // doctor: the database from the scheduler, the bucket through the api-server's connection.
    let doctor = ok(&repo, &["doctor"]);
    assert!(doctor.contains("ok   database    external, from Secret airflow-external-db"), "{doctor}");
    assert!(
        doctor.contains("ok   logs        remote task logs: bucket airflow-logs at http://airflow-s3:7070"),
        "{doctor}"
    );

    // A DAG's tasks run in worker pods on the worker node; the pods are deleted when done.
    ok(&repo, &["smoke", "--dag", "smoke_xcom", "--timeout", "600"]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo.path("target/xtask/smoke/cluster-summary.json")).unwrap())
            .unwrap();
    let pods = summary["pods"].as_array().unwrap();
    assert!(!pods.is_empty(), "{summary:#}");
    for p in pods {
        assert_eq!(p["node"], WORKER, "{summary:#}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !kubectl(&["get", "pods", "-l", "dag_id=smoke_xcom", "-o", "name"]).trim().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the worker pods were not deleted");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }

    let runs = pg.psql("airflow", "SELECT count(*) FROM dag_run WHERE dag_id = 'smoke_xcom' AND state = 'success'");
    assert_eq!(stdout(&runs).trim(), "1", "the DAG run is not in the external database: {}", stderr(&runs));

    // The log is an object in the store's bucket ...
    let objects = kubectl(&["exec", "deploy/airflow-s3", "--", "find", "/data/airflow-logs", "-type", "f"]);
    assert!(objects.contains("dag_id=smoke_xcom") && objects.contains("task_id=consume"), "{objects}");
    // ... and `logs DAG.TASK` (through the api-server, on the other node) shows it.
    let log = ok(&repo, &["logs", "smoke_xcom.consume"]);
    assert!(log.contains("producer_hostname"), "the task's log did not come back from S3:\n{log}");

    // DAG bundles from S3: files/dags pushed to the bucket, then the dag-processor and the
    // workers read Airflow's S3 DAG bundle instead of the image's DAG folder.
    let pushed: serde_json::Value = serde_json::from_str(&ok(&repo, &["dags", "push", "--json"])).unwrap();
    assert!(pushed["uploaded"].as_array().unwrap().iter().any(|f| f == "smoke_xcom.py"), "{pushed:#}");
    let mut up_args = up_args.to_vec();
    up_args.extend(["--overlay", "dag-bundle-s3"]);
    ok(&repo, &up_args);
    // A DAG that only the bucket has (the image running was built without it): parsed from
    // the bundle, and its task runs in a worker pod that fetched the bundle too.
    repo.write(
        "files/dags/smoke_bundle.py",
        "from datetime import datetime\n\nfrom airflow.sdk import dag, task\n\n\n@dag(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=[\"smoke\"])\ndef smoke_bundle():\n    @task\n    def from_the_bucket() -> str:\n        return \"read from s3\"\n\n    from_the_bucket()\n\n\nsmoke_bundle()\n",
    );
    let pushed: serde_json::Value = serde_json::from_str(&ok(&repo, &["dags", "push", "--json"])).unwrap();
    assert_eq!(pushed["uploaded"], serde_json::json!(["smoke_bundle.py"]), "only the new file is sent: {pushed:#}");
    ok(&repo, &["smoke", "--dag", "smoke_bundle", "--timeout", "600"]);
    let bundles = pg.psql("airflow", "SELECT bundle_name FROM dag WHERE dag_id = 'smoke_bundle'");
    assert_eq!(stdout(&bundles).trim(), "dags-s3", "{}", stderr(&bundles));
    assert_eq!(
        pushed["reparse_requested"].as_array().map(Vec::len),
        Some(1),
        "a new file forces a refresh: {pushed:#}"
    );
    // An edit of a DAG the bundle holds: push asks for that file to be parsed again, and
    // Airflow holds the new version soon after.
    let edited = std::fs::read_to_string(repo.path("files/dags/smoke_bundle.py"))
        .unwrap()
        .replace("catchup=False,", "catchup=False, description=\"edit 1\",");
    repo.write("files/dags/smoke_bundle.py", &edited);
    let pushed: serde_json::Value = serde_json::from_str(&ok(&repo, &["dags", "push", "--json"])).unwrap();
    assert_eq!(pushed["reparse_requested"], serde_json::json!(["smoke_bundle.py"]), "{pushed:#}");
    let parsed = |edit: &str, within: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(within);
        loop {
            let d = pg.psql("airflow", "SELECT description FROM dag WHERE dag_id = 'smoke_bundle'");
            if stdout(&d).trim() == edit {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{edit} was not parsed: {}", stdout(&d));
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    parsed("edit 1", 60);
    // Two pushes before the DAG processor takes the first request (it is stopped here): the
    // second's request for the same file is already waiting, and that is no failure.
    kubectl(&["scale", "deploy/airflow-dag-processor", "--replicas=0"]);
    for edit in ["edit 2", "edit 3"] {
        let text = std::fs::read_to_string(repo.path("files/dags/smoke_bundle.py")).unwrap();
        let previous = if edit == "edit 2" { "edit 1" } else { "edit 2" };
        repo.write("files/dags/smoke_bundle.py", &text.replace(previous, edit));
        let pushed: serde_json::Value = serde_json::from_str(&ok(&repo, &["dags", "push", "--json"])).unwrap();
        assert_eq!(pushed["reparse_requested"], serde_json::json!(["smoke_bundle.py"]), "{pushed:#}");
    }
    kubectl(&["scale", "deploy/airflow-dag-processor", "--replicas=1"]);
    parsed("edit 3", 300);

    // A private registry: pushed to with the credentials for that host, pulled from by every
    // pod with a pull secret holding those and no others. Plain HTTP, so kind's nodes are
    // told so by --insecure-registry.
    let gateway = kind_gateway();
    let registry = Registry::start_at(&gateway, Some(("puller", "s3cret-pw")));
    let host = registry.host.clone();
    let mut c = KIND.xtask(&repo, &up_args);
    c.args(["--registry", &host, "--insecure-registry", &host])
        .env("XTASK_REGISTRY_HOST", &host)
        .env("XTASK_REGISTRY_USER", "puller")
        .env("XTASK_REGISTRY_PASSWORD", "s3cret-pw");
    let out = c.output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "k8s-up --registry {host} failed:\n{text}\n{}", stderr(&out));
    assert!(
        text.contains(&format!("registry   pods pull {host} with your credentials for it: Secret airflow-registry")),
        "{text}"
    );
    let config = kubectl(&["get", "secret", "airflow-registry", "-o", "jsonpath={.data.\\.dockerconfigjson}"]);
    let config = stdout(&sh(Command::new("sh").args(["-c", &format!("echo {} | base64 -d", config.trim())])));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let hosts: Vec<&String> = config["auths"].as_object().unwrap().keys().collect();
    assert_eq!(hosts, [&host], "the pull secret holds credentials for other hosts: {hosts:?}");
    assert_eq!(config["auths"][&host]["username"], "puller");
    let sa = kubectl(&["get", "serviceaccount", "airflow-worker", "-o", "jsonpath={.imagePullSecrets[*].name}"]);
    assert_eq!(sa.trim(), "airflow-registry");
    let images = kubectl(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=api-server",
        "-o",
        "jsonpath={.items[*].spec.containers[*].image}",
    ]);
    assert!(images.starts_with(&format!("{host}/airflow-worker@sha256:")), "{images}");
    // Worker pods pull through the pod template's pull secret.
    ok(&repo, &["smoke", "--dag", "smoke_xcom", "--timeout", "600"]);
    // With a pull secret holding a wrong password, a pull is refused, and doctor says it was the
    // credentials, not a missing image.
    let mut c = Command::new("docker");
    c.args(["exec", CONTROL_PLANE, "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "-n", "airflow"])
        .args(["create", "secret", "generic", "wrong-pull", "--type=kubernetes.io/dockerconfigjson"])
        .arg(format!(
            "--from-literal=.dockerconfigjson={}",
            serde_json::json!({"auths": {&host: {"username": "puller", "password": "wrong", "auth": "cHVsbGVyOndyb25n"}}})
        ));
    sh(&mut c);
    // A pod the namespace's Pod Security (restricted) admits, pulling again whatever the
    // node holds.
    let image = images.split_whitespace().next().unwrap();
    let overrides = serde_json::json!({"spec": {
        "imagePullSecrets": [{"name": "wrong-pull"}],
        "securityContext": {"runAsNonRoot": true, "runAsUser": 50000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "pull-check",
            "image": image,
            "imagePullPolicy": "Always",
            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
        }],
    }});
    kubectl(&[
        "run",
        "pull-check",
        &format!("--image={image}"),
        "--restart=Never",
        &format!("--overrides={overrides}"),
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let text = loop {
        let out = run(&repo, &["doctor"]);
        let text = stdout(&out);
        if text.contains("FAIL workers") && text.contains("the registry refused") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "doctor never named the refused pull:\n{text}");
        std::thread::sleep(std::time::Duration::from_secs(5));
    };
    assert!(text.contains("pull-check"), "{text}");
    kubectl(&["delete", "pod", "pull-check", "--wait=true"]);
    drop(registry);

    // A missing bucket: doctor says so, and what to do.
    kubectl(&["exec", "deploy/airflow-s3", "--", "rm", "-rf", "/data/airflow-logs"]);
    let out = run(&repo, &["doctor"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains("FAIL logs        bucket airflow-logs does not exist at http://airflow-s3:7070"), "{text}");
    assert!(text.contains("fix: create it"), "{text}");
}
