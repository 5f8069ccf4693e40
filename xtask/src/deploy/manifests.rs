//! The documents in k8s/: loaded with their file and line, and parsed as typed
//! Kubernetes objects (unknown fields found). `check` holds the rules, `render` what is
//! applied.

use camino::Utf8Path;
use std::fmt;
use std::fs;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The label every object xtask applies carries; pruning only ever touches these.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "xtask";
/// Pod templates get this annotation: a hash of the ConfigMaps they mount, so a change of
/// configuration rolls them.
pub const CONFIG_HASH_ANNOTATION: &str = "xtask.io/config-hash";
/// The key under which a pod template (a Pod document) is stored in its ConfigMap.
pub const POD_TEMPLATE_KEY: &str = "pod_template.yaml";

/// One YAML document of k8s/.
#[derive(Clone, Debug)]
pub struct Doc {
    /// Utf8Path relative to the repository, e.g. `k8s/airflow/scheduler.yaml`.
    pub file: String,
    /// 1-based position in its file.
    pub index: usize,
    /// Line of the file where the document starts.
    pub line: usize,
    /// The document's own text, for finding the line of a field, and the file line it
    /// starts at.
    pub text: String,
    pub text_line: usize,
    pub value: Value,
}

impl Doc {
    fn str_at(&self, pointer: &str) -> &str {
        self.value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.str_at("/kind")
    }
    pub fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }
    pub fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }
    /// The line of a field given by its path (`spec.template.spec.containers[0].image`):
    /// each key is looked for after the line of the key before it.
    fn line_of(&self, path: &str) -> usize {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut at = 0;
        for segment in path.split('.') {
            let key = segment.split('[').next().unwrap_or(segment);
            if key.is_empty() {
                continue;
            }
            let needle = format!("{key}:");
            let found = lines.iter().enumerate().skip(at).find(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with(&needle) || t.contains(&format!("{{{needle}")) || t.contains(&format!(" {needle}"))
            });
            match found {
                Some((i, _)) => at = i,
                None => break,
            }
        }
        self.text_line + at
    }
}

/// Reads every `*.yaml`/`*.yml` under `dirs` (sorted by path), one [`Doc`] per non-empty
/// document. A YAML error names the file and line.
pub fn load(root: &Utf8Path, dirs: &[&Utf8Path]) -> Result<Vec<Doc>> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_yaml(dir, &mut files).with_context(|| format!("cannot read {}", dir))?;
    }
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let rel = crate::fsutil::display_rel(&path, root);
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {rel}"))?;
        docs.extend(split_documents(&rel, &text)?);
    }
    Ok(docs)
}

