//! `cargo xtask manifests check|render` on the repository's own k8s/, and on broken
//! copies of it: each rule fails with a message naming the file, the document and the field.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// A repository holding a copy of this repository's k8s/ and docker/images.toml.
fn repo_with_manifests() -> Repo {
    let repo = Repo::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    sh(Command::new("cp").arg("-r").arg(src.join("k8s")).arg(repo.root()));
    fs::copy(src.join("docker/images.toml"), repo.path("docker/images.toml")).unwrap();
    repo
}

fn edit(repo: &Repo, file: &str, from: &str, to: &str) {
    let p = repo.path(file);
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no `{from}` to replace");
    fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

/// Runs the check and expects it to fail with each of `expect` in one line of its output.
fn check_fails(repo: &Repo, expect: &[&str]) -> String {
    let out = repo.xtask().args(["manifests", "check"]).output().unwrap();
    let text = stdout(&out);
    assert!(!out.status.success(), "check passed but should not have:\n{text}");
    assert!(
        text.lines().any(|l| expect.iter().all(|e| l.contains(e))),
        "no line with all of {expect:?} in:\n{text}{}",
        stderr(&out)
    );
    text
}

#[test]
fn the_shipped_manifests_pass() {
    let repo = repo_with_manifests();
    let out = repo.ok(&["manifests", "check"]);
    assert!(stdout(&out).contains("OK"), "{}", stdout(&out));
    repo.ok(&["manifests", "check", "--overlay", "remote-logging-s3"]);
}

#[test]
fn a_misspelled_field_is_named_with_file_document_and_line() {
    let repo = repo_with_manifests();
    edit(&repo, "k8s/airflow/scheduler.yaml", "serviceAccountName:", "serviceAcountName:");
    let text = check_fails(
        &repo,
        &[
            "k8s/airflow/scheduler.yaml:",
            "document 1 (Deployment airflow-scheduler)",
            "spec.template.spec.serviceAcountName",
            "unknown field",
        ],
    );
    let line: usize = text.split(':').nth(1).unwrap().parse().unwrap();
    let source = fs::read_to_string(repo.path("k8s/airflow/scheduler.yaml")).unwrap();
    assert!(source.lines().nth(line - 1).unwrap().contains("serviceAcountName"), "line {line} is not the field's");
}

#[test]
fn a_reference_to_an_undefined_config_map_fails() {
    let repo = repo_with_manifests();
    edit(
        &repo,
        "k8s/airflow/dag-processor.yaml",
        "configMap: {name: airflow-config}",
        "configMap: {name: airflow-confg}",
    );
    check_fails(
        &repo,
        &[
            "k8s/airflow/dag-processor.yaml",
            "document 1",
            "volumes[0].configMap.name",
            "ConfigMap `airflow-confg` is not defined",
        ],
    );
}

#[test]
fn a_reference_to_an_undefined_secret_fails_but_generated_ones_pass() {
    let repo = repo_with_manifests();
    edit(
        &repo,
        "k8s/airflow/postgres.yaml",
        "secretKeyRef: {name: airflow-postgres, key: password}",
        "secretKeyRef: {name: db-credentials, key: password}",
    );
    check_fails(
        &repo,
        &[
            "k8s/airflow/postgres.yaml",
            "document 2 (StatefulSet airflow-postgres)",
            "secretKeyRef.name",
            "Secret `db-credentials`",
        ],
    );
    // A generated secret exists, but not every key does.
    edit(
        &repo,
        "k8s/airflow/postgres.yaml",
        "secretKeyRef: {name: db-credentials, key: password}",
        "secretKeyRef: {name: airflow-postgres, key: pasword}",
    );
    check_fails(&repo, &["postgres.yaml", "secretKeyRef.key", "has no key `pasword`"]);
}

#[test]
fn a_reference_to_an_undefined_service_account_fails() {
    let repo = repo_with_manifests();
    edit(
        &repo,
        "k8s/airflow/pod-template.yaml",
        "serviceAccountName: airflow-worker",
        "serviceAccountName: airflow-workers",
    );
    check_fails(
        &repo,
        &[
            "k8s/airflow/pod-template.yaml",
            "document 1 (Pod airflow-pod-template)",
            "spec.serviceAccountName",
            "ServiceAccount `airflow-workers`",
        ],
    );
}

#[test]
fn a_reference_to_an_undefined_service_fails() {
    let repo = repo_with_manifests();
    edit(&repo, "k8s/airflow/config.yaml", "http://airflow-api-server:8080", "http://airflow-apiserver:8080");
    check_fails(
        &repo,
        &[
            "k8s/airflow/config.yaml",
            "document 1 (ConfigMap airflow-config)",
            "data.airflow.cfg",
            "Service `airflow-apiserver`",
        ],
    );
}

#[test]
fn a_pod_template_without_a_base_container_fails() {
    let repo = repo_with_manifests();
    edit(&repo, "k8s/airflow/pod-template.yaml", "- name: base", "- name: worker");
    check_fails(&repo, &["k8s/airflow/pod-template.yaml", "document 1", "spec.containers", "named `base`"]);
}

#[test]
fn an_image_neither_placeholder_nor_pinned_fails() {
    let repo = repo_with_manifests();
    edit(
        &repo,
        "k8s/airflow/postgres.yaml",
        "          image: airflow-postgres",
        "          image: docker.io/library/postgres:16",
    );
    check_fails(&repo, &["k8s/airflow/postgres.yaml", "document 2", "containers[0].image", "nor pinned by digest"]);
    let pinned = format!("image: docker.io/library/postgres:16@sha256:{}", "0".repeat(64));
    edit(&repo, "k8s/airflow/postgres.yaml", "image: docker.io/library/postgres:16", &pinned);
    repo.ok(&["manifests", "check"]);
}

#[test]
fn a_long_running_component_without_resources_fails() {
    let repo = repo_with_manifests();
    edit(
        &repo,
        "k8s/airflow/triggerer.yaml",
        "            limits: {cpu: \"1\", memory: 768Mi}\n          volumeMounts:\n            - {name: config, mountPath: /opt/airflow/config, readOnly: true}\n            - {name: logs",
        "          volumeMounts:\n            - {name: config, mountPath: /opt/airflow/config, readOnly: true}\n            - {name: logs",
    );
    check_fails(
        &repo,
        &[
            "k8s/airflow/triggerer.yaml",
            "document 1 (Deployment airflow-triggerer)",
            "containers[0].resources",
            "limits.cpu, limits.memory",
        ],
    );
}

#[test]
fn a_role_broader_than_the_pod_launcher_fails() {
    let repo = repo_with_manifests();
    edit(
        &repo,
        "k8s/airflow/rbac.yaml",
        "resources: [events]\n    verbs: [list]",
        "resources: [events, secrets]\n    verbs: [list]",
    );
    check_fails(
        &repo,
        &["k8s/airflow/rbac.yaml", "document 3 (Role airflow-pod-launcher)", "rules[3].resources", "grants `secrets`"],
    );
    let repo = repo_with_manifests();
    edit(&repo, "k8s/airflow/rbac.yaml", "verbs: [create, get, list, watch, patch, delete]", "verbs: [\"*\"]");
    check_fails(&repo, &["rbac.yaml", "rules[0].verbs", "grants `*` on `pods`"]);
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let repo = repo_with_manifests();
    edit(&repo, "k8s/airflow/logs.yaml", "accessModes: [ReadWriteOnce]", "accessModes: [ReadWriteOnce");
    let err = repo.fails(&["manifests", "check"]);
    assert!(err.contains("k8s/airflow/logs.yaml:") && err.contains("not valid YAML"), "{err}");
}

#[test]
fn render_resolves_placeholders_namespace_pod_template_and_hides_secrets() {
    let repo = repo_with_manifests();
    let digest = format!("sha256:{}", "a".repeat(64));
    let out = repo.ok(&[
        "manifests",
        "render",
        "--namespace",
        "team-a",
        "--image",
        &format!("airflow-worker=docker.io/library/airflow-worker@{digest}"),
        "--image",
        &format!("airflow-postgres=docker.io/library/airflow-postgres@{digest}"),
    ]);
    let text = stdout(&out);
    let docs: Vec<serde_json::Value> = text
        .split("\n---")
        .map(|d| d.trim_start_matches("---"))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let images: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
    assert!(!images.is_empty());
    assert!(images.iter().all(|i| i.ends_with(&digest)), "{images:?}");
    for d in &docs {
        let kind = d["kind"].as_str().unwrap();
        if kind == "Namespace" {
            assert_eq!(d["metadata"]["name"], "team-a");
        } else {
            assert_eq!(d["metadata"]["namespace"], "team-a", "{kind} {}", d["metadata"]["name"]);
        }
        assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "xtask");
        assert_ne!(kind, "Pod", "the pod template must be rendered as a ConfigMap");
    }
    let template = docs.iter().find(|d| d["metadata"]["name"] == "airflow-pod-template").unwrap();
    let pod: serde_json::Value =
        serde_yaml_ng::from_str(template["data"]["pod_template.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(pod["spec"]["containers"][0]["name"], "base");
    assert!(pod["spec"]["containers"][0]["image"].as_str().unwrap().ends_with(&digest));
    let binding = docs.iter().find(|d| d["kind"] == "RoleBinding").unwrap();
    assert_eq!(binding["subjects"][0]["namespace"], "team-a");
    // No generated Secret is printed: a placeholder applied elsewhere would be the key.
    assert!(docs.iter().all(|d| d["kind"] != "Secret"), "a Secret was rendered");
    assert!(!text.contains("<generated>"));
    assert!(text.contains("airflow-secrets (keys: ") && text.contains("kubectl -n team-a get secret NAME"), "{text}");
    // Dependency order: the namespace first, deployments last.
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs.last().unwrap()["kind"], "Deployment");
}

#[test]
fn each_component_gets_the_keys_it_reads_and_no_key_that_signs_tokens_reaches_dag_code() {
    // (what breaks it, file, text replaced, replacement, what the check must say)
    let cases: [(&str, &str, &str, &str, &[&str]); 3] = [
        (
            "the scheduler lost the key it signs worker tokens with",
            "k8s/airflow/scheduler.yaml",
            "            - name: AIRFLOW__API_AUTH__JWT_SECRET\n              valueFrom: {secretKeyRef: {name: airflow-secrets, key: AIRFLOW__API_AUTH__JWT_SECRET}}\n",
            "",
            &["scheduler.yaml", "`scheduler` needs AIRFLOW__API_AUTH__JWT_SECRET", "secretKeyRef"],
        ),
        (
            "the dag-processor, which runs DAG authors' code, is given the whole secret",
            "k8s/airflow/dag-processor.yaml",
            "          envFrom:\n",
            "          envFrom:\n            - secretRef: {name: airflow-secrets}\n",
            &["dag-processor.yaml", "runs DAG authors' code", "AIRFLOW__API_AUTH__JWT_SECRET"],
        ),
        (
            "the scheduler has no service account token to start worker pods with",
            "k8s/airflow/scheduler.yaml",
            "      serviceAccountName: airflow-scheduler\n",
            "      serviceAccountName: airflow-scheduler\n      automountServiceAccountToken: false\n",
            &["scheduler.yaml", "automountServiceAccountToken", "needs its service account token"],
        ),
    ];
    for (why, file, from, to, expect) in cases {
        eprintln!("case: {why}");
        let repo = repo_with_manifests();
        edit(&repo, file, from, to);
        check_fails(&repo, expect);
    }
}
