//! Day-two commands against the local test cluster (.ci/local-cluster): `exec` into real
//! pods (exit codes, containers, namespaces, workdir and env), and `run`'s executor
//! choice. The pods run the busybox test image, delivered into the node's containerd.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};

/// A namespace with two Deployments of the busybox test image: `one` (one container)
/// and `two` (containers `main` and `side`), both ready.
async fn workloads(client: &kube::Client, repo: &Repo, prefix: &str) -> TestNamespace {
    let report = repo.build_json(&["--load", "containerd", "--containerd-socket", CLUSTER_CONTAINERD]);
    let image = format!("docker.io/library/airflow-worker@{}", image(&report)["manifest_digest"].as_str().unwrap());
    let ns = TestNamespace::new(client, prefix).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let container = |name: &str| serde_json::json!({"name": name, "image": image, "imagePullPolicy": "Never", "command": ["sleep", "3600"]});
    for (name, containers) in [("one", vec![container("main")]), ("two", vec![container("main"), container("side")])] {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": containers, "terminationGracePeriodSeconds": 0}
                }
            }
        }))
        .unwrap();
        deployments.create(&PostParams::default(), &d).await.unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for _ in 0..120 {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let ready = list
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == 2 {
            return ns;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the test pods did not get ready in 60 s");
}

fn exec(repo: &Repo, ns: &str, args: &[&str]) -> std::process::Output {
    let kubeconfig = test_kubeconfig();
    let mut c = repo.xtask();
    c.args(["exec", "--kubeconfig", kubeconfig.to_str().unwrap(), "--namespace", ns]).args(args);
    c.output().unwrap()
}

#[tokio::test]
async fn exec_streams_output_and_returns_the_remote_exit_code() {
    let client = kube_client().await;
    let repo = Repo::new();
    let ns = workloads(&client, &repo, "xtask-exec").await;

    let out = exec(&repo, &ns.name, &["one", "--", "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "to-stdout");
    assert!(stderr(&out).contains("to-stderr"), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("exec in {}/one-", ns.name)), "says which pod: {}", stderr(&out));

    let ok = exec(&repo, &ns.name, &["one", "-q", "--", "true"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    // --workdir and --env, which exec itself does not have.
    let out = exec(
        &repo,
        &ns.name,
        &[
            "one",
            "-q",
            "--workdir",
            "/opt/airflow",
            "--env",
            "GREETING=hi there",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING in $(pwd)\"",
        ],
    );
    assert_eq!(stdout(&out).trim(), "hi there in /opt/airflow", "{}", stderr(&out));

    // stdin with -i.
    let mut c = repo.xtask();
    c.args([
        "exec",
        "--kubeconfig",
        test_kubeconfig().to_str().unwrap(),
        "--namespace",
        &ns.name,
        "-i",
        "-q",
        "one",
        "--",
        "cat",
    ]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"piped through\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "piped through");
}

/// `exec -it` through a real pseudo-terminal (util-linux's `script` gives it one): the
/// remote side gets a terminal, Ctrl+C typed locally reaches the remote process instead
/// of killing xtask, and xtask ends with the remote exit code as soon as the remote side
/// ends (it used to wait for one more key press). The window size is not asserted: in
/// this cluster's containers TIOCGWINSZ answers ENOTTY, for `kubectl exec -it` too.
#[tokio::test]
async fn exec_it_through_a_terminal_passes_ctrl_c_and_returns_the_exit_code_at_once() {
    use std::io::{Read, Write};
    require("script");
    let client = kube_client().await;
    let repo = Repo::new();
    let ns = workloads(&client, &repo, "xtask-tty").await;
    let remote = "[ -t 0 ] && echo is-a-terminal; trap 'echo got-ctrl-c; exit 7' INT; echo ready; sleep 60 & wait";
    // script runs the command on a new terminal.
    let command = format!(
        "exec {XTASK} --root {} exec --kubeconfig {} --namespace {} -it one -- sh -c \"{remote}\"",
        repo.root().display(),
        test_kubeconfig().display(),
        ns.name
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains("ready") {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) if std::time::Instant::now() > deadline => panic!("no prompt from the remote shell: {seen:?}"),
            Err(_) => {}
        }
    }
    child.stdin.as_mut().unwrap().write_all(b"\x03").unwrap();
    child.stdin.as_mut().unwrap().flush().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("xtask outlived the remote command by 20 s: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("is-a-terminal"), "the remote side got no terminal: {seen:?}");
    assert!(seen.contains("got-ctrl-c"), "Ctrl+C did not reach the remote process: {seen:?}");
    assert_eq!(status.code(), Some(7), "the remote exit code did not come back: {seen:?}");
}

#[tokio::test]
async fn exec_errors_list_containers_namespaces_and_workloads() {
    let client = kube_client().await;
    let repo = Repo::new();
    let ns = workloads(&client, &repo, "xtask-exec-errors").await;

    let out = exec(&repo, &ns.name, &["two", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has 2 containers; pick one with --container: main, side"), "{}", stderr(&out));

    let out = exec(&repo, &ns.name, &["two", "--container", "sidecar", "--", "true"]);
    assert!(stderr(&out).contains("has no container `sidecar`; its containers are: main, side"), "{}", stderr(&out));

    let out = exec(&repo, &ns.name, &["two", "-q", "--container", "side", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));

    let out = exec(&repo, &ns.name, &["nothing-here", "--", "true"]);
    let err = stderr(&out);
    assert!(err.contains("no Deployment or StatefulSet `nothing-here`") && err.contains("one, two"), "{err}");

    let out = exec(&repo, "no-such-namespace", &["one", "--", "true"]);
    let err = stderr(&out);
    assert!(err.contains("namespace no-such-namespace does not exist"), "{err}");
    assert!(err.contains("default") && err.contains(&ns.name), "lists the namespaces that exist: {err}");

    // A pod that is not ready: the error lists it with its reason.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let broken: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "broken"},
        "spec": {
            "selector": {"matchLabels": {"app": "broken"}},
            "template": {"metadata": {"labels": {"app": "broken"}}, "spec": {"containers": [
                {"name": "main", "image": "docker.io/library/not-on-the-node:1", "imagePullPolicy": "Never"}
            ]}}
        }
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &broken).await.unwrap();
    let mut err = String::new();
    for _ in 0..60 {
        err = stderr(&exec(&repo, &ns.name, &["broken", "--", "true"]));
        if err.contains("ErrImageNeverPull") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(err.contains("no ready pod of broken") && err.contains("ErrImageNeverPull"), "{err}");
}

/// A repository whose k8s/settings.toml defines tasks over the test workloads.
fn task_repo(component: &str) -> Repo {
    let repo = Repo::new();
    repo.write(
        "k8s/settings.toml",
        &format!(
            r#"
[components]
worker = "{component}"

[tasks.where]
description = "Say where it runs"
script = "if [ -d /opt/airflow/dags ]; then echo inside; else echo on-host; fi; exit 4"
executors = ["kubernetes", "container", "local"]
component = "worker"
requires = ["sh"]

[tasks.host-only-tool]
description = "Needs a program no machine has"
script = "true"
executors = ["local"]
requires = ["no-such-program-xtask"]
"#
        ),
    );
    repo
}

#[tokio::test]
async fn run_takes_the_first_available_executor_and_says_why_it_passed_others() {
    let client = kube_client().await;
    let repo = Repo::new();
    let ns = workloads(&client, &repo, "xtask-run").await;
    let tasks = task_repo("one");
    let kubeconfig = test_kubeconfig();
    let run = |extra: &[&str]| {
        let mut c = tasks.xtask();
        c.args(["run", "--namespace", &ns.name]).args(extra);
        c.output().unwrap()
    };

    // The cluster is reachable: kubernetes, the first executor, runs it in the pod.
    let out = run(&["--kubeconfig", kubeconfig.to_str().unwrap(), "where"]);
    assert_eq!(out.status.code(), Some(4), "the task's exit code: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "inside");
    assert!(stderr(&out).contains(&format!("executor kubernetes, in pod {}/one-", ns.name)), "{}", stderr(&out));

    // No cluster: kubernetes is passed over with the reason, the container runs it.
    require_docker();
    let missing = tasks.path("missing.kubeconfig");
    let out = run(&["--kubeconfig", missing.to_str().unwrap(), "where"]);
    let err = stderr(&out);
    assert!(err.contains("executor kubernetes is unavailable") && err.contains("does not exist"), "{err}");
    assert!(err.contains("executor container, in a container of docker.io/library/airflow-worker:test"), "{err}");
    assert_eq!(stdout(&out).trim(), "inside");
    assert_eq!(out.status.code(), Some(4));

    // Asked for local: it runs on this machine.
    let out = run(&["--kubeconfig", missing.to_str().unwrap(), "-x", "local", "where"]);
    assert_eq!(stdout(&out).trim(), "on-host", "{}", stderr(&out));
    assert!(stderr(&out).contains("executor local, on this machine"));

    // An executor the task does not allow, and a task with none available.
    let out = run(&["-x", "container", "host-only-tool"]);
    assert!(
        stderr(&out).contains("task host-only-tool does not run on `container`; k8s/settings.toml allows: local"),
        "{}",
        stderr(&out)
    );
    let out = run(&["host-only-tool"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no executor can run task host-only-tool")
            && stderr(&out).contains("not on PATH: no-such-program-xtask"),
        "{}",
        stderr(&out)
    );
    let out = run(&["nope"]);
    assert!(
        stderr(&out).contains("no task `nope` in k8s/settings.toml; the tasks are: host-only-tool, where"),
        "{}",
        stderr(&out)
    );
}

/// `status` marks a component that runs an older build than the last one as stale and the
/// node as lacking the new image, and says why a pod is Pending (the scheduler's reason).
#[tokio::test]
async fn status_names_a_stale_image_and_why_a_pod_is_pending() {
    let client = kube_client().await;
    let repo = Repo::new();
    let report = repo.build_json(&["--load", "containerd", "--containerd-socket", CLUSTER_CONTAINERD]);
    let first = image(&report)["manifest_digest"].as_str().unwrap().to_string();
    let ns = TestNamespace::new(&client, "xtask-status").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment = |name: &str, resources: serde_json::Value| -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "airflow"}},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [{
                            "name": "main",
                            "image": format!("docker.io/library/airflow-worker@{first}"),
                            "imagePullPolicy": "Never",
                            "command": ["sleep", "3600"],
                            "resources": resources,
                        }],
                        "terminationGracePeriodSeconds": 0
                    }
                }
            }
        }))
        .unwrap()
    };
    deployments.create(&PostParams::default(), &deployment("worker", serde_json::json!({}))).await.unwrap();
    // More CPU than any node has: the scheduler leaves it Pending and says why.
    let greedy = deployment("greedy", serde_json::json!({"requests": {"cpu": "500"}}));
    deployments.create(&PostParams::default(), &greedy).await.unwrap();

    let kubeconfig = test_kubeconfig();
    let status = || -> serde_json::Value {
        let out = repo
            .xtask()
            .args(["status", "--json", "--kubeconfig", kubeconfig.to_str().unwrap(), "--namespace", &ns.name])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&out), stderr(&out)))
    };
    let component = |s: &serde_json::Value, name: &str| -> serde_json::Value {
        s["components"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or_default()
    };
    let mut s = status();
    for _ in 0..120 {
        let pending_explained = s["failing_pods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"].as_str().unwrap_or("").starts_with("greedy-") && p["reason"].as_str().is_some());
        if component(&s, "worker")["ready"] == 1 && pending_explained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        s = status();
    }
    assert_eq!(component(&s, "worker")["ready"], 1, "{s:#}");
    assert_eq!(component(&s, "worker")["stale"], false, "{s:#}");
    let pending =
        s["failing_pods"].as_array().unwrap().iter().find(|p| p["name"].as_str().unwrap().starts_with("greedy-"));
    let pending = pending.unwrap_or_else(|| panic!("the Pending pod is not listed: {s:#}"));
    assert_eq!(pending["phase"], "Pending", "{pending:#}");
    assert_eq!(pending["reason"], "Unschedulable", "{pending:#}");
    assert!(pending.to_string().contains("Insufficient cpu"), "the scheduler's reason is missing: {pending:#}");
    assert!(s["nodes"][0]["images"].to_string().contains("true"), "{s:#}");

    // A new build that was not delivered: the worker runs the old one, the node lacks it.
    repo.write("files/dags/example_dag.py", "print('changed')\n");
    let second = image(&repo.build_json(&[]))["manifest_digest"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    let s = status();
    assert_eq!(component(&s, "worker")["stale"], true, "{s:#}");
    assert!(!s["nodes"][0]["images"].to_string().contains("true"), "{s:#}");
}