fn collect_yaml(dir: &Utf8Path, out: &mut Vec<camino::Utf8PathBuf>) -> Result<()> {
    for e in dir.read_dir_utf8()? {
        let p = e?.into_path();
        if p.is_dir() {
            continue; // overlays live in subdirectories and are applied only when asked for
        }
        if matches!(p.extension(), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Where overlay documents live; they may patch a document of k8s/airflow.
const OVERLAYS_DIR: &str = "k8s/overlays/";

/// Folds each overlay document that has the kind and name of an earlier document into that
/// document, the way `kubectl patch --type strategic` would: maps merge key by key, a
/// `null` value removes the key, lists of named items (containers, env, volumes) merge item
/// by item by `name` (an item with `$patch: delete` removes that item), other lists are
/// replaced. A document whose only other field is `$patch: delete` removes its target.
/// Overlay documents with a new kind and name are added as they are.
pub fn merge_overlays(docs: Vec<Doc>) -> Result<Vec<Doc>> {
    let mut out: Vec<Doc> = Vec::with_capacity(docs.len());
    for doc in docs {
        let target = doc.file.starts_with(OVERLAYS_DIR).then(|| {
            out.iter().position(|d| d.kind() == doc.kind() && d.name() == doc.name() && !doc.name().is_empty())
        });
        let Some(Some(at)) = target else {
            if doc.value.get("$patch").is_some() {
                bail!(
                    "{}:{}: `$patch` is for overlay documents that change a {} named {} in k8s/airflow, and there is none; remove `$patch` or fix the kind and name",
                    doc.file,
                    doc.line,
                    doc.kind(),
                    doc.name()
                );
            }
            out.push(doc);
            continue;
        };
        if doc.value.get("$patch").and_then(Value::as_str) == Some("delete") {
            out.remove(at);
            continue;
        }
        let mut patch = doc.value.clone();
        if let Some(m) = patch.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        strategic_merge(&mut out[at].value, &patch);
    }
    Ok(out)
}

fn named(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn strategic_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    b.remove(k);
                } else if let Some(bv) = b.get_mut(k) {
                    strategic_merge(bv, pv);
                } else {
                    let mut fresh = Value::Null;
                    strategic_merge(&mut fresh, pv);
                    b.insert(k.clone(), fresh);
                }
            }
        }
        (Value::Array(b), Value::Array(p)) if b.iter().chain(p.iter()).all(|i| named(i).is_some()) && !b.is_empty() => {
            for item in p {
                let name = named(item).unwrap_or_default();
                let at = b.iter().position(|i| named(i) == Some(name));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (at, delete) {
                    (Some(i), true) => {
                        b.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_merge(&mut b[i], item),
                    (None, false) => b.push(item.clone()),
                }
            }
        }
        (b, p) => {
            *b = p.clone();
            // A patch's nulls mean "absent" in a new value too.
            strip_nulls(b);
        }
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Splits a multi-document YAML file at `---` lines, keeping each part's first line.
pub fn split_documents(file: &str, text: &str) -> Result<Vec<Doc>> {
    let mut parts: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t.starts_with("---#") {
            parts.push((i + 2, String::new()));
        } else if t == "..." {
            continue;
        } else {
            let last = parts.last_mut().expect("one part at least");
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    let mut docs = Vec::new();
    for (start, body) in parts {
        let value: Value = match serde_yaml_ng::from_str(&body) {
            Ok(v) => v,
            Err(e) => {
                let line = e.location().map(|l| start + l.line() - 1).unwrap_or(start);
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                bail!("{file}:{line}: not valid YAML: {msg}");
            }
        };
        if value.is_null() {
            continue;
        }
        if !value.is_object() {
            bail!("{file}:{start}: a document must be a mapping (a Kubernetes object), not {}", type_name(&value));
        }
        // The first line with content, so messages point at the object rather than a comment.
        let first = body.lines().position(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).unwrap_or(0);
        docs.push(Doc {
            file: file.to_string(),
            index: docs.len() + 1,
            line: start + first,
            text: body,
            text_line: start,
            value,
        });
    }
    Ok(docs)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "a list",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        _ => "something else",
    }
}

/// A document parsed into its Kubernetes type. Every kind is parsed fully (that is how
/// unknown fields are found), though the checks read only some kinds' content.
#[allow(dead_code)]
pub enum Typed {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Service(Box<Service>),
    Pvc(Box<PersistentVolumeClaim>),
    Pod(Box<Pod>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
    ResourceQuota(Box<ResourceQuota>),
    LimitRange(Box<LimitRange>),
    NetworkPolicy(Box<NetworkPolicy>),
    Ingress(Box<Ingress>),
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    CustomResourceDefinition(Box<CustomResourceDefinition>),
    /// A kind xtask has no type for (a custom resource, a newer API): applied through the
    /// cluster's discovery, not type-checked here.
    Unchecked,
}

/// The kinds `check` parses into their Kubernetes types; any other kind is applied as it is.
pub const TYPED_KINDS: &[(&str, &str)] = &[
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Pod"),
    ("v1", "ResourceQuota"),
    ("v1", "LimitRange"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
];

/// A finding of `manifests check`: where, which field, what is wrong and how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub document: usize,
    pub object: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: document {} ({}): ", self.file, self.line, self.document, self.object)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

pub fn problem(doc: &Doc, field: &str, message: String) -> Problem {
    Problem {
        file: doc.file.clone(),
        line: if field.is_empty() { doc.line } else { doc.line_of(field) },
        document: doc.index,
        object: format!("{} {}", doc.kind(), doc.name()),
        field: field.to_string(),
        message,
    }
}

/// Parses `v` as `T` and reports every field of `v` that `T` does not have.
fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(T, Vec<String>), String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(v, &back, "", &mut unknown);
    Ok((typed, unknown))
}

fn unknown_fields(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match b.get(k) {
                    None => out.push(p),
                    Some(bv) => unknown_fields(v, bv, &p, out),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                unknown_fields(ov, bv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Parses a document into its type; unknown fields and type errors become problems.
pub fn parse(doc: &Doc, problems: &mut Vec<Problem>) -> Option<Typed> {
    macro_rules! typed {
        ($variant:ident, $ty:ty) => {{
            match roundtrip::<$ty>(&doc.value) {
                Ok((t, unknown)) => {
                    for field in unknown {
                        problems.push(problem(
                            doc,
                            &field,
                            format!(
                                "unknown field (not in {} {}); check its spelling and indentation against `kubectl explain`",
                                doc.api_version(),
                                doc.kind()
                            ),
                        ));
                    }
                    Some(Typed::$variant(Box::new(t)))
                }
                Err(e) => {
                    problems.push(problem(doc, "", format!("not a valid {}: {e}", doc.kind())));
                    None
                }
            }
        }};
    }
    if doc.name().is_empty() {
        problems.push(problem(doc, "metadata.name", "missing; every object needs a name".into()));
    }
    match (doc.api_version(), doc.kind()) {
        ("v1", "Namespace") => typed!(Namespace, Namespace),
        ("v1", "ServiceAccount") => typed!(ServiceAccount, ServiceAccount),
        ("v1", "ConfigMap") => typed!(ConfigMap, ConfigMap),
        ("v1", "Secret") => typed!(Secret, Secret),
        ("v1", "Service") => typed!(Service, Service),
        ("v1", "PersistentVolumeClaim") => typed!(Pvc, PersistentVolumeClaim),
        ("v1", "Pod") => typed!(Pod, Pod),
        ("rbac.authorization.k8s.io/v1", "Role") => typed!(Role, Role),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed!(RoleBinding, RoleBinding),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed!(ClusterRole, ClusterRole),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => typed!(ClusterRoleBinding, ClusterRoleBinding),
        ("apps/v1", "Deployment") => typed!(Deployment, Deployment),
        ("apps/v1", "StatefulSet") => typed!(StatefulSet, StatefulSet),
        ("apps/v1", "DaemonSet") => typed!(DaemonSet, DaemonSet),
        ("batch/v1", "Job") => typed!(Job, Job),
        ("batch/v1", "CronJob") => typed!(CronJob, CronJob),
        ("v1", "ResourceQuota") => typed!(ResourceQuota, ResourceQuota),
        ("v1", "LimitRange") => typed!(LimitRange, LimitRange),
        ("networking.k8s.io/v1", "NetworkPolicy") => typed!(NetworkPolicy, NetworkPolicy),
        ("networking.k8s.io/v1", "Ingress") => typed!(Ingress, Ingress),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => typed!(HorizontalPodAutoscaler, HorizontalPodAutoscaler),
        ("policy/v1", "PodDisruptionBudget") => typed!(PodDisruptionBudget, PodDisruptionBudget),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            typed!(CustomResourceDefinition, CustomResourceDefinition)
        }
        (api, kind) => {
            if api.is_empty() || kind.is_empty() {
                let field = if api.is_empty() { "apiVersion" } else { "kind" };
                problems.push(problem(doc, field, "missing; every object needs apiVersion and kind".into()));
                None
            } else {
                Some(Typed::Unchecked)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_file_and_line() {
        let text = "# comment\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: b\n";
        let docs = split_documents("k8s/x.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].line, docs[0].index), (2, 1));
        assert_eq!((docs[1].line, docs[1].index), (9, 2));
        assert_eq!(docs[1].name(), "b");
    }

    #[test]
    fn an_overlay_document_patches_the_base_document_of_its_kind_and_name() {
        let base = split_documents(
            "k8s/airflow/a.yaml",
            "kind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  template:\n    spec:\n      containers:\n        - {name: app, image: x, env: [{name: A, value: '1'}]}\n        - {name: side, image: y}\n      volumes:\n        - {name: logs, persistentVolumeClaim: {claimName: logs}}\n        - {name: cfg, configMap: {name: c}}\n---\nkind: PersistentVolumeClaim\nmetadata: {name: logs}\n",
        )
        .unwrap();
        let overlay = split_documents(
            "k8s/overlays/o/p.yaml",
            "kind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n        - {name: app, env: [{name: B, value: '2'}]}\n        - {name: side, $patch: delete}\n      volumes:\n        - {name: logs, persistentVolumeClaim: null, emptyDir: {}}\n---\nkind: PersistentVolumeClaim\nmetadata: {name: logs}\n$patch: delete\n---\nkind: Service\nmetadata: {name: new}\n",
        )
        .unwrap();
        let docs = merge_overlays(base.into_iter().chain(overlay).collect()).unwrap();
        let kinds: Vec<&str> = docs.iter().map(Doc::kind).collect();
        assert_eq!(kinds, ["Deployment", "Service"]);
        let spec = &docs[0].value["spec"]["template"]["spec"];
        assert_eq!(docs[0].value["spec"]["replicas"], 1);
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{containers:?}");
        assert_eq!(containers[0]["image"], "x");
        assert_eq!(containers[0]["env"], serde_json::json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        assert_eq!(spec["volumes"][0], serde_json::json!({"name": "logs", "emptyDir": {}}));
        assert_eq!(spec["volumes"][1]["configMap"]["name"], "c");
        assert_eq!(docs[0].file, "k8s/airflow/a.yaml", "errors still point at the base document");

        let stray = split_documents("k8s/overlays/o/q.yaml", "kind: Service\nmetadata: {name: none}\n$patch: delete\n")
            .unwrap();
        let err = merge_overlays(stray).unwrap_err().to_string();
        assert!(err.starts_with("k8s/overlays/o/q.yaml:1:") && err.contains("there is none"), "{err}");
    }

    #[test]
    fn a_yaml_error_names_file_and_line() {
        let err = split_documents("k8s/bad.yaml", "apiVersion: v1\nkind: [unclosed\n").unwrap_err().to_string();
        assert!(err.starts_with("k8s/bad.yaml:"), "{err}");
        assert!(err.contains("not valid YAML"), "{err}");
    }
}
