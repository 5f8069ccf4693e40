//! Any kind in k8s/ is applied, on the local test cluster: kinds xtask has types for (a
//! ResourceQuota, a NetworkPolicy, a CustomResourceDefinition) are type-checked, a custom
//! object is applied through discovery once its CRD is established, a second apply changes
//! nothing, and kinds dropped from k8s/ are pruned.

mod common;

use std::process::Output;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind};

const CRD: &str = "widgets.kinds.xtask.test";

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: airflow\n";

const QUOTA: &str = r#"
apiVersion: v1
kind: ResourceQuota
metadata:
  name: small
spec:
  hard:
    count/configmaps: "50"
"#;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: same-namespace-only
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {}
"#;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.kinds.xtask.test
spec:
  group: kinds.xtask.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer}
"#;

const WIDGET: &str = r#"
apiVersion: kinds.xtask.test/v1
kind: Widget
metadata:
  name: first
spec:
  size: 3
"#;

fn widgets(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kinds.xtask.test", "v1", "Widget");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "widgets"))
}

fn up(repo: &Repo, ns: &str) -> Output {
    repo.xtask()
        .args(["k8s-up", "--json", "--timeout", "60", "--node-containerd", CLUSTER_CONTAINERD])
        .args(["--kubeconfig", test_kubeconfig().to_str().unwrap(), "--namespace", ns])
        .output()
        .unwrap()
}

fn up_ok(repo: &Repo, ns: &str) -> serde_json::Value {
    let out = up(repo, ns);
    assert!(out.status.success(), "k8s-up failed:\n{}\n{}", stdout(&out), stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The apply's action for each object, by `Kind/name`.
fn actions(report: &serde_json::Value) -> Vec<(String, String)> {
    report["apply"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                format!("{}/{}", o["kind"].as_str().unwrap(), o["name"].as_str().unwrap()),
                o["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_a_network_policy_and_a_crd_with_an_object_are_applied_then_pruned() {
    let client = kube_client().await;
    let ns = format!("xtask-kinds-{}", std::process::id());
    let repo = Repo::new();
    repo.write("k8s/airflow/namespace.yaml", NAMESPACE);
    repo.write("k8s/airflow/quota.yaml", QUOTA);
    repo.write("k8s/airflow/policy.yaml", POLICY);
    repo.write("k8s/airflow/crd.yaml", WIDGET_CRD);
    repo.write("k8s/airflow/widget.yaml", WIDGET);

    // The check passes, type-checks the kinds it knows and says which it did not.
    let out = repo.ok(&["manifests", "check"]);
    let text = stdout(&out);
    assert!(text.contains("5 documents in 5 files: OK"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("note: k8s/airflow/widget.yaml:")
            && l.contains("Widget first (kinds.xtask.test/v1): not type-checked")),
        "{text}"
    );
    assert!(!text.contains("ResourceQuota small") && !text.contains("NetworkPolicy"), "{text}");
    // ... and a known kind is still checked field by field.
    repo.write(
        "k8s/airflow/policy.yaml",
        &POLICY.replace("podSelector: {}\n  policyTypes", "podSelectr: {}\n  policyTypes"),
    );
    let out = repo.xtask().args(["manifests", "check"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stdout(&out).contains("spec.podSelectr") && stdout(&out).contains("unknown field"), "{}", stdout(&out));
    repo.write("k8s/airflow/policy.yaml", POLICY);

    let first = up_ok(&repo, &ns);
    let acts = actions(&first);
    for o in ["ResourceQuota/small", "NetworkPolicy/same-namespace-only", "Widget/first"] {
        assert!(acts.contains(&(o.to_string(), "created".to_string())), "{o} not created: {acts:?}");
    }
    let crd_at = acts.iter().position(|(o, _)| o == &format!("CustomResourceDefinition/{CRD}")).unwrap();
    let widget_at = acts.iter().position(|(o, _)| o == "Widget/first").unwrap();
    assert!(crd_at < widget_at, "the CRD must be applied before its object: {acts:?}");

    let quota = Api::<ResourceQuota>::namespaced(client.clone(), &ns).get("small").await.unwrap();
    assert_eq!(quota.spec.unwrap().hard.unwrap()["count/configmaps"].0, "50");
    Api::<NetworkPolicy>::namespaced(client.clone(), &ns).get("same-namespace-only").await.unwrap();
    let widget = widgets(&client, &ns).get("first").await.unwrap();
    assert_eq!(widget.data["spec"]["size"], 3);
    assert_eq!(widget.metadata.labels.unwrap()["app.kubernetes.io/managed-by"], "xtask");

    // A second apply changes nothing, and says so.
    let second = up_ok(&repo, &ns);
    let changed: Vec<_> = actions(&second).into_iter().filter(|(_, a)| a != "unchanged").collect();
    assert!(changed.is_empty(), "a second k8s-up changed {changed:?}");
    assert_eq!(second["changed"], false, "{second}");

    // Kinds dropped from k8s/ are pruned, custom ones included.
    std::fs::remove_file(repo.path("k8s/airflow/widget.yaml")).unwrap();
    std::fs::remove_file(repo.path("k8s/airflow/policy.yaml")).unwrap();
    let third = up_ok(&repo, &ns);
    let acts = actions(&third);
    for o in ["Widget/first", "NetworkPolicy/same-namespace-only"] {
        assert!(acts.contains(&(o.to_string(), "pruned".to_string())), "{o} not pruned: {acts:?}");
    }
    assert!(
        widgets(&client, &ns).get_opt("first").await.unwrap().is_none_or(|w| w.metadata.deletion_timestamp.is_some())
    );
    assert!(
        Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
            .get_opt("same-namespace-only")
            .await
            .unwrap()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    );

    // k8s-down --keep-cluster removes the rest, the record of applied kinds too.
    repo.ok(&["k8s-down", "--keep-cluster", "--kubeconfig", test_kubeconfig().to_str().unwrap(), "--namespace", &ns]);
    let inventory = Api::<ConfigMap>::namespaced(client.clone(), &ns).get_opt("xtask-inventory").await.unwrap();
    assert!(inventory.is_none_or(|c| c.metadata.deletion_timestamp.is_some()), "the inventory was left behind");

    // Cluster-scoped objects are never pruned: the test removes its CRD and namespace.
    let _ = Api::<CustomResourceDefinition>::all(client.clone()).delete(CRD, &DeleteParams::default()).await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}
