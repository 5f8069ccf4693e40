//! The documents in k8s/: loaded with their file and line, checked as typed Kubernetes
//! objects, and rendered into what is applied (placeholders resolved, namespace set, pod
//! templates turned into ConfigMaps, generated secrets added).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, LimitRange, Namespace, PersistentVolumeClaim, Pod, PodSpec, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::secrets::GENERATED;

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
    /// Path relative to the repository, e.g. `k8s/airflow/scheduler.yaml`.
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
pub fn load(root: &Path, dirs: &[&Path]) -> Result<Vec<Doc>> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_yaml(dir, &mut files).with_context(|| format!("cannot read {}", dir.display()))?;
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

fn collect_yaml(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            continue; // overlays live in subdirectories and are applied only when asked for
        }
        if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
    Ok(())
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
const TYPED_KINDS: &[(&str, &str)] = &[
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

fn problem(doc: &Doc, field: &str, message: String) -> Problem {
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

/// The verbs the pod launcher may have on each resource (core API group), and nothing else.
pub const ALLOWED_RULES: &[(&str, &[&str])] = &[
    ("pods", &["create", "get", "list", "watch", "patch", "delete"]),
    ("pods/log", &["get"]),
    ("pods/exec", &["create", "get"]),
    ("events", &["list"]),
];

/// What the scheduler's service account must be allowed for the KubernetesExecutor to
/// launch, follow and clean up worker pods and read their logs: what `doctor` checks.
pub const SCHEDULER_NEEDS: &[(&str, &[&str])] =
    &[("pods", &["create", "get", "list", "watch", "patch", "delete"]), ("pods/log", &["get"])];

/// What the check needs to know besides the documents.
pub struct CheckContext<'a> {
    /// Image names that are replaced at apply time (docker/images.toml's images).
    pub placeholders: &'a BTreeSet<String>,
}

/// Pod specs inside an object, with the JSON path that leads to each.
fn pod_specs(t: &Typed) -> Vec<(&PodSpec, &'static str)> {
    match t {
        Typed::Pod(p) => p.spec.iter().map(|s| (s, "spec")).collect(),
        Typed::Deployment(d) => {
            d.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::StatefulSet(d) => {
            d.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::DaemonSet(d) => {
            d.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::Job(j) => {
            j.spec.iter().filter_map(|s| s.template.spec.as_ref()).map(|s| (s, "spec.template.spec")).collect()
        }
        Typed::CronJob(c) => c
            .spec
            .iter()
            .filter_map(|s| s.job_template.spec.as_ref())
            .filter_map(|s| s.template.spec.as_ref())
            .map(|s| (s, "spec.jobTemplate.spec.template.spec"))
            .collect(),
        _ => vec![],
    }
}

fn is_long_running(t: &Typed) -> bool {
    matches!(t, Typed::Deployment(_) | Typed::StatefulSet(_) | Typed::DaemonSet(_))
}

/// The documents of kinds `check` has no type for, one line each: they are applied as
/// written (through the cluster's discovery) but not type-checked here.
pub fn unchecked(docs: &[Doc]) -> Vec<String> {
    docs.iter()
        .filter(|d| !d.kind().is_empty() && !TYPED_KINDS.contains(&(d.api_version(), d.kind())))
        .map(|d| {
            format!(
                "{}:{}: {} {} ({}): not type-checked; applied as written through the cluster's discovery",
                d.file,
                d.line,
                d.kind(),
                d.name(),
                d.api_version()
            )
        })
        .collect()
}

/// Checks the documents; returns every problem found (empty means all good).
pub fn check(docs: &[Doc], ctx: &CheckContext<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let typed: Vec<(usize, Typed)> =
        docs.iter().enumerate().filter_map(|(i, d)| parse(d, &mut problems).map(|t| (i, t))).collect();

    // What the documents (and xtask) define, by kind and name.
    let mut config_maps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut service_accounts = BTreeSet::new();
    let mut services = BTreeSet::new();
    let mut pvcs = BTreeSet::new();
    let mut roles = BTreeSet::new();
    for g in GENERATED {
        secrets.insert(g.name.to_string(), g.keys.iter().map(|k| k.to_string()).collect());
    }
    for (i, t) in &typed {
        let name = docs[*i].name().to_string();
        match t {
            Typed::ConfigMap(c) => {
                let keys = c
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .chain(c.binary_data.iter().flatten().map(|(k, _)| k.clone()));
                config_maps.insert(name, keys.collect());
            }
            Typed::Pod(_) => {
                config_maps.insert(name, BTreeSet::from([POD_TEMPLATE_KEY.to_string()]));
            }
            Typed::Secret(s) => {
                let keys = s
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .chain(s.string_data.iter().flatten().map(|(k, _)| k.clone()));
                secrets.insert(name, keys.collect());
            }
            Typed::ServiceAccount(_) => {
                service_accounts.insert(name);
            }
            Typed::Service(_) => {
                services.insert(name);
            }
            Typed::Pvc(_) => {
                pvcs.insert(name);
            }
            Typed::Role(_) => {
                roles.insert(name);
            }
            _ => {}
        }
    }

    for (i, t) in &typed {
        let doc = &docs[*i];
        // Volume claim templates define claims for the StatefulSet's own pods.
        let mut own_claims = BTreeSet::new();
        if let Typed::StatefulSet(s) = t {
            for c in s.spec.iter().flat_map(|s| s.volume_claim_templates.iter().flatten()) {
                own_claims.extend(c.metadata.name.clone());
            }
            if let Some(svc) = s.spec.as_ref().map(|s| &s.service_name).and_then(|s| s.as_ref())
                && !services.contains(svc)
            {
                problems.push(problem(
                    doc,
                    "spec.serviceName",
                    format!("Service `{svc}` is not defined in k8s/; add it"),
                ));
            }
        }
        for (spec, base) in pod_specs(t) {
            check_pod_spec(
                doc,
                t,
                spec,
                base,
                ctx,
                &own_claims,
                &Defined {
                    services: &services,
                    config_maps: &config_maps,
                    secrets: &secrets,
                    service_accounts: &service_accounts,
                    pvcs: &pvcs,
                },
                &mut problems,
            );
        }
        if let Typed::Pod(p) = t {
            let has_base = p.spec.iter().flat_map(|s| s.containers.iter()).any(|c| c.name == "base");
            if !has_base {
                problems.push(problem(
                    doc,
                    "spec.containers",
                    "a pod template needs a container named `base`: the KubernetesExecutor runs the task in it".into(),
                ));
            }
        }
        match t {
            Typed::Role(r) => check_rules(doc, r.rules.as_deref().unwrap_or(&[]), &mut problems),
            Typed::ClusterRole(_) | Typed::ClusterRoleBinding(_) => problems.push(problem(
                doc,
                "kind",
                "cluster-wide RBAC is broader than Airflow needs; the scheduler's pod launcher is a namespaced Role"
                    .into(),
            )),
            Typed::RoleBinding(b) => {
                if b.role_ref.kind == "Role" && !roles.contains(&b.role_ref.name) {
                    problems.push(problem(
                        doc,
                        "roleRef.name",
                        format!("Role `{}` is not defined in k8s/; add it", b.role_ref.name),
                    ));
                }
                if b.role_ref.kind == "ClusterRole" {
                    problems.push(problem(
                        doc,
                        "roleRef.kind",
                        "binds a ClusterRole; bind the namespaced Role instead".into(),
                    ));
                }
                for (j, s) in b.subjects.iter().flatten().enumerate() {
                    if s.kind == "ServiceAccount" && !service_accounts.contains(&s.name) {
                        problems.push(problem(
                            doc,
                            &format!("subjects[{j}].name"),
                            format!("ServiceAccount `{}` is not defined in k8s/; add it", s.name),
                        ));
                    }
                }
            }
            Typed::ConfigMap(c) => {
                for (k, v) in c.data.iter().flatten() {
                    for host in service_hosts(v) {
                        if !services.contains(&host) {
                            problems.push(problem(
                                doc,
                                &format!("data.{k}"),
                                format!("refers to Service `{host}`, which is not defined in k8s/; add it or fix the host name"),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

struct Defined<'a> {
    services: &'a BTreeSet<String>,
    config_maps: &'a BTreeMap<String, BTreeSet<String>>,
    secrets: &'a BTreeMap<String, BTreeSet<String>>,
    service_accounts: &'a BTreeSet<String>,
    pvcs: &'a BTreeSet<String>,
}

#[allow(clippy::too_many_arguments)]
fn check_pod_spec(
    doc: &Doc,
    t: &Typed,
    spec: &PodSpec,
    base: &str,
    ctx: &CheckContext<'_>,
    own_claims: &BTreeSet<String>,
    defined: &Defined<'_>,
    problems: &mut Vec<Problem>,
) {
    let missing = |what: &str, name: &str| {
        format!(
            "{what} `{name}` is not defined in k8s/ (nor generated by xtask); add it, or mark the reference `optional: true`"
        )
    };
    if let Some(sa) = &spec.service_account_name
        && !defined.service_accounts.contains(sa)
    {
        problems.push(problem(doc, &format!("{base}.serviceAccountName"), missing("ServiceAccount", sa)));
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("{base}.volumes[{i}]");
        if let Some(cm) = &v.config_map
            && !cm.optional.unwrap_or(false)
            && !defined.config_maps.contains_key(&cm.name)
        {
            problems.push(problem(doc, &format!("{at}.configMap.name"), missing("ConfigMap", &cm.name)));
        }
        if let Some(s) = &v.secret
            && !s.optional.unwrap_or(false)
            && let Some(name) = &s.secret_name
            && !defined.secrets.contains_key(name)
        {
            problems.push(problem(doc, &format!("{at}.secret.secretName"), missing("Secret", name)));
        }
        if let Some(pvc) = &v.persistent_volume_claim
            && !defined.pvcs.contains(&pvc.claim_name)
            && !own_claims.contains(&pvc.claim_name)
        {
            problems.push(problem(
                doc,
                &format!("{at}.persistentVolumeClaim.claimName"),
                missing("PersistentVolumeClaim", &pvc.claim_name),
            ));
        }
    }
    let containers: Vec<(&str, usize, &Container)> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| ("containers", i, c))
        .chain(spec.init_containers.iter().flatten().enumerate().map(|(i, c)| ("initContainers", i, c)))
        .collect();
    for (list, i, c) in containers {
        let at = format!("{base}.{list}[{i}]");
        match c.image.as_deref() {
            None => problems.push(problem(doc, &format!("{at}.image"), "missing; name the image (a placeholder or name@sha256:...)".into())),
            Some(image) if ctx.placeholders.contains(image) => {}
            Some(image) if is_pinned(image) => {}
            Some(image) => problems.push(problem(
                doc,
                &format!("{at}.image"),
                format!(
                    "`{image}` is neither a placeholder ({}) nor pinned by digest (NAME@sha256:...); pin it so a pod never runs an image other than the one checked",
                    ctx.placeholders.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            let Some(from) = &e.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref
                && !r.optional.unwrap_or(false)
            {
                match defined.config_maps.get(&r.name) {
                    None => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.configMapKeyRef.name"),
                        missing("ConfigMap", &r.name),
                    )),
                    Some(keys) if !keys.contains(&r.key) => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.configMapKeyRef.key"),
                        format!("ConfigMap `{}` has no key `{}`", r.name, r.key),
                    )),
                    _ => {}
                }
            }
            if let Some(r) = &from.secret_key_ref
                && !r.optional.unwrap_or(false)
            {
                match defined.secrets.get(&r.name) {
                    None => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.secretKeyRef.name"),
                        missing("Secret", &r.name),
                    )),
                    Some(keys) if !keys.contains(&r.key) => problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].valueFrom.secretKeyRef.key"),
                        format!("Secret `{}` has no key `{}`", r.name, r.key),
                    )),
                    _ => {}
                }
            }
        }
        for (j, e) in c.env.iter().flatten().enumerate() {
            for host in e.value.iter().flat_map(|v| service_hosts(v)) {
                if !defined.services.contains(&host) {
                    problems.push(problem(
                        doc,
                        &format!("{at}.env[{j}].value"),
                        format!(
                            "refers to Service `{host}`, which is not defined in k8s/; add it or fix the host name"
                        ),
                    ));
                }
            }
        }
        for (j, f) in c.env_from.iter().flatten().enumerate() {
            if let Some(r) = &f.config_map_ref
                && !r.optional.unwrap_or(false)
                && !defined.config_maps.contains_key(&r.name)
            {
                problems.push(problem(
                    doc,
                    &format!("{at}.envFrom[{j}].configMapRef.name"),
                    missing("ConfigMap", &r.name),
                ));
            }
            if let Some(r) = &f.secret_ref
                && !r.optional.unwrap_or(false)
                && !defined.secrets.contains_key(&r.name)
            {
                problems.push(problem(doc, &format!("{at}.envFrom[{j}].secretRef.name"), missing("Secret", &r.name)));
            }
        }
        if is_long_running(t) && list == "containers" {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let lim = c.resources.as_ref().and_then(|r| r.limits.as_ref());
            let mut absent = Vec::new();
            for (what, map) in [("requests", req), ("limits", lim)] {
                for res in ["cpu", "memory"] {
                    if !map.is_some_and(|m| m.contains_key(res)) {
                        absent.push(format!("{what}.{res}"));
                    }
                }
            }
            if !absent.is_empty() {
                problems.push(problem(
                    doc,
                    &format!("{at}.resources"),
                    format!("missing {}; a long-running component needs requests and limits so it fits the node next to the worker pods", absent.join(", ")),
                ));
            }
        }
    }
}

/// `name@sha256:<64 hex>`.
pub fn is_pinned(image: &str) -> bool {
    image.split_once('@').is_some_and(|(name, digest)| !name.is_empty() && crate::oci::Digest::parse(digest).is_ok())
}

fn check_rules(doc: &Doc, rules: &[PolicyRule], problems: &mut Vec<Problem>) {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_RULES.iter().copied().collect();
    let allowed_text =
        ALLOWED_RULES.iter().map(|(r, v)| format!("{r}: {}", v.join(","))).collect::<Vec<_>>().join("; ");
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        let groups = rule.api_groups.as_deref().unwrap_or(&[]);
        if groups.iter().any(|g| !g.is_empty()) {
            problems.push(problem(
                doc,
                &format!("{at}.apiGroups"),
                format!(
                    "grants API groups {groups:?}; the pod launcher needs only the core group \"\" ({allowed_text})"
                ),
            ));
        }
        if rule.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            problems.push(problem(
                doc,
                &format!("{at}.nonResourceURLs"),
                format!("grants non-resource URLs; the pod launcher needs only: {allowed_text}"),
            ));
        }
        for res in rule.resources.iter().flatten() {
            match allowed.get(res.as_str()) {
                None => problems.push(problem(
                    doc,
                    &format!("{at}.resources"),
                    format!("grants `{res}`, broader than the pod launcher needs ({allowed_text})"),
                )),
                Some(ok) => {
                    for verb in &rule.verbs {
                        if !ok.contains(&verb.as_str()) {
                            problems.push(problem(
                                doc,
                                &format!("{at}.verbs"),
                                format!(
                                    "grants `{verb}` on `{res}`, broader than the pod launcher needs ({allowed_text})"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// Cluster-internal host names in URLs (`scheme://NAME[.NS[.svc[.cluster.local]]]:PORT`),
/// which must be Services of k8s/. Hosts with other dots, IPs and localhost are external.
pub fn service_hosts(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        rest = &rest[i + 3..];
        let authority = rest.split(['/', ' ', '\n', '"', '\'']).next().unwrap_or("");
        let hostport = authority.rsplit('@').next().unwrap_or("");
        let Some((host, port)) = hostport.rsplit_once(':') else { continue };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let parts: Vec<&str> = host.split('.').collect();
        let internal = matches!(parts.as_slice(), [_] | [_, _, "svc"] | [_, _, "svc", "cluster", "local"]);
        let name = parts[0];
        if internal && name != "localhost" && !name.is_empty() && !name.bytes().all(|b| b.is_ascii_digit()) {
            out.push(name.to_string());
        }
    }
    out
}

/// How to render: the namespace, and what each placeholder image becomes.
pub struct RenderOptions<'a> {
    pub namespace: &'a str,
    /// placeholder -> `name@sha256:...`
    pub images: &'a BTreeMap<String, String>,
}

/// Kinds without a namespace; for kinds xtask does not know, apply asks the cluster.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
    "PriorityClass",
    "IngressClass",
];

/// The objects to apply, in dependency order: namespace set, placeholders replaced, pod
/// templates turned into ConfigMaps, labels and config hashes added. Generated secrets
/// are not included (they are made in the cluster).
pub fn render(docs: &[Doc], opts: &RenderOptions<'_>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in docs {
        let mut v = doc.value.clone();
        let kind = doc.kind().to_string();
        if kind == "Namespace" {
            v["metadata"]["name"] = json!(opts.namespace);
        } else if !CLUSTER_SCOPED.contains(&kind.as_str()) {
            v["metadata"]["namespace"] = json!(opts.namespace);
        }
        if kind == "RoleBinding" {
            for s in v["subjects"].as_array_mut().into_iter().flatten() {
                if s["kind"] == "ServiceAccount" {
                    s["namespace"] = json!(opts.namespace);
                }
            }
        }
        replace_images(&mut v, opts.images);
        v["metadata"]["labels"][MANAGED_BY_LABEL] = json!(MANAGED_BY);
        if kind == "Pod" {
            // A pod template: stored as YAML in a ConfigMap of the same name.
            let yaml = serde_yaml_ng::to_string(&v).context("cannot serialise the pod template")?;
            let mut labels = v["metadata"]["labels"].clone();
            labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
            v = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": doc.name(), "namespace": opts.namespace, "labels": labels},
                "data": {POD_TEMPLATE_KEY: yaml},
            });
        }
        out.push(v);
    }
    add_config_hashes(&mut out);
    out.sort_by_key(|v| apply_order(v["kind"].as_str().unwrap_or("")));
    Ok(out)
}

/// Replaces placeholder images in every container of every pod spec of `v`.
fn replace_images(v: &mut Value, images: &BTreeMap<String, String>) {
    for pointer in ["/spec", "/spec/template/spec", "/spec/jobTemplate/spec/template/spec"] {
        if let Some(spec) = v.pointer_mut(pointer) {
            for list in ["containers", "initContainers"] {
                for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(img) = c.get("image").and_then(Value::as_str)
                        && let Some(repl) = images.get(img)
                    {
                        c["image"] = json!(repl);
                    }
                }
            }
        }
    }
}

/// Annotates each pod template with a hash of the ConfigMaps it mounts or reads, so that
/// applying changed configuration rolls the pods that use it.
fn add_config_hashes(objects: &mut [Value]) {
    let maps: BTreeMap<String, String> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .map(|o| (o["metadata"]["name"].as_str().unwrap_or("").to_string(), o["data"].to_string()))
        .collect();
    for o in objects.iter_mut() {
        let Some(template) = o.pointer_mut("/spec/template") else { continue };
        let spec = template["spec"].to_string();
        let mut h = Sha256::new();
        let mut any = false;
        for (name, data) in &maps {
            if spec.contains(&format!("\"name\":\"{name}\"")) {
                h.update(name.as_bytes());
                h.update(data.as_bytes());
                any = true;
            }
        }
        if any {
            template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = json!(hex::encode(&h.finalize()[..8]));
        }
    }
}

/// Objects others depend on first; workloads after them; objects of other kinds (custom
/// resources among them) last, once the CustomResourceDefinitions that define them exist.
pub fn apply_order(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "CustomResourceDefinition",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ClusterRoleBinding",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Service",
        "Ingress",
        "StatefulSet",
        "Job",
        "CronJob",
        "DaemonSet",
        "Deployment",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

/// Parses the placeholders' replacements for `--image NAME=REF` style overrides.
pub fn parse_image_override(s: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("`{s}` is not PLACEHOLDER=IMAGE"))?;
    Ok((k.to_string(), v.to_string()))
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
    fn a_yaml_error_names_file_and_line() {
        let err = split_documents("k8s/bad.yaml", "apiVersion: v1\nkind: [unclosed\n").unwrap_err().to_string();
        assert!(err.starts_with("k8s/bad.yaml:"), "{err}");
        assert!(err.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn service_hosts_finds_cluster_names_only() {
        assert_eq!(
            service_hosts("execution_api_server_url = http://airflow-api-server:8080/execution/"),
            ["airflow-api-server"]
        );
        assert_eq!(service_hosts("postgresql://u:p@db.airflow.svc.cluster.local:5432/x"), ["db"]);
        assert!(service_hosts("http://localhost:8080 https://example.com:443 http://10.0.0.1:80").is_empty());
    }

    #[test]
    fn pinned_images_need_a_real_digest() {
        assert!(is_pinned(&format!("docker.io/library/postgres:16@sha256:{}", "a".repeat(64))));
        assert!(!is_pinned("postgres:16"));
        assert!(!is_pinned("postgres@sha256:abc"));
    }
}