/// `doctor` names the check that fails and its fix: an API server that does not answer, a
/// namespace that does not exist, a namespace without Airflow's RBAC. Nothing but its
/// report is printed: no library's log line repeats the error without the fix.
#[tokio::test]
async fn doctor_names_each_failing_check_with_its_fix() {
    let client = kube_client().await;
    let repo = Repo::new();
    let doctor = |kubeconfig: &std::path::Path, ns: &str| -> (serde_json::Value, String) {
        let out = repo
            .xtask()
            .args(["doctor", "--json", "--kubeconfig", kubeconfig.to_str().unwrap(), "--namespace", ns])
            .output()
            .unwrap();
        assert!(!out.status.success(), "doctor passed: {}", stdout(&out));
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
        (report, stderr(&out))
    };
    let check = |report: &serde_json::Value, name: &str| -> serde_json::Value {
        let c = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).cloned();
        c.unwrap_or_else(|| panic!("no {name} check: {report:#}"))
    };

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kubeconfig = fs_read(&test_kubeconfig());
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().to_string();
    let closed = repo.path("closed.kubeconfig");
    std::fs::write(&closed, kubeconfig.replace(&server, &format!("https://127.0.0.1:{port}"))).unwrap();
    let (report, err) = doctor(&closed, "airflow");
    let cluster = check(&report, "cluster");
    assert_eq!(cluster["ok"], false, "{report:#}");
    assert!(cluster["detail"].as_str().unwrap().contains("cannot reach"), "{cluster}");
    assert!(cluster["fix"].as_str().unwrap().contains("--kubeconfig"), "{cluster}");
    assert!(!err.contains("ERROR"), "a library's log line on stderr: {err}");

    let (report, _) = doctor(&test_kubeconfig(), "xtask-no-such-namespace");
    let namespace = check(&report, "namespace");
    assert_eq!(namespace["ok"], false, "{report:#}");
    assert!(namespace["fix"].as_str().unwrap().contains("k8s-up"), "{namespace}");

    let ns = TestNamespace::new(&client, "xtask-doctor").await;
    let (report, _) = doctor(&test_kubeconfig(), &ns.name);
    let rbac = check(&report, "rbac");
    assert_eq!(rbac["ok"], false, "{report:#}");
    assert!(rbac["detail"].as_str().unwrap().contains("may not create"), "{rbac}");
    assert!(rbac["fix"].as_str().unwrap().contains("rbac.yaml"), "{rbac}");
}

fn fs_read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
